//! Persistence, one folder per concern: each holds its types, a small
//! trait, and that trait's PostgreSQL and SQLite implementations side by
//! side (`users/mod.rs`, `users/postgres.rs`, `users/sqlite.rs`), so both
//! dialects of one concern are read on one screen. [`Store`] is the sum of
//! the concerns' traits; a service names the ones it calls by importing them.
//! `postgres/` and `sqlite/` hold what every concern of a backend shares:
//! the connection, migrations, row helpers.
//!
//! Every method that touches users, groups, sessions or service tokens takes
//! the application id and scopes its query to it. Rules (who loses their
//! sessions when, which throttle applies) are the services'; a store runs
//! the statements it is told to, and keeps in one statement only what must
//! be atomic, saying so where it does.

pub mod apps;
pub mod auth_cache;
pub mod backend;
#[cfg(test)]
mod conformance;
pub mod factors;
pub mod groups;
pub mod outbox;
pub mod passkeys;
mod postgres;
pub mod resets;
pub mod sessions;
mod sqlite;
pub mod throttles;
pub mod tokens;
pub mod trail;
pub mod users;
pub mod verifications;

use async_trait::async_trait;

pub use apps::*;
pub use factors::*;
pub use groups::*;
pub use outbox::*;
pub use passkeys::*;
pub use postgres::PgStore;
pub use resets::*;
pub use sessions::*;
pub use sqlite::SqliteStore;
pub use throttles::*;
pub use tokens::*;
pub use trail::*;
pub use users::*;
pub use verifications::*;

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
        // A server gone away or turned read-only: look for the primary.
        postgres::suspect(&e);
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                if let Some(name) = db.constraint() {
                    // The trail is partitioned: PostgreSQL names the month's
                    // index (audit_events_2026_12_id_at_key); callers know the
                    // table's.
                    if name.starts_with("audit_events_") && name.ends_with("_id_at_key") {
                        return StoreError::Conflict("audit_events_id_key".into());
                    }
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
                    ("email_verifications.token_hash", "email_verifications_pkey"),
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
            // (53300), the connection itself failing (class 08), or a
            // server that is a standby now (25006, a write refused as
            // read-only: the old primary back after a failover). The
            // request may be retried; the pool finds the primary meanwhile.
            sqlx::Error::Database(db)
                if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some()
                    && db.code().is_some_and(|c| {
                        c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300" | "25006")
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
pub(in crate::store) fn from_row<'r, R: sqlx::Row, T: sqlx::FromRow<'r, R>>(row: &'r R) -> Result<T> {
    Ok(T::from_row(row)?)
}

/// The whole store: every concern, and what spans them.
#[async_trait]
pub trait Store:
    AppStore
    + UserStore
    + SessionStore
    + GroupStore
    + ThrottleStore
    + ResetStore
    + OutboxStore
    + TokenStore
    + TrailStore
    + PasskeyStore
    + VerificationStore
    + FactorStore
    + Send
    + Sync
    + 'static
{
    async fn migrate(&self) -> Result<()>;

    /// Deletes what has run out: sessions past their lifetime, reset tokens
    /// past theirs, throttle counts and mail quotas long forgotten. Returns rows deleted.
    /// Deletes in batches of [`SWEEP_BATCH`], each committed on its own, so
    /// rows are gone even when a later batch fails.
    async fn sweep(&self) -> Result<u64>;
}

/// Rows the sweep deletes per statement.
pub const SWEEP_BATCH: i64 = 10_000;
