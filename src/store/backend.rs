//! Which store a database URL names, and opening it.

use std::{path::PathBuf, sync::Arc, time::Duration};

use super::{PgStore, SqliteStore, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.trim_start().starts_with("host=")
            || url.contains(" host=")
            || url.trim_start().starts_with("dbname=")
        {
            // libpq's key/value form (`host=a,b port=5432 dbname=usersvc`).
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// The database under the store, for what is not behind the trait: the
/// tests' own checks, and closing.
#[derive(Debug, Clone)]
pub enum Pool {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Pool {
    pub async fn close(&self) {
        match self {
            Pool::Postgres(p) => p.close().await,
            Pool::Sqlite(p) => p.close().await,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("DATABASE_URL must start with postgres:// or sqlite: (got a URL of another kind)")]
pub struct UnknownBackend;

/// Connects to the store of a URL (creating the database if it is missing).
pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<(Arc<dyn Store>, Pool)> {
    open_with(url, max_connections, DEFAULT_ACQUIRE_TIMEOUT, super::auth_cache::DEFAULT_CACHE_BYTES).await
}

/// How long a request waits for a PostgreSQL connection unless told otherwise.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The same, with a bound on how long a request waits for a connection
/// before it fails as unavailable (PostgreSQL; SQLite keeps its own), and
/// the bytes its cache may hold (PostgreSQL; SQLite has none).
pub async fn open_with(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
    cache_bytes: u64,
) -> anyhow::Result<(Arc<dyn Store>, Pool)> {
    match Backend::of(url).ok_or(UnknownBackend)? {
        Backend::Postgres => {
            let store = PgStore::connect_with(url, max_connections, acquire_timeout, cache_bytes).await?;
            let pool = Pool::Postgres(store.pool().clone());
            Ok((Arc::new(store), pool))
        }
        Backend::Sqlite => {
            let store = SqliteStore::connect(url).await?;
            let pool = Pool::Sqlite(store.pool().clone());
            Ok((Arc::new(store), pool))
        }
    }
}

/// Opens the store of `db` with its schema up to date: migrated by
/// `DATABASE_URL`'s role, or, given `--migrate-database-url`, by the owner,
/// who grants the runtime role what serving needs (PostgreSQL only).
pub async fn open_migrated(
    db: &crate::config::DatabaseArgs,
    max_connections: u32,
) -> anyhow::Result<(Arc<dyn Store>, Pool)> {
    if let Some(owner) = &db.migrate_database_url {
        if Backend::of(&db.database_url) != Some(Backend::Postgres) || Backend::of(owner) != Some(Backend::Postgres) {
            anyhow::bail!("--migrate-database-url takes a postgres:// URL, and DATABASE_URL must be one too");
        }
        PgStore::migrate_as_owner(owner, &db.database_url).await?;
        return open_with(&db.database_url, max_connections, db.db_acquire_timeout, db.cache_bytes).await;
    }
    let (store, pool) = open_with(&db.database_url, max_connections, db.db_acquire_timeout, db.cache_bytes).await?;
    store.migrate().await?;
    Ok((store, pool))
}

/// The folder of a SQLite database file (None in memory).
pub fn sqlite_dir(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") {
        return None;
    }
    let parent = PathBuf::from(path).parent().map(PathBuf::from).unwrap_or_default();
    Some(if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_and_folders() {
        assert_eq!(Backend::of("postgres://x/y"), Some(Backend::Postgres));
        assert_eq!(Backend::of("sqlite://usersvc-data/usersvc.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of("mysql://x"), None);
        assert_eq!(sqlite_dir("sqlite://usersvc-data/usersvc.db"), Some(PathBuf::from("usersvc-data")));
        assert_eq!(sqlite_dir("sqlite:///var/lib/u.db?mode=rwc"), Some(PathBuf::from("/var/lib")));
        assert_eq!(sqlite_dir("sqlite://u.db"), Some(PathBuf::from(".")));
        assert_eq!(sqlite_dir("sqlite::memory:"), None);
    }
}
