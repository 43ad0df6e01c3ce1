-- Usernames compare after RFC 8265 UsernameCaseMapped (src/service/profile.rs,
-- username_key): width mapping, case mapping, NFC. On ASCII that is the
-- lowercasing the blind index was computed from before, so only rows with
-- non-ASCII names may need a new index; the key never reaches the database,
-- so rows written before this migration are unflagged and `usersvc serve`
-- recomputes them in the background (src/service/usernames.rs). Every write
-- of a new username, and every new row, sets the flag. A constant default:
-- PostgreSQL 11+ adds the column without rewriting the table.
ALTER TABLE users ADD COLUMN username_precis boolean NOT NULL DEFAULT false;
-- Partial: only the rows left to do, so it is empty once they are done.
CREATE INDEX users_username_unprecised ON users (id) WHERE NOT username_precis;
