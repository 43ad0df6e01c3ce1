-- The schema of migrations/postgres/20261129000001_core.sql, on SQLite: the
-- same tables, columns, constraints (by the same names where SQLite keeps
-- them), indexes and cascades. See that file for what each table holds.
--
-- Types: uuid and bytea are BLOBs (a uuid as its 16 bytes); booleans are
-- INTEGER 0/1; timestamptz is INTEGER microseconds since the Unix epoch (UTC),
-- which is what PostgreSQL keeps and compares numerically; text[] is TEXT
-- holding a JSON array of strings. Tables are STRICT, so a value of another
-- type is refused as PostgreSQL would refuse it.
--
-- The store binds every time it writes; the defaults below are only for rows
-- written by hand (the clock of SQLite, to about a millisecond).
--
-- Where a table has several unique constraints they are declared in the
-- reverse of PostgreSQL's order: SQLite checks the last declared first, and
-- a row that breaks more than one is then reported by the same constraint as
-- on PostgreSQL (its primary key).

CREATE TABLE applications (
    id           BLOB NOT NULL,
    name         TEXT NOT NULL,
    api_key_hash BLOB NOT NULL,
    created_at   INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    CONSTRAINT applications_api_key_hash_key UNIQUE (api_key_hash),
    CONSTRAINT applications_pkey PRIMARY KEY (id)
) STRICT;

CREATE TABLE app_keys (
    id            BLOB PRIMARY KEY NOT NULL,
    app_id        BLOB NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    purpose       TEXT NOT NULL CHECK (purpose IN ('data', 'index')),
    wrapped       BLOB NOT NULL,
    master_key_id TEXT NOT NULL,
    current       INTEGER NOT NULL CHECK (current IN (0, 1)),
    created_at    INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER))
) STRICT;
CREATE UNIQUE INDEX app_keys_current ON app_keys (app_id, purpose) WHERE current;

CREATE TABLE users (
    id            BLOB NOT NULL,
    app_id        BLOB NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    key_id        BLOB NOT NULL REFERENCES app_keys (id),
    username_ct   BLOB NOT NULL,
    username_bidx BLOB NOT NULL,
    password_hash TEXT NOT NULL,
    email_bidx    BLOB,
    profile_ct    BLOB NOT NULL,
    active        INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    supervisor    INTEGER NOT NULL DEFAULT 0 CHECK (supervisor IN (0, 1)),
    version       INTEGER NOT NULL DEFAULT 1,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    CONSTRAINT users_app_id UNIQUE (app_id, id),
    -- SQLite reports a violation by its columns, not this name; the store maps
    -- "users.app_id, users.username_bidx" back to it (src/store/mod.rs).
    CONSTRAINT users_app_username_key UNIQUE (app_id, username_bidx),
    CONSTRAINT users_pkey PRIMARY KEY (id)
) STRICT;
CREATE INDEX users_app_email_bidx ON users (app_id, email_bidx) WHERE email_bidx IS NOT NULL;
CREATE INDEX users_key ON users (app_id, key_id);

CREATE TABLE sessions (
    id           BLOB NOT NULL,
    app_id       BLOB NOT NULL,
    user_id      BLOB NOT NULL,
    token_hash   BLOB NOT NULL,
    created_at   INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    last_seen_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    expires_at   INTEGER NOT NULL,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE,
    CONSTRAINT sessions_token_hash_key UNIQUE (token_hash),
    CONSTRAINT sessions_pkey PRIMARY KEY (id)
) STRICT;
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE groups (
    id         BLOB NOT NULL,
    app_id     BLOB NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    is_default INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    created_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    CONSTRAINT groups_app_id UNIQUE (app_id, id),
    CONSTRAINT groups_pkey PRIMARY KEY (id)
) STRICT;
CREATE INDEX groups_app_default ON groups (app_id, is_default);

CREATE TABLE memberships (
    app_id     BLOB NOT NULL,
    group_id   BLOB NOT NULL,
    user_id    BLOB NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    PRIMARY KEY (group_id, user_id),
    FOREIGN KEY (app_id, group_id) REFERENCES groups (app_id, id) ON DELETE CASCADE,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX memberships_user ON memberships (user_id);

CREATE TABLE outbox (
    id              BLOB PRIMARY KEY NOT NULL,
    app_id          BLOB NOT NULL,
    user_id         BLOB NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('username_reminder', 'password_reset')),
    payload_ct      BLOB,
    created_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    failed_at       INTEGER,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE failed_at IS NULL;

CREATE TABLE password_resets (
    token_hash BLOB PRIMARY KEY NOT NULL,
    app_id     BLOB NOT NULL,
    user_id    BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX password_resets_user ON password_resets (user_id);

CREATE TABLE service_tokens (
    id           BLOB NOT NULL,
    app_id       BLOB NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('supervisor')),
    token_hash   BLOB NOT NULL,
    created_at   INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    last_used_at INTEGER,
    revoked_at   INTEGER,
    CONSTRAINT service_tokens_token_hash_key UNIQUE (token_hash),
    CONSTRAINT service_tokens_pkey PRIMARY KEY (id)
) STRICT;
CREATE INDEX service_tokens_app ON service_tokens (app_id, created_at);

CREATE TABLE throttles (
    key           BLOB PRIMARY KEY NOT NULL,
    failures      INTEGER NOT NULL,
    last_failure  INTEGER NOT NULL,
    blocked_until INTEGER
) STRICT;

-- The access trail: append-only, each record chained to its predecessor by
-- SHA-256 (see src/audit.rs). AUTOINCREMENT: a seq is never used twice.
CREATE TABLE audit_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          BLOB NOT NULL UNIQUE,
    at          INTEGER NOT NULL,
    app_id      BLOB,
    actor       TEXT NOT NULL,
    actor_id    BLOB,
    subject_id  BLOB,
    object_id   BLOB,
    action      TEXT NOT NULL,
    fields      TEXT NOT NULL CHECK (json_valid(fields) AND json_type(fields) = 'array'),
    outcome     TEXT NOT NULL,
    request_id  TEXT,
    client_addr BLOB,
    prev_hash   BLOB NOT NULL,
    hash        BLOB NOT NULL
) STRICT;
CREATE INDEX audit_events_app_subject ON audit_events (app_id, subject_id, seq);

-- SQLite has no TRUNCATE; a DELETE without WHERE fires these too.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
