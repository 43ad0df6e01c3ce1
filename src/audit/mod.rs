//! The access trail: who did what to whose record, when, from where, and
//! which fields it touched (never their values). Records are appended in
//! the transaction of the change they describe, with no lock shared between
//! transactions; a single sealer then adds them to a Merkle tree (RFC 9162)
//! in an order that transactions committing out of sequence cannot upset,
//! and signs checkpoints of it (tree size, root, time) with a key derived
//! from the master key, which the database never holds. An altered,
//! removed or inserted record changes the tree's root; a database rolled
//! back or cut short no longer extends a checkpoint kept elsewhere.
//! PostgreSQL refuses UPDATE, DELETE and TRUNCATE on the trail.
//! The records, the tree and checkpoints are `store::trail`; here are the
//! writer of read records, the sealer and the checks.

pub mod check;
pub mod checkpoint;
pub mod sealer;
mod sink;

pub use crate::store::trail::merkle;
pub use crate::store::trail::record::{AuditRecord, Checkpoint, GENESIS, StoredAudit, canonical, chain_hash, verify};
pub use sink::{AuditSink, AuditWriter, ReadTrail, TrailError};

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn the_chain_breaks_where_a_record_changes() {
        let mut stored = Vec::new();
        let mut prev = GENESIS.to_vec();
        for (i, action) in ["user.create", "user.read", "user.update"].iter().enumerate() {
            let record = AuditRecord::new(action, Some(Uuid::now_v7()));
            let hash = chain_hash(&prev, &record);
            let seq = i as i64 + 1;
            stored.push(StoredAudit { seq, pos: (seq, seq), record, chain: Some((prev.clone(), hash.clone())) });
            prev = hash;
        }
        assert!(verify(&stored, GENESIS.to_vec()).is_ok());
        stored[1].record.fields.push("ssn".into());
        assert_eq!(verify(&stored, GENESIS.to_vec()).unwrap_err().0, 2);
        stored.remove(1);
        assert_eq!(verify(&stored, GENESIS.to_vec()).unwrap_err().0, 3);
    }
}
