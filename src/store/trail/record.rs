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
    /// The id the reply named the request by: the client's own
    /// `x-request-id` when it sent a good one, else the server's.
    pub request_id: Option<String>,
    /// The client address, encrypted under the application's data key.
    pub client_addr: Option<Vec<u8>>,
    /// The server's own id of the request (records from before it was kept
    /// have none).
    pub server_request_id: Option<Uuid>,
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
            server_request_id: None,
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
    /// Left out when absent, so that records written before it existed
    /// hash as they did.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_request_id: Option<Uuid>,
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
        server_request_id: r.server_request_id,
    };
    serde_json::to_vec(&canonical).unwrap_or_default()
}

/// A record's place in the Merkle tree's order: (transaction id, seq) on
/// PostgreSQL, (seq, seq) on SQLite (one writer at a time).
pub type TreePos = (i64, i64);

/// A stored record with its place in the trail.
#[derive(Debug, Clone)]
pub struct StoredAudit {
    pub seq: i64,
    pub pos: TreePos,
    pub record: AuditRecord,
    /// The hash chain of records written before checkpoints (on SQLite,
    /// of every record): the previous record's hash and this one's.
    pub chain: Option<(Vec<u8>, Vec<u8>)>,
}

impl StoredAudit {
    /// The record's leaf in the Merkle tree.
    pub fn leaf(&self) -> crate::store::trail::merkle::Hash {
        crate::store::trail::merkle::leaf_hash(&canonical(&self.record))
    }
}

/// A signed statement of the trail: its first `tree_size` records (in tree
/// order) have Merkle root `root`.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub tree_size: i64,
    pub root: Vec<u8>,
    pub at: DateTime<Utc>,
    /// The last record it covers.
    pub last: TreePos,
    /// The tree's right edge, so the next checkpoint grows it without
    /// reading it again.
    pub frontier: Vec<u8>,
    pub key_id: String,
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// The bytes signed: what a witness needs and nothing of the database.
    pub fn signed_text(tree_size: i64, root: &[u8], at: DateTime<Utc>) -> String {
        format!(
            "usersvc-trail/v1\n{tree_size}\n{}\n{}\n",
            STANDARD.encode(root),
            at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )
    }
}

/// An earlier checkpoint key's public half, signed by its successor.
#[derive(Debug, Clone, PartialEq)]
pub struct EndorsedKey {
    pub key_id: String,
    pub public_key: Vec<u8>,
    pub endorsed_by: String,
    pub endorsement: Vec<u8>,
}

impl EndorsedKey {
    /// The bytes the successor signs.
    pub fn signed_text(key_id: &str, public_key: &[u8]) -> String {
        format!("usersvc-trail-key/v1\n{key_id}\n{}\n", STANDARD.encode(public_key))
    }
}

/// Signs checkpoints (the key stays outside the store).
pub trait CheckpointSigner: Send + Sync {
    fn key_id(&self) -> String;
    fn sign(&self, message: &[u8]) -> Vec<u8>;
}

/// Where the chain first breaks, if it does (records without chain hashes
/// are passed over).
pub fn verify<'a>(
    records: impl IntoIterator<Item = &'a StoredAudit>,
    mut prev: Vec<u8>,
) -> Result<Vec<u8>, (i64, &'static str)> {
    for r in records {
        let Some((prev_hash, hash)) = &r.chain else { continue };
        if *prev_hash != prev {
            return Err((r.seq, "does not chain from the record before it"));
        }
        if chain_hash(&prev, &r.record) != *hash {
            return Err((r.seq, "its content does not match its hash"));
        }
        prev = hash.clone();
    }
    Ok(prev)
}
