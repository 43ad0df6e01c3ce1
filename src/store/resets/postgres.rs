//! Password resets on PostgreSQL.

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use crate::store::postgres::{PgStore, now_seconds};
use crate::store::trail::postgres::{self as pg_audit};
use crate::store::trail::record::AuditRecord;
use crate::store::{NewReset, ResetCheck, ResetStore, Result};

#[async_trait]
impl ResetStore for PgStore {
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
        self.users_changed(&[user_id]);
        self.auth.evict_sessions(ended.iter().map(Vec::as_slice));
        Ok(ResetCheck::Live { app_id, user_id })
    }
}
