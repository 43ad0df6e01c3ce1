-- Indexes for the keyset pages of a user's groups, a user's sessions and an
-- application's default groups (issue 21); see the PostgreSQL migration of
-- the same name. A group's members are walked through the memberships'
-- primary key, (group_id, user_id); an application's groups through
-- groups_app_id, (app_id, id).
CREATE INDEX IF NOT EXISTS memberships_user_group ON memberships (user_id, group_id);
DROP INDEX IF EXISTS memberships_user;

CREATE INDEX IF NOT EXISTS sessions_user_id ON sessions (user_id, id);
DROP INDEX IF EXISTS sessions_user;

CREATE INDEX IF NOT EXISTS groups_app_default_id ON groups (app_id, id) WHERE is_default;
DROP INDEX IF EXISTS groups_app_default;
