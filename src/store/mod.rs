//! Persistence behind one trait, so that a second backend can follow.
//! Every method that touches users, groups or sessions takes the application
//! id and scopes its query to it.

mod postgres;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use postgres::PgStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint failed; carries the constraint's name.
    #[error("unique constraint {0} violated")]
    Conflict(String),
    /// The database could not be reached in time.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored profile is unreadable: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.constraint().unwrap_or_default().to_owned())
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable(e)
            }
            _ => StoreError::Database(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct App {
    pub id: Uuid,
    pub name: String,
}

/// A user row as the services see it.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: Uuid,
    pub app_id: Uuid,
    /// The proto3 JSON of the profile (see migrations).
    pub profile: serde_json::Value,
    pub active: bool,
    pub supervisor: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What sign-in needs of a user.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user_id: Uuid,
    pub password_hash: String,
    pub active: bool,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: Uuid,
    pub app_id: Uuid,
    pub username: String,
    pub username_key: String,
    pub password_hash: String,
    pub email_key: Option<String>,
    pub profile: serde_json::Value,
    pub active: bool,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: Uuid,
    pub token_hash: Vec<u8>,
    /// Absolute lifetime; idle expiry is checked on lookup.
    pub max_age: std::time::Duration,
}

/// A change to a user, applied only if the row is still at `expected_version`.
#[derive(Debug, Clone)]
pub struct UserChange {
    pub expected_version: i64,
    pub username: Option<(String, String)>,
    pub password_hash: Option<String>,
    pub email_key: Option<String>,
    pub profile: serde_json::Value,
    pub active: bool,
    /// When the password changes, every session of the user but this one ends.
    pub keep_session: Option<Uuid>,
}

/// A live session and who holds it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub supervisor: bool,
}

#[derive(Debug, Clone)]
pub enum SessionLookup {
    Live(SessionInfo),
    /// Known but past its idle timeout or lifetime (and now removed).
    Expired,
    Unknown,
}

#[derive(Debug, Clone)]
pub struct GroupRecord {
    pub id: Uuid,
    pub name: String,
    pub is_default: bool,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn migrate(&self) -> Result<()>;

    async fn create_app(&self, id: Uuid, name: &str, api_key_hash: &[u8]) -> Result<App>;
    async fn app_by_key_hash(&self, api_key_hash: &[u8]) -> Result<Option<App>>;
    /// Makes the user with this (case-folded) username a supervisor, or not.
    /// False when no such user exists in the application.
    async fn set_supervisor(&self, app_id: Uuid, username_key: &str, on: bool) -> Result<bool>;

    /// Inserts the user, their default-group memberships and, when given, a
    /// first session, in one transaction.
    async fn create_user(&self, user: NewUser, session: Option<NewSession>) -> Result<UserRecord>;
    async fn get_user(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<UserRecord>>;
    async fn credentials(&self, app_id: Uuid, username_key: &str) -> Result<Option<Credentials>>;
    /// Applies the change if the user is still at the expected version:
    /// `Ok(None)` when the row is gone or moved on (the caller re-reads).
    async fn update_user(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        change: UserChange,
    ) -> Result<Option<UserRecord>>;
    /// Deletes the user with their sessions, memberships and queued mail.
    async fn delete_user(&self, app_id: Uuid, user_id: Uuid) -> Result<bool>;
    /// Queues a username reminder for each user with this primary address.
    async fn queue_username_reminders(&self, app_id: Uuid, email_key: &str) -> Result<u64>;

    async fn create_session(&self, app_id: Uuid, user_id: Uuid, session: NewSession) -> Result<()>;
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
    async fn delete_session(&self, app_id: Uuid, session_id: Uuid) -> Result<()>;

    async fn create_group(
        &self,
        app_id: Uuid,
        id: Uuid,
        name: &str,
        is_default: bool,
    ) -> Result<GroupRecord>;
    async fn get_group(&self, app_id: Uuid, group_id: Uuid) -> Result<Option<GroupRecord>>;
    async fn update_group(&self, app_id: Uuid, group: &GroupRecord) -> Result<bool>;
    async fn delete_group(&self, app_id: Uuid, group_id: Uuid) -> Result<bool>;
    /// False when the group or the user is not in the application.
    async fn add_member(&self, app_id: Uuid, group_id: Uuid, user_id: Uuid) -> Result<bool>;
    async fn remove_member(&self, app_id: Uuid, group_id: Uuid, user_id: Uuid) -> Result<bool>;
    async fn list_members(&self, app_id: Uuid, group_id: Uuid) -> Result<Vec<Uuid>>;
    async fn list_groups(&self, app_id: Uuid, default_only: bool) -> Result<Vec<GroupRecord>>;
    async fn list_user_groups(&self, app_id: Uuid, user_id: Uuid) -> Result<Vec<GroupRecord>>;
}
