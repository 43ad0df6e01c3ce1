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

use crate::store::trail::record::{self as audit, AuditRecord, StoredAudit};
use crate::store::{
    NewSession, OutboxMessage, QueuedMail, Result, SWEEP_BATCH, Store, StoreError, StoredKey, UserRecord,
};

#[derive(Clone)]
pub struct SqliteStore {
    pub(in crate::store) pool: SqlitePool,
}

/// How every writing transaction begins: with the write lock taken.
pub(in crate::store) const BEGIN: &str = "BEGIN IMMEDIATE";

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

pub(in crate::store) const USER_COLUMNS: &str =
    "id, app_id, profile_ct, active, supervisor, version, created_at, updated_at,
     COALESCE(email_verified_bidx = email_bidx, FALSE) AS email_verified";

/// A time as stored: microseconds since the epoch.
pub(in crate::store) fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(in crate::store) fn dur_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// `t + d`, kept within what chrono can read back.
pub(in crate::store) fn later(t: i64, d: Duration) -> i64 {
    t.saturating_add(dur_us(d)).min(DateTime::<Utc>::MAX_UTC.timestamp_micros())
}

pub(in crate::store) fn earlier(t: i64, d: Duration) -> i64 {
    t.saturating_sub(dur_us(d))
}

pub(in crate::store) fn time(micros: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| StoreError::Corrupt(format!("a stored time ({micros})")))
}

pub(in crate::store) fn time_of(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>> {
    time(row.try_get(column)?)
}

pub(in crate::store) fn optional_time_of(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>> {
    row.try_get::<Option<i64>, _>(column)?.map(time).transpose()
}

pub(in crate::store) fn now_us() -> i64 {
    us(Utc::now())
}

/// Whole seconds: replies show times to the second, and a stored time must
/// read back as it was shown.
pub(in crate::store) fn now_seconds() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now)
}

pub(in crate::store) fn user_from_row(row: &SqliteRow) -> Result<UserRecord> {
    Ok(UserRecord {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        profile_ct: row.try_get("profile_ct")?,
        active: row.try_get("active")?,
        supervisor: row.try_get("supervisor")?,
        version: row.try_get("version")?,
        created_at: time_of(row, "created_at")?,
        updated_at: time_of(row, "updated_at")?,
        email_verified: row.try_get("email_verified")?,
    })
}

pub(in crate::store) const KEY_COLUMNS: &str = "id, app_id, purpose, wrapped, master_key_id, current";

