//! Persistence behind one trait, so that a second backend can follow.
//! Every method that touches users, groups, sessions or service tokens takes
//! the application id and scopes its query to it.

pub mod auth_cache;
pub mod backend;
mod pg_audit;
mod pg_notify;
mod pg_throttle;
mod postgres;
mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::audit::{AuditRecord, StoredAudit};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

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
                if let Some(name) = db.constraint() {
                    return StoreError::Conflict(name.to_owned());
                }
                // SQLite names the columns, not the constraint ("UNIQUE
                // constraint failed: users.app_id, users.username_bidx"): give
                // the name PostgreSQL reports for the same constraint.
                const SQLITE_NAMES: &[(&str, &str)] = &[
                    ("users.app_id, users.username_bidx", "users_app_username_key"),
                    ("users.app_id, users.id", "users_app_id"),
                    ("users.id", "users_pkey"),
                    ("applications.id", "applications_pkey"),
                    ("applications.api_key_hash", "applications_api_key_hash_key"),
                    ("app_keys.id", "app_keys_pkey"),
                    ("app_keys.app_id, app_keys.purpose", "app_keys_current"),
                    ("sessions.id", "sessions_pkey"),
                    ("sessions.token_hash", "sessions_token_hash_key"),
                    ("groups.id", "groups_pkey"),
                    ("groups.app_id, groups.id", "groups_app_id"),
                    ("memberships.group_id, memberships.user_id", "memberships_pkey"),
                    ("outbox.id", "outbox_pkey"),
                    ("password_resets.token_hash", "password_resets_pkey"),
                    ("throttles.key", "throttles_pkey"),
                    ("service_tokens.id", "service_tokens_pkey"),
                    ("service_tokens.token_hash", "service_tokens_token_hash_key"),
                    ("audit_events.seq", "audit_events_pkey"),
                    ("audit_events.id", "audit_events_id_key"),
                ];
                let columns = db.message().strip_prefix("UNIQUE constraint failed: ").unwrap_or_default();
                let name = SQLITE_NAMES.iter().find(|(c, _)| *c == columns).map_or(columns, |(_, n)| n);
                StoreError::Conflict(name.to_owned())
            }
            // SQLite: another process held the write lock past busy_timeout.
            sqlx::Error::Database(db)
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                    && db.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| c & 0xff == 5) =>
            {
                StoreError::Unavailable(e)
            }
            // PostgreSQL going away or not taking connections: shutting down
            // (57P01, 57P02), starting up (57P03), out of connection slots
            // (53300), or the connection itself failing (class 08).
            sqlx::Error::Database(db)
                if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some()
                    && db.code().is_some_and(|c| {
                        c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
                    }) =>
            {
                StoreError::Unavailable(e)
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => {
                StoreError::Unavailable(e)
            }
            _ => StoreError::Database(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A row as one of the types above, read by column name the same way on
/// either store.
fn from_row<'r, R: sqlx::Row, T: sqlx::FromRow<'r, R>>(row: &'r R) -> Result<T> {
    Ok(T::from_row(row)?)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct App {
    pub id: Uuid,
    pub name: String,
}

/// An application key as stored: wrapped by the master key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredKey {
    pub id: Uuid,
    pub app_id: Uuid,
    /// "data" or "index".
    pub purpose: String,
    pub wrapped: Vec<u8>,
    pub master_key_id: String,
    pub current: bool,
}

/// A user row as the services see it: the profile is still sealed.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: Uuid,
    pub app_id: Uuid,
    pub profile_ct: Vec<u8>,
    pub active: bool,
    pub supervisor: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What sign-in needs of a user.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Credentials {
    #[sqlx(rename = "id")]
    pub user_id: Uuid,
    pub password_hash: String,
    pub active: bool,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: Uuid,
    pub app_id: Uuid,
    pub key_id: Uuid,
    pub username_ct: Vec<u8>,
    pub username_bidx: Vec<u8>,
    pub password_hash: String,
    pub email_bidx: Option<Vec<u8>>,
    pub profile_ct: Vec<u8>,
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
    /// The data key the ciphertexts below are sealed with.
    pub key_id: Uuid,
    /// New username: (ciphertext, blind index).
    pub username: Option<(Vec<u8>, Vec<u8>)>,
    pub password_hash: Option<String>,
    pub email_bidx: Option<Vec<u8>>,
    pub profile_ct: Vec<u8>,
    pub active: bool,
    /// When the password changes, every session of the user but this one ends.
    pub keep_session: Option<Uuid>,
}

/// A user's ciphertexts, for re-encryption under a new key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedUser {
    pub id: Uuid,
    pub version: i64,
    pub username_ct: Vec<u8>,
    pub profile_ct: Vec<u8>,
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

/// A session as listed to its user.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GroupRecord {
    pub id: Uuid,
    pub name: String,
    pub is_default: bool,
}

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

/// A new reset token and the mail that carries it.
#[derive(Debug, Clone)]
pub struct NewReset {
    pub token_hash: Vec<u8>,
    pub outbox_id: Uuid,
    /// The token, sealed to the outbox row.
    pub payload_ct: Vec<u8>,
    pub lifetime: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResetCheck {
    /// The token is live; the user it resets.
    Live {
        app_id: Uuid,
        user_id: Uuid,
    },
    Expired,
    Unknown,
}

/// A service token as issued: its digest and who it acts as. The token
/// itself is shown to the operator once and never stored.
#[derive(Debug, Clone)]
pub struct NewServiceToken {
    pub id: Uuid,
    pub app_id: Uuid,
    /// The operator's label (kept out of logs and the trail).
    pub name: String,
    /// The rights it acts with in its application: "supervisor".
    pub role: String,
    pub token_hash: Vec<u8>,
}

/// A live (unrevoked) service token, as a call presents it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceTokenInfo {
    pub token_id: Uuid,
    pub role: String,
}

/// A service token as listed to the operator: never the token or its digest.
#[derive(Debug, Clone)]
pub struct ServiceTokenRow {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What revoking a service token found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRevocation {
    /// It was live and is now revoked.
    Revoked,
    /// It had been revoked before; nothing changed.
    AlreadyRevoked,
    /// The application has no token with that id.
    Unknown,
}

/// Filters of `usersvc audit list`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub app_id: Option<Uuid>,
    pub subject_id: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    pub after_seq: i64,
    pub limit: i64,
}

/// How failures of one kind are throttled.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleRule {
    /// Failures before the first wait.
    pub free: i32,
    /// Longest wait.
    pub max_wait: std::time::Duration,
    /// Failures older than this are forgotten.
    pub window: std::time::Duration,
}

