//! The access trail: who did what to whose record, when, from where, and
//! which fields it touched (never their values). Records form a hash chain:
//! each carries SHA-256(previous hash || its canonical content), so any
//! change to a stored record, or a record removed, breaks the chain at that
//! point. PostgreSQL refuses UPDATE, DELETE and TRUNCATE on the table.
//! The records and the chain are `store::trail::record`; here is the writer.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::Store;
pub use crate::store::trail::record::{AuditRecord, GENESIS, StoredAudit, canonical, chain_hash, verify};

/// Records written by one statement at most.
const MAX_BATCH: usize = 4096;

/// Read records are written in batches by a background task; the handle
/// queues them. Dropping every handle and awaiting [`AuditWriter::finish`]
/// writes what is queued (a clean shutdown loses none).
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::UnboundedSender<AuditRecord>,
}

pub struct AuditWriter {
    task: tokio::task::JoinHandle<()>,
}

impl AuditSink {
    pub fn start(store: std::sync::Arc<dyn Store>) -> (Self, AuditWriter) {
        let (tx, mut rx) = mpsc::unbounded_channel::<AuditRecord>();
        let task = tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                batch.push(first);
                // Let what arrives in the next moment join the same batch,
                // then take it all at once (no wake-up per record).
                tokio::time::sleep(Duration::from_millis(10)).await;
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                // The database may be away for a while: keep the batch and
                // try again rather than drop a record.
                let mut wait = Duration::from_millis(50);
                loop {
                    match store.append_audit(&batch).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, records = batch.len(), "audit batch not written yet; retrying");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                batch.clear();
            }
        });
        (Self { tx }, AuditWriter { task })
    }

    pub fn record(&self, r: AuditRecord) {
        if self.tx.send(r).is_err() {
            tracing::error!("audit writer is gone; a read record could not be queued");
        }
    }
}

impl AuditWriter {
    /// Waits until every queued record is written (after the sinks are dropped).
    pub async fn finish(self) {
        let _ = self.task.await;
    }
}

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
            stored.push(StoredAudit { seq: i as i64 + 1, record, prev_hash: prev.clone(), hash: hash.clone() });
            prev = hash;
        }
        assert!(verify(&stored, GENESIS.to_vec()).is_ok());
        stored[1].record.fields.push("ssn".into());
        assert_eq!(verify(&stored, GENESIS.to_vec()).unwrap_err().0, 2);
        stored.remove(1);
        assert_eq!(verify(&stored, GENESIS.to_vec()).unwrap_err().0, 3);
    }
}
