//! The SQLite store (sqlx): the PostgreSQL store's behaviour on one file.
//!
//! One connection serves the whole process: SQLite has a single writer
//! anyway, and with one connection the read-then-write sequences that
//! PostgreSQL guards with row and advisory locks (the audit chain, throttles,
//! reset tokens, the outbox claim) run one after another. Every transaction
//! that writes begins IMMEDIATE, taking the write lock before its first read,
//! so another process on the same file (the CLI while the server runs) waits
//! for it (busy_timeout) instead of reading a state that is about to change.
//!
//! Times are stored as INTEGER microseconds since the Unix epoch, UTC: what
//! PostgreSQL keeps, compared as numbers. (sqlx would store a DateTime as
//! RFC 3339 text with 0, 3, 6 or 9 fraction digits, which is not a fixed
//! format.) They are computed here, never by SQLite's clock.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Row, SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous},
};
use uuid::Uuid;

use super::{
    App, AuditFilter, Credentials, GroupRecord, MailRecipient, NewReset, NewServiceToken, NewSession, NewUser,
    OutboxMessage, Relief, ResetCheck, Result, SealedUser, ServiceTokenInfo, ServiceTokenRow, SessionInfo,
    SessionLookup, SessionRow, Store, StoreError, StoredKey, ThrottleRule, TokenRevocation, UserChange, UserRecord,
    from_row,
};
use crate::audit::{self, AuditRecord, StoredAudit};

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// How every writing transaction begins: with the write lock taken.
const BEGIN: &str = "BEGIN IMMEDIATE";

impl SqliteStore {
    /// Opens the database file, creating it (and its folder) when missing.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // FULL: what was acknowledged survives a power loss, the trail
            // included (NORMAL could lose the last commits).
            .synchronous(SqliteSynchronous::Full);
        if !in_memory(url)
            && let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            // The one connection stays open: an in-memory database lives
            // only as long as it does.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

const USER_COLUMNS: &str = "id, app_id, profile_ct, active, supervisor, version, created_at, updated_at";

/// The users that a reset request names: the active user with the username.
const RESET_USER: &str = "SELECT id FROM users WHERE app_id = ?1 AND username_bidx = ?2 AND active";

/// A time as stored: microseconds since the epoch.
fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn dur_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// `t + d`, kept within what chrono can read back.
fn later(t: i64, d: Duration) -> i64 {
    t.saturating_add(dur_us(d)).min(DateTime::<Utc>::MAX_UTC.timestamp_micros())
}

fn earlier(t: i64, d: Duration) -> i64 {
    t.saturating_sub(dur_us(d))
}

fn time(micros: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| StoreError::Corrupt(format!("a stored time ({micros})")))
}

fn time_of(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>> {
    time(row.try_get(column)?)
}

fn optional_time_of(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>> {
    row.try_get::<Option<i64>, _>(column)?.map(time).transpose()
}

fn now_us() -> i64 {
    us(Utc::now())
}

/// Whole seconds: replies show times to the second, and a stored time must
/// read back as it was shown.
fn now_seconds() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now)
}

fn user_from_row(row: &SqliteRow) -> Result<UserRecord> {
    Ok(UserRecord {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        profile_ct: row.try_get("profile_ct")?,
        active: row.try_get("active")?,
        supervisor: row.try_get("supervisor")?,
        version: row.try_get("version")?,
        created_at: time_of(row, "created_at")?,
        updated_at: time_of(row, "updated_at")?,
    })
}

const KEY_COLUMNS: &str = "id, app_id, purpose, wrapped, master_key_id, current";