/// Whether a sign-in may go on to the password check, and with what.
#[derive(Debug)]
pub enum SignInAttempt {
    /// Under a wait: refused without a check.
    Wait(std::time::Duration),
    /// Counted; the username's credentials, if there is such a user.
    Go(Option<Credentials>),
}

/// What a successful sign-in takes off the throttles: `clear`'s count is
/// forgotten (the username's), and this attempt is taken off `forgive`'s (the
/// address's: many may sign in from one address).
#[derive(Debug, Clone, Copy, Default)]
pub struct Relief<'a> {
    pub clear: Option<&'a [u8]>,
    pub forgive: Option<&'a [u8]>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn migrate(&self) -> Result<()>;

    /// Creates an application with its first keys.
    async fn create_app(&self, app: &App, api_key_hash: &[u8], keys: &[StoredKey], audit: &AuditRecord) -> Result<()>;
    async fn app_by_key_hash(&self, api_key_hash: &[u8]) -> Result<Option<App>>;
    async fn app_key(&self, key_id: Uuid) -> Result<Option<StoredKey>>;
    async fn current_app_key(&self, app_id: Uuid, purpose: &str) -> Result<Option<StoredKey>>;
    async fn all_app_keys(&self) -> Result<Vec<StoredKey>>;
    /// Replaces the wrapping of these keys (master key rotation), at once.
    async fn rewrap_app_keys(&self, keys: &[StoredKey], audit: &AuditRecord) -> Result<()>;
    /// Adds a key and makes it the current one of its purpose.
    async fn add_current_app_key(&self, key: &StoredKey, audit: &AuditRecord) -> Result<()>;
    /// Users of the application whose ciphertexts are under another key.
    async fn users_not_under_key(&self, app_id: Uuid, key_id: Uuid, limit: i64) -> Result<Vec<SealedUser>>;
    /// Stores a user's re-encrypted ciphertexts if the row is unchanged.
    async fn reseal_user(&self, app_id: Uuid, user: &SealedUser, key_id: Uuid) -> Result<bool>;

    /// Makes the user with this username (blind index) a supervisor.
    /// False when no such user exists in the application.
    async fn set_supervisor(&self, app_id: Uuid, username_bidx: &[u8], on: bool, audit: &AuditRecord) -> Result<bool>;

    /// Inserts the user, their default-group memberships and, when given, a
    /// first session, with the trail, in one transaction, if `user.key_id`
    /// is still the application's current data key: `Ok(None)` (nothing
    /// written) when it was rotated away (the caller seals again).
    async fn create_user(
        &self,
        user: NewUser,
        session: Option<NewSession>,
        audit: &[AuditRecord],
    ) -> Result<Option<UserRecord>>;
    async fn get_user(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<UserRecord>>;
    async fn credentials(&self, app_id: Uuid, username_bidx: &[u8]) -> Result<Option<Credentials>>;
    /// Applies the change if the user is still at the expected version and
    /// the key is still current: `Ok(None)` when the row is gone or moved on
    /// (the caller re-reads).
    async fn update_user(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        change: UserChange,
        audit: &[AuditRecord],
    ) -> Result<Option<UserRecord>>;
    /// Deletes the user with their sessions, memberships and queued mail.
    async fn delete_user(&self, app_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool>;
    /// Queues a username reminder for each user with this primary address.
    async fn queue_username_reminders(&self, app_id: Uuid, email_bidx: &[u8], audit: &AuditRecord) -> Result<u64>;

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
    async fn list_sessions(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        idle_timeout: std::time::Duration,
    ) -> Result<Vec<SessionRow>>;
    /// The user a session belongs to.
    async fn session_owner(&self, app_id: Uuid, session_id: Uuid) -> Result<Option<Uuid>>;

    async fn create_group(&self, app_id: Uuid, group: &GroupRecord, audit: &AuditRecord) -> Result<()>;
    async fn get_group(&self, app_id: Uuid, group_id: Uuid) -> Result<Option<GroupRecord>>;
    /// Sets the given columns only, so concurrent updates of different
    /// fields both stand. None when there is no such group.
    async fn update_group(
        &self,
        app_id: Uuid,
        group_id: Uuid,
        name: Option<&str>,
        is_default: Option<bool>,
        audit: &AuditRecord,
    ) -> Result<Option<GroupRecord>>;
    async fn delete_group(&self, app_id: Uuid, group_id: Uuid, audit: &AuditRecord) -> Result<bool>;
    /// False when the group or the user is not in the application.
    async fn add_member(&self, app_id: Uuid, group_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool>;
    async fn remove_member(&self, app_id: Uuid, group_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool>;
    async fn list_members(&self, app_id: Uuid, group_id: Uuid) -> Result<Vec<Uuid>>;
    async fn list_groups(&self, app_id: Uuid, default_only: bool) -> Result<Vec<GroupRecord>>;
    async fn list_user_groups(&self, app_id: Uuid, user_id: Uuid) -> Result<Vec<GroupRecord>>;

    /// Counts an attempt against each key, in one transaction, unless one
    /// of them is under a wait: then the longest wait is returned and
    /// nothing is counted (but for a wait that begins while the attempt is
    /// counted: it is refused all the same).
    async fn throttle_attempt(&self, keys: &[(Vec<u8>, ThrottleRule)]) -> Result<Option<std::time::Duration>>;
    /// A sign-in's first step: its attempt counted as [`Store::throttle_attempt`]
    /// does, then, unless it must wait, the credentials of the username's
    /// blind index (`None`: a name that cannot exist).
    async fn sign_in_attempt(
        &self,
        keys: &[(Vec<u8>, ThrottleRule)],
        app_id: Uuid,
        username_bidx: Option<&[u8]>,
    ) -> Result<SignInAttempt> {
        if let Some(wait) = self.throttle_attempt(keys).await? {
            return Ok(SignInAttempt::Wait(wait));
        }
        Ok(SignInAttempt::Go(match username_bidx {
            Some(bidx) => self.credentials(app_id, bidx).await?,
            None => None,
        }))
    }
    /// After a failure: a key at or past its free attempts waits from now
    /// (the wait counts from the refusal the caller saw, not from the start
    /// of the attempt, however long the password check took).
    async fn throttle_failed(&self, keys: &[(Vec<u8>, ThrottleRule)]) -> Result<()>;

    /// Issues a reset token for the active user with this username, voiding
    /// their earlier ones, and queues its mail. The same statements run
    /// whether or not the user exists. Returns the user, if any.
    async fn request_password_reset(
        &self,
        app_id: Uuid,
        username_bidx: &[u8],
        reset: &NewReset,
        audit: &AuditRecord,
    ) -> Result<Option<Uuid>>;
    /// Checks a reset token; with a new password hash (and its trail
    /// record), uses it up: sets the password, voids every token and ends
    /// every session of the user.
    async fn reset_password(&self, token_hash: &[u8], new_password: Option<(&str, &AuditRecord)>)
    -> Result<ResetCheck>;
    /// Claims up to `limit` due messages for `lease` (another sender skips
    /// them meanwhile).
    async fn claim_outbox(&self, limit: i64, lease: std::time::Duration) -> Result<Vec<OutboxMessage>>;
    async fn mail_recipient(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<MailRecipient>>;
    async fn outbox_sent(&self, id: Uuid) -> Result<()>;
    async fn outbox_retry(&self, id: Uuid, after: std::time::Duration) -> Result<()>;
    async fn outbox_give_up(&self, id: Uuid) -> Result<()>;

    /// Stores a new service token, with its trail record, in one transaction.
    async fn create_service_token(&self, token: &NewServiceToken, audit: &AuditRecord) -> Result<()>;
    /// The live token of a token hash within the application (a revoked
    /// one, or another application's, is None), refreshing its last use
    /// when older than `touch_after`.
    async fn lookup_service_token(
        &self,
        app_id: Uuid,
        token_hash: &[u8],
        touch_after: std::time::Duration,
    ) -> Result<Option<ServiceTokenInfo>>;
    /// Revokes a token of the application, with its trail record (written
    /// only when the token was live).
    async fn revoke_service_token(&self, app_id: Uuid, token_id: Uuid, audit: &AuditRecord) -> Result<TokenRevocation>;
    /// The application's tokens, revoked ones included, oldest first.
    async fn list_service_tokens(&self, app_id: Uuid) -> Result<Vec<ServiceTokenRow>>;

    /// Deletes what has run out: sessions past their lifetime, reset tokens
    /// past theirs, throttle counts long forgotten. Returns rows deleted.
    async fn sweep(&self) -> Result<u64>;

    /// Appends records to the trail in one transaction.
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()>;
    /// Records in chain order.
    async fn audit_records(&self, filter: &AuditFilter) -> Result<Vec<StoredAudit>>;
}
