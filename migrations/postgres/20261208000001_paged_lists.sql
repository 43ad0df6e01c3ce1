-- Indexes for the keyset pages of a user's groups, a user's sessions and an
-- application's default groups (issue 21). A group's members need none: the
-- memberships' primary key, (group_id, user_id), already walks a group in
-- user id order, and groups_app_id, (app_id, id), an application's groups.
--
-- Each new index leads with the column of the one it replaces, so every
-- lookup (and ON DELETE CASCADE) that used the old one can use it; the old
-- ones would only cost writes.
--
-- Plain CREATE INDEX, in the migration's transaction: a large memberships or
-- sessions table is locked against writes while its index is built. Where
-- that is too long, build the indexes CONCURRENTLY by hand under these names
-- before upgrading; IF NOT EXISTS then leaves them be.
CREATE INDEX IF NOT EXISTS memberships_user_group ON memberships (user_id, group_id);
DROP INDEX IF EXISTS memberships_user;

CREATE INDEX IF NOT EXISTS sessions_user_id ON sessions (user_id, id);
DROP INDEX IF EXISTS sessions_user;

-- Partial: the default-only listing and a new user's default memberships
-- read only these rows.
CREATE INDEX IF NOT EXISTS groups_app_default_id ON groups (app_id, id) WHERE is_default;
DROP INDEX IF EXISTS groups_app_default;
