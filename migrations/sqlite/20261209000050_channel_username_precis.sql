-- Usernames compare after RFC 8265 UsernameCaseMapped; see the PostgreSQL
-- migration of the same name. Rows written before it are re-indexed by
-- `usersvc serve` in the background on start.
ALTER TABLE users ADD COLUMN username_precis INTEGER NOT NULL DEFAULT 0 CHECK (username_precis IN (0, 1));
CREATE INDEX users_username_unprecised ON users (id) WHERE NOT username_precis;
