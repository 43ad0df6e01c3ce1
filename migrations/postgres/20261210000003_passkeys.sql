-- Passkeys (WebAuthn), issue 24. An application's relying party: its id (a
-- domain, `example.org`) and the origins its pages are served from (a JSON
-- array of strings). Without an rp id the application has no passkeys.
ALTER TABLE applications ADD COLUMN webauthn_rp_id text;
ALTER TABLE applications ADD COLUMN webauthn_origins text;

-- A user's registered passkeys. `sealed` is the webauthn-rs credential
-- (public key, counter, flags) with the name the user gave it, sealed under
-- the application's data key and bound to this row's id; `cred_key` is the
-- blind index of the credential id, to find the row an assertion names.
-- `version` counts the writes, so that two sign-ins with one credential
-- cannot both store their counter.
CREATE TABLE passkeys (
    id           uuid PRIMARY KEY,
    app_id       uuid NOT NULL,
    user_id      uuid NOT NULL,
    cred_key     bytea NOT NULL,
    sealed       bytea NOT NULL,
    version      bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    CONSTRAINT passkeys_app_cred_key UNIQUE (app_id, cred_key),
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
);
CREATE INDEX passkeys_user ON passkeys (user_id);

-- The server's half of a ceremony between its two calls (replicas keep no
-- state): sealed to the row, bound to the application (and the user, for a
-- registration or a sign-in limited to one user), used once, short-lived.
CREATE TABLE passkey_ceremonies (
    id         uuid PRIMARY KEY,
    app_id     uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    user_id    uuid,
    kind       text NOT NULL CHECK (kind IN ('register', 'authenticate')),
    state_ct   bytea NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX passkey_ceremonies_expiry ON passkey_ceremonies (expires_at);
