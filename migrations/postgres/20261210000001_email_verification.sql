-- Email verification (issue 24).
--
-- The application's setting (`usersvc app update --verify-email`): NULL until
-- an operator chooses, which behaves as 'optional' without mailing anything
-- by itself (so applications that never chose see no change); 'optional'
-- mails a link on sign-up and on a change of the primary address;
-- 'required' also refuses sign-in to unverified users and password-reset
-- mail to unverified addresses; 'off' mails nothing and shows nothing.
ALTER TABLE applications ADD COLUMN verify_email text
    CHECK (verify_email IN ('required', 'optional', 'off'));

-- Mailed verification links: only the SHA-256 of the token, bound to the
-- blind index of the address the link was mailed to (a link for an address
-- the user no longer has verifies nothing).
CREATE TABLE email_verifications (
    token_hash bytea PRIMARY KEY,
    app_id     uuid NOT NULL,
    user_id    uuid NOT NULL,
    email_bidx bytea NOT NULL,
    expires_at timestamptz NOT NULL,
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
);
CREATE INDEX email_verifications_user ON email_verifications (user_id);
CREATE INDEX email_verifications_expiry ON email_verifications (expires_at);

-- The blind index of the address the user proved: their primary is
-- verified while email_bidx is this one (a new primary is not). On the row,
-- so that a read (and the cache of user rows) has it without another query.
ALTER TABLE users ADD COLUMN email_verified_bidx bytea;

-- The verification mail goes through the outbox.
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_check
    CHECK (kind IN ('username_reminder', 'password_reset', 'password_changed', 'email_changed', 'verify_email'));
