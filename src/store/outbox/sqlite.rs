//! The outbox on SQLite.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use crate::store::sqlite::{BEGIN, SqliteStore, append_in, later, now_us, outbox_from_row};
use crate::store::trail::record::AuditRecord;
use crate::store::{MailRecipient, OutboxMessage, OutboxStore, Result};

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn queue_username_reminders(&self, app_id: Uuid, email_bidx: &[u8], audit: &AuditRecord) -> Result<u64> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE app_id = ?1 AND email_bidx = ?2")
            .bind(app_id)
            .bind(email_bidx)
            .fetch_all(&mut *tx)
            .await?;
        for id in &ids {
            sqlx::query(
                "INSERT INTO outbox (id, app_id, user_id, kind, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, 'username_reminder', ?4, ?4)",
            )
            .bind(Uuid::new_v4())
            .bind(app_id)
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let records = super::reminder_records(&ids, audit);
        append_in(&mut tx, &records).await?;
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    async fn claim_outbox(&self, limit: i64, lease: Duration) -> Result<Vec<OutboxMessage>> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        // The write lock keeps any other sender out between the two steps.
        let due: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM outbox WHERE next_attempt_at <= ?1 AND failed_at IS NULL ORDER BY next_attempt_at LIMIT ?2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::with_capacity(due.len());
        for id in due {
            let row = sqlx::query(
                "UPDATE outbox SET next_attempt_at = ?2, attempts = attempts + 1 WHERE id = ?1
                 RETURNING id, app_id, user_id, kind, payload_ct, attempts, created_at",
            )
            .bind(id)
            .bind(later(now, lease))
            .fetch_one(&mut *tx)
            .await?;
            claimed.push(outbox_from_row(&row)?);
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn mail_recipient(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<MailRecipient>> {
        let row = sqlx::query(
            "SELECT a.name, u.username_ct, u.profile_ct FROM users u JOIN applications a ON a.id = u.app_id
             WHERE u.app_id = ?1 AND u.id = ?2",
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
        sqlx::query("DELETE FROM outbox WHERE id = ?1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    async fn outbox_retry(&self, id: Uuid, after: Duration) -> Result<()> {
        sqlx::query("UPDATE outbox SET next_attempt_at = ?2 WHERE id = ?1")
            .bind(id)
            .bind(later(now_us(), after))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outbox_give_up(&self, id: Uuid) -> Result<()> {
        // The sealed token goes; only the fact and time of failure stay.
        sqlx::query("UPDATE outbox SET failed_at = ?2, payload_ct = NULL WHERE id = ?1")
            .bind(id)
            .bind(now_us())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
