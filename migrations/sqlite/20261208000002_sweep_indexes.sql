-- The indexes of migrations/postgres/20261208000002_sweep_indexes.sql: the
-- sweep's deletes by time, each a range scan of the oldest entries.
CREATE INDEX sessions_expires_at ON sessions (expires_at);
CREATE INDEX password_resets_expires_at ON password_resets (expires_at);
CREATE INDEX throttles_last_failure ON throttles (last_failure);
