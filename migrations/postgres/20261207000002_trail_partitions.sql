-- Years of records: HIPAA documentation is kept six years, and the service
-- deletes none. The trail becomes a table partitioned by the month of `at`
-- (declarative partitioning), so that listings by time touch only their
-- months and each month's indexes stay the size of a month.
--
-- The records move to the new table in this migration (one transaction).
-- Index and constraint names are the schema's, so the old table's move
-- aside first. Replicas of the previous version insert by name and keep
-- working on the new table.
ALTER TABLE audit_events RENAME TO audit_events_unpartitioned;
ALTER INDEX audit_events_pkey RENAME TO audit_events_unpartitioned_pkey;
ALTER INDEX audit_events_id_key RENAME TO audit_events_unpartitioned_id_key;
ALTER INDEX audit_events_app_subject RENAME TO audit_events_unpartitioned_app_subject;
ALTER SEQUENCE audit_events_seq_seq OWNED BY NONE;

CREATE TABLE audit_events (
    seq         bigint NOT NULL DEFAULT nextval('audit_events_seq_seq'),
    id          uuid NOT NULL,
    at          timestamptz NOT NULL,
    app_id      uuid,
    actor       text NOT NULL,
    actor_id    uuid,
    subject_id  uuid,
    object_id   uuid,
    action      text NOT NULL,
    fields      text[] NOT NULL,
    outcome     text NOT NULL,
    request_id  text,
    client_addr bytea,
    prev_hash   bytea,
    hash        bytea,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    -- A partitioned table's unique keys include its partition key: an id
    -- is unique within its instant (ids are UUIDv7, made with `at`).
    CONSTRAINT audit_events_pkey PRIMARY KEY (seq, at),
    CONSTRAINT audit_events_id_key UNIQUE (id, at)
) PARTITION BY RANGE (at);
ALTER SEQUENCE audit_events_seq_seq OWNED BY audit_events.seq;
-- A user's accounting of disclosures (`audit list --user`, the
-- disclosures route): subject ids are unique across applications, so the
-- subject leads (an index led by the application, as before, could not
-- serve `--user` without `--app`); and the sealer's order.
CREATE INDEX audit_events_subject ON audit_events (subject_id, seq);
CREATE INDEX audit_events_tree_order ON audit_events (xid, seq);
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- Records whose month has no partition (a clock far off) land here rather
-- than fail the change they describe.
CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events_default
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- Makes the monthly partitions from the month of `p_from` to `p_ahead`
-- months after this one (UTC months), those missing. The runtime role may
-- call it (the sealer does, hourly) but not create tables itself: it runs
-- as the owner. A TRUNCATE of one partition is refused like one of the
-- whole trail. Returns how many it made.
CREATE FUNCTION audit_partitions(p_from timestamptz, p_ahead int) RETURNS int
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    v_month timestamp := date_trunc('month', coalesce(p_from, now()) AT TIME ZONE 'UTC');
    v_last  timestamp := date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => p_ahead);
    v_name  text;
    v_made  int := 0;
BEGIN
    WHILE v_month <= v_last LOOP
        v_name := 'audit_events_' || to_char(v_month, 'YYYY_MM');
        IF to_regclass(v_name) IS NULL THEN
            BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)',
                               v_name, v_month AT TIME ZONE 'UTC',
                               (v_month + interval '1 month') AT TIME ZONE 'UTC');
                EXECUTE format('CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %I
                                FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()', v_name);
                v_made := v_made + 1;
            EXCEPTION WHEN check_violation THEN
                -- The default partition already holds records of that
                -- month: they stay there (still the trail, unpartitioned).
                NULL;
            END;
        END IF;
        v_month := v_month + interval '1 month';
    END LOOP;
    RETURN v_made;
END;
$$;

SELECT audit_partitions((SELECT min(at) FROM audit_events_unpartitioned), 24);
INSERT INTO audit_events (seq, id, at, app_id, actor, actor_id, subject_id, object_id, action, fields, outcome,
                          request_id, client_addr, prev_hash, hash, xid)
SELECT seq, id, at, app_id, actor, actor_id, subject_id, object_id, action, fields, outcome,
       request_id, client_addr, prev_hash, hash, xid
FROM audit_events_unpartitioned;
DROP TABLE audit_events_unpartitioned;
