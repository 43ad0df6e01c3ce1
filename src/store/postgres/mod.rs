//! The PostgreSQL store (sqlx). Queries are checked at run time so that the
//! project builds without a database; the end-to-end tests exercise each one.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row, migrate::MigrateDatabase, postgres::PgPoolOptions, postgres::PgRow};

use crate::store::auth_cache::AuthCache;
use crate::store::{NewSession, Result, SWEEP_BATCH, Store, StoredKey, UserRecord};

mod follow;
pub mod hosts;
mod notify;

pub use follow::suspect;

#[derive(Clone)]
pub struct PgStore {
    pub(in crate::store) pool: PgPool,
    /// API keys, sessions and user records, remembered while every replica's evictions arrive.
    pub(in crate::store) auth: Arc<AuthCache>,
    /// Tells every replica which users changed, after commit.
    notifier: notify::Notifier,
}

/// The servers of a connection string, and the one of them to use now:
/// the first that fits its `target_session_attrs` (a plain single-host URL
/// is used as it is, unprobed).
struct Resolved {
    targets: hosts::Targets,
    options: Vec<sqlx::postgres::PgConnectOptions>,
    chosen: usize,
}

/// `writes`: a list of servers with no condition is read as `read-write`.
async fn resolve(url: &str, writes: bool) -> Result<Resolved> {
    let mut targets = parse_targets(url)?;
    if writes && targets.urls.len() > 1 && targets.attrs == hosts::SessionAttrs::Any {
        targets.attrs = hosts::SessionAttrs::ReadWrite;
    }
    let options = host_options(&targets)?;
    let chosen = if targets.is_plain() {
        0
    } else {
        follow::pick(&options, targets.attrs).await.ok_or_else(|| {
            crate::store::StoreError::Unavailable(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("no server of the database URL answers as {}", targets.attrs.as_str()),
            )))
        })?
    };
    Ok(Resolved { targets, options, chosen })
}

fn parse_targets(url: &str) -> Result<hosts::Targets> {
    Ok(hosts::parse(url).map_err(|e| sqlx::Error::Configuration(Box::new(e)))?)
}

fn host_options(targets: &hosts::Targets) -> Result<Vec<sqlx::postgres::PgConnectOptions>> {
    Ok(targets.urls.iter().map(|u| u.parse()).collect::<std::result::Result<Vec<_>, _>>()?)
}

