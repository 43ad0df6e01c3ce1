//! The outbox: mail waiting to be sent: queued in the transaction that asks for it, claimed per message, retried. The trait, and its PostgreSQL and SQLite
//! implementations beside it.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::Result;
use crate::store::trail::record::AuditRecord;

/// A message of the outbox, claimed for sending.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub id: Uuid,
    pub app_id: Uuid,
    pub user_id: Uuid,
    pub kind: String,
    pub payload_ct: Option<Vec<u8>>,
    /// Attempts so far, this one included.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// What a message to a user is made from (sealed).
#[derive(Debug, Clone)]
pub struct MailRecipient {
    pub app_name: String,
    pub username_ct: Vec<u8>,
    pub profile_ct: Vec<u8>,
}

#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Queues a username reminder for each user with this primary address,
    /// with a copy of `audit` for each (subject: the user), or `audit` itself
    /// when none has it.
    async fn queue_username_reminders(&self, app_id: Uuid, email_bidx: &[u8], audit: &AuditRecord) -> Result<u64>;

    /// Claims up to `limit` due messages for `lease` (another sender skips
    /// them meanwhile).
    async fn claim_outbox(&self, limit: i64, lease: std::time::Duration) -> Result<Vec<OutboxMessage>>;

    async fn mail_recipient(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<MailRecipient>>;

    async fn outbox_sent(&self, id: Uuid) -> Result<()>;

    async fn outbox_retry(&self, id: Uuid, after: std::time::Duration) -> Result<()>;

    async fn outbox_give_up(&self, id: Uuid) -> Result<()>;
}

/// The trail records of a username reminder: one per user reminded; with
/// none, the request's own, so that every request is recorded and the work
/// is alike either way. (One rule, for both backends.)
fn reminder_records(ids: &[Uuid], audit: &AuditRecord) -> Vec<AuditRecord> {
    if ids.is_empty() {
        return vec![audit.clone()];
    }
    ids.iter()
        .map(|id| {
            let mut r = audit.clone();
            r.id = Uuid::now_v7();
            r.subject_id = Some(*id);
            r
        })
        .collect()
}
