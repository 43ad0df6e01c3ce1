-- Sign-in throttles are counted in their own transactions before and after
-- every password check; as a logged table each of those commits waited for a
-- WAL flush, a tenth of a sign-in's cost on a 2-core machine. Unlogged, the
-- counts are still shared by every replica and survive restarts, but a
-- PostgreSQL crash (not a clean stop) empties them: an attacker who can
-- crash the database gets a fresh allowance, nothing more.
ALTER TABLE throttles SET UNLOGGED;
