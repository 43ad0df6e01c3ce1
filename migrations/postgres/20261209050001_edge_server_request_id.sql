-- The server's own id of each request (issue 22): the trail keeps the
-- client's x-request-id only when it is a short printable token, and always
-- the id the server made. Records written before have none, and hash as
-- they did (the canonical form leaves an absent id out). Nullable, no
-- default: the partitioned table gains the column without a rewrite.
ALTER TABLE audit_events ADD COLUMN server_request_id uuid;
