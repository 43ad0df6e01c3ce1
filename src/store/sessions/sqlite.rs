//! Sessions on SQLite.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use crate::store::sqlite::{BEGIN, SqliteStore, append_in, earlier, insert_session, now_us, time_of};
use crate::store::trail::record::AuditRecord;
use crate::store::{NewSession, Relief, Result, SessionInfo, SessionLookup, SessionRow, SessionStore};

#[async_trait]
impl SessionStore for SqliteStore {
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
        if let Some(r) = relief.rehash {
            sqlx::query("UPDATE users SET password_hash = ?1 WHERE id = ?2 AND password_hash = ?3")
                .bind(r.new)
                .bind(user_id)
                .bind(r.old)
                .execute(&mut *tx)
                .await?;
        }
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
            "SELECT s.id, s.user_id, u.supervisor, s.created_at,
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
            signed_in_at: time_of(&row, "created_at")?,
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

    async fn list_sessions(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        idle_timeout: Duration,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SessionRow>> {
        let now = now_us();
        let sql = format!(
            "SELECT id, created_at, last_seen_at, expires_at FROM sessions
             WHERE user_id = ?2 AND app_id = ?1{} AND expires_at > ?3 AND last_seen_at > ?4
             ORDER BY id LIMIT ?6",
            if after.is_some() { " AND id > ?5" } else { "" }
        );
        let rows = sqlx::query(&sql)
            .bind(app_id)
            .bind(user_id)
            .bind(now)
            .bind(earlier(now, idle_timeout))
            .bind(after)
            .bind(limit)
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
}
