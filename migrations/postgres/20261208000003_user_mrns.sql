-- Search by medical record number (issue 21): a user may have several MRNs,
-- so their blind indexes (HMAC under the application's index key of the
-- case-folded MRN value; see src/service/mrns.rs) live in a side table, one
-- row per distinct value. Written with the user row, in the same
-- transaction, by create, update and import; gone with the user by cascade.
CREATE TABLE user_mrns (
    app_id   uuid NOT NULL,
    user_id  uuid NOT NULL,
    mrn_bidx bytea NOT NULL,
    PRIMARY KEY (user_id, mrn_bidx),
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
);
-- The listing's filter: the users of an application with this MRN.
CREATE INDEX user_mrns_app_bidx ON user_mrns (app_id, mrn_bidx);

-- A migration cannot compute blind indexes (the key never reaches the
-- database): rows written before this one are unflagged, and `usersvc serve`
-- indexes them in the background on start (src/service/mrns.rs). Every
-- write that sets a user's MRNs sets the flag too. A constant default:
-- PostgreSQL 11+ adds the column without rewriting the table.
ALTER TABLE users ADD COLUMN mrns_indexed boolean NOT NULL DEFAULT false;
-- Partial: only the rows left to index, so it is empty once they are done.
CREATE INDEX users_mrns_unindexed ON users (id) WHERE NOT mrns_indexed;
