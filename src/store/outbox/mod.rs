//! The outbox: mail waiting to be sent, and the requests it is made from: a
//! reminder or reset request is stored as asked, blinded, and resolved into
//! mail (or nothing) by the sender in the background; mail is claimed per
//! message and retried. The trait, and its PostgreSQL and SQLite
//! implementations beside it.

pub(in crate::store) mod postgres;
pub(in crate::store) mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::trail::record::AuditRecord;
use crate::store::{NewReset, Result};

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

/// Kinds of mail: what the outbox's `kind` holds, and the name of the
/// message's templates.
pub const PASSWORD_CHANGED: &str = "password_changed";
pub const EMAIL_CHANGED: &str = "email_changed";

/// A message to queue for a user with a change to them.
#[derive(Debug, Clone)]
pub struct QueuedMail {
    pub id: Uuid,
    /// [`PASSWORD_CHANGED`], [`EMAIL_CHANGED`].
    pub kind: &'static str,
    /// What the message needs beyond the user's row, sealed to `id` (a
    /// notice: the address it goes to, which may no longer be the user's).
    pub payload_ct: Vec<u8>,
}

/// What a message to a user is made from (sealed).
#[derive(Debug, Clone)]
pub struct MailRecipient {
    pub app_name: String,
    pub username_ct: Vec<u8>,
    pub profile_ct: Vec<u8>,
}

/// A username reminder or reset request as asked for: only the blind index
/// it looks users up by, resolved later by the mail sender.
#[derive(Debug, Clone)]
pub struct NewMailRequest {
    /// For a reset, also the id of the mail it becomes (its token is sealed
    /// to it).
    pub id: Uuid,
    pub app_id: Uuid,
    /// "username_reminder" (by the blind index of an email address) or
    /// "password_reset" (by that of a username).
    pub kind: String,
    pub lookup_bidx: Vec<u8>,
    pub reset: Option<NewReset>,
    pub request_id: Option<String>,
}

/// A request claimed for resolving.
#[derive(Debug, Clone)]
pub struct MailRequest {
    pub id: Uuid,
    pub app_id: Uuid,
    pub kind: String,
    pub lookup_bidx: Vec<u8>,
    pub token_hash: Option<Vec<u8>>,
    pub payload_ct: Option<Vec<u8>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub request_id: Option<String>,
    /// Attempts so far, this one included.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// At most `max` mails to one address per `window` (a fixed window from
/// the first mail counted). Windows longer than a day are not kept: the
/// sweep forgets counts a day old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientLimit {
    pub max: u32,
    pub window: std::time::Duration,
}

/// What resolving a request did, for the caller's counters (never logged
/// per request: whether it matched would tell who is registered).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Mails queued.
    pub queued: u32,
    /// Mails not queued: their recipient had had enough.
    pub limited: u32,
}

#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Stores a request and its trail record: one INSERT of the same shape
    /// whatever it will match.
    async fn queue_mail_request(&self, request: &NewMailRequest, audit: &AuditRecord) -> Result<()>;

    /// Claims up to `limit` due requests, oldest first, for `lease`.
    async fn claim_mail_requests(&self, limit: i64, lease: std::time::Duration) -> Result<Vec<MailRequest>>;

    /// Resolves a claimed request in one transaction, which deletes it (a
    /// request another sender resolved meanwhile is left alone): for each
    /// user it matches (active users only, for a reset) whose address is
    /// under `limit`, queues the mail, with a copy of `audit` naming the
    /// user; past the limit, only the copy, its outcome "throttled". A
    /// reset first voids the user's earlier links; one older than a link
    /// already issued (two requests resolved out of order), or expired
    /// before it was resolved, queues nothing.
    async fn resolve_mail_request(
        &self,
        request: &MailRequest,
        limit: RecipientLimit,
        audit: &AuditRecord,
    ) -> Result<Resolved>;

    /// Forgets a request that could not be resolved in time.
    async fn drop_mail_request(&self, id: Uuid) -> Result<()>;

    /// Claims up to `limit` due messages for `lease` (another sender skips
    /// them meanwhile).
    async fn claim_outbox(&self, limit: i64, lease: std::time::Duration) -> Result<Vec<OutboxMessage>>;

    async fn mail_recipient(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<MailRecipient>>;

    async fn outbox_sent(&self, id: Uuid) -> Result<()>;

    async fn outbox_retry(&self, id: Uuid, after: std::time::Duration) -> Result<()>;

    async fn outbox_give_up(&self, id: Uuid) -> Result<()>;
}

/// The key a user's mail is counted under: their address's blind index, or
/// (without an address) their id.
fn recipient_key(user_id: Uuid, email_bidx: Option<Vec<u8>>) -> Vec<u8> {
    email_bidx.unwrap_or_else(|| user_id.as_bytes().to_vec())
}

/// The trail record of a resolution for one user.
fn resolution_record(audit: &AuditRecord, user_id: Uuid, limited: bool) -> AuditRecord {
    let mut r = audit.clone();
    r.id = Uuid::now_v7();
    r.subject_id = Some(user_id);
    if limited {
        r.outcome = "throttled".into();
    }
    r
}
