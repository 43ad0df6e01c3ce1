-- A second factor (issue 24): TOTP (RFC 6238) with recovery codes.

-- Per application: whether supervisors must have a second factor to act as
-- supervisors (`usersvc app update --mfa`).
ALTER TABLE applications ADD COLUMN mfa_policy text NOT NULL DEFAULT 'optional'
    CHECK (mfa_policy IN ('optional', 'required-for-supervisors'));

-- One TOTP factor per user: pending until confirmed with a code. The secret
-- is sealed under the application's data key, bound to the user's row and
-- the field "totp_secret". last_step is the last time step accepted (a code
-- is good once: a step at or before it is refused).
CREATE TABLE totp_factors (
    app_id       uuid NOT NULL,
    user_id      uuid NOT NULL,
    secret_ct    bytea NOT NULL,
    confirmed_at timestamptz,
    last_step    bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, user_id),
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
);

-- Single-use recovery codes: only their SHA-256 (each carries 80 random bits).
CREATE TABLE recovery_codes (
    app_id    uuid NOT NULL,
    user_id   uuid NOT NULL,
    code_hash bytea NOT NULL,
    PRIMARY KEY (app_id, user_id, code_hash),
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
);

-- The second step of a sign-in: the mfaToken's SHA-256, for 5 minutes.
CREATE TABLE mfa_challenges (
    token_hash bytea PRIMARY KEY,
    app_id     uuid NOT NULL,
    user_id    uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
);
CREATE INDEX mfa_challenges_expiry ON mfa_challenges (expires_at);

-- The notice of a removed second factor.
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_check
    CHECK (kind IN ('username_reminder', 'password_reset', 'password_changed', 'email_changed', 'verify_email', 'mfa_removed'));
