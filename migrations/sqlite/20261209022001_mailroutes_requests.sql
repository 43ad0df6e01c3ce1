-- Username reminders and reset requests as asked for, resolved by the mail
-- sender in the background (see the PostgreSQL migration of the same name).
CREATE TABLE mail_requests (
    id              BLOB PRIMARY KEY NOT NULL,
    app_id          BLOB NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    kind            TEXT NOT NULL CHECK (kind IN ('username_reminder', 'password_reset')),
    lookup_bidx     BLOB NOT NULL,
    token_hash      BLOB,
    payload_ct      BLOB,
    expires_at      INTEGER,
    request_id      TEXT,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL
) STRICT;
CREATE INDEX mail_requests_due ON mail_requests (next_attempt_at);

CREATE TABLE mail_quotas (
    app_id       BLOB NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    recipient    BLOB NOT NULL,
    window_start INTEGER NOT NULL,
    sent         INTEGER NOT NULL,
    PRIMARY KEY (app_id, recipient)
) STRICT;
CREATE INDEX mail_quotas_window ON mail_quotas (window_start);