pub(in crate::store) async fn insert_key(conn: &mut SqliteConnection, k: &StoredKey, now: i64) -> Result<()> {
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

pub(in crate::store) async fn insert_session(
    conn: &mut SqliteConnection,
    app_id: Uuid,
    user_id: Uuid,
    s: &NewSession,
) -> Result<()> {
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

/// Queues a message for a user inside the caller's transaction: it goes
/// with the change it tells of, or not at all.
pub(in crate::store) async fn queue_mail_in(
    conn: &mut SqliteConnection,
    app_id: Uuid,
    user_id: Uuid,
    m: &QueuedMail,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO outbox (id, app_id, user_id, kind, payload_ct, created_at, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
    )
    .bind(m.id)
    .bind(app_id)
    .bind(user_id)
    .bind(m.kind)
    .bind(&m.payload_ct)
    .bind(now_us())
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends to the trail inside the caller's transaction: the records commit
/// or vanish with the change they describe. The transaction holds the write
/// lock (BEGIN IMMEDIATE), so the last hash read here is still the last one
/// when the records go in.
pub(in crate::store) async fn append_in(conn: &mut SqliteConnection, records: &[AuditRecord]) -> Result<()> {
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
                                       outcome, request_id, client_addr, prev_hash, hash, server_request_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
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
        .bind(r.server_request_id)
        .execute(&mut *conn)
        .await?;
        prev = hash;
    }
    Ok(())
}

pub(in crate::store) fn outbox_from_row(r: &SqliteRow) -> Result<OutboxMessage> {
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

pub(in crate::store) fn audit_from_row(r: &SqliteRow) -> Result<StoredAudit> {
    let fields: String = r.try_get("fields")?;
    let fields: Vec<String> =
        serde_json::from_str(&fields).map_err(|e| StoreError::Corrupt(format!("audit record fields: {e}")))?;
    let seq: i64 = r.try_get("seq")?;
    Ok(StoredAudit {
        seq,
        pos: (seq, seq),
        chain: Some((r.try_get("prev_hash")?, r.try_get("hash")?)),
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
            server_request_id: r.try_get("server_request_id")?,
        },
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        // sqlx takes no lock on SQLite: two processes starting on a new file
        // may both apply the first migration, and the second then fails on
        // tables that exist by now. A later run finds what the other applied
        // (or fails again, for real, after a few tries).
        let migrator = sqlx::migrate!("./migrations/sqlite");
        let mut tries = 0;
        loop {
            match migrator.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(e) if tries >= 20 => return Err(e.into()),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn sweep(&self) -> Result<u64> {
        let now = now_us();
        let day_ago = earlier(now, Duration::from_secs(24 * 60 * 60));
        // In batches, the oldest first along the indexes on time, as on
        // PostgreSQL: each statement holds the one connection and the write
        // lock only for its batch, so requests get their turn in between.
        // (One statement reads and deletes under the write lock: nothing
        // changes a row between the two.)
        let mut n = 0;
        for sql in [
            "DELETE FROM sessions
             WHERE rowid IN (SELECT rowid FROM sessions WHERE expires_at < ?1 ORDER BY expires_at LIMIT ?3)",
            "DELETE FROM password_resets
             WHERE rowid IN (SELECT rowid FROM password_resets WHERE expires_at < ?1 ORDER BY expires_at LIMIT ?3)",
            "DELETE FROM throttles WHERE rowid IN (SELECT rowid FROM throttles
                 WHERE last_failure < ?2 AND (blocked_until IS NULL OR blocked_until < ?1)
                 ORDER BY last_failure LIMIT ?3)",
            "DELETE FROM mail_quotas WHERE rowid IN (SELECT rowid FROM mail_quotas
                 WHERE window_start < ?2 ORDER BY window_start LIMIT ?3)",
            "DELETE FROM mfa_challenges
             WHERE rowid IN (SELECT rowid FROM mfa_challenges WHERE expires_at < ?1 ORDER BY expires_at LIMIT ?3)",
            "DELETE FROM passkey_ceremonies WHERE rowid IN
                 (SELECT rowid FROM passkey_ceremonies WHERE expires_at < ?1 ORDER BY expires_at LIMIT ?3)",
        ] {
            loop {
                // A statement without ?2 ignores the second value.
                let done = sqlx::query(sql)
                    .bind(now)
                    .bind(day_ago)
                    .bind(SWEEP_BATCH)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                n += done;
                if done < SWEEP_BATCH.unsigned_abs() {
                    break;
                }
            }
        }
        Ok(n)
    }
}

/// What only SQLite has: in-memory databases, its pragmas, two processes on
/// one file. The contract every store keeps is in `store/conformance.rs`.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::trail::record::{GENESIS, verify};
    use crate::store::{App, AuditFilter, NewUser, TrailStore, UserStore};

    async fn chain_is_whole(s: &SqliteStore) -> usize {
        let all = s.audit_records(&AuditFilter { limit: 10_000, ..Default::default() }).await.unwrap();
        verify(&all, GENESIS.to_vec()).unwrap();
        all.len()
    }

    #[tokio::test]
    async fn in_memory_databases_work_too() {
        let s = SqliteStore::connect("sqlite::memory:").await.unwrap();
        s.migrate().await.unwrap();
        let app = App { id: Uuid::now_v7(), name: "mem".into() };
        let key = StoredKey {
            id: Uuid::now_v7(),
            app_id: app.id,
            purpose: "data".into(),
            wrapped: vec![7; 40],
            master_key_id: "mk1".into(),
            current: true,
        };
        crate::store::AppStore::create_app(&s, &app, b"mem", std::slice::from_ref(&key), &AuditRecord::new("x", None))
            .await
            .unwrap();
        let user = NewUser {
            id: Uuid::now_v7(),
            app_id: app.id,
            key_id: key.id,
            username_ct: b"ct".to_vec(),
            username_bidx: b"hal".to_vec(),
            password_hash: "h".into(),
            email_bidx: None,
            profile_ct: b"p".to_vec(),
            active: true,
            mrn_bidx: Vec::new(),
        };
        s.create_user(user, None, &[]).await.unwrap();
        assert!(s.credentials(app.id, b"hal").await.unwrap().is_some());
        let mode: String =
            sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(s.pool()).await.map(|v: i64| v.to_string()).unwrap();
        assert_eq!(mode, "1");
    }

    #[tokio::test]
    async fn pragmas() {
        let u = crate::store::conformance::Under::sqlite().await;
        let crate::store::conformance::Db::Sqlite(p) = &u.db else { unreachable!() };
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
        assert_eq!(chain_is_whole(&a).await, 2 * (14 + 13 * 2 + 13 * 3));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
