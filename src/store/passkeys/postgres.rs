//! Passkeys on PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Row, postgres::PgRow};
use uuid::Uuid;

use super::{origins_from_text, origins_to_text};
use crate::store::postgres::{PgStore, now_seconds};
use crate::store::trail::postgres::{self as pg_audit};
use crate::store::trail::record::AuditRecord;
use crate::store::{CeremonyTake, NewCeremony, NewPasskey, PasskeyStore, Result, StoredPasskey, WebauthnConfig};

const PASSKEY_COLUMNS: &str = "id, user_id, sealed, version, created_at, last_used_at";

fn passkey_from_row(row: &PgRow) -> Result<StoredPasskey> {
    Ok(StoredPasskey {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        sealed: row.try_get("sealed")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

#[async_trait]
impl PasskeyStore for PgStore {
    async fn webauthn_config(&self, app_id: Uuid) -> Result<Option<WebauthnConfig>> {
        let row = sqlx::query("SELECT webauthn_rp_id, webauthn_origins FROM applications WHERE id = $1")
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let rp_id: Option<String> = row.try_get("webauthn_rp_id")?;
        let origins: Option<String> = row.try_get("webauthn_origins")?;
        Ok(rp_id.map(|rp_id| WebauthnConfig {
            rp_id,
            origins: origins.as_deref().map(origins_from_text).unwrap_or_default(),
        }))
    }

    async fn set_webauthn_config(
        &self,
        app_id: Uuid,
        config: Option<&WebauthnConfig>,
        audit: &AuditRecord,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE applications SET webauthn_rp_id = $2, webauthn_origins = $3 WHERE id = $1")
            .bind(app_id)
            .bind(config.map(|c| c.rp_id.clone()))
            .bind(config.map(|c| origins_to_text(&c.origins)))
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn create_ceremony(&self, c: &NewCeremony) -> Result<()> {
        let now = Utc::now();
        let lifetime = chrono::Duration::from_std(c.lifetime).unwrap_or(chrono::Duration::MAX);
        let expires_at = now.checked_add_signed(lifetime).unwrap_or(DateTime::<Utc>::MAX_UTC);
        // One statement: the application's expired ceremonies go, the new one comes.
        sqlx::query(
            "WITH gone AS (DELETE FROM passkey_ceremonies WHERE app_id = $2 AND expires_at < now())
             INSERT INTO passkey_ceremonies (id, app_id, user_id, kind, state_ct, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(c.id)
        .bind(c.app_id)
        .bind(c.user_id)
        .bind(c.kind)
        .bind(&c.state_ct)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn take_ceremony(&self, app_id: Uuid, id: Uuid) -> Result<CeremonyTake> {
        let row = sqlx::query(
            "DELETE FROM passkey_ceremonies WHERE id = $1 AND app_id = $2
             RETURNING user_id, kind, state_ct, expires_at > now() AS live",
        )
        .bind(id)
        .bind(app_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(CeremonyTake::Unknown) };
        if !row.try_get::<bool, _>("live")? {
            return Ok(CeremonyTake::Expired);
        }
        Ok(CeremonyTake::Live {
            user_id: row.try_get("user_id")?,
            kind: row.try_get("kind")?,
            state_ct: row.try_get("state_ct")?,
        })
    }

    async fn add_passkey(&self, p: &NewPasskey, max: i64, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // The user's row locked: two registrations at once count one another.
        let locked = sqlx::query("SELECT 1 FROM users WHERE app_id = $1 AND id = $2 FOR UPDATE")
            .bind(p.app_id)
            .bind(p.user_id)
            .fetch_optional(&mut *tx)
            .await?;
        if locked.is_none() {
            return Ok(false);
        }
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM passkeys WHERE app_id = $1 AND user_id = $2")
            .bind(p.app_id)
            .bind(p.user_id)
            .fetch_one(&mut *tx)
            .await?;
        if n >= max {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO passkeys (id, app_id, user_id, cred_key, sealed, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(p.id)
        .bind(p.app_id)
        .bind(p.user_id)
        .bind(&p.cred_key)
        .bind(&p.sealed)
        .bind(now_seconds())
        .execute(&mut *tx)
        .await?;
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list_passkeys(&self, app_id: Uuid, user_id: Uuid) -> Result<Vec<StoredPasskey>> {
        let rows = sqlx::query(&format!(
            "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE app_id = $1 AND user_id = $2 ORDER BY id"
        ))
        .bind(app_id)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(passkey_from_row).collect()
    }

    async fn passkey_by_cred(&self, app_id: Uuid, cred_key: &[u8]) -> Result<Option<StoredPasskey>> {
        let row = sqlx::query(&format!("SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE app_id = $1 AND cred_key = $2"))
            .bind(app_id)
            .bind(cred_key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(passkey_from_row).transpose()
    }

    async fn use_passkey(&self, app_id: Uuid, id: Uuid, version: i64, sealed: &[u8]) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE passkeys SET sealed = $4, version = version + 1, last_used_at = $5
             WHERE app_id = $1 AND id = $2 AND version = $3",
        )
        .bind(app_id)
        .bind(id)
        .bind(version)
        .bind(sealed)
        .bind(now_seconds())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn remove_passkey(&self, app_id: Uuid, user_id: Uuid, id: Uuid, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM passkeys WHERE app_id = $1 AND user_id = $2 AND id = $3")
            .bind(app_id)
            .bind(user_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }
}
