//! Sessions: bearer-token sessions: start, look up (with idle expiry), list, end. The trait, and its PostgreSQL and SQLite
//! implementations beside it.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::trail::record::AuditRecord;
use crate::store::{Relief, Result};

#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: Uuid,
    pub token_hash: Vec<u8>,
    /// Absolute lifetime; idle expiry is checked on lookup.
    pub max_age: std::time::Duration,
}

/// A live session and who holds it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub supervisor: bool,
    /// When the session began: its password was last proved then.
    pub signed_in_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub enum SessionLookup {
    Live(SessionInfo),
    /// Known but past its idle timeout or lifetime (and now removed).
    Expired,
    Unknown,
}

/// A session as listed to its user.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Starts a session, and in the same transaction takes the sign-in's
    /// attempt off the throttles it was counted against.
    async fn create_session(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        session: NewSession,
        relief: Relief<'_>,
        audit: &AuditRecord,
    ) -> Result<()>;

    /// Finds the session of a token hash within the application, checking
    /// the idle timeout, and refreshes its last use when older than
    /// `touch_after`.
    async fn lookup_session(
        &self,
        app_id: Uuid,
        token_hash: &[u8],
        idle_timeout: std::time::Duration,
        touch_after: std::time::Duration,
    ) -> Result<SessionLookup>;

    /// Ends one session (`session_id`) or all of a user's (`None`); returns
    /// how many ended.
    async fn delete_sessions(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        session_id: Option<Uuid>,
        audit: Option<&AuditRecord>,
    ) -> Result<u64>;

    /// A page of a user's live sessions in id order (UUIDv7: the order they
    /// started in) after `after`; at most `limit`.
    async fn list_sessions(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        idle_timeout: std::time::Duration,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SessionRow>>;

    /// The user a session belongs to.
    async fn session_owner(&self, app_id: Uuid, session_id: Uuid) -> Result<Option<Uuid>>;
}
