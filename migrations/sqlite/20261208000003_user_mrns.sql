-- Search by medical record number (issue 21); see the PostgreSQL migration
-- of the same name. One row per distinct blind index of a user's MRNs,
-- written with the user row; gone with the user by cascade.
CREATE TABLE user_mrns (
    app_id   BLOB NOT NULL,
    user_id  BLOB NOT NULL,
    mrn_bidx BLOB NOT NULL,
    PRIMARY KEY (user_id, mrn_bidx),
    FOREIGN KEY (app_id, user_id) REFERENCES users (app_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX user_mrns_app_bidx ON user_mrns (app_id, mrn_bidx);

-- Rows written before this migration are indexed by `usersvc serve` in the
-- background on start (the key never reaches the database).
ALTER TABLE users ADD COLUMN mrns_indexed INTEGER NOT NULL DEFAULT 0 CHECK (mrns_indexed IN (0, 1));
CREATE INDEX users_mrns_unindexed ON users (id) WHERE NOT mrns_indexed;
