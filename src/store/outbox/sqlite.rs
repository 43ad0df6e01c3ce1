//! The outbox on SQLite.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use crate::store::sqlite::{
    BEGIN, SqliteStore, append_in, earlier, later, now_us, optional_time_of, outbox_from_row, time_of, us,
};
use crate::store::trail::record::AuditRecord;
use crate::store::{
    MailRecipient, MailRequest, NewMailRequest, OutboxMessage, OutboxStore, RecipientLimit, Resolved, Result,
};

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn queue_mail_request(&self, request: &NewMailRequest, audit: &AuditRecord) -> Result<()> {
        let reset = request.reset.as_ref();
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        sqlx::query(
            "INSERT INTO mail_requests (id, app_id, kind, lookup_bidx, token_hash, payload_ct, expires_at, request_id,
                                        created_at, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        )
        .bind(request.id)
        .bind(request.app_id)
        .bind(&request.kind)
        .bind(&request.lookup_bidx)
        .bind(reset.map(|r| &r.token_hash))
        .bind(reset.map(|r| &r.payload_ct))
        .bind(reset.map(|r| later(now, r.lifetime)))
        .bind(&request.request_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        append_in(&mut tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_mail_requests(&self, limit: i64, lease: Duration) -> Result<Vec<MailRequest>> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        // The write lock keeps any other sender out between the two steps.
        let rows = sqlx::query(
            "UPDATE mail_requests SET next_attempt_at = ?3, attempts = attempts + 1
             WHERE id IN (SELECT id FROM mail_requests WHERE next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?2)
             RETURNING id, app_id, kind, lookup_bidx, token_hash, payload_ct, expires_at, request_id, attempts,
                       created_at",
        )
        .bind(now)
        .bind(limit)
        .bind(later(now, lease))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut claimed = rows
            .iter()
            .map(|r| {
                Ok(MailRequest {
                    id: r.try_get("id")?,
                    app_id: r.try_get("app_id")?,
                    kind: r.try_get("kind")?,
                    lookup_bidx: r.try_get("lookup_bidx")?,
                    token_hash: r.try_get("token_hash")?,
                    payload_ct: r.try_get("payload_ct")?,
                    expires_at: optional_time_of(r, "expires_at")?,
                    request_id: r.try_get("request_id")?,
                    attempts: r.try_get("attempts")?,
                    created_at: time_of(r, "created_at")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // In the order they were asked for: a later reset replaces an earlier.
        claimed.sort_by_key(|r| (r.created_at, r.id));
        Ok(claimed)
    }

    async fn resolve_mail_request(
        &self,
        request: &MailRequest,
        limit: RecipientLimit,
        audit: &AuditRecord,
    ) -> Result<Resolved> {
        // One writer at a time: nothing else changes these rows meanwhile.
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        let mine = sqlx::query("DELETE FROM mail_requests WHERE id = ?1").bind(request.id).execute(&mut *tx).await?;
        if mine.rows_affected() == 0 {
            return Ok(Resolved::default());
        }
        let app_id = request.app_id;
        let is_reset = request.kind == "password_reset";
        let reset = match (&request.token_hash, &request.payload_ct, request.expires_at) {
            (Some(hash), Some(ct), Some(expires)) if is_reset => Some((hash, ct, us(expires))),
            _ => None,
        };
        if is_reset && reset.is_none() {
            // Nothing to send it with (cannot be written so): it goes.
            tx.commit().await?;
            return Ok(Resolved::default());
        }
        let users: Vec<(Uuid, Option<Vec<u8>>, bool)> = if is_reset {
            sqlx::query_as(
                "SELECT id, email_bidx, COALESCE((SELECT verify_email FROM applications WHERE id = ?1), '') <> 'required'
                                        OR COALESCE(email_verified_bidx = email_bidx, FALSE)
                 FROM users WHERE app_id = ?1 AND username_bidx = ?2 AND active",
            )
        } else {
            sqlx::query_as("SELECT id, email_bidx, 1 FROM users WHERE app_id = ?1 AND email_bidx = ?2")
        }
        .bind(app_id)
        .bind(&request.lookup_bidx)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Resolved::default();
        let mut records = Vec::new();
        for (user_id, email_bidx, may_mail) in users {
            if let Some((_, _, expires)) = reset {
                let newer: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM password_resets WHERE app_id = ?1 AND user_id = ?2 AND expires_at > ?3)",
                )
                .bind(app_id)
                .bind(user_id)
                .bind(expires)
                .fetch_one(&mut *tx)
                .await?;
                if expires <= now || newer {
                    continue;
                }
            }
            if !may_mail {
                // Under `--verify-email required`, no reset link to an
                // address nobody proved: silently, as for no match.
                let mut r = super::resolution_record(audit, user_id, false);
                r.outcome = "unverified".into();
                records.push(r);
                continue;
            }
            let limited = count_mail(&mut tx, app_id, &super::recipient_key(user_id, email_bidx), limit).await?;
            records.push(super::resolution_record(audit, user_id, limited));
            if limited {
                out.limited += 1;
                continue;
            }
            match reset {
                Some((hash, ct, expires)) => {
                    sqlx::query("DELETE FROM password_resets WHERE user_id = ?1")
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO password_resets (token_hash, app_id, user_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .bind(hash)
                    .bind(app_id)
                    .bind(user_id)
                    .bind(expires)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO outbox (id, app_id, user_id, kind, payload_ct, created_at, next_attempt_at)
                         VALUES (?1, ?2, ?3, 'password_reset', ?4, ?5, ?5)",
                    )
                    .bind(request.id)
                    .bind(app_id)
                    .bind(user_id)
                    .bind(ct)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query(
                        "INSERT INTO outbox (id, app_id, user_id, kind, created_at, next_attempt_at)
                         VALUES (?1, ?2, ?3, 'username_reminder', ?4, ?4)",
                    )
                    .bind(Uuid::new_v4())
                    .bind(app_id)
                    .bind(user_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            out.queued += 1;
        }
        append_in(&mut tx, &records).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn drop_mail_request(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM mail_requests WHERE id = ?1").bind(id).execute(&self.pool).await?;
        Ok(())
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

/// Counts a mail to `recipient` against `limit` (`mail_quotas`, a fixed
/// window from the first mail counted): true when it is past the limit and
/// must not go.
pub(in crate::store) async fn count_mail(
    tx: &mut sqlx::SqliteConnection,
    app_id: Uuid,
    recipient: &[u8],
    limit: RecipientLimit,
) -> Result<bool> {
    let now = now_us();
    let sent: i64 = sqlx::query_scalar(
        "INSERT INTO mail_quotas AS q (app_id, recipient, window_start, sent) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT (app_id, recipient) DO UPDATE SET
             window_start = CASE WHEN q.window_start <= ?4 THEN ?3 ELSE q.window_start END,
             sent = CASE WHEN q.window_start <= ?4 THEN 1 ELSE q.sent + 1 END
         RETURNING sent",
    )
    .bind(app_id)
    .bind(recipient)
    .bind(now)
    .bind(earlier(now, limit.window))
    .fetch_one(tx)
    .await?;
    Ok(sent > i64::from(limit.max))
}
