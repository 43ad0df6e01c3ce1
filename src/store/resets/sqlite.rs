//! Password resets on SQLite.

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use crate::store::sqlite::{BEGIN, SqliteStore, append_in, now_seconds, now_us, us};
use crate::store::trail::record::AuditRecord;
use crate::store::{ResetCheck, ResetStore, Result};

#[async_trait]
impl ResetStore for SqliteStore {
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
}
