//! Service tokens on PostgreSQL.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use crate::store::postgres::PgStore;
use crate::store::trail::postgres::{self as pg_audit};
use crate::store::trail::record::AuditRecord;
use crate::store::{NewServiceToken, Result, ServiceTokenInfo, ServiceTokenRow, TokenRevocation, TokenStore};

#[async_trait]
impl TokenStore for PgStore {
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
}
