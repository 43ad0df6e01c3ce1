-- Passkeys (WebAuthn), issue 24; see the PostgreSQL migration of the same
-- name. Times are microseconds since the epoch, as elsewhere here.
ALTER TABLE applications ADD COLUMN webauthn_rp_id TEXT;
ALTER TABLE applications ADD COLUMN webauthn_origins TEXT;

CREATE TABLE passkeys (
    id           BLOB PRIMARY KEY NOT NULL,
    app_id       BLOB NOT NULL,
    user_id      BLOB NOT NULL,
    cred_key     BLOB NOT NULL,
    sealed       BLOB NOT NULL,
    version      INTEGER NOT NULL DEFAULT 1,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    CONSTRAINT passkeys_app_cred_key UNIQUE (app_id, cred_key),
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX passkeys_user ON passkeys (user_id);

CREATE TABLE passkey_ceremonies (
    id         BLOB PRIMARY KEY NOT NULL,
    app_id     BLOB NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    user_id    BLOB,
    kind       TEXT NOT NULL CHECK (kind IN ('register', 'authenticate')),
    state_ct   BLOB NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX passkey_ceremonies_expiry ON passkey_ceremonies (expires_at);
