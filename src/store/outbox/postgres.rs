//! The outbox on PostgreSQL.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use crate::store::postgres::PgStore;
use crate::store::trail::postgres::{self as pg_audit};
use crate::store::trail::record::AuditRecord;
use crate::store::{MailRecipient, OutboxMessage, OutboxStore, Result};

#[async_trait]
impl OutboxStore for PgStore {
    async fn queue_username_reminders(&self, app_id: Uuid, email_bidx: &[u8], audit: &AuditRecord) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO outbox (id, app_id, user_id, kind)
             SELECT gen_random_uuid(), app_id, id, 'username_reminder' FROM users
             WHERE app_id = $1 AND email_bidx = $2
             RETURNING user_id",
        )
        .bind(app_id)
        .bind(email_bidx)
        .fetch_all(&mut *tx)
        .await?;
        let records = super::reminder_records(&ids, audit);
        pg_audit::append(&mut *tx, &records).await?;
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    async fn claim_outbox(&self, limit: i64, lease: Duration) -> Result<Vec<OutboxMessage>> {
        let rows = sqlx::query(
            "UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $2), attempts = attempts + 1
             WHERE id IN (SELECT id FROM outbox WHERE next_attempt_at <= now() AND failed_at IS NULL
                          ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, app_id, user_id, kind, payload_ct, attempts, created_at",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxMessage {
                    id: r.try_get("id")?,
                    app_id: r.try_get("app_id")?,
                    user_id: r.try_get("user_id")?,
                    kind: r.try_get("kind")?,
                    payload_ct: r.try_get("payload_ct")?,
                    attempts: r.try_get("attempts")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn mail_recipient(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<MailRecipient>> {
        let row = sqlx::query(
            "SELECT a.name, u.username_ct, u.profile_ct FROM users u JOIN applications a ON a.id = u.app_id
             WHERE u.app_id = $1 AND u.id = $2",
        )
        .bind(app_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(MailRecipient {
                app_name: r.try_get("name")?,
                username_ct: r.try_get("username_ct")?,
                profile_ct: r.try_get("profile_ct")?,
            })
        })
        .transpose()
    }

    async fn outbox_sent(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM outbox WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn outbox_retry(&self, id: Uuid, after: Duration) -> Result<()> {
        sqlx::query("UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $2) WHERE id = $1")
            .bind(id)
            .bind(after.as_secs_f64())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outbox_give_up(&self, id: Uuid) -> Result<()> {
        // The sealed token goes; only the fact and time of failure stay.
        sqlx::query("UPDATE outbox SET failed_at = now(), payload_ct = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
