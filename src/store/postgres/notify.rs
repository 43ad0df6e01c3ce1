//! Keeps the auth cache of this replica in step with every other one:
//! LISTENs for the evictions the triggers of `…_auth_notify.sql` and
//! `…_user_notify.sql` send (a token digest in hex, `u` and a user id, or
//! `*` for everything), on a connection of its own. The cache is live only
//! while the channel is, and a channel is only known to be up while it
//! delivers: a connection can go silent without ever failing (a network
//! path that drops packets, a backend that hangs), so every [`HEARTBEAT`]
//! this process NOTIFYs itself through the database, and when no echo has
//! come for [`STALE_AFTER`] the cache is dropped, the connection given up
//! and a new one made. The cache is used again only once an echo arrives
//! on the new one.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgListener, PgNotification, PgPoolOptions},
};
use tokio::{sync::mpsc, time::Instant};

use super::follow::Follower;
use crate::store::auth_cache::AuthCache;

pub const CHANNEL: &str = "usersvc_auth";
/// How often this process NOTIFYs itself.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// No echo of a heartbeat sent within this long: the channel is taken as
/// lost. Two heartbeats, so that one slow commit is not an outage; a
/// change another replica commits is thus either seen or the cache
/// dropped within this bound (plus the echo's own trip).
pub const STALE_AFTER: Duration = Duration::from_secs(4);
/// The listening connection's `application_name`, for operators (and the
/// fault test) to find it in `pg_stat_activity`.
pub const LISTENER_NAME: &str = "usersvc-listener";
/// How long making the listening connection and its LISTEN may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs until the pool closes. Each new listening connection is made with
/// the main pool's options of the moment: after a failover, on the new
/// primary.
pub async fn listen(pool: PgPool, cache: Arc<AuthCache>, follower: Arc<Follower>) {
    let closed = pool.close_event();
    tokio::pin!(closed);
    let beat = Heartbeat::new(&pool, &follower);
    loop {
        let lost = tokio::select! {
            () = &mut closed => break,
            lost = follow(&pool, &cache, &beat) => lost,
        };
        cache.set_live(false);
        metrics::gauge!("usersvc_cache_channel_up").set(0.0);
        if let Some(how) = lost {
            metrics::counter!("usersvc_cache_channel_lost_total", "how" => how.label()).increment(1);
            tracing::warn!(
                how = how.label(),
                "auth cache: notification channel lost; reading from the database until it is back"
            );
        }
        tokio::select! {
            () = &mut closed => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    cache.set_live(false);
    metrics::gauge!("usersvc_cache_channel_up").set(0.0);
    beat.pool.close().await;
}

/// How a channel that had been up was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    /// The connection failed or closed.
    Closed,
    /// The connection stayed open but no echo came back in time.
    Silent,
}

impl Lost {
    fn label(self) -> &'static str {
        match self {
            Lost::Closed => "closed",
            Lost::Silent => "silent",
        }
    }
}

/// The self-addressed NOTIFYs.
struct Heartbeat {
    /// A channel no one else listens on. Heartbeats on the shared channel
    /// would reach every replica, and one of an earlier version reads a
    /// payload it does not know as "evict everything": during a rolling
    /// upgrade it would drop its whole cache every two seconds.
    channel: String,
    /// Its own connection, so that a busy main pool does not delay the
    /// heartbeat into a false alarm; no wait for the disk, as for
    /// evictions.
    pool: PgPool,
}

impl Heartbeat {
    fn new(pool: &PgPool, follower: &Follower) -> Self {
        Self {
            channel: format!("usersvc_hb_{}", uuid::Uuid::new_v4().simple()),
            pool: follower.satellite(pool, PgPoolOptions::new().max_connections(1).acquire_timeout(HEARTBEAT), |o| {
                o.options([("synchronous_commit", "off")]).application_name("usersvc-heartbeat")
            }),
        }
    }

    /// Sends heartbeat `seq` without waiting for it.
    fn send(&self, seq: u64) {
        let (pool, channel) = (self.pool.clone(), self.channel.clone());
        tokio::spawn(async move {
            let sent = sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(seq.to_string()).execute(&pool);
            match tokio::time::timeout(HEARTBEAT, sent).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "auth cache: heartbeat not sent"),
                Err(_) => tracing::debug!("auth cache: heartbeat not sent in time"),
            }
        });
    }
}

/// The task reading the listening connection, so that its reads are never
/// cancelled halfway through a message. Dropped, it stops and closes the
/// connection without a word to the server: one that has gone silent would
/// never answer the ping a connection returned to its pool gets.
struct Reader {
    task: tokio::task::JoinHandle<()>,
    pool: PgPool,
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Marks the pool closed at once (the future only waits).
        drop(self.pool.close());
        self.task.abort();
    }
}

