//! The PostgreSQL store (sqlx). Queries are checked at run time so that the
//! project builds without a database; the end-to-end tests exercise each one.

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row, migrate::MigrateDatabase, postgres::PgPoolOptions, postgres::PgRow};
use uuid::Uuid;

use super::auth_cache::AuthCache;
use super::pg_audit::{self, AuditColumns, OneRecord, audit_append_call};
use super::pg_throttle::{self, ThrottleArgs};
use super::{
    App, AuditFilter, Credentials, GroupRecord, MailRecipient, NewReset, NewServiceToken, NewSession, NewUser,
    OutboxMessage, Relief, ResetCheck, Result, SealedUser, ServiceTokenInfo, ServiceTokenRow, SessionInfo,
    SessionLookup, SessionRow, SignInAttempt, Store, StoreError, StoredKey, ThrottleRule, TokenRevocation, UserChange,
    UserRecord, from_row,
};
use crate::audit::{AuditRecord, StoredAudit};

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// API keys, sessions and user records, remembered while every replica's evictions arrive.
    auth: Arc<AuthCache>,
}

impl PgStore {
    /// Opens a pool; `acquire_timeout` bounds how long a request waits for a
    /// connection before it is answered as unavailable.
    /// The database is created first when it does not exist yet, so a fresh
    /// server needs no manual step.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        Self::connect_with(url, max_connections, super::backend::DEFAULT_ACQUIRE_TIMEOUT).await
    }

    pub async fn connect_with(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<Self> {
        if !sqlx::Postgres::database_exists(url).await? {
            // Another process may create it at the same moment; that is fine.
            if let Err(e) = sqlx::Postgres::create_database(url).await
                && !sqlx::Postgres::database_exists(url).await?
            {
                return Err(e.into());
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            // No ping before each use: it doubled the round trips of a read.
            // A connection that broke fails its query, which answers 503
            // and is dropped from the pool.
            .test_before_acquire(false)
            .connect(url)
            .await?;
        let auth = Arc::new(AuthCache::default());
        tokio::spawn(super::pg_notify::listen(pool.clone(), auth.clone()));
        Ok(Self { pool, auth })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

const USER_COLUMNS: &str = "id, app_id, profile_ct, active, supervisor, version, created_at, updated_at";

fn user_from_row(row: &PgRow) -> Result<UserRecord> {
    Ok(UserRecord {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        profile_ct: row.try_get("profile_ct")?,
        active: row.try_get("active")?,
        supervisor: row.try_get("supervisor")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn expiry(session: &NewSession, now: DateTime<Utc>) -> DateTime<Utc> {
    let max_age = chrono::Duration::from_std(session.max_age).unwrap_or(chrono::Duration::MAX);
    now.checked_add_signed(max_age).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Whole seconds: replies show times to the second, and a stored time must
/// read back as it was shown.
fn now_seconds() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now)
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations/postgres").run(&self.pool).await?;
        Ok(())
    }

    async fn create_app(&self, app: &App, api_key_hash: &[u8], keys: &[StoredKey], audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO applications (id, name, api_key_hash) VALUES ($1, $2, $3)")
            .bind(app.id)
            .bind(&app.name)
            .bind(api_key_hash)
            .execute(&mut *tx)
            .await?;
        for k in keys {
            insert_key(&mut tx, k).await?;
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn app_by_key_hash(&self, api_key_hash: &[u8]) -> Result<Option<App>> {
        if let Some(app) = self.auth.app(api_key_hash) {
            return Ok(Some(app));
        }
        let seen = self.auth.generation();
        let row = sqlx::query("SELECT id, name FROM applications WHERE api_key_hash = $1")
            .bind(api_key_hash)
            .fetch_optional(&self.pool)
            .await?;
        let app: Option<App> = row.as_ref().map(from_row).transpose()?;
        if let Some(app) = &app {
            self.auth.put_app(seen, api_key_hash, app);
        }
        Ok(app)
    }

    async fn app_key(&self, key_id: Uuid) -> Result<Option<StoredKey>> {
        let row = sqlx::query("SELECT * FROM app_keys WHERE id = $1").bind(key_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn current_app_key(&self, app_id: Uuid, purpose: &str) -> Result<Option<StoredKey>> {
        let row = sqlx::query("SELECT * FROM app_keys WHERE app_id = $1 AND purpose = $2 AND current")
            .bind(app_id)
            .bind(purpose)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn all_app_keys(&self) -> Result<Vec<StoredKey>> {
        let rows = sqlx::query("SELECT * FROM app_keys ORDER BY created_at, id").fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    async fn rewrap_app_keys(&self, keys: &[StoredKey], audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for k in keys {
            sqlx::query("UPDATE app_keys SET wrapped = $2, master_key_id = $3 WHERE id = $1")
                .bind(k.id)
                .bind(&k.wrapped)
                .bind(&k.master_key_id)
                .execute(&mut *tx)
                .await?;
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_current_app_key(&self, key: &StoredKey, audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE app_keys SET current = false WHERE app_id = $1 AND purpose = $2 AND current")
            .bind(key.app_id)
            .bind(&key.purpose)
            .execute(&mut *tx)
            .await?;
        insert_key(&mut tx, key).await?;
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn users_not_under_key(&self, app_id: Uuid, key_id: Uuid, limit: i64) -> Result<Vec<SealedUser>> {
        let rows = sqlx::query(
            "SELECT id, version, username_ct, profile_ct FROM users WHERE app_id = $1 AND key_id <> $2 LIMIT $3",
        )
        .bind(app_id)
        .bind(key_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    async fn reseal_user(&self, app_id: Uuid, user: &SealedUser, key_id: Uuid) -> Result<bool> {
        // The version is left as it is: a concurrent update that read the
        // row before keeps its compare-and-set, and its own ciphertexts are
        // under the current key anyway.
        let done = sqlx::query(
            "UPDATE users SET username_ct = $4, profile_ct = $5, key_id = $6
             WHERE app_id = $1 AND id = $2 AND version = $3",
        )
        .bind(app_id)
        .bind(user.id)
        .bind(user.version)
        .bind(&user.username_ct)
        .bind(&user.profile_ct)
        .bind(key_id)
        .execute(&self.pool)
        .await;
        self.auth.evict_users([user.id]);
        Ok(done?.rows_affected() > 0)
    }

    async fn set_supervisor(&self, app_id: Uuid, username_bidx: &[u8], on: bool, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let id: Option<Uuid> = sqlx::query_scalar(
            "UPDATE users SET supervisor = $3 WHERE app_id = $1 AND username_bidx = $2 RETURNING id",
        )
        .bind(app_id)
        .bind(username_bidx)
        .bind(on)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = id else {
            return Ok(false);
        };
        let mut audit = audit.clone();
        audit.subject_id = Some(id);
        pg_audit::append(&mut *tx, &[audit]).await?;
        tx.commit().await?;
        // What the user's sessions grant changed.
        self.auth.evict_all();
        Ok(true)
    }

    async fn create_user(
        &self,
        user: NewUser,
        session: Option<NewSession>,
        audit: &[AuditRecord],
    ) -> Result<Option<UserRecord>> {
        // The user, their default groups, their first session and the trail
        // records in one statement: one transaction, one round trip (the
        // memberships' and session's foreign keys are checked at its end,
        // when the user row is there). Under a key rotated away, no user row
        // and so nothing else.
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH u AS (
                     INSERT INTO users (id, app_id, key_id, username_ct, username_bidx, password_hash, email_bidx,
                                        profile_ct, active, created_at, updated_at)
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10
                     WHERE EXISTS (SELECT 1 FROM app_keys WHERE id = $3 AND current)
                     RETURNING {USER_COLUMNS}
                 ), m AS (
                     INSERT INTO memberships (app_id, group_id, user_id)
                     SELECT g.app_id, g.id, u.id FROM groups g, u WHERE g.app_id = $2 AND g.is_default
                 ), s AS (
                     INSERT INTO sessions (id, app_id, user_id, token_hash, expires_at)
                     SELECT $11, $2, u.id, $12, $13 FROM u WHERE $11::uuid IS NOT NULL
                 )
                 SELECT u.*, {} AS trail FROM u",
                audit_append_call(14)
            )
        });
        let q = sqlx::query(&SQL)
            .bind(user.id)
            .bind(user.app_id)
            .bind(user.key_id)
            .bind(&user.username_ct)
            .bind(&user.username_bidx)
            .bind(&user.password_hash)
            .bind(&user.email_bidx)
            .bind(&user.profile_ct)
            .bind(user.active)
            .bind(now_seconds())
            .bind(session.as_ref().map(|s| s.id))
            .bind(session.as_ref().map(|s| s.token_hash.as_slice()))
            .bind(session.as_ref().map(|s| expiry(s, Utc::now())));
        let row = AuditColumns::of(audit).bind(q).fetch_optional(&self.pool).await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn get_user(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<UserRecord>> {
        if let Some(user) = self.auth.user(app_id, user_id) {
            return Ok(Some(user));
        }
        let seen = self.auth.generation();
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE app_id = $1 AND id = $2"))
            .bind(app_id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        let user = row.as_ref().map(user_from_row).transpose()?;
        if let Some(u) = &user {
            self.auth.put_user(seen, u);
        }
        Ok(user)
    }

    async fn credentials(&self, app_id: Uuid, username_bidx: &[u8]) -> Result<Option<Credentials>> {
        let row = sqlx::query("SELECT id, password_hash, active FROM users WHERE app_id = $1 AND username_bidx = $2")
            .bind(app_id)
            .bind(username_bidx)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn update_user(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        change: UserChange,
        audit: &[AuditRecord],
    ) -> Result<Option<UserRecord>> {
        let mut tx = self.pool.begin().await?;
        let (username_ct, username_bidx) = change.username.clone().unzip();
        // A key rotated away since the caller sealed makes this a conflict:
        // the caller re-reads and seals again under the current key.
        let row = sqlx::query(&format!(
            "UPDATE users SET
                 key_id = $4,
                 username_ct = COALESCE($5, username_ct),
                 username_bidx = COALESCE($6, username_bidx),
                 password_hash = COALESCE($7, password_hash),
                 email_bidx = $8,
                 profile_ct = $9,
                 active = $10,
                 version = version + 1,
                 updated_at = GREATEST($11, updated_at)
             WHERE app_id = $1 AND id = $2 AND version = $3
               AND EXISTS (SELECT 1 FROM app_keys WHERE id = $4 AND current)
             RETURNING {USER_COLUMNS}"
        ))
        .bind(app_id)
        .bind(user_id)
        .bind(change.expected_version)
        .bind(change.key_id)
        .bind(username_ct)
        .bind(username_bidx)
        .bind(&change.password_hash)
        .bind(&change.email_bidx)
        .bind(&change.profile_ct)
        .bind(change.active)
        .bind(now_seconds())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            // Lost the compare-and-set: what this replica remembers of the
            // user is older than the row, so the retry reads the row.
            self.auth.evict_users([user_id]);
            return Ok(None);
        };
        let mut ended: Vec<Vec<u8>> = Vec::new();
        if change.password_hash.is_some() || !change.active {
            // A new password or a deactivation ends the user's other sessions.
            ended = sqlx::query_scalar(
                "DELETE FROM sessions WHERE app_id = $1 AND user_id = $2 AND id IS DISTINCT FROM $3
                 RETURNING token_hash",
            )
            .bind(app_id)
            .bind(user_id)
            .bind(change.keep_session.filter(|_| change.active))
            .fetch_all(&mut *tx)
            .await?;
        }
        pg_audit::append(&mut *tx, audit).await?;
        tx.commit().await?;
        self.auth.evict_users([user_id]);
        self.auth.evict_sessions(ended.iter().map(Vec::as_slice));
        user_from_row(&row).map(Some)
    }

    async fn delete_user(&self, app_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool> {
        // Sessions, memberships and outbox rows go by ON DELETE CASCADE, in
        // the same statement; the trail stays (it holds no PII).
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM users WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        // Its sessions went by cascade.
        self.auth.evict_all();
        Ok(true)
    }

    async fn queue_username_reminders(&self, app_id: Uuid, email_bidx: &[u8], audit: &AuditRecord) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO outbox (id, app_id, user_id, kind)
             SELECT gen_random_uuid(), app_id, id, 'username_reminder' FROM users
             WHERE app_id = $1 AND email_bidx = $2
             RETURNING user_id",
        )
        .bind(app_id)
        .bind(email_bidx)
        .fetch_all(&mut *tx)
        .await?;
        let records: Vec<AuditRecord> = ids
            .iter()
            .map(|id| {
                let mut r = audit.clone();
                r.id = Uuid::now_v7();
                r.subject_id = Some(*id);
                r
            })
            .collect();
        pg_audit::append(&mut *tx, &records).await?;
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    async fn create_session(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        session: NewSession,
        relief: Relief<'_>,
        audit: &AuditRecord,
    ) -> Result<()> {
        // One statement, so one transaction and one round trip: the session,
        // the throttles' relief and the trail record.
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH s AS (INSERT INTO sessions (id, app_id, user_id, token_hash, expires_at)
                            VALUES ($1, $2, $3, $4, $5)),
                      {},
                      {}
                 SELECT 1",
                pg_throttle::RELIEF,
                pg_audit::one_record(8)
            )
        });
        let q = sqlx::query(&SQL)
            .bind(session.id)
            .bind(app_id)
            .bind(user_id)
            .bind(&session.token_hash)
            .bind(expiry(&session, Utc::now()))
            .bind(relief.clear)
            .bind(relief.forgive);
        OneRecord::of(audit).bind(q).execute(&self.pool).await?;
        Ok(())
    }

    async fn lookup_session(
        &self,
        app_id: Uuid,
        token_hash: &[u8],
        idle_timeout: Duration,
        touch_after: Duration,
    ) -> Result<SessionLookup> {
        if let Some(info) = self.auth.session(app_id, token_hash) {
            return Ok(SessionLookup::Live(info));
        }
        let seen = self.auth.generation();
        let row = sqlx::query(
            "SELECT s.id, s.user_id, u.supervisor,
                    (u.active AND s.expires_at > now() AND s.last_seen_at > now() - make_interval(secs => $3)) AS live,
                    s.last_seen_at < now() - make_interval(secs => $4) AS stale,
                    extract(epoch FROM s.expires_at - now())::float8 AS remaining
             FROM sessions s JOIN users u ON u.app_id = s.app_id AND u.id = s.user_id
             WHERE s.token_hash = $1 AND s.app_id = $2",
        )
        .bind(token_hash)
        .bind(app_id)
        .bind(idle_timeout.as_secs_f64())
        .bind(touch_after.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(SessionLookup::Unknown);
        };
        let session_id: Uuid = row.try_get("id")?;
        if !row.try_get::<bool, _>("live")? {
            sqlx::query("DELETE FROM sessions WHERE id = $1").bind(session_id).execute(&self.pool).await?;
            return Ok(SessionLookup::Expired);
        }
        if row.try_get::<bool, _>("stale")? {
            sqlx::query("UPDATE sessions SET last_seen_at = now() WHERE id = $1")
                .bind(session_id)
                .execute(&self.pool)
                .await?;
        }
        let info = SessionInfo { session_id, user_id: row.try_get("user_id")?, supervisor: row.try_get("supervisor")? };
        // Remembered no longer than a touch may wait (so idle expiry stays
        // as accurate as without), nor past the session's end.
        let remaining = Duration::try_from_secs_f64(row.try_get("remaining")?).unwrap_or_default();
        self.auth.put_session(seen, app_id, token_hash, &info, touch_after.min(remaining));
        Ok(SessionLookup::Live(info))
    }

    async fn delete_sessions(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        session_id: Option<Uuid>,
        audit: Option<&AuditRecord>,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let ended: Vec<Vec<u8>> = sqlx::query_scalar(
            "DELETE FROM sessions WHERE app_id = $1 AND user_id = $2 AND ($3::uuid IS NULL OR id = $3)
             RETURNING token_hash",
        )
        .bind(app_id)
        .bind(user_id)
        .bind(session_id)
        .fetch_all(&mut *tx)
        .await?;
        if let Some(a) = audit {
            pg_audit::append(&mut *tx, std::slice::from_ref(a)).await?;
        }
        tx.commit().await?;
        self.auth.evict_sessions(ended.iter().map(Vec::as_slice));
        Ok(ended.len() as u64)
    }

    async fn list_sessions(&self, app_id: Uuid, user_id: Uuid, idle_timeout: Duration) -> Result<Vec<SessionRow>> {
        let rows = sqlx::query(
            "SELECT id, created_at, last_seen_at, expires_at FROM sessions
             WHERE app_id = $1 AND user_id = $2 AND expires_at > now()
               AND last_seen_at > now() - make_interval(secs => $3)
             ORDER BY created_at, id",
        )
        .bind(app_id)
        .bind(user_id)
        .bind(idle_timeout.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionRow {
                    id: r.try_get("id")?,
                    created_at: r.try_get("created_at")?,
                    last_seen_at: r.try_get("last_seen_at")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect()
    }

    async fn session_owner(&self, app_id: Uuid, session_id: Uuid) -> Result<Option<Uuid>> {
        Ok(sqlx::query_scalar("SELECT user_id FROM sessions WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn create_group(&self, app_id: Uuid, group: &GroupRecord, audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO groups (id, app_id, name, is_default) VALUES ($1, $2, $3, $4)")
            .bind(group.id)
            .bind(app_id)
            .bind(&group.name)
            .bind(group.is_default)
            .execute(&mut *tx)
            .await?;
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_group(&self, app_id: Uuid, group_id: Uuid) -> Result<Option<GroupRecord>> {
        let row = sqlx::query("SELECT id, name, is_default FROM groups WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(group_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn update_group(
        &self,
        app_id: Uuid,
        group_id: Uuid,
        name: Option<&str>,
        is_default: Option<bool>,
        audit: &AuditRecord,
    ) -> Result<Option<GroupRecord>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE groups SET name = COALESCE($3, name), is_default = COALESCE($4, is_default)
             WHERE app_id = $1 AND id = $2 RETURNING id, name, is_default",
        )
        .bind(app_id)
        .bind(group_id)
        .bind(name)
        .bind(is_default)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        from_row(&row).map(Some)
    }

    async fn delete_group(&self, app_id: Uuid, group_id: Uuid, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM groups WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(group_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn add_member(&self, app_id: Uuid, group_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // The SELECT finds nothing unless both rows are in the application;
        // an existing membership is left as it is.
        let row = sqlx::query(
            "WITH pair AS (
                 SELECT g.id AS group_id, u.id AS user_id FROM groups g, users u
                 WHERE g.app_id = $1 AND g.id = $2 AND u.app_id = $1 AND u.id = $3
             ), ins AS (
                 INSERT INTO memberships (app_id, group_id, user_id)
                 SELECT $1, group_id, user_id FROM pair
                 ON CONFLICT (group_id, user_id) DO NOTHING
             )
             SELECT count(*) AS n FROM pair",
        )
        .bind(app_id)
        .bind(group_id)
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        if row.try_get::<i64, _>("n")? == 0 {
            return Ok(false);
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn remove_member(&self, app_id: Uuid, group_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM memberships WHERE app_id = $1 AND group_id = $2 AND user_id = $3")
            .bind(app_id)
            .bind(group_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list_members(&self, app_id: Uuid, group_id: Uuid) -> Result<Vec<Uuid>> {
        let rows = sqlx::query(
            "SELECT user_id FROM memberships WHERE app_id = $1 AND group_id = $2 ORDER BY created_at, user_id",
        )
        .bind(app_id)
        .bind(group_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| r.try_get("user_id").map_err(StoreError::from)).collect()
    }

    async fn list_groups(&self, app_id: Uuid, default_only: bool) -> Result<Vec<GroupRecord>> {
        let rows = sqlx::query(
            "SELECT id, name, is_default FROM groups WHERE app_id = $1 AND (is_default OR NOT $2) ORDER BY created_at, id",
        )
        .bind(app_id)
        .bind(default_only)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    async fn list_user_groups(&self, app_id: Uuid, user_id: Uuid) -> Result<Vec<GroupRecord>> {
        let rows = sqlx::query(
            "SELECT g.id, g.name, g.is_default FROM memberships m JOIN groups g ON g.id = m.group_id
             WHERE m.app_id = $1 AND m.user_id = $2 ORDER BY m.created_at, g.id",
        )
        .bind(app_id)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    async fn throttle_attempt(&self, keys: &[(Vec<u8>, ThrottleRule)]) -> Result<Option<Duration>> {
        static SQL: LazyLock<String> =
            LazyLock::new(|| format!("WITH {} SELECT {}", *pg_throttle::COUNT, pg_throttle::OUTCOME));
        let row = ThrottleArgs::of(keys).bind(sqlx::query(&SQL)).fetch_one(&self.pool).await?;
        pg_throttle::counted_wait(&row)
    }

    async fn sign_in_attempt(
        &self,
        keys: &[(Vec<u8>, ThrottleRule)],
        app_id: Uuid,
        username_bidx: Option<&[u8]>,
    ) -> Result<SignInAttempt> {
        // One round trip: the count and, if there is no wait, the
        // credentials.
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH {}
                 SELECT {}, c.id, c.password_hash, c.active
                 FROM waiting w
                 LEFT JOIN LATERAL (SELECT id, password_hash, active FROM users
                                    WHERE app_id = $5 AND username_bidx = $6 AND w.wait IS NULL) c ON true",
                *pg_throttle::COUNT,
                pg_throttle::OUTCOME
            )
        });
        let q = ThrottleArgs::of(keys).bind(sqlx::query(&SQL));
        let row = q.bind(app_id).bind(username_bidx).fetch_one(&self.pool).await?;
        if let Some(wait) = pg_throttle::counted_wait(&row)? {
            return Ok(SignInAttempt::Wait(wait));
        }
        // No user row joined: no such user.
        let found = row.try_get::<Option<Uuid>, _>("id")?.is_some();
        Ok(SignInAttempt::Go(found.then(|| from_row(&row)).transpose()?))
    }

    async fn throttle_failed(&self, keys: &[(Vec<u8>, ThrottleRule)]) -> Result<()> {
        for (key, rule) in keys {
            sqlx::query(
                "UPDATE throttles SET blocked_until =
                     now() + make_interval(secs => LEAST($3, power(2, LEAST(failures - $2, 30))))
                 WHERE key = $1 AND failures >= $2",
            )
            .bind(key)
            .bind(rule.free)
            .bind(rule.max_wait.as_secs_f64())
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    async fn request_password_reset(
        &self,
        app_id: Uuid,
        username_bidx: &[u8],
        reset: &NewReset,
        audit: &AuditRecord,
    ) -> Result<Option<Uuid>> {
        let mut tx = self.pool.begin().await?;
        let user: Option<Uuid> = sqlx::query_scalar(
            "WITH u AS (SELECT id FROM users WHERE app_id = $1 AND username_bidx = $2 AND active),
                  void AS (DELETE FROM password_resets WHERE user_id IN (SELECT id FROM u)),
                  token AS (INSERT INTO password_resets (token_hash, app_id, user_id, expires_at)
                            SELECT $3, $1, id, now() + make_interval(secs => $6) FROM u),
                  mail AS (INSERT INTO outbox (id, app_id, user_id, kind, payload_ct)
                           SELECT $4, $1, id, 'password_reset', $5 FROM u)
             SELECT id FROM u",
        )
        .bind(app_id)
        .bind(username_bidx)
        .bind(&reset.token_hash)
        .bind(reset.outbox_id)
        .bind(&reset.payload_ct)
        .bind(reset.lifetime.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        let mut audit = audit.clone();
        audit.subject_id = user;
        pg_audit::append(&mut *tx, &[audit]).await?;
        tx.commit().await?;
        Ok(user)
    }

    async fn reset_password(
        &self,
        token_hash: &[u8],
        new_password: Option<(&str, &AuditRecord)>,
    ) -> Result<ResetCheck> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT app_id, user_id, expires_at > now() AS live FROM password_resets WHERE token_hash = $1 FOR UPDATE",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(ResetCheck::Unknown);
        };
        let (app_id, user_id): (Uuid, Uuid) = (row.try_get("app_id")?, row.try_get("user_id")?);
        if !row.try_get::<bool, _>("live")? {
            sqlx::query("DELETE FROM password_resets WHERE token_hash = $1").bind(token_hash).execute(&mut *tx).await?;
            tx.commit().await?;
            return Ok(ResetCheck::Expired);
        }
        let Some((hash, audit)) = new_password else {
            return Ok(ResetCheck::Live { app_id, user_id });
        };
        sqlx::query(
            "UPDATE users SET password_hash = $3, version = version + 1, updated_at = GREATEST($4, updated_at)
             WHERE app_id = $1 AND id = $2",
        )
        .bind(app_id)
        .bind(user_id)
        .bind(hash)
        .bind(now_seconds())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM password_resets WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
        let ended: Vec<Vec<u8>> =
            sqlx::query_scalar("DELETE FROM sessions WHERE app_id = $1 AND user_id = $2 RETURNING token_hash")
                .bind(app_id)
                .bind(user_id)
                .fetch_all(&mut *tx)
                .await?;
        let mut audit = audit.clone();
        audit.app_id = Some(app_id);
        audit.subject_id = Some(user_id);
        pg_audit::append(&mut *tx, &[audit]).await?;
        tx.commit().await?;
        self.auth.evict_users([user_id]);
        self.auth.evict_sessions(ended.iter().map(Vec::as_slice));
        Ok(ResetCheck::Live { app_id, user_id })
    }

    async fn claim_outbox(&self, limit: i64, lease: Duration) -> Result<Vec<OutboxMessage>> {
        let rows = sqlx::query(
            "UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $2), attempts = attempts + 1
             WHERE id IN (SELECT id FROM outbox WHERE next_attempt_at <= now() AND failed_at IS NULL
                          ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, app_id, user_id, kind, payload_ct, attempts, created_at",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxMessage {
                    id: r.try_get("id")?,
                    app_id: r.try_get("app_id")?,
                    user_id: r.try_get("user_id")?,
                    kind: r.try_get("kind")?,
                    payload_ct: r.try_get("payload_ct")?,
                    attempts: r.try_get("attempts")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn mail_recipient(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<MailRecipient>> {
        let row = sqlx::query(
            "SELECT a.name, u.username_ct, u.profile_ct FROM users u JOIN applications a ON a.id = u.app_id
             WHERE u.app_id = $1 AND u.id = $2",
        )
        .bind(app_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(MailRecipient {
                app_name: r.try_get("name")?,
                username_ct: r.try_get("username_ct")?,
                profile_ct: r.try_get("profile_ct")?,
            })
        })
        .transpose()
    }

    async fn outbox_sent(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM outbox WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn outbox_retry(&self, id: Uuid, after: Duration) -> Result<()> {
        sqlx::query("UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $2) WHERE id = $1")
            .bind(id)
            .bind(after.as_secs_f64())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outbox_give_up(&self, id: Uuid) -> Result<()> {
        // The sealed token goes; only the fact and time of failure stay.
        sqlx::query("UPDATE outbox SET failed_at = now(), payload_ct = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_service_token(&self, token: &NewServiceToken, audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO service_tokens (id, app_id, name, role, token_hash) VALUES ($1, $2, $3, $4, $5)")
            .bind(token.id)
            .bind(token.app_id)
            .bind(&token.name)
            .bind(&token.role)
            .bind(&token.token_hash)
            .execute(&mut *tx)
            .await?;
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lookup_service_token(
        &self,
        app_id: Uuid,
        token_hash: &[u8],
        touch_after: Duration,
    ) -> Result<Option<ServiceTokenInfo>> {
        let row = sqlx::query(
            "SELECT id, role, last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $3) AS stale
             FROM service_tokens WHERE token_hash = $1 AND app_id = $2 AND revoked_at IS NULL",
        )
        .bind(token_hash)
        .bind(app_id)
        .bind(touch_after.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let token_id: Uuid = row.try_get("id")?;
        if row.try_get::<bool, _>("stale")? {
            sqlx::query("UPDATE service_tokens SET last_used_at = now() WHERE id = $1")
                .bind(token_id)
                .execute(&self.pool)
                .await?;
        }
        Ok(Some(ServiceTokenInfo { token_id, role: row.try_get("role")? }))
    }

    async fn revoke_service_token(&self, app_id: Uuid, token_id: Uuid, audit: &AuditRecord) -> Result<TokenRevocation> {
        let mut tx = self.pool.begin().await?;
        let revoked: Option<bool> = sqlx::query_scalar(
            "SELECT revoked_at IS NOT NULL FROM service_tokens WHERE app_id = $1 AND id = $2 FOR UPDATE",
        )
        .bind(app_id)
        .bind(token_id)
        .fetch_optional(&mut *tx)
        .await?;
        match revoked {
            None => return Ok(TokenRevocation::Unknown),
            Some(true) => return Ok(TokenRevocation::AlreadyRevoked),
            Some(false) => {}
        }
        sqlx::query("UPDATE service_tokens SET revoked_at = now() WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(token_id)
            .execute(&mut *tx)
            .await?;
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(TokenRevocation::Revoked)
    }

    async fn list_service_tokens(&self, app_id: Uuid) -> Result<Vec<ServiceTokenRow>> {
        let rows = sqlx::query(
            "SELECT id, name, role, created_at, last_used_at, revoked_at FROM service_tokens
             WHERE app_id = $1 ORDER BY created_at, id",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ServiceTokenRow {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    role: r.try_get("role")?,
                    created_at: r.try_get("created_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    async fn sweep(&self) -> Result<u64> {
        let mut n = 0;
        for sql in [
            "DELETE FROM sessions WHERE expires_at < now()",
            "DELETE FROM password_resets WHERE expires_at < now()",
            "DELETE FROM throttles WHERE last_failure < now() - interval '1 day'
                 AND (blocked_until IS NULL OR blocked_until < now())",
        ] {
            n += sqlx::query(sql).execute(&self.pool).await?.rows_affected();
        }
        Ok(n)
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        // One statement: no transaction of its own to open and commit.
        pg_audit::append(&self.pool, records).await
    }

    async fn audit_records(&self, f: &AuditFilter) -> Result<Vec<StoredAudit>> {
        let rows = sqlx::query(
            "SELECT * FROM audit_events
             WHERE seq > $1 AND ($2::uuid IS NULL OR app_id = $2) AND ($3::uuid IS NULL OR subject_id = $3)
               AND ($4::timestamptz IS NULL OR at >= $4)
             ORDER BY seq LIMIT $5",
        )
        .bind(f.after_seq)
        .bind(f.app_id)
        .bind(f.subject_id)
        .bind(f.since)
        .bind(f.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredAudit {
                    seq: r.try_get("seq")?,
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                    record: AuditRecord {
                        id: r.try_get("id")?,
                        at: r.try_get("at")?,
                        app_id: r.try_get("app_id")?,
                        actor: r.try_get("actor")?,
                        actor_id: r.try_get("actor_id")?,
                        subject_id: r.try_get("subject_id")?,
                        object_id: r.try_get("object_id")?,
                        action: r.try_get("action")?,
                        fields: r.try_get("fields")?,
                        outcome: r.try_get("outcome")?,
                        request_id: r.try_get("request_id")?,
                        client_addr: r.try_get("client_addr")?,
                    },
                })
            })
            .collect()
    }
}

async fn insert_key(conn: &mut PgConnection, k: &StoredKey) -> Result<()> {
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
