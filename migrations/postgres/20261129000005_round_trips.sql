-- Statements that used to take several round trips, as one call each. A
-- sign-in made twelve statements besides its hash, and on a shared 2-core
-- machine each round trip's send and wake-up costs the hash pool more than
-- the statement itself; every audited write made two for its trail record. Every function below is VOLATILE: in READ COMMITTED
-- each query in it takes a fresh snapshot, so a read that follows a lock
-- sees what the lock's previous holder committed, as separate statements
-- would.

-- Appends records to the trail, in the order given, each chained from the
-- one before: SHA-256 of the previous hash and the record's canonical
-- content (computed by the service, which also verifies the chain). Takes
-- the trail's lock first (held to the end of the transaction), so the chain
-- has one order; the last hash is read after it.
CREATE FUNCTION audit_append(
    p_lock_key bigint, p_genesis bytea, p_contents bytea[],
    p_ids uuid[], p_ats timestamptz[], p_app_ids uuid[], p_actors text[], p_actor_ids uuid[],
    p_subject_ids uuid[], p_object_ids uuid[], p_actions text[], p_fields text[], p_outcomes text[],
    p_request_ids text[], p_client_addrs bytea[]
) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_prev bytea;
    v_prevs bytea[] := '{}';
    v_hashes bytea[] := '{}';
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock_key);
    v_prev := coalesce((SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1), p_genesis);
    FOR i IN 1 .. coalesce(array_length(p_contents, 1), 0) LOOP
        v_prevs := v_prevs || v_prev;
        v_prev := sha256(v_prev || p_contents[i]);
        v_hashes := v_hashes || v_prev;
    END LOOP;
    -- Each record's field names come as a JSON array: arrays of arrays of
    -- different lengths cannot be passed.
    INSERT INTO audit_events (id, at, app_id, actor, actor_id, subject_id, object_id, action, fields,
                              outcome, request_id, client_addr, prev_hash, hash)
    SELECT t.id, t.at, t.app_id, t.actor, t.actor_id, t.subject_id, t.object_id, t.action,
           ARRAY(SELECT jsonb_array_elements_text(t.fields::jsonb)),
           t.outcome, t.request_id, t.client_addr, t.prev_hash, t.hash
    FROM unnest(p_ids, p_ats, p_app_ids, p_actors, p_actor_ids, p_subject_ids, p_object_ids, p_actions,
                p_fields, p_outcomes, p_request_ids, p_client_addrs, v_prevs, v_hashes)
         WITH ORDINALITY AS t(id, at, app_id, actor, actor_id, subject_id, object_id, action, fields,
                              outcome, request_id, client_addr, prev_hash, hash, n)
    ORDER BY t.n;
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
