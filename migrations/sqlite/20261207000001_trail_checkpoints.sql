-- Signed checkpoints of the trail's Merkle tree (src/audit/mod.rs). SQLite
-- has one writer at a time, so the tree's order is seq's, and each record
-- still chains to the one before it too.
CREATE TABLE audit_checkpoints (
    tree_size INTEGER PRIMARY KEY,
    root      BLOB NOT NULL,
    at        INTEGER NOT NULL,
    last_xid  INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    frontier  BLOB NOT NULL,
    key_id    TEXT NOT NULL,
    signature BLOB NOT NULL
) STRICT;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;

-- Checkpoint keys of earlier master keys, endorsed by their successor at
-- `usersvc keys rotate-master` (see the PostgreSQL migration).
CREATE TABLE audit_checkpoint_keys (
    key_id      TEXT PRIMARY KEY,
    public_key  BLOB NOT NULL,
    endorsed_by TEXT NOT NULL,
    endorsement BLOB NOT NULL
) STRICT;
CREATE TRIGGER audit_checkpoint_keys_no_update BEFORE UPDATE ON audit_checkpoint_keys
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoint_keys is append-only');
END;
CREATE TRIGGER audit_checkpoint_keys_no_delete BEFORE DELETE ON audit_checkpoint_keys
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoint_keys is append-only');
END;
