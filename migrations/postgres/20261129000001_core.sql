-- Applications (tenants), their keys, users, sessions, groups, memberships,
-- the mail outbox, service tokens, sign-in throttles and the audit trail. Every row below
-- applications carries app_id, and the foreign keys pair (app_id, id) so that
-- no row can point into another application.
--
-- No PII is stored in the clear: a user's profile and username are
-- ciphertexts (XChaCha20-Poly1305 under the application's data key, bound to
-- their row and field), and lookups go through blind indexes (HMAC-SHA256
-- under the application's index key). Both keys are stored wrapped by the
-- master key, which never reaches the database.

CREATE TABLE applications (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    -- SHA-256 of the API key: keys are 256-bit random, so a fast hash suffices.
    api_key_hash bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE app_keys (
    id            uuid PRIMARY KEY,
    app_id        uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    -- 'data' encrypts fields; 'index' keys the blind indexes.
    purpose       text NOT NULL CHECK (purpose IN ('data', 'index')),
    wrapped       bytea NOT NULL,
    -- Which master key wrapped it (a fingerprint, not the key).
    master_key_id text NOT NULL,
    -- New ciphertexts use the current key; older keys stay for reading.
    current       boolean NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX app_keys_current ON app_keys (app_id, purpose) WHERE current;

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    app_id        uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    -- The data key of this row's ciphertexts.
    key_id        uuid NOT NULL REFERENCES app_keys (id),
    username_ct   bytea NOT NULL,
    -- Blind index of the case-folded username: uniqueness is case-insensitive.
    username_bidx bytea NOT NULL,
    password_hash text NOT NULL,
    -- Blind index of the case-folded primary email, for username reminders.
    email_bidx    bytea,
    -- The profile: the proto3 JSON of the User without ids, times, username,
    -- password, token or flags, encrypted.
    profile_ct    bytea NOT NULL,
    active        boolean NOT NULL DEFAULT true,
    supervisor    boolean NOT NULL DEFAULT false,
    -- Bumped by every update; updates are compare-and-set on it.
    version       bigint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    CONSTRAINT users_app_username_key UNIQUE (app_id, username_bidx),
    CONSTRAINT users_app_id UNIQUE (app_id, id)
);
CREATE INDEX users_app_email_bidx ON users (app_id, email_bidx) WHERE email_bidx IS NOT NULL;
CREATE INDEX users_key ON users (app_id, key_id);

CREATE TABLE sessions (
    id           uuid PRIMARY KEY,
    app_id       uuid NOT NULL,
    user_id      uuid NOT NULL,
    -- SHA-256 of the bearer token; the token itself is never stored.
    token_hash   bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE groups (
    id         uuid PRIMARY KEY,
    app_id     uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    name       text NOT NULL,
    is_default boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT groups_app_id UNIQUE (app_id, id)
);
CREATE INDEX groups_app_default ON groups (app_id, is_default);

CREATE TABLE memberships (
    app_id     uuid NOT NULL,
    group_id   uuid NOT NULL,
    user_id    uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (group_id, user_id),
    FOREIGN KEY (app_id, group_id) REFERENCES groups (app_id, id) ON DELETE CASCADE,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
);
CREATE INDEX memberships_user ON memberships (user_id);

-- Mail waiting to be sent. It names the user, not their address (the sender
-- reads and decrypts that when it sends), so the outbox holds no PII in the
-- clear, and a deleted user's mail goes with them. A reset link's token is
-- sealed like a profile. Sent messages are deleted; those given up on keep
-- only their failure time.
CREATE TABLE outbox (
    id              uuid PRIMARY KEY,
    app_id          uuid NOT NULL,
    user_id         uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('username_reminder', 'password_reset')),
    payload_ct      bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    failed_at       timestamptz,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE failed_at IS NULL;

-- Password reset tokens: only their SHA-256; one live token per user.
CREATE TABLE password_resets (
    token_hash bytea PRIMARY KEY,
    app_id     uuid NOT NULL,
    user_id    uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
);
CREATE INDEX password_resets_user ON password_resets (user_id);

-- Service credentials for internal callers: long-lived bearer tokens, sent
-- with the application's API key, that act with a role's rights in that one
-- application until revoked. Only the token's SHA-256 is kept (it is 256-bit
-- random, like a session token). Revoked tokens stay, marked, for the record;
-- every call looks its token up here, so a revocation holds at once on every
-- replica. The name is the operator's label; it is kept out of logs and the
-- trail (which names tokens by id).
CREATE TABLE service_tokens (
    id           uuid PRIMARY KEY,
    app_id       uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    name         text NOT NULL,
    role         text NOT NULL CHECK (role IN ('supervisor')),
    token_hash   bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX service_tokens_app ON service_tokens (app_id, created_at);

-- Failed sign-ins and reminder requests, counted per blind-indexed username
-- and per keyed hash of the client address, so every replica sees them.
CREATE TABLE throttles (
    key           bytea PRIMARY KEY,
    failures      integer NOT NULL,
    last_failure  timestamptz NOT NULL,
    blocked_until timestamptz
);

-- The access trail: append-only, each record chained to its predecessor by
-- SHA-256 (see src/audit.rs for the canonical content). No values, only ids,
-- actions and field names; the client address is a ciphertext.
CREATE TABLE audit_events (
    seq         bigserial PRIMARY KEY,
    id          uuid NOT NULL UNIQUE,
    at          timestamptz NOT NULL,
    app_id      uuid,
    actor       text NOT NULL,
    actor_id    uuid,
    subject_id  uuid,
    -- What else the action was on (a group).
    object_id   uuid,
    action      text NOT NULL,
    fields      text[] NOT NULL,
    outcome     text NOT NULL,
    request_id  text,
    client_addr bytea,
    prev_hash   bytea NOT NULL,
    hash        bytea NOT NULL
);
CREATE INDEX audit_events_app_subject ON audit_events (app_id, subject_id, seq);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP;
END;
$$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
