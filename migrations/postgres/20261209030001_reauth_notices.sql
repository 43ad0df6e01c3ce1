-- Notices of a changed password or primary email (issue 22): mailed
-- through the outbox, to the address the user had before the change (sealed
-- in payload_ct, as it may no longer be in the profile).
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_check
    CHECK (kind IN ('username_reminder', 'password_reset', 'password_changed', 'email_changed'));
