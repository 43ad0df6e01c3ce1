//! The background task that seals the trail: about every
//! [`SEAL_EVERY`] it adds what committed since the last checkpoint to the
//! tree and signs a new checkpoint. Every replica runs one; the store lets
//! one seal at a time (on PostgreSQL a transaction-scoped advisory lock:
//! a replica that dies mid-way frees it, and the next takes over).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::audit::checkpoint::{CheckpointKey, TrustedKeys};
use crate::store::Store;
use crate::store::trail::record::CheckpointSigner;

pub const SEAL_EVERY: Duration = Duration::from_millis(500);
/// Records taken into one checkpoint at most (a backlog goes in steps).
pub const MAX_PER_CHECKPOINT: i64 = 50_000;

pub fn start(
    store: Arc<dyn Store>,
    key: CheckpointKey,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match seal_once(&*store, &key).await {
                // A full step: more is waiting.
                Ok(n) if n >= MAX_PER_CHECKPOINT => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "the trail was not sealed this time; trying again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(SEAL_EVERY) => {}
                _ = stop.changed() => {
                    // A last checkpoint of what this replica wrote.
                    let _ = seal_once(&*store, &key).await;
                    return;
                }
            }
        }
    })
}

/// Seals what is waiting; the number of records it covered. Refuses to
/// add to a tree whose last checkpoint another key signed, unless this key
/// vouches for it (a rotation): a process started with the wrong master
/// key must not sign the log.
pub async fn seal_once(store: &dyn Store, key: &CheckpointKey) -> anyhow::Result<i64> {
    let latest = store.latest_checkpoint().await?;
    if let Some(c) = &latest
        && c.key_id != key.key_id()
        && !TrustedKeys::load(store, key).await?.knows(&c.key_id)
    {
        anyhow::bail!(
            "the trail's last checkpoint is signed by key {}, which this master key's checkpoint key {} does not \
             vouch for: started with another deployment's master key?",
            c.key_id,
            key.key_id()
        );
    }
    let before = latest.map(|c| c.tree_size).unwrap_or(0);
    match store.seal_trail(key, MAX_PER_CHECKPOINT).await? {
        Some(c) => {
            let covered = c.tree_size - before;
            metrics::counter!("usersvc_trail_sealed_records_total").increment(covered as u64);
            metrics::gauge!("usersvc_trail_tree_size").set(c.tree_size as f64);
            Ok(covered)
        }
        None => Ok(0),
    }
}

/// Seals until the records waiting now are covered: a writing transaction
/// still running on the server holds them back, for at most `wait`.
pub async fn seal_waiting(store: &dyn Store, key: &CheckpointKey, wait: Duration) -> anyhow::Result<()> {
    let after = store.latest_checkpoint().await?.map(|c| c.last).unwrap_or(crate::store::TREE_START);
    let Some(first) = store.trail_in_tree_order(after, 1).await?.pop() else { return Ok(()) };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if seal_once(store, key).await? >= MAX_PER_CHECKPOINT {
            continue;
        }
        if store.latest_checkpoint().await?.is_some_and(|c| c.last >= first.pos) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "records wait behind a transaction still running on the database server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