/// Follows the channel until its connection drops or goes silent; `None`
/// when it never came up.
async fn follow(pool: &PgPool, cache: &AuthCache, beat: &Heartbeat) -> Option<Lost> {
    // A one-connection pool of its own: the listener holds its connection
    // for good, and the main pool must be able to close without it.
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with((*pool.connect_options()).clone().application_name(LISTENER_NAME));
    let mut listener = match PgListener::connect_with(&own).await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "auth cache: no notification channel yet");
            return None;
        }
    };
    // On a lost connection, say so at once: sqlx would otherwise reconnect
    // first, for up to its acquire timeout, while this replica went on
    // trusting what it remembers.
    listener.eager_reconnect(false);
    match tokio::time::timeout(CONNECT_TIMEOUT, listener.listen_all([CHANNEL, beat.channel.as_str()])).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "auth cache: LISTEN failed");
            return None;
        }
        Err(_) => {
            tracing::debug!("auth cache: LISTEN timed out");
            return None;
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<PgNotification>>();
    let _reader = Reader {
        pool: own,
        task: tokio::spawn(async move {
            loop {
                let n = listener.try_recv().await.ok().flatten();
                let lost = n.is_none();
                if tx.send(n).is_err() || lost {
                    return;
                }
            }
        }),
    };

    // Listening from here on, but used only once an echo shows that what
    // is committed now reaches this connection.
    let started = Instant::now();
    let mut echoes = Echoes::default();
    let mut fresh_until: Option<Instant> = None;
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = fresh_until.unwrap_or(started + STALE_AFTER);
        tokio::select! {
            at = ticks.tick() => beat.send(echoes.sent(at)),
            () = tokio::time::sleep_until(deadline) => {
                return fresh_until.map(|_| Lost::Silent);
            }
            n = rx.recv() => match n.flatten() {
                Some(n) if n.channel() == CHANNEL => evict(cache, n.payload()),
                Some(n) => {
                    let Some(sent_at) = echoes.echoed(n.payload()) else { continue };
                    if fresh_until.is_none() {
                        cache.set_live(true);
                        metrics::gauge!("usersvc_cache_channel_up").set(1.0);
                        tracing::info!("auth cache: notification channel up");
                    }
                    // Whatever was committed before that heartbeat was sent
                    // has been delivered before its echo.
                    fresh_until = fresh_until.max(Some(sent_at + STALE_AFTER));
                }
                // The connection dropped: notifications may have been missed.
                None => return fresh_until.map(|_| Lost::Closed),
            },
        }
    }
}

/// The heartbeats sent and not yet echoed, oldest first.
#[derive(Default)]
struct Echoes {
    next: u64,
    pending: VecDeque<(u64, Instant)>,
}

impl Echoes {
    /// A heartbeat sent at `at`: its number.
    fn sent(&mut self, at: Instant) -> u64 {
        self.next += 1;
        // One long unanswered would only ever be late: it need not be kept.
        while self.pending.front().is_some_and(|(_, t)| at.duration_since(*t) > STALE_AFTER) {
            self.pending.pop_front();
        }
        self.pending.push_back((self.next, at));
        self.next
    }

    /// The echo of a heartbeat: when it was sent (None for one not ours).
    fn echoed(&mut self, payload: &str) -> Option<Instant> {
        let seq: u64 = payload.parse().ok()?;
        let at = self.pending.iter().find(|(s, _)| *s == seq)?.1;
        // Older ones are answered by this one: notifications arrive in commit order.
        self.pending.retain(|(s, _)| *s > seq);
        Some(at)
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
    use super::*;

    #[test]
    fn an_echo_answers_its_heartbeat_and_every_older_one() {
        let t0 = Instant::now();
        let mut e = Echoes::default();
        let (a, b, c) = (e.sent(t0), e.sent(t0 + HEARTBEAT), e.sent(t0 + HEARTBEAT * 2));
        assert_eq!(e.echoed(&b.to_string()), Some(t0 + HEARTBEAT));
        assert_eq!(e.echoed(&a.to_string()), None, "answered by the later echo");
        assert_eq!(e.echoed("not a number"), None);
        assert_eq!(e.echoed(&c.to_string()), Some(t0 + HEARTBEAT * 2));
        // Long unanswered ones are not kept.
        let late = e.sent(t0 + HEARTBEAT * 3);
        e.sent(t0 + HEARTBEAT * 3 + STALE_AFTER + HEARTBEAT);
        assert_eq!(e.echoed(&late.to_string()), None);
    }

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
    pub fn start(pool: &PgPool, follower: &Follower) -> Self {
        let own = follower.satellite(
            pool,
            PgPoolOptions::new().max_connections(2).acquire_timeout(Duration::from_secs(5)),
            |o| o.options([("synchronous_commit", "off")]),
        );
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
