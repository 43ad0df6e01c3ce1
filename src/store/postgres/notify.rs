//! Keeps the auth cache of this replica in step with every other one:
//! LISTENs for the evictions the triggers of `…_auth_notify.sql` and
//! `…_user_notify.sql` send (a token digest in hex, `u` and a user id, or
//! `*` for everything), on a
//! connection of its own. The cache is live only while the channel is.

use std::{sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::mpsc;

use crate::store::auth_cache::AuthCache;

pub const CHANNEL: &str = "usersvc_auth";

/// Runs until the pool closes.
pub async fn listen(pool: PgPool, cache: Arc<AuthCache>) {
    let closed = pool.close_event();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            () = &mut closed => break,
            () = follow(&pool, &cache) => {}
        }
        cache.set_live(false);
        tokio::select! {
            () = &mut closed => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    cache.set_live(false);
}

/// Follows the channel until its connection drops.
async fn follow(pool: &PgPool, cache: &AuthCache) {
    // A one-connection pool of its own: the listener holds its connection
    // for good, and the main pool must be able to close without it.
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut listener = match PgListener::connect_with(&own).await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "auth cache: no notification channel yet");
            return;
        }
    };
    // On a lost connection, say so at once: sqlx would otherwise reconnect
    // first, for up to its acquire timeout, while this replica went on
    // trusting what it remembers.
    listener.eager_reconnect(false);
    if let Err(e) = listener.listen(CHANNEL).await {
        tracing::debug!(error = %e, "auth cache: LISTEN failed");
        return;
    }
    // Listening from here on: what changed before is forgotten.
    cache.set_live(true);
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => evict(cache, n.payload()),
            // The connection dropped: notifications may have been missed.
            Ok(None) | Err(_) => {
                tracing::warn!("auth cache: notification channel lost; reading from the database until it is back");
                return;
            }
        }
    }
}

fn evict(cache: &AuthCache, payload: &str) {
    if payload == "*" {
        cache.evict_all();
    } else if let Some(id) = payload.strip_prefix('u') {
        match uuid::Uuid::parse_str(id) {
            Ok(id) => cache.evict_users([id]),
            Err(_) => cache.evict_all(),
        }
    } else {
        match decode_hex(payload) {
            Some(hash) => cache.evict_sessions([hash.as_slice()]),
            None => cache.evict_all(),
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_payloads() {
        assert_eq!(super::decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(super::decode_hex("0"), None);
        assert_eq!(super::decode_hex("zz"), None);
    }
}

/// Sends evictions after commit, batched, on connections of their own with
/// `synchronous_commit = off`: a NOTIFY holds a server-wide lock until its
/// transaction's commit, and these need not wait for the disk (a lost one
/// costs at most the cache's lifetime of a stale entry, as a crash between
/// commit and notify would).
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<String>,
}

impl Notifier {
    pub fn start(pool: &PgPool) -> Self {
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with((*pool.connect_options()).clone().options([("synchronous_commit", "off")]));
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let closed = pool.close_event();
        tokio::spawn(async move {
            tokio::pin!(closed);
            loop {
                let first = tokio::select! {
                    () = &mut closed => break,
                    first = rx.recv() => match first { Some(f) => f, None => break },
                };
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                    if batch.len() >= 512 {
                        break;
                    }
                }
                let sent = sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                    .bind(CHANNEL)
                    .bind(&batch)
                    .execute(&own)
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(error = %e, users = batch.len(), "evictions not sent; other replicas forget those users when their cache entries expire");
                }
            }
            own.close().await;
        });
        Self { tx }
    }

    pub fn users(&self, ids: &[uuid::Uuid]) {
        for id in ids {
            let _ = self.tx.send(format!("u{id}"));
        }
    }
}
