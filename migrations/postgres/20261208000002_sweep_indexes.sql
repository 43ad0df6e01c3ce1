-- The sweep (Store::sweep) deletes what ran out by time, every few
-- minutes, from every replica. Without these it read the whole of each
-- table to find a handful of rows; with them each batch is a range scan of
-- the oldest entries.
--
-- throttles is updated at every sign-in attempt (last_failure = now()); with
-- its column indexed those updates are no longer HOT, one index entry more
-- per attempt: small next to the password hash each attempt costs, and it
-- keeps the sweep cheap under a flood of failures, when the table is large.
CREATE INDEX sessions_expires_at ON sessions (expires_at);
CREATE INDEX password_resets_expires_at ON password_resets (expires_at);
CREATE INDEX throttles_last_failure ON throttles (last_failure);
