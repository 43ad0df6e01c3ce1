//! The trail: access records appended in the writer's own transaction (no
//! lock shared between transactions), the Merkle tree they are sealed into
//! and its signed checkpoints. The trait, and its PostgreSQL and SQLite
//! implementations beside it.

pub mod merkle;
pub(in crate::store) mod postgres;
pub mod record;
mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::store::{Result, StoreError};
pub use record::{AuditRecord, Checkpoint, CheckpointSigner, EndorsedKey, StoredAudit, TreePos};

/// Filters of `usersvc audit list`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub app_id: Option<Uuid>,
    pub subject_id: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    pub after_seq: i64,
    pub limit: i64,
}

/// Where the tree order starts: before every record.
pub const TREE_START: TreePos = (0, 0);

#[async_trait]
pub trait TrailStore: Send + Sync {
    /// Appends records to the trail in one transaction.
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()>;

    /// Records in `seq` order (the order they were written in).
    async fn audit_records(&self, filter: &AuditFilter) -> Result<Vec<StoredAudit>>;

    /// Records in the tree's order, after `after`.
    async fn trail_in_tree_order(&self, after: TreePos, limit: i64) -> Result<Vec<StoredAudit>>;

    /// Adds up to `max` records committed since the last checkpoint to the
    /// tree and stores a signed checkpoint of it. None when nothing was
    /// waiting, or another process is sealing at this moment.
    async fn seal_trail(&self, signer: &dyn CheckpointSigner, max: i64) -> Result<Option<Checkpoint>>;

    /// Checkpoints by tree size, from the first larger than `after_size`.
    async fn checkpoints(&self, after_size: i64, limit: i64) -> Result<Vec<Checkpoint>>;

    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>>;

    /// Makes what the trail needs ahead of time (PostgreSQL: its monthly
    /// partitions); the sealer calls it hourly.
    async fn prepare_trail(&self) -> Result<()> {
        Ok(())
    }

    /// Keeps an earlier checkpoint key (again: no change).
    async fn endorse_checkpoint_key(&self, key: &EndorsedKey) -> Result<()>;

    async fn endorsed_checkpoint_keys(&self) -> Result<Vec<EndorsedKey>>;
}

/// The checkpoint after `last` once `records` (the next ones in tree order)
/// are added; None without records.
pub(in crate::store) fn next_checkpoint(
    last: Option<&Checkpoint>,
    records: &[StoredAudit],
    signer: &dyn CheckpointSigner,
) -> Result<Option<Checkpoint>> {
    let Some(newest) = records.last() else { return Ok(None) };
    let mut tree = match last {
        None => merkle::Frontier::default(),
        Some(c) => merkle::Frontier::from_bytes(c.tree_size as u64, &c.frontier)
            .ok_or_else(|| StoreError::Corrupt(format!("checkpoint {}: malformed frontier", c.tree_size)))?,
    };
    for r in records {
        tree.push(r.leaf());
    }
    let root = tree.root().to_vec();
    let tree_size = tree.size() as i64;
    let at = Utc::now().trunc_subsecs(6);
    let signature = signer.sign(Checkpoint::signed_text(tree_size, &root, at).as_bytes());
    Ok(Some(Checkpoint {
        tree_size,
        root,
        at,
        last: newest.pos,
        frontier: tree.to_bytes(),
        key_id: signer.key_id(),
        signature,
    }))
}