impl PgStore {
    /// Opens a pool; `acquire_timeout` bounds how long a request waits for a
    /// connection before it is answered as unavailable.
    /// The database is created first when it does not exist yet, so a fresh
    /// server needs no manual step.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        Self::connect_with(
            url,
            max_connections,
            crate::store::backend::DEFAULT_ACQUIRE_TIMEOUT,
            crate::store::auth_cache::DEFAULT_CACHE_BYTES,
        )
        .await
    }

    /// `cache_bytes` bounds the memory of the auth cache (`--cache-bytes`).
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
        cache_bytes: u64,
    ) -> Result<Self> {
        let Resolved { targets, options, chosen } = resolve(url, false).await?;
        ensure_database(&targets.urls[chosen]).await?;
        // This version sends its updates' evictions after commit itself
        // (migration `user_notify_after_commit`).
        let options: Vec<_> = options.into_iter().map(|o| o.options([("usersvc.notify", "after_commit")])).collect();
        let follower = follow::Follower::new(options.clone(), targets.attrs, chosen);
        let pool = follower
            .pool_options(PgPoolOptions::new())
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            // No ping before each use: it doubled the round trips of a read.
            // A connection that broke fails its query, which answers 503
            // and is dropped from the pool.
            .test_before_acquire(false)
            .connect_with(options[chosen].clone())
            .await?;
        let auth = Arc::new(AuthCache::new(cache_bytes));
        tokio::spawn(notify::listen(pool.clone(), auth.clone(), follower.clone()));
        let notifier = notify::Notifier::start(&pool, &follower);
        tokio::spawn(follower.run(pool.clone()));
        Ok(Self { pool, auth, notifier })
    }

    /// Users changed and committed: forgotten here at once, and by every
    /// other replica when the notification arrives.
    pub(in crate::store) fn users_changed(&self, ids: &[uuid::Uuid]) {
        self.auth.evict_users(ids.iter().copied());
        self.notifier.users(ids);
    }

    /// Migrates as the owner of the schema (`owner_url`), then grants the
    /// role of `runtime_url` what serving needs and no more: every table
    /// but the migrations' bookkeeping, with the trail to be read and
    /// appended to only. Not owning the tables, that role cannot alter
    /// their triggers either. Run at each start, so tables a migration adds
    /// are granted too.
    pub async fn migrate_as_owner(owner_url: &str, runtime_url: &str) -> Result<()> {
        use sqlx::Connection;
        // Migrations write: on a list of servers, the one that takes writes.
        let owner = resolve(owner_url, true).await?;
        ensure_database(&owner.targets.urls[owner.chosen]).await?;
        let mut conn = PgConnection::connect_with(&owner.options[owner.chosen]).await?;
        sqlx::migrate!("./migrations/postgres").run(&mut conn).await?;
        sqlx::query(crate::store::trail::postgres::PARTITIONS_AHEAD).execute(&mut conn).await?;
        let runtime = host_options(&parse_targets(runtime_url)?)?[0].get_username().to_owned();
        let owner: String = sqlx::query_scalar("SELECT current_user").fetch_one(&mut conn).await?;
        if runtime != owner {
            let role: String = sqlx::query_scalar("SELECT quote_ident($1)").bind(&runtime).fetch_one(&mut conn).await?;
            let db: String = sqlx::query_scalar("SELECT quote_ident(current_database())").fetch_one(&mut conn).await?;
            for sql in [
                format!("GRANT CONNECT ON DATABASE {db} TO {role}"),
                format!("GRANT USAGE ON SCHEMA public TO {role}"),
                format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"),
                format!("REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON audit_events FROM {role}"),
                format!("REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON audit_checkpoints FROM {role}"),
                format!("REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON audit_checkpoint_keys FROM {role}"),
                format!("REVOKE ALL ON _sqlx_migrations FROM {role}"),
                format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"),
                format!("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role}"),
            ] {
                sqlx::query(&sql).execute(&mut conn).await?;
            }
            // The trail's monthly partitions were granted as tables too: the
            // role reaches the trail only through its parent.
            let partitions: Vec<String> = sqlx::query_scalar(
                "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'audit_events'::regclass",
            )
            .fetch_all(&mut conn)
            .await?;
            for p in partitions {
                sqlx::query(&format!("REVOKE ALL ON {p} FROM {role}")).execute(&mut conn).await?;
            }
        }
        conn.close().await?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Creates the database of `url` when it does not exist yet, so a fresh
/// server needs no manual step.
async fn ensure_database(url: &str) -> Result<()> {
    if !sqlx::Postgres::database_exists(url).await? {
        // Another process may create it at the same moment; that is fine.
        if let Err(e) = sqlx::Postgres::create_database(url).await
            && !sqlx::Postgres::database_exists(url).await?
        {
            return Err(e.into());
        }
    }
    Ok(())
}

pub(in crate::store) const USER_COLUMNS: &str =
    "id, app_id, profile_ct, active, supervisor, version, created_at, updated_at,
     COALESCE(email_verified_bidx = email_bidx, FALSE) AS email_verified";

pub(in crate::store) fn user_from_row(row: &PgRow) -> Result<UserRecord> {
    Ok(UserRecord {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        profile_ct: row.try_get("profile_ct")?,
        active: row.try_get("active")?,
        supervisor: row.try_get("supervisor")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        email_verified: row.try_get("email_verified")?,
    })
}

pub(in crate::store) fn expiry(session: &NewSession, now: DateTime<Utc>) -> DateTime<Utc> {
    let max_age = chrono::Duration::from_std(session.max_age).unwrap_or(chrono::Duration::MAX);
    now.checked_add_signed(max_age).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Whole seconds: replies show times to the second, and a stored time must
/// read back as it was shown.
pub(in crate::store) fn now_seconds() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now)
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations/postgres").run(&self.pool).await?;
        crate::store::TrailStore::prepare_trail(self).await
    }

    async fn sweep(&self) -> Result<u64> {
        // Each statement takes at most a batch, the oldest first along the
        // index on its time (migration `sweep_indexes`), and commits on its
        // own: a backlog of millions never becomes one long transaction
        // holding its locks, its WAL and (for sessions) a notification per
        // row until the end. The rows are then reached by ctid (a TID scan);
        // a join on the key instead made the planner read every expired row
        // again for each batch. The condition is checked again on the row
        // deleted, so one changed meanwhile (a throttle failing again) is
        // judged as it is now, not as the subquery saw it.
        let mut n = 0;
        for sql in [
            "DELETE FROM sessions WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM sessions WHERE expires_at < now() ORDER BY expires_at LIMIT $1))
             AND expires_at < now()",
            "DELETE FROM password_resets WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM password_resets WHERE expires_at < now() ORDER BY expires_at LIMIT $1))
             AND expires_at < now()",
            "DELETE FROM throttles WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM throttles WHERE last_failure < now() - interval '1 day'
                     AND (blocked_until IS NULL OR blocked_until < now())
                 ORDER BY last_failure LIMIT $1))
             AND last_failure < now() - interval '1 day' AND (blocked_until IS NULL OR blocked_until < now())",
            "DELETE FROM mail_quotas WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM mail_quotas WHERE window_start < now() - interval '1 day'
                 ORDER BY window_start LIMIT $1))
             AND window_start < now() - interval '1 day'",
            "DELETE FROM mfa_challenges WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM mfa_challenges WHERE expires_at < now() ORDER BY expires_at LIMIT $1))
             AND expires_at < now()",
            "DELETE FROM passkey_ceremonies WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM passkey_ceremonies WHERE expires_at < now() ORDER BY expires_at LIMIT $1))
             AND expires_at < now()",
        ] {
            loop {
                let done = sqlx::query(sql).bind(SWEEP_BATCH).execute(&self.pool).await?.rows_affected();
                n += done;
                if done < SWEEP_BATCH.unsigned_abs() {
                    break;
                }
            }
        }
        Ok(n)
    }
}

pub(in crate::store) async fn insert_key(conn: &mut PgConnection, k: &StoredKey) -> Result<()> {
    sqlx::query(
        "INSERT INTO app_keys (id, app_id, purpose, wrapped, master_key_id, current) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(k.id)
    .bind(k.app_id)
    .bind(&k.purpose)
    .bind(&k.wrapped)
    .bind(&k.master_key_id)
    .bind(k.current)
    .execute(conn)
    .await?;
    Ok(())
}
