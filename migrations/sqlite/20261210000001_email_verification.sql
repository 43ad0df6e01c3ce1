-- Email verification (issue 24); see the PostgreSQL migration of the same
-- name.
ALTER TABLE applications ADD COLUMN verify_email TEXT
    CHECK (verify_email IN ('required', 'optional', 'off'));

CREATE TABLE email_verifications (
    token_hash BLOB PRIMARY KEY NOT NULL,
    app_id     BLOB NOT NULL,
    user_id    BLOB NOT NULL,
    email_bidx BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX email_verifications_user ON email_verifications (user_id);
CREATE INDEX email_verifications_expiry ON email_verifications (expires_at);

ALTER TABLE users ADD COLUMN email_verified_bidx BLOB;

-- SQLite cannot change a CHECK in place: the outbox is made again with the
-- wider one, rows and index kept.
CREATE TABLE outbox_verify (
    id              BLOB PRIMARY KEY NOT NULL,
    app_id          BLOB NOT NULL,
    user_id         BLOB NOT NULL,
    kind            TEXT NOT NULL
        CHECK (kind IN ('username_reminder', 'password_reset', 'password_changed', 'email_changed', 'verify_email')),
    payload_ct      BLOB,
    created_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    failed_at       INTEGER,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
) STRICT;
INSERT INTO outbox_verify (id, app_id, user_id, kind, payload_ct, created_at, attempts, next_attempt_at, failed_at)
    SELECT id, app_id, user_id, kind, payload_ct, created_at, attempts, next_attempt_at, failed_at FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_verify RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE failed_at IS NULL;
