//! Email verification on SQLite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::postgres::{VERIFIED, mode_of};
use super::{Resend, VerificationStore, VerifyCheck, outcome_record};
use crate::store::outbox::sqlite::count_mail;
use crate::store::sqlite::{BEGIN, SqliteStore, append_in, now_us, us};
use crate::store::trail::record::AuditRecord;
use crate::store::{QueuedMail, RecipientLimit, Result, VerifyMode};

#[async_trait]
impl VerificationStore for SqliteStore {
    async fn verify_email_mode(&self, app_id: Uuid) -> Result<Option<VerifyMode>> {
        let row: Option<(Option<String>,)> = sqlx::query_as("SELECT verify_email FROM applications WHERE id = ?1")
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|(m,)| mode_of(m)).transpose()
    }

    async fn set_verify_email_mode(&self, app_id: Uuid, mode: VerifyMode, audit: &AuditRecord) -> Result<bool> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let done = sqlx::query("UPDATE applications SET verify_email = ?2 WHERE id = ?1")
            .bind(app_id)
            .bind(mode.as_str())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn issue_verification(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        token_hash: &[u8],
        email_bidx: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO email_verifications (token_hash, app_id, user_id, email_bidx, expires_at)
             SELECT ?1, app_id, id, ?4, ?5 FROM users WHERE app_id = ?2 AND id = ?3
             ON CONFLICT (token_hash) DO NOTHING",
        )
        .bind(token_hash)
        .bind(app_id)
        .bind(user_id)
        .bind(email_bidx)
        .bind(us(expires_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn queue_verification(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        email_bidx: &[u8],
        mail: &QueuedMail,
        limit: RecipientLimit,
        audit: &AuditRecord,
    ) -> Result<Resend> {
        // One writer at a time: the user's row stays as read until the end.
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let row = sqlx::query(&format!(
            "SELECT COALESCE(u.email_bidx = ?3, 0) AS same, {VERIFIED} AS verified FROM users u
             WHERE u.app_id = ?1 AND u.id = ?2"
        ))
        .bind(app_id)
        .bind(user_id)
        .bind(email_bidx)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Resend::Gone);
        };
        if !row.try_get::<bool, _>("same")? {
            return Ok(Resend::Changed);
        }
        let mut audit = audit.clone();
        let out = if row.try_get("verified")? {
            audit.outcome = "conflict".into();
            Resend::AlreadyVerified
        } else if count_mail(&mut tx, app_id, email_bidx, limit).await? {
            audit.outcome = "throttled".into();
            Resend::Limited
        } else {
            crate::store::sqlite::queue_mail_in(&mut tx, app_id, user_id, mail).await?;
            Resend::Queued
        };
        append_in(&mut tx, std::slice::from_ref(&audit)).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn verify_email(&self, token_hash: &[u8], audit: &AuditRecord) -> Result<VerifyCheck> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let row = sqlx::query(
            "SELECT t.app_id, t.user_id, t.expires_at > ?2 AS live, COALESCE(u.email_bidx = t.email_bidx, 0) AS current
             FROM email_verifications t JOIN users u ON u.app_id = t.app_id AND u.id = t.user_id
             WHERE t.token_hash = ?1",
        )
        .bind(token_hash)
        .bind(now_us())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(VerifyCheck::Unknown);
        };
        let (app_id, user_id): (Uuid, Uuid) = (row.try_get("app_id")?, row.try_get("user_id")?);
        let (live, current): (bool, bool) = (row.try_get("live")?, row.try_get("current")?);
        let (check, outcome) = match (live, current) {
            (false, _) => (VerifyCheck::Expired { app_id, user_id }, "expired"),
            (true, false) => (VerifyCheck::Stale { app_id, user_id }, "denied"),
            (true, true) => (VerifyCheck::Verified { app_id, user_id }, "ok"),
        };
        if outcome == "ok" {
            sqlx::query(
                "UPDATE users SET email_verified_bidx = email_bidx, version = version + 1
                 WHERE app_id = ?1 AND id = ?2",
            )
            .bind(app_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM email_verifications WHERE user_id = ?1").bind(user_id).execute(&mut *tx).await?;
        } else {
            sqlx::query("DELETE FROM email_verifications WHERE token_hash = ?1")
                .bind(token_hash)
                .execute(&mut *tx)
                .await?;
        }
        append_in(&mut tx, &[outcome_record(audit, app_id, user_id, outcome)]).await?;
        tx.commit().await?;
        Ok(check)
    }

    async fn sweep_verifications(&self) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM email_verifications WHERE token_hash IN
                 (SELECT token_hash FROM email_verifications WHERE expires_at <= ?1 LIMIT ?2)",
        )
        .bind(now_us())
        .bind(crate::store::SWEEP_BATCH)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
