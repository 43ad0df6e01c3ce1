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
