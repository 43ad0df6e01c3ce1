//! Throttles on SQLite.

use std::time::Duration;

use async_trait::async_trait;

use crate::store::sqlite::{BEGIN, SqliteStore, earlier, later, now_us};
use crate::store::{Quota, Result, ThrottleRule, ThrottleStore};

#[async_trait]
impl ThrottleStore for SqliteStore {
    async fn throttle_attempt(&self, keys: &[(Vec<u8>, ThrottleRule)]) -> Result<Option<Duration>> {
        let mut sorted: Vec<&(Vec<u8>, ThrottleRule)> = keys.iter().collect();
        // The same order as the PostgreSQL store (there, the lock order).
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        let mut wait: Option<i64> = None;
        for (key, _) in &sorted {
            sqlx::query(
                "INSERT INTO throttles (key, failures, last_failure) VALUES (?1, 0, ?2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let blocked_until: Option<i64> = sqlx::query_scalar("SELECT blocked_until FROM throttles WHERE key = ?1")
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
            if let Some(w) = blocked_until.map(|b| b.saturating_sub(now)).filter(|w| *w > 0) {
                wait = Some(wait.map_or(w, |m| m.max(w)));
            }
        }
        if let Some(w) = wait {
            tx.commit().await?;
            return Ok(Some(Duration::from_micros(w.unsigned_abs())));
        }
        for (key, rule) in &sorted {
            // Past `free` attempts the wait doubles with each: 1 s, 2 s, 4 s,
            // ... up to `max_wait`. Attempts older than `window` are forgotten.
            let (failures, last_failure): (i32, i64) =
                sqlx::query_as("SELECT failures, last_failure FROM throttles WHERE key = ?1")
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?;
            let failures = if last_failure < earlier(now, rule.window) { 1 } else { failures.saturating_add(1) };
            let blocked_until = (failures >= rule.free).then(|| {
                let doubling = Duration::from_secs(1 << (i64::from(failures) - i64::from(rule.free)).clamp(0, 30));
                later(now, rule.max_wait.min(doubling))
            });
            sqlx::query("UPDATE throttles SET failures = ?2, last_failure = ?3, blocked_until = ?4 WHERE key = ?1")
                .bind(key)
                .bind(failures)
                .bind(now)
                .bind(blocked_until)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(None)
    }

    async fn throttle_relieved(&self, clear: &[u8], forgive: Option<&[u8]>) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        sqlx::query("DELETE FROM throttles WHERE key = ?1").bind(clear).execute(&mut *tx).await?;
        sqlx::query("UPDATE throttles SET failures = MAX(failures - 1, 0) WHERE key = ?1")
            .bind(forgive)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn throttle_failed(&self, keys: &[(Vec<u8>, ThrottleRule)]) -> Result<()> {
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        for (key, rule) in keys {
            let failures: Option<i32> = sqlx::query_scalar("SELECT failures FROM throttles WHERE key = ?1")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(failures) = failures.filter(|f| *f >= rule.free) else { continue };
            let doubling = Duration::from_secs(1 << (i64::from(failures) - i64::from(rule.free)).clamp(0, 30));
            sqlx::query("UPDATE throttles SET blocked_until = ?2 WHERE key = ?1")
                .bind(key)
                .bind(later(now, rule.max_wait.min(doubling)))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn quota_attempt(&self, key: &[u8], quota: Quota) -> Result<Option<Duration>> {
        // As on PostgreSQL: `failures` counts the window's attempts,
        // `last_failure` is when it began.
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let now = now_us();
        let row: Option<(i64, i64)> = sqlx::query_as("SELECT failures, last_failure FROM throttles WHERE key = ?1")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
        let (count, began) = match row {
            Some((n, began)) if began > earlier(now, quota.window) => {
                if n >= i64::from(quota.per_window) {
                    tx.commit().await?;
                    let ends = later(began, quota.window);
                    return Ok(Some(Duration::from_micros(ends.saturating_sub(now).unsigned_abs())));
                }
                (n + 1, began)
            }
            _ => (1, now),
        };
        sqlx::query(
            "INSERT INTO throttles (key, failures, last_failure) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET failures = ?2, last_failure = ?3",
        )
        .bind(key)
        .bind(count)
        .bind(began)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(None)
    }
}
