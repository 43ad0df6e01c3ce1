-- The trail's head: its last record's hashes, in one row that every writer
-- updates in the statement that appends. Before, an append took an advisory
-- lock, read the last record back through the index and ran its steps in
-- PL/pgSQL: about a sixth of PostgreSQL's CPU per sign-in. The row's lock,
-- held to the end of the writer's transaction, gives the chain one order as
-- the advisory lock did; in READ COMMITTED an UPDATE (or SELECT ... FOR
-- UPDATE) that waited for it works on the version its previous holder
-- committed, so each record chains from the one committed before it.
CREATE TABLE audit_head (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    -- The last record's prev_hash and hash; before the first record, both
    -- the genesis hash (32 zero bytes, `audit::GENESIS`).
    prev     bytea NOT NULL,
    hash     bytea NOT NULL
);

-- The previous version's writers take this lock (in audit_append) until
-- they commit: holding it here, no record lands between reading the last one
-- and seeding the head from it.
SELECT pg_advisory_xact_lock(8463219666997109553);
INSERT INTO audit_head (prev, hash)
SELECT coalesce(last.prev_hash, decode(repeat('00', 32), 'hex')), coalesce(last.hash, decode(repeat('00', 32), 'hex'))
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT prev_hash, hash FROM audit_events ORDER BY seq DESC LIMIT 1) AS last ON true;

-- The batch writer, same signature, now chaining from the head: replicas of
-- the previous version call it during a rolling upgrade and so keep to the
-- one chain. p_lock_key and p_genesis are no longer used.
CREATE OR REPLACE FUNCTION audit_append(
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
    v_n int := coalesce(array_length(p_contents, 1), 0);
BEGIN
    IF v_n = 0 THEN
        RETURN;
    END IF;
    SELECT hash INTO v_prev FROM audit_head FOR UPDATE;
    FOR i IN 1 .. v_n LOOP
        v_prevs := v_prevs || v_prev;
        v_prev := sha256(v_prev || p_contents[i]);
        v_hashes := v_hashes || v_prev;
    END LOOP;
    UPDATE audit_head SET prev = v_prevs[v_n], hash = v_prev;
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

-- Without its row every append would fail (see `pg_audit`), so it is kept
-- the way the records are.
CREATE FUNCTION audit_head_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_head keeps the trail''s one head row: % is not allowed', TG_OP;
END;
$$;
CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_kept();
CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_head_kept();
