//! Second factors on PostgreSQL.

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use crate::store::postgres::PgStore;
use crate::store::trail::postgres::{self as pg_audit};
use crate::store::trail::record::AuditRecord;
use crate::store::{
    ChallengeCheck, FactorStore, HAS_SECOND_FACTOR, MfaPolicy, QueuedMail, Rehash, Result, SIGN_IN_GATES, SignInGates,
    TotpFactor,
};

#[async_trait]
impl FactorStore for PgStore {
    async fn has_second_factor(&self, app_id: Uuid, user_id: Uuid) -> Result<bool> {
        let found: Option<bool> =
            sqlx::query_scalar(HAS_SECOND_FACTOR).bind(app_id).bind(user_id).fetch_optional(&self.pool).await?;
        Ok(found.unwrap_or(false))
    }

    async fn sign_in_gates(&self, app_id: Uuid, user_id: Uuid) -> Result<SignInGates> {
        let row = sqlx::query_as(SIGN_IN_GATES).bind(app_id).bind(user_id).fetch_optional(&self.pool).await?;
        SignInGates::of_row(row)
    }

    async fn put_pending_totp(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        secret_ct: &[u8],
        audit: &AuditRecord,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let stored = sqlx::query(
            "INSERT INTO totp_factors (app_id, user_id, secret_ct) VALUES ($1, $2, $3)
             ON CONFLICT (app_id, user_id) DO UPDATE
                 SET secret_ct = EXCLUDED.secret_ct, created_at = now(), last_step = NULL
                 WHERE totp_factors.confirmed_at IS NULL",
        )
        .bind(app_id)
        .bind(user_id)
        .bind(secret_ct)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !stored {
            return Ok(false);
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn totp_factor(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<TotpFactor>> {
        let row = sqlx::query(
            "SELECT secret_ct, confirmed_at IS NOT NULL AS confirmed FROM totp_factors
             WHERE app_id = $1 AND user_id = $2",
        )
        .bind(app_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(TotpFactor { secret_ct: r.try_get("secret_ct")?, confirmed: r.try_get("confirmed")? }))
            .transpose()
    }

    async fn confirm_totp(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        step: i64,
        recovery_hashes: &[Vec<u8>],
        audit: &AuditRecord,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let confirmed = sqlx::query(
            "UPDATE totp_factors SET confirmed_at = now(), last_step = $3
             WHERE app_id = $1 AND user_id = $2 AND confirmed_at IS NULL",
        )
        .bind(app_id)
        .bind(user_id)
        .bind(step)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !confirmed {
            return Ok(false);
        }
        sqlx::query("DELETE FROM recovery_codes WHERE app_id = $1 AND user_id = $2")
            .bind(app_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO recovery_codes (app_id, user_id, code_hash)
             SELECT $1, $2, h FROM unnest($3::bytea[]) AS h ON CONFLICT DO NOTHING",
        )
        .bind(app_id)
        .bind(user_id)
        .bind(recovery_hashes)
        .execute(&mut *tx)
        .await?;
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn accept_totp_step(&self, app_id: Uuid, user_id: Uuid, step: i64) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE totp_factors SET last_step = $3
             WHERE app_id = $1 AND user_id = $2 AND confirmed_at IS NOT NULL
               AND (last_step IS NULL OR last_step < $3)",
        )
        .bind(app_id)
        .bind(user_id)
        .bind(step)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    async fn use_recovery_code(&self, app_id: Uuid, user_id: Uuid, code_hash: &[u8]) -> Result<bool> {
        Ok(sqlx::query("DELETE FROM recovery_codes WHERE app_id = $1 AND user_id = $2 AND code_hash = $3")
            .bind(app_id)
            .bind(user_id)
            .bind(code_hash)
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1)
    }

    async fn recovery_codes_left(&self, app_id: Uuid, user_id: Uuid) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM recovery_codes WHERE app_id = $1 AND user_id = $2")
            .bind(app_id)
            .bind(user_id)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn remove_totp(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        notice: Option<&QueuedMail>,
        audit: &AuditRecord,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let removed = sqlx::query("DELETE FROM totp_factors WHERE app_id = $1 AND user_id = $2")
            .bind(app_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !removed {
            return Ok(false);
        }
        for sql in [
            "DELETE FROM recovery_codes WHERE app_id = $1 AND user_id = $2",
            "DELETE FROM mfa_challenges WHERE app_id = $1 AND user_id = $2",
        ] {
            sqlx::query(sql).bind(app_id).bind(user_id).execute(&mut *tx).await?;
        }
        if let Some(m) = notice {
            sqlx::query("INSERT INTO outbox (id, app_id, user_id, kind, payload_ct) VALUES ($1, $2, $3, $4, $5)")
                .bind(m.id)
                .bind(app_id)
                .bind(user_id)
                .bind(m.kind)
                .bind(&m.payload_ct)
                .execute(&mut *tx)
                .await?;
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn create_mfa_challenge(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        token_hash: &[u8],
        lifetime: std::time::Duration,
        rehash: Option<Rehash<'_>>,
        audit: &AuditRecord,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO mfa_challenges (token_hash, app_id, user_id, expires_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        )
        .bind(token_hash)
        .bind(app_id)
        .bind(user_id)
        .bind(lifetime.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        if let Some(r) = rehash {
            sqlx::query("UPDATE users SET password_hash = $3 WHERE app_id = $1 AND id = $2 AND password_hash = $4")
                .bind(app_id)
                .bind(user_id)
                .bind(r.new)
                .bind(r.old)
                .execute(&mut *tx)
                .await?;
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mfa_challenge(&self, app_id: Uuid, token_hash: &[u8]) -> Result<ChallengeCheck> {
        let user: Option<Uuid> = sqlx::query_scalar(
            "SELECT user_id FROM mfa_challenges WHERE token_hash = $1 AND app_id = $2 AND expires_at > now()",
        )
        .bind(token_hash)
        .bind(app_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(user.map_or(ChallengeCheck::Gone, ChallengeCheck::Live))
    }

    async fn consume_mfa_challenge(&self, app_id: Uuid, token_hash: &[u8]) -> Result<bool> {
        Ok(sqlx::query("DELETE FROM mfa_challenges WHERE token_hash = $1 AND app_id = $2 AND expires_at > now()")
            .bind(token_hash)
            .bind(app_id)
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1)
    }

    async fn mfa_policy(&self, app_id: Uuid) -> Result<MfaPolicy> {
        let policy: Option<String> = sqlx::query_scalar("SELECT mfa_policy FROM applications WHERE id = $1")
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(policy.as_deref().and_then(MfaPolicy::parse).unwrap_or_default())
    }

    async fn set_mfa_policy(&self, app_id: Uuid, policy: MfaPolicy, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let set = sqlx::query("UPDATE applications SET mfa_policy = $2 WHERE id = $1")
            .bind(app_id)
            .bind(policy.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !set {
            return Ok(false);
        }
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }
}
