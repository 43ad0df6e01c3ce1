-- The PL/pgSQL throttle functions of the round_trips migration. Since the
-- sign-in throttles became common table expressions in the statements that
-- need them, no statement of usersvc calls them, and neither does the
-- version released before this one: a rolling upgrade from it needs them no
-- more. (audit_append stays: batches of trail records go through it, from
-- this version and the one before.)
DROP FUNCTION IF EXISTS throttle_attempt(bytea[], int4[], float8[], float8[]);
DROP FUNCTION IF EXISTS throttle_relief(bytea, bytea);