async fn insert_key(conn: &mut SqliteConnection, k: &StoredKey, now: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO app_keys (id, app_id, purpose, wrapped, master_key_id, current, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(k.id)
    .bind(k.app_id)
    .bind(&k.purpose)
    .bind(&k.wrapped)
    .bind(&k.master_key_id)
    .bind(k.current)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert_session(conn: &mut SqliteConnection, app_id: Uuid, user_id: Uuid, s: &NewSession) -> Result<()> {
    let now = now_us();
    sqlx::query(
        "INSERT INTO sessions (id, app_id, user_id, token_hash, created_at, last_seen_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
    )
    .bind(s.id)
    .bind(app_id)
    .bind(user_id)
    .bind(&s.token_hash)
    .bind(now)
    .bind(later(now, s.max_age))
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends to the trail inside the caller's transaction: the records commit
/// or vanish with the change they describe. The transaction holds the write
/// lock (BEGIN IMMEDIATE), so the last hash read here is still the last one
/// when the records go in.
async fn append_in(conn: &mut SqliteConnection, records: &[AuditRecord]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let last: Option<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let mut prev = last.unwrap_or_else(|| audit::GENESIS.to_vec());
    for r in records {
        let hash = audit::chain_hash(&prev, r);
        let fields = serde_json::to_string(&r.fields).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO audit_events (id, at, app_id, actor, actor_id, subject_id, object_id, action, fields,
                                       outcome, request_id, client_addr, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )
        .bind(r.id)
        .bind(us(r.at))
        .bind(r.app_id)
        .bind(&r.actor)
        .bind(r.actor_id)
        .bind(r.subject_id)
        .bind(r.object_id)
        .bind(&r.action)
        .bind(fields)
        .bind(&r.outcome)
        .bind(&r.request_id)
        .bind(&r.client_addr)
        .bind(&prev)
        .bind(&hash)
        .execute(&mut *conn)
        .await?;
        prev = hash;
    }
    Ok(())
}

fn outbox_from_row(r: &SqliteRow) -> Result<OutboxMessage> {
    Ok(OutboxMessage {
        id: r.try_get("id")?,
        app_id: r.try_get("app_id")?,
        user_id: r.try_get("user_id")?,
        kind: r.try_get("kind")?,
        payload_ct: r.try_get("payload_ct")?,
        attempts: r.try_get("attempts")?,
        created_at: time_of(r, "created_at")?,
    })
}

fn audit_from_row(r: &SqliteRow) -> Result<StoredAudit> {
    let fields: String = r.try_get("fields")?;
    let fields: Vec<String> =
        serde_json::from_str(&fields).map_err(|e| StoreError::Corrupt(format!("audit record fields: {e}")))?;
    Ok(StoredAudit {
        seq: r.try_get("seq")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
        record: AuditRecord {
            id: r.try_get("id")?,
            at: time_of(r, "at")?,
            app_id: r.try_get("app_id")?,
            actor: r.try_get("actor")?,
            actor_id: r.try_get("actor_id")?,
            subject_id: r.try_get("subject_id")?,
            object_id: r.try_get("object_id")?,
            action: r.try_get("action")?,
            fields,
            outcome: r.try_get("outcome")?,
            request_id: r.try_get("request_id")?,
            client_addr: r.try_get("client_addr")?,
        },
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        // sqlx takes no lock on SQLite: two processes starting on a new file
        // may both apply the first migration, and the second then fails on
        // tables that exist by now. Each migration is one transaction, so a
        // second run finds it applied (or fails again, for real).
        let migrator = sqlx::migrate!("./migrations/sqlite");
        if let Err(first) = migrator.run(&self.pool).await {
            migrator.run(&self.pool).await.map_err(|_| first)?;
        }
        Ok(())
    }

    async fn create_app(&self, app: &App, api_key_hash: &[u8], keys: &[StoredKey], audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        sqlx::query("INSERT INTO applications (id, name, api_key_hash, created_at) VALUES (?1, ?2, ?3, ?4)")
            .bind(app.id)
            .bind(&app.name)
            .bind(api_key_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        for k in keys {
            insert_key(&mut tx, k, now).await?;
        }
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn app_by_key_hash(&self, api_key_hash: &[u8]) -> Result<Option<App>> {
        let row = sqlx::query("SELECT id, name FROM applications WHERE api_key_hash = ?1")
            .bind(api_key_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn app_key(&self, key_id: Uuid) -> Result<Option<StoredKey>> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM app_keys WHERE id = ?1"))
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn current_app_key(&self, app_id: Uuid, purpose: &str) -> Result<Option<StoredKey>> {
        let row =
            sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM app_keys WHERE app_id = ?1 AND purpose = ?2 AND current"))
                .bind(app_id)
                .bind(purpose)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn all_app_keys(&self) -> Result<Vec<StoredKey>> {
        let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM app_keys ORDER BY created_at, id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    async fn rewrap_app_keys(&self, keys: &[StoredKey], audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        for k in keys {
            sqlx::query("UPDATE app_keys SET wrapped = ?2, master_key_id = ?3 WHERE id = ?1")
                .bind(k.id)
                .bind(&k.wrapped)
                .bind(&k.master_key_id)
                .execute(&mut *tx)
                .await?;
        }
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_current_app_key(&self, key: &StoredKey, audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        sqlx::query("UPDATE app_keys SET current = 0 WHERE app_id = ?1 AND purpose = ?2 AND current")
            .bind(key.app_id)
            .bind(&key.purpose)
            .execute(&mut *tx)
            .await?;
        insert_key(&mut tx, key, now_us()).await?;
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn users_not_under_key(&self, app_id: Uuid, key_id: Uuid, limit: i64) -> Result<Vec<SealedUser>> {
        let rows = sqlx::query(
            "SELECT id, version, username_ct, profile_ct FROM users WHERE app_id = ?1 AND key_id <> ?2 LIMIT ?3",
        )
        .bind(app_id)
        .bind(key_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    async fn reseal_user(&self, app_id: Uuid, user: &SealedUser, key_id: Uuid) -> Result<bool> {
        // The version is left as it is (see the PostgreSQL store).
        let done = sqlx::query(
            "UPDATE users SET username_ct = ?4, profile_ct = ?5, key_id = ?6
             WHERE app_id = ?1 AND id = ?2 AND version = ?3",
        )
        .bind(app_id)
        .bind(user.id)
        .bind(user.version)
        .bind(&user.username_ct)
        .bind(&user.profile_ct)
        .bind(key_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_supervisor(&self, app_id: Uuid, username_bidx: &[u8], on: bool, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let id: Option<Uuid> = sqlx::query_scalar(
            "UPDATE users SET supervisor = ?3 WHERE app_id = ?1 AND username_bidx = ?2 RETURNING id",
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
        append_in(&mut tx, &[audit]).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn create_user(
        &self,
        user: NewUser,
        session: Option<NewSession>,
        audit: &[AuditRecord],
    ) -> Result<Option<UserRecord>> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_seconds();
        let row = sqlx::query(&format!(
            "INSERT INTO users (id, app_id, key_id, username_ct, username_bidx, password_hash, email_bidx,
                                profile_ct, active, created_at, updated_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10
             WHERE EXISTS (SELECT 1 FROM app_keys WHERE id = ?3 AND current)
             RETURNING {USER_COLUMNS}"
        ))
        .bind(user.id)
        .bind(user.app_id)
        .bind(user.key_id)
        .bind(&user.username_ct)
        .bind(&user.username_bidx)
        .bind(&user.password_hash)
        .bind(&user.email_bidx)
        .bind(&user.profile_ct)
        .bind(user.active)
        .bind(us(now))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO memberships (app_id, group_id, user_id, created_at)
             SELECT app_id, id, ?2, ?3 FROM groups WHERE app_id = ?1 AND is_default",
        )
        .bind(user.app_id)
        .bind(user.id)
        .bind(now_us())
        .execute(&mut *tx)
        .await?;
        if let Some(s) = &session {
            insert_session(&mut tx, user.app_id, user.id, s).await?;
        }
        append_in(&mut tx, audit).await?;
        tx.commit().await?;
        user_from_row(&row).map(Some)
    }

    async fn get_user(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<UserRecord>> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE app_id = ?1 AND id = ?2"))
            .bind(app_id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn credentials(&self, app_id: Uuid, username_bidx: &[u8]) -> Result<Option<Credentials>> {
        let row = sqlx::query("SELECT id, password_hash, active FROM users WHERE app_id = ?1 AND username_bidx = ?2")
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
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let (username_ct, username_bidx) = change.username.clone().unzip();
        // A key rotated away since the caller sealed makes this a conflict:
        // the caller re-reads and seals again under the current key.
        let row = sqlx::query(&format!(
            "UPDATE users SET
                 key_id = ?4,
                 username_ct = COALESCE(?5, username_ct),
                 username_bidx = COALESCE(?6, username_bidx),
                 password_hash = COALESCE(?7, password_hash),
                 email_bidx = ?8,
                 profile_ct = ?9,
                 active = ?10,
                 version = version + 1,
                 updated_at = MAX(?11, updated_at)
             WHERE app_id = ?1 AND id = ?2 AND version = ?3
               AND EXISTS (SELECT 1 FROM app_keys WHERE id = ?4 AND current)
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
        .bind(us(now_seconds()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        if change.password_hash.is_some() || !change.active {
            // A new password or a deactivation ends the user's other sessions.
            sqlx::query("DELETE FROM sessions WHERE app_id = ?1 AND user_id = ?2 AND id IS NOT ?3")
                .bind(app_id)
                .bind(user_id)
                .bind(change.keep_session.filter(|_| change.active))
                .execute(&mut *tx)
                .await?;
        }
        append_in(&mut tx, audit).await?;
        tx.commit().await?;
        user_from_row(&row).map(Some)
    }

    async fn delete_user(&self, app_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool> {
        // Sessions, memberships, reset tokens and outbox rows go by ON DELETE
        // CASCADE (foreign_keys is on); the trail stays.
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let done = sqlx::query("DELETE FROM users WHERE app_id = ?1 AND id = ?2")
            .bind(app_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn queue_username_reminders(&self, app_id: Uuid, email_bidx: &[u8], audit: &AuditRecord) -> Result<u64> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE app_id = ?1 AND email_bidx = ?2")
            .bind(app_id)
            .bind(email_bidx)
            .fetch_all(&mut *tx)
            .await?;
        for id in &ids {
            sqlx::query(
                "INSERT INTO outbox (id, app_id, user_id, kind, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, 'username_reminder', ?4, ?4)",
            )
            .bind(Uuid::new_v4())
            .bind(app_id)
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let records: Vec<AuditRecord> = ids
            .iter()
            .map(|id| {
                let mut r = audit.clone();
                r.id = Uuid::now_v7();
                r.subject_id = Some(*id);
                r
            })
            .collect();
        append_in(&mut tx, &records).await?;
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
        let mut tx = self.pool.begin_with(BEGIN).await?;
        insert_session(&mut tx, app_id, user_id, &session).await?;
        sqlx::query("DELETE FROM throttles WHERE key = ?1").bind(relief.clear).execute(&mut *tx).await?;
        sqlx::query("UPDATE throttles SET failures = MAX(failures - 1, 0) WHERE key = ?1")
            .bind(relief.forgive)
            .execute(&mut *tx)
            .await?;
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lookup_session(
        &self,
        app_id: Uuid,
        token_hash: &[u8],
        idle_timeout: Duration,
        touch_after: Duration,
    ) -> Result<SessionLookup> {
        let now = now_us();
        let row = sqlx::query(
            "SELECT s.id, s.user_id, u.supervisor,
                    (u.active AND s.expires_at > ?3 AND s.last_seen_at > ?4) AS live,
                    s.last_seen_at < ?5 AS stale
             FROM sessions s JOIN users u ON u.app_id = s.app_id AND u.id = s.user_id
             WHERE s.token_hash = ?1 AND s.app_id = ?2",
        )
        .bind(token_hash)
        .bind(app_id)
        .bind(now)
        .bind(earlier(now, idle_timeout))
        .bind(earlier(now, touch_after))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(SessionLookup::Unknown);
        };
        let session_id: Uuid = row.try_get("id")?;
        if !row.try_get::<bool, _>("live")? {
            sqlx::query("DELETE FROM sessions WHERE id = ?1").bind(session_id).execute(&self.pool).await?;
            return Ok(SessionLookup::Expired);
        }
        if row.try_get::<bool, _>("stale")? {
            sqlx::query("UPDATE sessions SET last_seen_at = ?2 WHERE id = ?1")
                .bind(session_id)
                .bind(now_us())
                .execute(&self.pool)
                .await?;
        }
        Ok(SessionLookup::Live(SessionInfo {
            session_id,
            user_id: row.try_get("user_id")?,
            supervisor: row.try_get("supervisor")?,
        }))
    }

    async fn delete_sessions(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        session_id: Option<Uuid>,
        audit: Option<&AuditRecord>,
    ) -> Result<u64> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let done = sqlx::query("DELETE FROM sessions WHERE app_id = ?1 AND user_id = ?2 AND (?3 IS NULL OR id = ?3)")
            .bind(app_id)
            .bind(user_id)
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        if let Some(a) = audit {
            append_in(&mut tx, std::slice::from_ref(a)).await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn list_sessions(&self, app_id: Uuid, user_id: Uuid, idle_timeout: Duration) -> Result<Vec<SessionRow>> {
        let now = now_us();
        let rows = sqlx::query(
            "SELECT id, created_at, last_seen_at, expires_at FROM sessions
             WHERE app_id = ?1 AND user_id = ?2 AND expires_at > ?3 AND last_seen_at > ?4
             ORDER BY created_at, id",
        )
        .bind(app_id)
        .bind(user_id)
        .bind(now)
        .bind(earlier(now, idle_timeout))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionRow {
                    id: r.try_get("id")?,
                    created_at: time_of(r, "created_at")?,
                    last_seen_at: time_of(r, "last_seen_at")?,
                    expires_at: time_of(r, "expires_at")?,
                })
            })
            .collect()
    }

    async fn session_owner(&self, app_id: Uuid, session_id: Uuid) -> Result<Option<Uuid>> {
        Ok(sqlx::query_scalar("SELECT user_id FROM sessions WHERE app_id = ?1 AND id = ?2")
            .bind(app_id)
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn create_group(&self, app_id: Uuid, group: &GroupRecord, audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        sqlx::query("INSERT INTO groups (id, app_id, name, is_default, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")
            .bind(group.id)
            .bind(app_id)
            .bind(&group.name)
            .bind(group.is_default)
            .bind(now_us())
            .execute(&mut *tx)
            .await?;
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_group(&self, app_id: Uuid, group_id: Uuid) -> Result<Option<GroupRecord>> {
        let row = sqlx::query("SELECT id, name, is_default FROM groups WHERE app_id = ?1 AND id = ?2")
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
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let row = sqlx::query(
            "UPDATE groups SET name = COALESCE(?3, name), is_default = COALESCE(?4, is_default)
             WHERE app_id = ?1 AND id = ?2 RETURNING id, name, is_default",
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
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        from_row(&row).map(Some)
    }

    async fn delete_group(&self, app_id: Uuid, group_id: Uuid, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let done = sqlx::query("DELETE FROM groups WHERE app_id = ?1 AND id = ?2")
            .bind(app_id)
            .bind(group_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn add_member(&self, app_id: Uuid, group_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        // Nothing unless both rows are in the application; an existing
        // membership is left as it is.
        let pair: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM groups g, users u WHERE g.app_id = ?1 AND g.id = ?2 AND u.app_id = ?1 AND u.id = ?3",
        )
        .bind(app_id)
        .bind(group_id)
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        if pair == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO memberships (app_id, group_id, user_id, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (group_id, user_id) DO NOTHING",
        )
        .bind(app_id)
        .bind(group_id)
        .bind(user_id)
        .bind(now_us())
        .execute(&mut *tx)
        .await?;
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn remove_member(&self, app_id: Uuid, group_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let done = sqlx::query("DELETE FROM memberships WHERE app_id = ?1 AND group_id = ?2 AND user_id = ?3")
            .bind(app_id)
            .bind(group_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list_members(&self, app_id: Uuid, group_id: Uuid) -> Result<Vec<Uuid>> {
        let rows = sqlx::query(
            "SELECT user_id FROM memberships WHERE app_id = ?1 AND group_id = ?2 ORDER BY created_at, user_id",
        )
        .bind(app_id)
        .bind(group_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| r.try_get("user_id").map_err(StoreError::from)).collect()
    }

    async fn list_groups(&self, app_id: Uuid, default_only: bool) -> Result<Vec<GroupRecord>> {
        let rows = sqlx::query(
            "SELECT id, name, is_default FROM groups WHERE app_id = ?1 AND (is_default OR NOT ?2) ORDER BY created_at, id",
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
             WHERE m.app_id = ?1 AND m.user_id = ?2 ORDER BY m.created_at, g.id",
        )
        .bind(app_id)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    async fn throttle_attempt(&self, keys: &[(Vec<u8>, ThrottleRule)]) -> Result<Option<Duration>> {
        let mut sorted: Vec<&(Vec<u8>, ThrottleRule)> = keys.iter().collect();
        // The same order as the PostgreSQL store (there, the lock order).
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        let mut wait: Option<i64> = None;
        for (key, _) in &sorted {
            sqlx::query(
                "INSERT INTO throttles (key, failures, last_failure) VALUES (?1, 0, ?2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let blocked_until: Option<i64> = sqlx::query_scalar("SELECT blocked_until FROM throttles WHERE key = ?1")
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
            if let Some(w) = blocked_until.map(|b| b.saturating_sub(now)).filter(|w| *w > 0) {
                wait = Some(wait.map_or(w, |m| m.max(w)));
            }
        }
        if let Some(w) = wait {
            tx.commit().await?;
            return Ok(Some(Duration::from_micros(w.unsigned_abs())));
        }
        for (key, rule) in &sorted {
            // Past `free` attempts the wait doubles with each: 1 s, 2 s, 4 s,
            // ... up to `max_wait`. Attempts older than `window` are forgotten.
            let (failures, last_failure): (i32, i64) =
                sqlx::query_as("SELECT failures, last_failure FROM throttles WHERE key = ?1")
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?;
            let failures = if last_failure < earlier(now, rule.window) { 1 } else { failures.saturating_add(1) };
            let blocked_until = (failures >= rule.free).then(|| {
                let doubling = Duration::from_secs(1 << (i64::from(failures) - i64::from(rule.free)).clamp(0, 30));
                later(now, rule.max_wait.min(doubling))
            });
            sqlx::query("UPDATE throttles SET failures = ?2, last_failure = ?3, blocked_until = ?4 WHERE key = ?1")
                .bind(key)
                .bind(failures)
                .bind(now)
                .bind(blocked_until)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(None)
    }

    async fn throttle_failed(&self, keys: &[(Vec<u8>, ThrottleRule)]) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        for (key, rule) in keys {
            let failures: Option<i32> = sqlx::query_scalar("SELECT failures FROM throttles WHERE key = ?1")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(failures) = failures.filter(|f| *f >= rule.free) else { continue };
            let doubling = Duration::from_secs(1 << (i64::from(failures) - i64::from(rule.free)).clamp(0, 30));
            sqlx::query("UPDATE throttles SET blocked_until = ?2 WHERE key = ?1")
                .bind(key)
                .bind(later(now, rule.max_wait.min(doubling)))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn request_password_reset(
        &self,
        app_id: Uuid,
        username_bidx: &[u8],
        reset: &NewReset,
        audit: &AuditRecord,
    ) -> Result<Option<Uuid>> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        // The same four statements run whether or not there is such a user:
        // each of the last three selects it again and does nothing without it.
        let user: Option<Uuid> =
            sqlx::query_scalar(RESET_USER).bind(app_id).bind(username_bidx).fetch_optional(&mut *tx).await?;
        sqlx::query(&format!("DELETE FROM password_resets WHERE user_id IN ({RESET_USER})"))
            .bind(app_id)
            .bind(username_bidx)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO password_resets (token_hash, app_id, user_id, expires_at)
             SELECT ?3, ?1, id, ?4 FROM ({RESET_USER})"
        ))
        .bind(app_id)
        .bind(username_bidx)
        .bind(&reset.token_hash)
        .bind(later(now, reset.lifetime))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO outbox (id, app_id, user_id, kind, payload_ct, created_at, next_attempt_at)
             SELECT ?3, ?1, id, 'password_reset', ?4, ?5, ?5 FROM ({RESET_USER})"
        ))
        .bind(app_id)
        .bind(username_bidx)
        .bind(reset.outbox_id)
        .bind(&reset.payload_ct)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let mut audit = audit.clone();
        audit.subject_id = user;
        append_in(&mut tx, &[audit]).await?;
        tx.commit().await?;
        Ok(user)
    }

    async fn reset_password(
        &self,
        token_hash: &[u8],
        new_password: Option<(&str, &AuditRecord)>,
    ) -> Result<ResetCheck> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        let row =
            sqlx::query("SELECT app_id, user_id, expires_at > ?2 AS live FROM password_resets WHERE token_hash = ?1")
                .bind(token_hash)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(row) = row else {
            return Ok(ResetCheck::Unknown);
        };
        let (app_id, user_id): (Uuid, Uuid) = (row.try_get("app_id")?, row.try_get("user_id")?);
        if !row.try_get::<bool, _>("live")? {
            sqlx::query("DELETE FROM password_resets WHERE token_hash = ?1").bind(token_hash).execute(&mut *tx).await?;
            tx.commit().await?;
            return Ok(ResetCheck::Expired);
        }
        let Some((hash, audit)) = new_password else {
            return Ok(ResetCheck::Live { app_id, user_id });
        };
        sqlx::query(
            "UPDATE users SET password_hash = ?3, version = version + 1, updated_at = MAX(?4, updated_at)
             WHERE app_id = ?1 AND id = ?2",
        )
        .bind(app_id)
        .bind(user_id)
        .bind(hash)
        .bind(us(now_seconds()))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM password_resets WHERE user_id = ?1").bind(user_id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM sessions WHERE app_id = ?1 AND user_id = ?2")
            .bind(app_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let mut audit = audit.clone();
        audit.app_id = Some(app_id);
        audit.subject_id = Some(user_id);
        append_in(&mut tx, &[audit]).await?;
        tx.commit().await?;
        Ok(ResetCheck::Live { app_id, user_id })
    }

    async fn claim_outbox(&self, limit: i64, lease: Duration) -> Result<Vec<OutboxMessage>> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        // The write lock keeps any other sender out between the two steps.
        let due: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM outbox WHERE next_attempt_at <= ?1 AND failed_at IS NULL ORDER BY next_attempt_at LIMIT ?2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::with_capacity(due.len());
        for id in due {
            let row = sqlx::query(
                "UPDATE outbox SET next_attempt_at = ?2, attempts = attempts + 1 WHERE id = ?1
                 RETURNING id, app_id, user_id, kind, payload_ct, attempts, created_at",
            )
            .bind(id)
            .bind(later(now, lease))
            .fetch_one(&mut *tx)
            .await?;
            claimed.push(outbox_from_row(&row)?);
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn mail_recipient(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<MailRecipient>> {
        let row = sqlx::query(
            "SELECT a.name, u.username_ct, u.profile_ct FROM users u JOIN applications a ON a.id = u.app_id
             WHERE u.app_id = ?1 AND u.id = ?2",
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
        sqlx::query("DELETE FROM outbox WHERE id = ?1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn outbox_retry(&self, id: Uuid, after: Duration) -> Result<()> {
        sqlx::query("UPDATE outbox SET next_attempt_at = ?2 WHERE id = ?1")
            .bind(id)
            .bind(later(now_us(), after))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outbox_give_up(&self, id: Uuid) -> Result<()> {
        // The sealed token goes; only the fact and time of failure stay.
        sqlx::query("UPDATE outbox SET failed_at = ?2, payload_ct = NULL WHERE id = ?1")
            .bind(id)
            .bind(now_us())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_service_token(&self, token: &NewServiceToken, audit: &AuditRecord) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        sqlx::query(
            "INSERT INTO service_tokens (id, app_id, name, role, token_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(token.id)
        .bind(token.app_id)
        .bind(&token.name)
        .bind(&token.role)
        .bind(&token.token_hash)
        .bind(now_us())
        .execute(&mut *tx)
        .await?;
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lookup_service_token(
        &self,
        app_id: Uuid,
        token_hash: &[u8],
        touch_after: Duration,
    ) -> Result<Option<ServiceTokenInfo>> {
        let now = now_us();
        let row = sqlx::query(
            "SELECT id, role, last_used_at IS NULL OR last_used_at < ?3 AS stale
             FROM service_tokens WHERE token_hash = ?1 AND app_id = ?2 AND revoked_at IS NULL",
        )
        .bind(token_hash)
        .bind(app_id)
        .bind(earlier(now, touch_after))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let token_id: Uuid = row.try_get("id")?;
        if row.try_get::<bool, _>("stale")? {
            sqlx::query("UPDATE service_tokens SET last_used_at = ?2 WHERE id = ?1")
                .bind(token_id)
                .bind(now_us())
                .execute(&self.pool)
                .await?;
        }
        Ok(Some(ServiceTokenInfo { token_id, role: row.try_get("role")? }))
    }

    async fn revoke_service_token(&self, app_id: Uuid, token_id: Uuid, audit: &AuditRecord) -> Result<TokenRevocation> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let revoked: Option<bool> =
            sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM service_tokens WHERE app_id = ?1 AND id = ?2")
                .bind(app_id)
                .bind(token_id)
                .fetch_optional(&mut *tx)
                .await?;
        match revoked {
            None => return Ok(TokenRevocation::Unknown),
            Some(true) => return Ok(TokenRevocation::AlreadyRevoked),
            Some(false) => {}
        }
        sqlx::query("UPDATE service_tokens SET revoked_at = ?3 WHERE app_id = ?1 AND id = ?2")
            .bind(app_id)
            .bind(token_id)
            .bind(now_us())
            .execute(&mut *tx)
            .await?;
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(TokenRevocation::Revoked)
    }

    async fn list_service_tokens(&self, app_id: Uuid) -> Result<Vec<ServiceTokenRow>> {
        let rows = sqlx::query(
            "SELECT id, name, role, created_at, last_used_at, revoked_at FROM service_tokens
             WHERE app_id = ?1 ORDER BY created_at, id",
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
                    created_at: time_of(r, "created_at")?,
                    last_used_at: optional_time_of(r, "last_used_at")?,
                    revoked_at: optional_time_of(r, "revoked_at")?,
                })
            })
            .collect()
    }

    async fn sweep(&self) -> Result<u64> {
        let now = now_us();
        let day_ago = earlier(now, Duration::from_secs(24 * 60 * 60));
        let mut n = 0;
        for sql in [
            "DELETE FROM sessions WHERE expires_at < ?1",
            "DELETE FROM password_resets WHERE expires_at < ?1",
            "DELETE FROM throttles WHERE last_failure < ?2 AND (blocked_until IS NULL OR blocked_until < ?1)",
        ] {
            // A statement without ?2 ignores the second value.
            n += sqlx::query(sql).bind(now).bind(day_ago).execute(&self.pool).await?.rows_affected();
        }
        Ok(n)
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        append_in(&mut tx, records).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_records(&self, f: &AuditFilter) -> Result<Vec<StoredAudit>> {
        let rows = sqlx::query(
            "SELECT * FROM audit_events
             WHERE seq > ?1 AND (?2 IS NULL OR app_id = ?2) AND (?3 IS NULL OR subject_id = ?3)
               AND (?4 IS NULL OR at >= ?4)
             ORDER BY seq LIMIT ?5",
        )
        .bind(f.after_seq)
        .bind(f.app_id)
        .bind(f.subject_id)
        .bind(f.since.map(us))
        .bind(f.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{GENESIS, verify};

    /// A fresh database in a folder that does not exist yet.
    struct TempDb {
        dir: std::path::PathBuf,
        store: SqliteStore,
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn temp_db() -> TempDb {
        let dir = std::env::temp_dir().join(format!("usersvc-sqlite-{}", Uuid::new_v4()));
        let url = format!("sqlite://{}/nested/usersvc.db", dir.display());
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        assert!(dir.join("nested/usersvc.db").exists());
        TempDb { dir, store }
    }

    fn key(app_id: Uuid, purpose: &str) -> StoredKey {
        StoredKey {
            id: Uuid::now_v7(),
            app_id,
            purpose: purpose.into(),
            wrapped: vec![7; 40],
            master_key_id: "mk1".into(),
            current: true,
        }
    }

    struct Fixture {
        app: App,
        data_key: StoredKey,
    }

    async fn new_app(s: &SqliteStore, name: &str) -> Fixture {
        let app = App { id: Uuid::now_v7(), name: name.into() };
        let data_key = key(app.id, "data");
        let keys = [data_key.clone(), key(app.id, "index")];
        s.create_app(&app, name.as_bytes(), &keys, &AuditRecord::new("app.create", Some(app.id))).await.unwrap();
        Fixture { app, data_key }
    }

    fn new_user(f: &Fixture, username: &str) -> NewUser {
        NewUser {
            id: Uuid::now_v7(),
            app_id: f.app.id,
            key_id: f.data_key.id,
            username_ct: format!("ct:{username}").into_bytes(),
            username_bidx: username.as_bytes().to_vec(),
            password_hash: "hash-1".into(),
            email_bidx: Some(format!("mail:{username}").into_bytes()),
            profile_ct: b"profile".to_vec(),
            active: true,
        }
    }

    fn session(token: &str) -> NewSession {
        NewSession { id: Uuid::now_v7(), token_hash: token.as_bytes().to_vec(), max_age: Duration::from_secs(3600) }
    }

    fn change(expected_version: i64, key_id: Uuid) -> UserChange {
        UserChange {
            expected_version,
            key_id,
            username: None,
            password_hash: None,
            email_bidx: None,
            profile_ct: b"profile-2".to_vec(),
            active: true,
            keep_session: None,
        }
    }

    async fn chain_is_whole(s: &SqliteStore) -> Vec<StoredAudit> {
        let all = s.audit_records(&AuditFilter { limit: 10_000, ..Default::default() }).await.unwrap();
        verify(&all, GENESIS.to_vec()).unwrap();
        all
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn apps_keys_and_users() {
        let db = temp_db().await;
        let s = &db.store;
        let f = new_app(s, "app one").await;
        assert_eq!(s.app_by_key_hash(b"app one").await.unwrap().unwrap().id, f.app.id);
        assert!(s.app_by_key_hash(b"nope").await.unwrap().is_none());
        assert_eq!(s.all_app_keys().await.unwrap().len(), 2);
        assert_eq!(s.current_app_key(f.app.id, "data").await.unwrap().unwrap().id, f.data_key.id);
        assert_eq!(s.app_key(f.data_key.id).await.unwrap().unwrap().wrapped, vec![7; 40]);

        // A default group takes every new user in.
        let group = GroupRecord { id: Uuid::now_v7(), name: "everyone".into(), is_default: true };
        s.create_group(f.app.id, &group, &AuditRecord::new("group.create", Some(f.app.id))).await.unwrap();

        let nu = new_user(&f, "alice");
        let created = s
            .create_user(nu.clone(), Some(session("tok-a")), &[AuditRecord::new("user.create", Some(f.app.id))])
            .await
            .unwrap()
            .unwrap();
        assert_eq!((created.version, created.active, created.supervisor), (1, true, false));
        assert_eq!(created.created_at.timestamp_subsec_nanos(), 0, "whole seconds");
        let got = s.get_user(f.app.id, nu.id).await.unwrap().unwrap();
        assert_eq!((got.id, got.created_at, got.updated_at), (nu.id, created.created_at, created.updated_at));
        assert!(s.get_user(Uuid::now_v7(), nu.id).await.unwrap().is_none(), "scoped to the application");
        let cred = s.credentials(f.app.id, b"alice").await.unwrap().unwrap();
        assert_eq!((cred.user_id, cred.password_hash.as_str(), cred.active), (nu.id, "hash-1", true));
        assert_eq!(s.list_user_groups(f.app.id, nu.id).await.unwrap()[0].id, group.id);

        // The same username in the same application is taken; in another it is not.
        let mut dup = new_user(&f, "alice");
        dup.id = Uuid::now_v7();
        match s.create_user(dup.clone(), None, &[]).await {
            Err(StoreError::Conflict(c)) => assert_eq!(c, "users_app_username_key"),
            other => panic!("{other:?}"),
        }
        let other = new_app(s, "app two").await;
        s.create_user(new_user(&other, "alice"), None, &[]).await.unwrap();
        match s.create_user(NewUser { id: nu.id, ..new_user(&f, "bob") }, None, &[]).await {
            Err(StoreError::Conflict(c)) => assert_eq!(c, "users_pkey"),
            other => panic!("{other:?}"),
        }

        // Compare-and-set on the version.
        let keep = session("tok-keep");
        let signed_in = AuditRecord::new("session.sign_in", Some(f.app.id));
        s.create_session(f.app.id, nu.id, keep.clone(), Relief::default(), &signed_in).await.unwrap();
        let mut c = change(1, f.data_key.id);
        c.password_hash = Some("hash-2".into());
        c.keep_session = Some(keep.id);
        c.username = Some((b"ct:alicia".to_vec(), b"alicia".to_vec()));
        let updated = s.update_user(f.app.id, nu.id, c, &[]).await.unwrap().unwrap();
        assert_eq!(updated.version, 2);
        assert_eq!(updated.profile_ct, b"profile-2");
        assert!(updated.updated_at >= created.updated_at);
        assert!(s.update_user(f.app.id, nu.id, change(1, f.data_key.id), &[]).await.unwrap().is_none(), "stale");
        assert_eq!(s.credentials(f.app.id, b"alicia").await.unwrap().unwrap().password_hash, "hash-2");
        assert!(s.credentials(f.app.id, b"alice").await.unwrap().is_none());
        // The password change ended every session but the one kept.
        let left = s.list_sessions(f.app.id, nu.id, HOUR).await.unwrap();
        assert_eq!(left.iter().map(|r| r.id).collect::<Vec<_>>(), vec![keep.id]);

        // A rotated-away key makes the update a conflict.
        let new_key = key(f.app.id, "data");
        s.add_current_app_key(&new_key, &AuditRecord::new("key.rotate", Some(f.app.id))).await.unwrap();
        assert!(!s.app_key(f.data_key.id).await.unwrap().unwrap().current);
        assert!(s.update_user(f.app.id, nu.id, change(2, f.data_key.id), &[]).await.unwrap().is_none());
        let stale = s.users_not_under_key(f.app.id, new_key.id, 10).await.unwrap();
        assert_eq!(stale.len(), 1);
        assert!(s.reseal_user(f.app.id, &stale[0], new_key.id).await.unwrap());
        assert!(s.users_not_under_key(f.app.id, new_key.id, 10).await.unwrap().is_empty());
        assert_eq!(s.update_user(f.app.id, nu.id, change(2, new_key.id), &[]).await.unwrap().unwrap().version, 3);

        // So does a new user's: nothing of it is written.
        let rotated = new_user(&f, "carol");
        assert!(s.create_user(rotated.clone(), Some(session("tok-c")), &[]).await.unwrap().is_none());
        assert!(s.get_user(f.app.id, rotated.id).await.unwrap().is_none());
        assert!(s.credentials(f.app.id, b"carol").await.unwrap().is_none());
        assert!(matches!(s.lookup_session(f.app.id, b"tok-c", HOUR, HOUR).await.unwrap(), SessionLookup::Unknown));

        // Renaming onto a taken username is the same conflict.
        s.create_user(NewUser { key_id: new_key.id, ..rotated }, None, &[]).await.unwrap().unwrap();
        let mut c = change(3, new_key.id);
        c.username = Some((b"ct:carol".to_vec(), b"carol".to_vec()));
        match s.update_user(f.app.id, nu.id, c, &[]).await {
            Err(StoreError::Conflict(c)) => assert_eq!(c, "users_app_username_key"),
            other => panic!("{other:?}"),
        }

        assert!(s.set_supervisor(f.app.id, b"alicia", true, &AuditRecord::new("x", None)).await.unwrap());
        assert!(!s.set_supervisor(f.app.id, b"nobody", true, &AuditRecord::new("x", None)).await.unwrap());
        assert!(s.get_user(f.app.id, nu.id).await.unwrap().unwrap().supervisor);

        // Deleting the user takes their sessions and memberships along.
        assert!(s.delete_user(f.app.id, nu.id, &AuditRecord::new("user.delete", Some(f.app.id))).await.unwrap());
        assert!(!s.delete_user(f.app.id, nu.id, &AuditRecord::new("user.delete", Some(f.app.id))).await.unwrap());
        assert!(s.session_owner(f.app.id, keep.id).await.unwrap().is_none());
        assert!(s.list_members(f.app.id, group.id).await.unwrap().iter().all(|m| *m != nu.id));
        chain_is_whole(s).await;
    }

    #[tokio::test]
    async fn sessions_and_groups() {
        let db = temp_db().await;
        let s = &db.store;
        let f = new_app(s, "app").await;
        let other = new_app(s, "other").await;
        let nu = new_user(&f, "dave");
        let sess = session("tok-d");
        s.create_user(nu.clone(), Some(sess.clone()), &[]).await.unwrap();

        match s.lookup_session(f.app.id, b"tok-d", HOUR, HOUR).await.unwrap() {
            SessionLookup::Live(info) => assert_eq!((info.session_id, info.user_id), (sess.id, nu.id)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.lookup_session(other.app.id, b"tok-d", HOUR, HOUR).await.unwrap(), SessionLookup::Unknown));
        assert_eq!(s.session_owner(f.app.id, sess.id).await.unwrap(), Some(nu.id));
        // A touch refreshes last_seen_at.
        let before = s.list_sessions(f.app.id, nu.id, HOUR).await.unwrap()[0].last_seen_at;
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(matches!(
            s.lookup_session(f.app.id, b"tok-d", HOUR, Duration::ZERO).await.unwrap(),
            SessionLookup::Live(_)
        ));
        assert!(s.list_sessions(f.app.id, nu.id, HOUR).await.unwrap()[0].last_seen_at > before);
        // Idle past the timeout: expired, and gone.
        assert!(s.list_sessions(f.app.id, nu.id, Duration::ZERO).await.unwrap().is_empty());
        assert!(matches!(
            s.lookup_session(f.app.id, b"tok-d", Duration::ZERO, HOUR).await.unwrap(),
            SessionLookup::Expired
        ));
        assert!(matches!(s.lookup_session(f.app.id, b"tok-d", HOUR, HOUR).await.unwrap(), SessionLookup::Unknown));

        // delete_sessions: one, then all.
        let (a, b) = (session("a"), session("b"));
        for x in [&a, &b] {
            s.create_session(f.app.id, nu.id, x.clone(), Relief::default(), &AuditRecord::new("session.sign_in", None))
                .await
                .unwrap();
        }
        assert_eq!(s.delete_sessions(f.app.id, nu.id, Some(a.id), None).await.unwrap(), 1);
        assert_eq!(s.delete_sessions(f.app.id, nu.id, Some(a.id), None).await.unwrap(), 0);
        assert_eq!(s.delete_sessions(f.app.id, nu.id, None, Some(&AuditRecord::new("x", None))).await.unwrap(), 1);

        // Groups and members stay within their application.
        let g = GroupRecord { id: Uuid::now_v7(), name: "nurses".into(), is_default: false };
        let audit = || AuditRecord::new("group", Some(f.app.id));
        s.create_group(f.app.id, &g, &audit()).await.unwrap();
        let foreign = new_user(&other, "erin");
        s.create_user(foreign.clone(), None, &[]).await.unwrap();
        assert!(!s.add_member(f.app.id, g.id, foreign.id, &audit()).await.unwrap());
        assert!(!s.add_member(other.app.id, g.id, foreign.id, &audit()).await.unwrap());
        assert!(s.add_member(f.app.id, g.id, nu.id, &audit()).await.unwrap());
        assert!(s.add_member(f.app.id, g.id, nu.id, &audit()).await.unwrap(), "again: left as it is");
        assert_eq!(s.list_members(f.app.id, g.id).await.unwrap(), vec![nu.id]);
        let renamed = s.update_group(f.app.id, g.id, Some("RNs"), None, &audit()).await.unwrap().unwrap();
        assert_eq!((renamed.name.as_str(), renamed.is_default), ("RNs", false));
        let flagged = s.update_group(f.app.id, g.id, None, Some(true), &audit()).await.unwrap().unwrap();
        assert_eq!((flagged.name.as_str(), flagged.is_default), ("RNs", true));
        assert!(s.update_group(other.app.id, g.id, None, Some(true), &audit()).await.unwrap().is_none());
        assert_eq!(s.list_groups(f.app.id, true).await.unwrap().len(), 1);
        assert!(s.remove_member(f.app.id, g.id, nu.id, &audit()).await.unwrap());
        assert!(!s.remove_member(f.app.id, g.id, nu.id, &audit()).await.unwrap());
        assert!(s.add_member(f.app.id, g.id, nu.id, &audit()).await.unwrap());
        assert!(s.delete_group(f.app.id, g.id, &audit()).await.unwrap());
        assert!(s.list_user_groups(f.app.id, nu.id).await.unwrap().is_empty());
        assert!(s.get_group(f.app.id, g.id).await.unwrap().is_none());
        chain_is_whole(s).await;
    }

    #[tokio::test]
    async fn throttles_block_after_the_free_attempts() {
        let db = temp_db().await;
        let s = &db.store;
        let rule = ThrottleRule { free: 3, max_wait: Duration::from_secs(60), window: HOUR };
        let keys = vec![(b"user".to_vec(), rule), (b"addr".to_vec(), rule)];
        for _ in 0..3 {
            assert_eq!(s.throttle_attempt(&keys).await.unwrap(), None);
        }
        // The third failure set a wait of 1 s: the fourth attempt is refused.
        let wait = s.throttle_attempt(&keys).await.unwrap().expect("blocked");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        let failures: i32 = sqlx::query_scalar("SELECT failures FROM throttles WHERE key = ?1")
            .bind(b"user".as_slice())
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(failures, 3, "a refused attempt is not counted");
        // Any blocked key blocks the attempt, and nothing is counted.
        let other = vec![(b"fresh".to_vec(), rule), (b"addr".to_vec(), rule)];
        assert!(s.throttle_attempt(&other).await.unwrap().is_some());
        let fresh: i32 = sqlx::query_scalar("SELECT failures FROM throttles WHERE key = ?1")
            .bind(b"fresh".as_slice())
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(fresh, 0);

        // Once the wait is over the next failure doubles it.
        sqlx::query("UPDATE throttles SET blocked_until = ?1").bind(now_us() - 1).execute(s.pool()).await.unwrap();
        assert_eq!(s.throttle_attempt(&keys).await.unwrap(), None);
        let wait = s.throttle_attempt(&keys).await.unwrap().unwrap();
        assert!(wait > Duration::from_secs(1) && wait <= Duration::from_secs(2), "{wait:?}");

        // Success forgets one key and takes one off the other, with the session.
        let f = new_app(s, "throttled").await;
        let nu = new_user(&f, "alice");
        s.create_user(nu.clone(), None, &[]).await.unwrap();
        let relief = Relief { clear: Some(b"user"), forgive: Some(b"addr") };
        s.create_session(f.app.id, nu.id, session("ok"), relief, &AuditRecord::new("session.sign_in", None))
            .await
            .unwrap();
        let left: Vec<(Vec<u8>, i32)> =
            sqlx::query_as("SELECT key, failures FROM throttles ORDER BY key").fetch_all(s.pool()).await.unwrap();
        assert_eq!(left, vec![(b"addr".to_vec(), 3), (b"fresh".to_vec(), 0)]);

        // Failures older than the window are forgotten: the count starts at 1.
        let day_ago = now_us() - dur_us(Duration::from_secs(86_400)) - 1;
        sqlx::query("UPDATE throttles SET last_failure = ?1, blocked_until = NULL")
            .bind(day_ago)
            .execute(s.pool())
            .await
            .unwrap();
        assert_eq!(s.sweep().await.unwrap(), 2, "throttle counts long forgotten");
        let short = ThrottleRule { free: 1, max_wait: Duration::from_millis(1500), window: Duration::from_secs(1) };
        let k = vec![(b"k".to_vec(), short)];
        assert_eq!(s.throttle_attempt(&k).await.unwrap(), None);
        sqlx::query("UPDATE throttles SET last_failure = ?1, blocked_until = NULL, failures = 9")
            .bind(day_ago)
            .execute(s.pool())
            .await
            .unwrap();
        assert_eq!(s.throttle_attempt(&k).await.unwrap(), None);
        let (failures, until): (i32, Option<i64>) =
            sqlx::query_as("SELECT failures, blocked_until FROM throttles").fetch_one(s.pool()).await.unwrap();
        assert_eq!(failures, 1);
        let wait = until.unwrap() - now_us();
        assert!(wait > 0 && wait <= 1_000_000, "2^0 s: {wait}");
        // max_wait caps the doubling.
        sqlx::query("UPDATE throttles SET blocked_until = NULL, failures = 20").execute(s.pool()).await.unwrap();
        assert_eq!(s.throttle_attempt(&k).await.unwrap(), None);
        let until: i64 = sqlx::query_scalar("SELECT blocked_until FROM throttles").fetch_one(s.pool()).await.unwrap();
        let wait = until - now_us();
        assert!(wait > 1_000_000 && wait <= 1_500_000, "capped: {wait}");
    }

    #[tokio::test]
    async fn the_trail_chains_and_is_append_only() {
        let db = temp_db().await;
        let s = &db.store;
        let (app_a, app_b) = (Uuid::now_v7(), Uuid::now_v7());
        let subject = Uuid::now_v7();
        let mut records = Vec::new();
        for i in 0..6 {
            let mut r = AuditRecord::new("user.read", Some(if i % 2 == 0 { app_a } else { app_b }));
            r.subject_id = (i % 3 == 0).then_some(subject);
            r.fields = vec!["name".into(), format!("field{i}")];
            r.client_addr = Some(vec![i; 12]);
            r.request_id = Some(format!("req-{i}"));
            records.push(r);
        }
        s.append_audit(&records[..2]).await.unwrap();
        s.append_audit(&[]).await.unwrap();
        s.append_audit(&records[2..]).await.unwrap();
        let all = chain_is_whole(s).await;
        assert_eq!(all.iter().map(|r| &r.record).collect::<Vec<_>>(), records.iter().collect::<Vec<_>>());
        assert_eq!(all[0].prev_hash, GENESIS.to_vec());

        let by_app = s.audit_records(&AuditFilter { app_id: Some(app_a), limit: 100, ..Default::default() }).await;
        assert_eq!(by_app.unwrap().len(), 3);
        let by_subject =
            s.audit_records(&AuditFilter { subject_id: Some(subject), limit: 100, ..Default::default() }).await;
        assert_eq!(by_subject.unwrap().len(), 2);
        let page = s.audit_records(&AuditFilter { after_seq: all[1].seq, limit: 2, ..Default::default() }).await;
        assert_eq!(page.unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![all[2].seq, all[3].seq]);
        let since = s
            .audit_records(&AuditFilter { since: Some(records[4].at), limit: 100, ..Default::default() })
            .await
            .unwrap();
        assert!(since.len() >= 2 && since.iter().all(|r| r.record.at >= records[4].at));
        let later = s
            .audit_records(&AuditFilter {
                since: Some(records[5].at + chrono::Duration::seconds(1)),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(later.is_empty());

        for sql in ["UPDATE audit_events SET actor = 'x'", "DELETE FROM audit_events WHERE seq = 1"] {
            let e = sqlx::query(sql).execute(s.pool()).await.unwrap_err();
            assert!(e.to_string().contains("append-only"), "{e}");
        }
        // A duplicate id is refused and leaves the chain as it was.
        assert!(
            matches!(s.append_audit(&records[..1]).await, Err(StoreError::Conflict(c)) if c == "audit_events_id_key")
        );
        assert_eq!(chain_is_whole(s).await.len(), 6);
    }

    #[tokio::test]
    async fn outbox_and_password_reset() {
        let db = temp_db().await;
        let s = &db.store;
        let f = new_app(s, "mail app").await;
        let nu = new_user(&f, "frank");
        s.create_user(nu.clone(), Some(session("tok-f")), &[]).await.unwrap();

        let audit = AuditRecord::new("user.forgot_username", Some(f.app.id));
        assert_eq!(s.queue_username_reminders(f.app.id, b"mail:frank", &audit).await.unwrap(), 1);
        assert_eq!(s.queue_username_reminders(f.app.id, b"mail:nobody", &audit).await.unwrap(), 0);
        let claimed = s.claim_outbox(10, HOUR).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let m = &claimed[0];
        assert_eq!(
            (m.user_id, m.kind.as_str(), m.attempts, m.payload_ct.is_none()),
            (nu.id, "username_reminder", 1, true)
        );
        assert!(s.claim_outbox(10, HOUR).await.unwrap().is_empty(), "claimed rows are leased");
        s.outbox_retry(m.id, Duration::ZERO).await.unwrap();
        let again = s.claim_outbox(10, HOUR).await.unwrap();
        assert_eq!((again.len(), again[0].attempts, again[0].created_at), (1, 2, m.created_at));
        s.outbox_retry(m.id, Duration::ZERO).await.unwrap();
        s.outbox_give_up(m.id).await.unwrap();
        assert!(s.claim_outbox(10, HOUR).await.unwrap().is_empty(), "given up");
        let r = s.mail_recipient(f.app.id, nu.id).await.unwrap().unwrap();
        assert_eq!((r.app_name.as_str(), r.username_ct), ("mail app", b"ct:frank".to_vec()));

        // A reset for nobody stores nothing but its trail record.
        let reset = |token: &str| NewReset {
            token_hash: token.as_bytes().to_vec(),
            outbox_id: Uuid::now_v7(),
            payload_ct: b"sealed".to_vec(),
            lifetime: HOUR,
        };
        let ra = || AuditRecord::new("user.reset_request", Some(f.app.id));
        assert_eq!(s.request_password_reset(f.app.id, b"nobody", &reset("t0"), &ra()).await.unwrap(), None);
        assert_eq!(s.reset_password(b"t0", None).await.unwrap(), ResetCheck::Unknown);
        // A second request voids the first token.
        let first = reset("t1");
        assert_eq!(s.request_password_reset(f.app.id, b"frank", &first, &ra()).await.unwrap(), Some(nu.id));
        assert_eq!(s.request_password_reset(f.app.id, b"frank", &reset("t2"), &ra()).await.unwrap(), Some(nu.id));
        assert_eq!(s.reset_password(b"t1", None).await.unwrap(), ResetCheck::Unknown);
        let live = ResetCheck::Live { app_id: f.app.id, user_id: nu.id };
        assert_eq!(s.reset_password(b"t2", None).await.unwrap(), live);
        let mails = s.claim_outbox(10, HOUR).await.unwrap();
        assert_eq!(mails.len(), 2);
        assert!(mails.iter().all(|m| m.kind == "password_reset" && m.payload_ct.as_deref() == Some(b"sealed")));

        let done = AuditRecord::new("user.reset_password", None);
        assert_eq!(s.reset_password(b"t2", Some(("hash-new", &done))).await.unwrap(), live);
        assert_eq!(s.reset_password(b"t2", None).await.unwrap(), ResetCheck::Unknown, "used up");
        let user = s.get_user(f.app.id, nu.id).await.unwrap().unwrap();
        assert_eq!(user.version, 2);
        assert_eq!(s.credentials(f.app.id, b"frank").await.unwrap().unwrap().password_hash, "hash-new");
        assert!(s.list_sessions(f.app.id, nu.id, HOUR).await.unwrap().is_empty(), "every session ended");

        // An expired token is reported once, then gone.
        s.request_password_reset(f.app.id, b"frank", &reset("t3"), &ra()).await.unwrap();
        sqlx::query("UPDATE password_resets SET expires_at = ?1").bind(now_us() - 1).execute(s.pool()).await.unwrap();
        assert_eq!(s.reset_password(b"t3", None).await.unwrap(), ResetCheck::Expired);
        assert_eq!(s.reset_password(b"t3", None).await.unwrap(), ResetCheck::Unknown);

        // An inactive user gets no token.
        let mut c = change(2, f.data_key.id);
        c.active = false;
        s.update_user(f.app.id, nu.id, c, &[]).await.unwrap().unwrap();
        assert_eq!(s.request_password_reset(f.app.id, b"frank", &reset("t4"), &ra()).await.unwrap(), None);

        let trail = chain_is_whole(s).await;
        let requests: Vec<_> = trail.iter().filter(|r| r.record.action == "user.reset_request").collect();
        assert_eq!(requests.len(), 5);
        assert_eq!(requests[0].record.subject_id, None);
        assert_eq!(requests[1].record.subject_id, Some(nu.id));
        let reset_done = trail.iter().find(|r| r.record.action == "user.reset_password").unwrap();
        assert_eq!((reset_done.record.app_id, reset_done.record.subject_id), (Some(f.app.id), Some(nu.id)));

        // Deleting the user takes its queued mail.
        s.delete_user(f.app.id, nu.id, &AuditRecord::new("user.delete", None)).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(s.pool()).await.unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn sweep_deletes_what_ran_out() {
        let db = temp_db().await;
        let s = &db.store;
        let f = new_app(s, "sweep").await;
        let nu = new_user(&f, "gina");
        let short = NewSession { max_age: Duration::ZERO, ..session("gone") };
        s.create_user(nu.clone(), Some(short), &[]).await.unwrap();
        s.create_session(f.app.id, nu.id, session("stays"), Relief::default(), &AuditRecord::new("x", None))
            .await
            .unwrap();
        let reset = NewReset {
            token_hash: b"r".to_vec(),
            outbox_id: Uuid::now_v7(),
            payload_ct: vec![],
            lifetime: Duration::ZERO,
        };
        s.request_password_reset(f.app.id, b"gina", &reset, &AuditRecord::new("x", None)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(s.sweep().await.unwrap(), 2);
        assert_eq!(s.list_sessions(f.app.id, nu.id, HOUR).await.unwrap().len(), 1);
        // A huge lifetime is kept within range.
        let forever = NewSession { max_age: Duration::MAX, ..session("forever") };
        s.create_session(f.app.id, nu.id, forever, Relief::default(), &AuditRecord::new("x", None)).await.unwrap();
        assert_eq!(s.list_sessions(f.app.id, nu.id, HOUR).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn service_tokens_are_scoped_touched_listed_and_revoked() {
        let db = temp_db().await;
        let s = &db.store;
        let f = new_app(s, "svc").await;
        let other = new_app(s, "svc other").await;
        let token = |hash: &str| NewServiceToken {
            id: Uuid::now_v7(),
            app_id: f.app.id,
            name: "billing sync".into(),
            role: "supervisor".into(),
            token_hash: hash.as_bytes().to_vec(),
        };
        let record = |action: &str, id: Uuid| {
            let mut r = AuditRecord::new(action, Some(f.app.id));
            r.actor = "cli".into();
            r.object_id = Some(id);
            r
        };
        let a = token("hash-a");
        s.create_service_token(&a, &record("token.create", a.id)).await.unwrap();
        assert!(s.list_service_tokens(f.app.id).await.unwrap()[0].last_used_at.is_none(), "not used yet");

        let live = Some(ServiceTokenInfo { token_id: a.id, role: "supervisor".into() });
        assert_eq!(s.lookup_service_token(f.app.id, b"hash-a", HOUR).await.unwrap(), live);
        assert_eq!(s.lookup_service_token(other.app.id, b"hash-a", HOUR).await.unwrap(), None, "scoped");
        assert_eq!(s.lookup_service_token(f.app.id, b"hash-x", HOUR).await.unwrap(), None);
        assert!(s.list_service_tokens(other.app.id).await.unwrap().is_empty());

        // The first use is written; later ones only past `touch_after`.
        let listed = s.list_service_tokens(f.app.id).await.unwrap();
        assert_eq!(listed.len(), 1);
        let row = &listed[0];
        assert_eq!(
            (row.id, row.name.as_str(), row.role.as_str(), row.revoked_at),
            (a.id, "billing sync", "supervisor", None)
        );
        let first_use = row.last_used_at.expect("touched on first use");
        assert!(first_use >= row.created_at);
        tokio::time::sleep(Duration::from_millis(5)).await;
        s.lookup_service_token(f.app.id, b"hash-a", HOUR).await.unwrap().unwrap();
        assert_eq!(s.list_service_tokens(f.app.id).await.unwrap()[0].last_used_at, Some(first_use));
        s.lookup_service_token(f.app.id, b"hash-a", Duration::ZERO).await.unwrap().unwrap();
        assert!(s.list_service_tokens(f.app.id).await.unwrap()[0].last_used_at.unwrap() > first_use);

        // A digest is unique; a role other than supervisor is refused.
        let dup = token("hash-a");
        match s.create_service_token(&dup, &record("token.create", dup.id)).await {
            Err(StoreError::Conflict(c)) => assert_eq!(c, "service_tokens_token_hash_key"),
            other => panic!("{other:?}"),
        }
        let admin = NewServiceToken { role: "admin".into(), ..token("hash-b") };
        assert!(s.create_service_token(&admin, &record("token.create", admin.id)).await.is_err());

        // Revocation: scoped to the application, once, and at once.
        let revoke =
            |app: Uuid, id: Uuid| async move { s.revoke_service_token(app, id, &record("token.revoke", id)).await };
        assert_eq!(revoke(other.app.id, a.id).await.unwrap(), TokenRevocation::Unknown);
        assert_eq!(revoke(f.app.id, Uuid::now_v7()).await.unwrap(), TokenRevocation::Unknown);
        assert_eq!(s.lookup_service_token(f.app.id, b"hash-a", HOUR).await.unwrap(), live, "still live");
        assert_eq!(revoke(f.app.id, a.id).await.unwrap(), TokenRevocation::Revoked);
        assert_eq!(s.lookup_service_token(f.app.id, b"hash-a", Duration::ZERO).await.unwrap(), None);
        assert_eq!(revoke(f.app.id, a.id).await.unwrap(), TokenRevocation::AlreadyRevoked);
        let listed = s.list_service_tokens(f.app.id).await.unwrap();
        assert_eq!(listed.len(), 1, "a revoked token stays listed");
        assert!(listed[0].revoked_at.is_some());

        let trail = chain_is_whole(s).await;
        let actions: Vec<_> =
            trail.iter().filter(|r| r.record.object_id == Some(a.id)).map(|r| r.record.action.as_str()).collect();
        assert_eq!(actions, ["token.create", "token.revoke"], "refused and repeated revocations write nothing");
    }

    #[tokio::test]
    async fn in_memory_databases_work_too() {
        let s = SqliteStore::connect("sqlite::memory:").await.unwrap();
        s.migrate().await.unwrap();
        let f = new_app(&s, "mem").await;
        s.create_user(new_user(&f, "hal"), None, &[]).await.unwrap();
        assert!(s.credentials(f.app.id, b"hal").await.unwrap().is_some());
        let mode: String =
            sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(s.pool()).await.map(|v: i64| v.to_string()).unwrap();
        assert_eq!(mode, "1");
    }

    #[tokio::test]
    async fn pragmas() {
        let db = temp_db().await;
        let p = db.store.pool();
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(p).await.unwrap();
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(p).await.unwrap();
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(p).await.unwrap();
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(p).await.unwrap();
        assert_eq!((journal.as_str(), fk, sync, busy), ("wal", 1, 2, 5000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_stores_on_one_file_keep_one_chain() {
        // Two stores on one file stand for two processes (the server and the
        // CLI): each has its own connection, and the write lock orders them.
        let dir = std::env::temp_dir().join(format!("usersvc-sqlite-{}", Uuid::new_v4()));
        let url = format!("sqlite://{}/usersvc.db", dir.display());
        let (a, b) = (SqliteStore::connect(&url).await.unwrap(), SqliteStore::connect(&url).await.unwrap());
        let (ma, mb) = tokio::join!(a.migrate(), b.migrate());
        ma.unwrap();
        mb.unwrap();
        let write = |s: SqliteStore| {
            tokio::spawn(async move {
                for i in 0..40 {
                    let batch: Vec<_> = (0..(i % 3) + 1).map(|_| AuditRecord::new("user.read", None)).collect();
                    s.append_audit(&batch).await.unwrap();
                }
            })
        };
        let (ta, tb) = (write(a.clone()), write(b.clone()));
        ta.await.unwrap();
        tb.await.unwrap();
        assert_eq!(chain_is_whole(&a).await.len(), 2 * (14 + 13 * 2 + 13 * 3));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
