-- Username reminders and reset requests as asked for, before anyone looks
-- at who they match. The reply to the anonymous caller only writes this row
-- (the same INSERT whether or not the address or name is anyone's), and the
-- mail sender resolves it in the background: the user's mail goes to the
-- outbox, or nothing does. Blinded: the lookup is the blind index of the
-- email or username, never the value; a reset carries the digest of its
-- token and the token sealed to this row's id (the id its mail will have).
CREATE TABLE mail_requests (
    id              uuid PRIMARY KEY,
    app_id          uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('username_reminder', 'password_reset')),
    lookup_bidx     bytea NOT NULL,
    token_hash      bytea,
    payload_ct      bytea,
    -- A reset link's lifetime counts from the request.
    expires_at      timestamptz,
    -- The caller's request id, for the trail records of the resolution.
    request_id      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mail_requests_due ON mail_requests (next_attempt_at);

-- Mails per recipient (the blind index of their address) in the current
-- window (--mail-per-recipient), counted when a request is resolved, so
-- that every replica's sender sees the others' and an upsert of the row
-- serialises two resolutions for one recipient.
CREATE TABLE mail_quotas (
    app_id       uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    recipient    bytea NOT NULL,
    window_start timestamptz NOT NULL,
    sent         integer NOT NULL,
    PRIMARY KEY (app_id, recipient)
);
CREATE INDEX mail_quotas_window ON mail_quotas (window_start);
