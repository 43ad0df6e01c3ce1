//! Sessions on PostgreSQL.

use std::{sync::LazyLock, time::Duration};

use async_trait::async_trait;
use chrono::Utc;
use sqlx::Row;
use uuid::Uuid;

use crate::store::postgres::{PgStore, expiry};
use crate::store::throttles::postgres::{self as pg_throttle};
use crate::store::trail::postgres::{self as pg_audit, OneRecord};
use crate::store::trail::record::AuditRecord;
use crate::store::{NewSession, Relief, Result, SessionInfo, SessionLookup, SessionRow, SessionStore};

#[async_trait]
impl SessionStore for PgStore {
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
                      rehash AS (UPDATE users SET password_hash = $22
                                 WHERE $22::text IS NOT NULL AND id = $3 AND password_hash = $21),
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
        let q = OneRecord::of(audit).bind(q);
        q.bind(relief.rehash.map(|r| r.old)).bind(relief.rehash.map(|r| r.new)).execute(&self.pool).await?;
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
            "SELECT s.id, s.user_id, u.supervisor, s.created_at,
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
        let info = SessionInfo {
            session_id,
            user_id: row.try_get("user_id")?,
            supervisor: row.try_get("supervisor")?,
            signed_in_at: row.try_get("created_at")?,
        };
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

    async fn list_sessions(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        idle_timeout: Duration,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SessionRow>> {
        let sql = format!(
            "SELECT id, created_at, last_seen_at, expires_at FROM sessions
             WHERE user_id = $2 AND app_id = $1{} AND expires_at > now()
               AND last_seen_at > now() - make_interval(secs => $3)
             ORDER BY id LIMIT $5",
            if after.is_some() { " AND id > $4" } else { "" }
        );
        let rows = sqlx::query(&sql)
            .bind(app_id)
            .bind(user_id)
            .bind(idle_timeout.as_secs_f64())
            .bind(after)
            .bind(limit)
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
}
