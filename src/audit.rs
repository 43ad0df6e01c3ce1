//! The access trail: who did what to whose record, when, from where, and
//! which fields it touched (never their values). Records form a hash chain:
//! each carries SHA-256(previous hash || its canonical content), so any
//! change to a stored record, or a record removed, breaks the chain at that
//! point. PostgreSQL refuses UPDATE, DELETE and TRUNCATE on the table.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::store::Store;

/// The hash that the first record chains from.
pub const GENESIS: [u8; 32] = [0; 32];

/// One record, as written (the store adds the chain hashes).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: Uuid,
    /// Microseconds: what PostgreSQL keeps, so the content reads back as
    /// it was hashed.
    pub at: DateTime<Utc>,
    pub app_id: Option<Uuid>,
    /// "user", "supervisor", "service" (a service token), "anonymous" or "cli".
    pub actor: String,
    pub actor_id: Option<Uuid>,
    pub subject_id: Option<Uuid>,
    /// What else the action was on: a group, for group actions.
    pub object_id: Option<Uuid>,
    /// e.g. "user.read", "user.update", "session.sign_in".
    pub action: String,
    /// Names of the fields read or changed.
    pub fields: Vec<String>,
    /// "ok", "denied", "not_found", "failed", "throttled".
    pub outcome: String,
    pub request_id: Option<String>,
    /// The client address, encrypted under the application's data key.
    pub client_addr: Option<Vec<u8>>,
}

impl AuditRecord {
    pub fn new(action: &str, app_id: Option<Uuid>) -> Self {
        Self {
            id: Uuid::now_v7(),
            at: Utc::now().trunc_subsecs(6),
            app_id,
            actor: "anonymous".into(),
            actor_id: None,
            subject_id: None,
            object_id: None,
            action: action.into(),
            fields: Vec::new(),
            outcome: "ok".into(),
            request_id: None,
            client_addr: None,
        }
    }
}

#[derive(Serialize)]
struct Canonical<'a> {
    id: Uuid,
    at: String,
    app_id: Option<Uuid>,
    actor: &'a str,
    actor_id: Option<Uuid>,
    subject_id: Option<Uuid>,
    object_id: Option<Uuid>,
    action: &'a str,
    fields: &'a [String],
    outcome: &'a str,
    request_id: Option<&'a str>,
    client_addr: Option<String>,
}

/// SHA-256 of the previous hash and the record's canonical content.
pub fn chain_hash(prev: &[u8], r: &AuditRecord) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical(r));
    h.finalize().to_vec()
}

/// The content a record's hash covers: JSON with a fixed member order.
pub fn canonical(r: &AuditRecord) -> Vec<u8> {
    let canonical = Canonical {
        id: r.id,
        // The same text as `format("%Y-%m-%dT%H:%M:%S%.6fZ")`, without
        // parsing a pattern per record.
        at: r.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        app_id: r.app_id,
        actor: &r.actor,
        actor_id: r.actor_id,
        subject_id: r.subject_id,
        object_id: r.object_id,
        action: &r.action,
        fields: &r.fields,
        outcome: &r.outcome,
        request_id: r.request_id.as_deref(),
        client_addr: r.client_addr.as_ref().map(|c| STANDARD.encode(c)),
    };
    serde_json::to_vec(&canonical).unwrap_or_default()
}

/// A stored record with its place in the chain.
#[derive(Debug, Clone)]
pub struct StoredAudit {
    pub seq: i64,
    pub record: AuditRecord,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// Where the chain first breaks, if it does.
pub fn verify<'a>(
    records: impl IntoIterator<Item = &'a StoredAudit>,
    mut prev: Vec<u8>,
) -> Result<Vec<u8>, (i64, &'static str)> {
    for r in records {
        if r.prev_hash != prev {
            return Err((r.seq, "does not chain from the record before it"));
        }
        if chain_hash(&prev, &r.record) != r.hash {
            return Err((r.seq, "its content does not match its hash"));
        }
        prev = r.hash.clone();
    }
    Ok(prev)
}

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
