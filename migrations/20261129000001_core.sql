-- Applications (tenants), their users, sessions, groups, memberships and the
-- mail outbox. Every row below applications carries app_id, and the foreign
-- keys pair (app_id, id) so that no row can point into another application.

CREATE TABLE applications (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    -- SHA-256 of the API key: keys are 256-bit random, so a fast hash suffices.
    api_key_hash bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    app_id        uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    username      text NOT NULL,
    -- The case-folded username: uniqueness is case-insensitive.
    username_key  text NOT NULL,
    password_hash text NOT NULL,
    -- The case-folded primary email, for username reminders.
    email_key     text,
    -- The profile: the proto3 JSON of the User without ids, times, username,
    -- password, token or flags.
    profile       jsonb NOT NULL,
    active        boolean NOT NULL DEFAULT true,
    supervisor    boolean NOT NULL DEFAULT false,
    -- Bumped by every update; updates are compare-and-set on it.
    version       bigint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    CONSTRAINT users_app_username_key UNIQUE (app_id, username_key),
    CONSTRAINT users_app_id UNIQUE (app_id, id)
);
CREATE INDEX users_app_email_key ON users (app_id, email_key) WHERE email_key IS NOT NULL;

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

-- Mail waiting to be sent. It names the user, not their address, so the
-- outbox holds no PII and a deleted user's mail goes with them.
CREATE TABLE outbox (
    id              uuid PRIMARY KEY,
    app_id          uuid NOT NULL,
    user_id         uuid NOT NULL,
    kind            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
);
CREATE INDEX outbox_due ON outbox (next_attempt_at);
