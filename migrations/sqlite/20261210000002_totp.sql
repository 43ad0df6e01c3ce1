-- A second factor (issue 24): TOTP (RFC 6238) with recovery codes; see the
-- PostgreSQL migration of the same name. Times are microseconds since the
-- epoch, as everywhere in this store.
ALTER TABLE applications ADD COLUMN mfa_policy TEXT NOT NULL DEFAULT 'optional'
    CHECK (mfa_policy IN ('optional', 'required-for-supervisors'));

CREATE TABLE totp_factors (
    app_id       BLOB NOT NULL,
    user_id      BLOB NOT NULL,
    secret_ct    BLOB NOT NULL,
    confirmed_at INTEGER,
    last_step    INTEGER,
    created_at   INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    PRIMARY KEY (app_id, user_id),
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
) STRICT;

CREATE TABLE recovery_codes (
    app_id    BLOB NOT NULL,
    user_id   BLOB NOT NULL,
    code_hash BLOB NOT NULL,
    PRIMARY KEY (app_id, user_id, code_hash),
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
) STRICT;

CREATE TABLE mfa_challenges (
    token_hash BLOB PRIMARY KEY NOT NULL,
    app_id     BLOB NOT NULL,
    user_id    BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX mfa_challenges_expiry ON mfa_challenges (expires_at);

-- The notice of a removed second factor: SQLite cannot change a CHECK in
-- place, so the outbox is made again with the wider one, rows and index kept.
CREATE TABLE outbox_mfa (
    id              BLOB PRIMARY KEY NOT NULL,
    app_id          BLOB NOT NULL,
    user_id         BLOB NOT NULL,
    kind            TEXT NOT NULL
        CHECK (kind IN ('username_reminder', 'password_reset', 'password_changed', 'email_changed', 'verify_email', 'mfa_removed')),
    payload_ct      BLOB,
    created_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    failed_at       INTEGER,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
) STRICT;
INSERT INTO outbox_mfa (id, app_id, user_id, kind, payload_ct, created_at, attempts, next_attempt_at, failed_at)
    SELECT id, app_id, user_id, kind, payload_ct, created_at, attempts, next_attempt_at, failed_at FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_mfa RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE failed_at IS NULL;
