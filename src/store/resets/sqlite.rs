//! Password resets on SQLite.

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use crate::store::sqlite::{BEGIN, RESET_USER, SqliteStore, append_in, later, now_seconds, now_us, us};
use crate::store::trail::record::AuditRecord;
use crate::store::{NewReset, ResetCheck, ResetStore, Result};

#[async_trait]
impl ResetStore for SqliteStore {
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
}
