-- Statements that used to take several round trips, as one call each. A
-- sign-in made twelve statements besides its hash, and on a shared 2-core
-- machine each round trip's send and wake-up costs the hash pool more than
-- the statement itself. Every function below is VOLATILE: in READ COMMITTED
-- each query in it takes a fresh snapshot, so a read that follows a lock
-- sees what the lock's previous holder committed, as separate statements
-- would.

-- Takes the trail's lock (held to the end of the transaction), then reads
-- the hash the next record chains from; NULL for an empty trail.
CREATE FUNCTION audit_chain_head(lock_key bigint) RETURNS bytea
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    RETURN (SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1);
END
$$;

-- Counts one attempt against each key unless one of them is under a wait;
-- returns the longest such wait in seconds (NULL when the attempt may go
-- on). Keys come sorted and distinct, and rows are made and locked in that
-- order, so two attempts never deadlock. Past `free` attempts the wait
-- doubles with each (1 s, 2 s, 4 s, ... up to `max_wait`); attempts older
-- than `win` seconds are forgotten.
CREATE FUNCTION throttle_attempt(keys bytea[], free int4[], max_wait float8[], win float8[])
RETURNS float8
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    wait float8;
BEGIN
    -- The no-op update takes the row lock of a key that exists.
    WITH locked AS (
        INSERT INTO throttles (key, failures, last_failure)
        SELECT k, 0, now() FROM unnest(keys) AS t(k) ORDER BY k
        ON CONFLICT (key) DO UPDATE SET failures = throttles.failures
        RETURNING extract(epoch FROM blocked_until - now())::float8 AS w
    )
    SELECT max(w) INTO wait FROM locked WHERE w > 0;
    IF wait IS NOT NULL THEN
        RETURN wait;
    END IF;
    UPDATE throttles SET
        failures = n.failures,
        last_failure = now(),
        blocked_until = CASE WHEN n.failures >= n.free
            THEN now() + make_interval(secs => LEAST(n.max_wait, power(2, LEAST(n.failures - n.free, 30))))
            ELSE NULL END
    FROM (SELECT r.key, r.free, r.max_wait,
                 CASE WHEN t.last_failure < now() - make_interval(secs => r.win) THEN 1
                      ELSE t.failures + 1 END AS failures
          FROM unnest(keys, free, max_wait, win) AS r(key, free, max_wait, win)
          JOIN throttles t ON t.key = r.key) n
    WHERE throttles.key = n.key;
    RETURN NULL;
END
$$;

-- After a successful sign-in: forgets `clear`'s count and takes the attempt
-- off `forgive`'s (either may be NULL). In key order, like
-- throttle_attempt: a success racing another attempt of the same name from
-- the same address must not lock the two rows the other way round.
CREATE FUNCTION throttle_relief(clear bytea, forgive bytea) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    k bytea;
BEGIN
    FOR k IN SELECT x FROM unnest(ARRAY[clear, forgive]) AS t(x) WHERE x IS NOT NULL ORDER BY x LOOP
        IF k = clear THEN
            DELETE FROM throttles WHERE key = k;
        ELSE
            UPDATE throttles SET failures = GREATEST(failures - 1, 0) WHERE key = k;
        END IF;
    END LOOP;
END
$$;
