//! The outbox on PostgreSQL.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use crate::store::postgres::PgStore;
use crate::store::trail::postgres::{self as pg_audit};
use crate::store::trail::record::AuditRecord;
use crate::store::{
    MailRecipient, MailRequest, NewMailRequest, OutboxMessage, OutboxStore, RecipientLimit, Resolved, Result,
};

#[async_trait]
impl OutboxStore for PgStore {
    async fn queue_mail_request(&self, request: &NewMailRequest, audit: &AuditRecord) -> Result<()> {
        let reset = request.reset.as_ref();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO mail_requests (id, app_id, kind, lookup_bidx, token_hash, payload_ct, expires_at, request_id)
             VALUES ($1, $2, $3, $4, $5, $6,
                     CASE WHEN $7::float8 IS NOT NULL THEN now() + make_interval(secs => $7) END, $8)",
        )
        .bind(request.id)
        .bind(request.app_id)
        .bind(&request.kind)
        .bind(&request.lookup_bidx)
        .bind(reset.map(|r| &r.token_hash))
        .bind(reset.map(|r| &r.payload_ct))
        .bind(reset.map(|r| r.lifetime.as_secs_f64()))
        .bind(&request.request_id)
        .execute(&mut *tx)
        .await?;
        pg_audit::append(&mut *tx, std::slice::from_ref(audit)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_mail_requests(&self, limit: i64, lease: Duration) -> Result<Vec<MailRequest>> {
        let rows = sqlx::query(
            "UPDATE mail_requests SET next_attempt_at = now() + make_interval(secs => $2), attempts = attempts + 1
             WHERE id IN (SELECT id FROM mail_requests WHERE next_attempt_at <= now()
                          ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, app_id, kind, lookup_bidx, token_hash, payload_ct, expires_at, request_id, attempts,
                       created_at",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
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
                    expires_at: r.try_get("expires_at")?,
                    request_id: r.try_get("request_id")?,
                    attempts: r.try_get("attempts")?,
                    created_at: r.try_get("created_at")?,
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
        let mut tx = self.pool.begin().await?;
        let mine = sqlx::query("DELETE FROM mail_requests WHERE id = $1").bind(request.id).execute(&mut *tx).await?;
        if mine.rows_affected() == 0 {
            return Ok(Resolved::default());
        }
        let app_id = request.app_id;
        let is_reset = request.kind == "password_reset";
        let reset = match (&request.token_hash, &request.payload_ct, request.expires_at) {
            (Some(hash), Some(ct), Some(expires)) if is_reset => Some((hash, ct, expires)),
            _ => None,
        };
        if is_reset && reset.is_none() {
            // Nothing to send it with (cannot be written so): it goes.
            tx.commit().await?;
            return Ok(Resolved::default());
        }
        // The users' rows are locked against a concurrent delete (and, for a
        // reset, against another reset of the same user) until the end.
        let users: Vec<(Uuid, Option<Vec<u8>>, bool)> = if is_reset {
            sqlx::query_as(
                "SELECT id, email_bidx, COALESCE((SELECT verify_email FROM applications WHERE id = $1), '') <> 'required'
                                        OR COALESCE(email_verified_bidx = email_bidx, FALSE)
                 FROM users WHERE app_id = $1 AND username_bidx = $2 AND active
                 FOR NO KEY UPDATE",
            )
        } else {
            sqlx::query_as(
                "SELECT id, email_bidx, true FROM users WHERE app_id = $1 AND email_bidx = $2 FOR KEY SHARE",
            )
        }
        .bind(app_id)
        .bind(&request.lookup_bidx)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Resolved::default();
        let mut records = Vec::new();
        for (user_id, email_bidx, may_mail) in users {
            if let Some((_, _, expires)) = reset {
                let stale: bool = sqlx::query_scalar(
                    "SELECT $3 <= now() OR EXISTS
                         (SELECT 1 FROM password_resets WHERE app_id = $1 AND user_id = $2 AND expires_at > $3)",
                )
                .bind(app_id)
                .bind(user_id)
                .bind(expires)
                .fetch_one(&mut *tx)
                .await?;
                if stale {
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
                    sqlx::query(
                        "WITH void AS (DELETE FROM password_resets WHERE user_id = $2),
                              token AS (INSERT INTO password_resets (token_hash, app_id, user_id, expires_at)
                                        VALUES ($3, $1, $2, $4))
                         INSERT INTO outbox (id, app_id, user_id, kind, payload_ct)
                         VALUES ($5, $1, $2, 'password_reset', $6)",
                    )
                    .bind(app_id)
                    .bind(user_id)
                    .bind(hash)
                    .bind(expires)
                    .bind(request.id)
                    .bind(ct)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query(
                        "INSERT INTO outbox (id, app_id, user_id, kind) VALUES ($1, $2, $3, 'username_reminder')",
                    )
                    .bind(Uuid::new_v4())
                    .bind(app_id)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            out.queued += 1;
        }
        pg_audit::append(&mut *tx, &records).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn drop_mail_request(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM mail_requests WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
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

/// Counts a mail to `recipient` against `limit` (`mail_quotas`, a fixed
/// window from the first mail counted): true when it is past the limit and
/// must not go.
pub(in crate::store) async fn count_mail(
    tx: &mut sqlx::PgConnection,
    app_id: Uuid,
    recipient: &[u8],
    limit: RecipientLimit,
) -> Result<bool> {
    let sent: i32 = sqlx::query_scalar(
        "INSERT INTO mail_quotas AS q (app_id, recipient, window_start, sent) VALUES ($1, $2, now(), 1)
         ON CONFLICT (app_id, recipient) DO UPDATE SET
             window_start = CASE WHEN q.window_start <= now() - make_interval(secs => $3)
                                 THEN now() ELSE q.window_start END,
             sent = CASE WHEN q.window_start <= now() - make_interval(secs => $3) THEN 1 ELSE q.sent + 1 END
         RETURNING sent",
    )
    .bind(app_id)
    .bind(recipient)
    .bind(limit.window.as_secs_f64())
    .fetch_one(tx)
    .await?;
    Ok(i64::from(sent) > i64::from(limit.max))
}
