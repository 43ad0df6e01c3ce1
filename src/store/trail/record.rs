//! The trail's records and their hash chain: what the trail writer makes and
//! verifies and what each store keeps, defined here so that both import it
//! and neither imports the other.

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

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
