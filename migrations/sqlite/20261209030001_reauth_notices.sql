-- Notices of a changed password or primary email (issue 22); see the
-- PostgreSQL migration of the same name. SQLite cannot change a CHECK in
-- place: the table is made again with the wider one, rows and index kept.
CREATE TABLE outbox_reauth (
    id              BLOB PRIMARY KEY NOT NULL,
    app_id          BLOB NOT NULL,
    user_id         BLOB NOT NULL,
    kind            TEXT NOT NULL
        CHECK (kind IN ('username_reminder', 'password_reset', 'password_changed', 'email_changed')),
    payload_ct      BLOB,
    created_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    failed_at       INTEGER,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
) STRICT;
INSERT INTO outbox_reauth (id, app_id, user_id, kind, payload_ct, created_at, attempts, next_attempt_at, failed_at)
    SELECT id, app_id, user_id, kind, payload_ct, created_at, attempts, next_attempt_at, failed_at FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_reauth RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE failed_at IS NULL;
