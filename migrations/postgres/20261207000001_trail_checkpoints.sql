-- The trail without a global lock: records are plain INSERTs in their
-- writer's transaction, and their order and integrity come from a Merkle
-- tree (RFC 9162) that one sealer at a time grows and signs checkpoints of
-- (src/audit/mod.rs). Replaces the head row that every writer of every
-- application updated and held locked to commit.
--
-- Each record carries the id of the transaction that wrote it. The sealer
-- takes records of transactions older than every transaction still running
-- (the snapshot's xmin), in (xid, seq) order: one that commits after a later
-- one cannot land behind a checkpoint. Records from before this migration
-- get xid 0: they are the tree's first leaves, in their chain's order, and
-- keep their chain hashes, which `audit verify` still checks.
ALTER TABLE audit_events ALTER COLUMN prev_hash DROP NOT NULL, ALTER COLUMN hash DROP NOT NULL;
ALTER TABLE audit_events ADD COLUMN xid xid8 NOT NULL DEFAULT '0';
ALTER TABLE audit_events ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
-- Its index, (xid, seq), comes with the partitioned table (`trail_partitions`).

-- Signed statements of the tree. The signing key is derived from the master
-- key and never stored; a checkpoint exported with `usersvc audit
-- checkpoint` and kept elsewhere later proves the trail was not rolled back.
CREATE TABLE audit_checkpoints (
    tree_size bigint PRIMARY KEY,
    root      bytea NOT NULL,
    at        timestamptz NOT NULL,
    -- The last record covered (its xid and seq): where the next one starts.
    last_xid  bigint NOT NULL,
    last_seq  bigint NOT NULL,
    -- The tree's right edge (peaks, 32 bytes each).
    frontier  bytea NOT NULL,
    key_id    text NOT NULL,
    signature bytea NOT NULL
);
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- The checkpoint keys of earlier master keys. `usersvc keys rotate-master`
-- has both keys at hand: the new one signs (endorses) the old one's public
-- key here, so checkpoints signed before a rotation still verify, and only
-- a holder of the current master key can vouch for an older key.
CREATE TABLE audit_checkpoint_keys (
    key_id      text PRIMARY KEY,
    public_key  bytea NOT NULL,
    endorsed_by text NOT NULL,
    endorsement bytea NOT NULL
);
CREATE TRIGGER audit_checkpoint_keys_no_update BEFORE UPDATE OR DELETE ON audit_checkpoint_keys
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_checkpoint_keys_no_truncate BEFORE TRUNCATE ON audit_checkpoint_keys
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
