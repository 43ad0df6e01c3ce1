//! Keeps the pools on the server the connection string asks for (the
//! primary, with `target_session_attrs=read-write`) across a failover.
//!
//! sqlx connects to one host, so the choice is made here: each server is
//! probed in order (connect, `pg_is_in_recovery()`, `transaction_read_only`)
//! and the pools are pointed at the first that fits with
//! `Pool::set_connect_options`, which only affects connections opened
//! afterwards. The connections already open to the server left behind are
//! then retired by their age: a `before_acquire` / `after_release` hook
//! closes any made before the switch. That costs an atomic load per
//! acquire, and it keeps the one `PgPool` every part of the store already
//! holds; swapping pools instead would mean an indirection at every query
//! and closing a pool other tasks still use.
//!
//! A probe runs when a query fails in a way that says the server went away
//! or is no longer writable (see [`suspect`]): one probing task per store
//! (single flight), at most one round every [`PROBE_EVERY`], and while no
//! server fits it keeps probing at that pace until one does.

use std::{
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{
    Connection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::sync::watch;

use super::hosts::SessionAttrs;

/// At most one probing round this often.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long one server may take to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Failures seen anywhere in the process: (connection lost, read-only).
static SUSPECT: LazyLock<watch::Sender<(u64, u64)>> = LazyLock::new(|| watch::Sender::new((0, 0)));

/// Called on every database error: one that says the server went away or
/// turned read-only wakes the probing tasks.
pub fn suspect(e: &sqlx::Error) {
    let read_only = matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("25006"));
    let lost = match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|c| c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03"))
        }
        _ => false,
    };
    if read_only || lost {
        SUSPECT.send_modify(|(l, r)| {
            if read_only {
                *r += 1;
            } else {
                *l += 1;
            }
        });
    }
}

/// What a server answered.
#[derive(Debug, Clone, Copy)]
struct Role {
    in_recovery: bool,
    read_only: bool,
}

impl SessionAttrs {
    fn fits(self, r: Role) -> bool {
        match self {
            Self::Any => true,
            Self::ReadWrite => !r.read_only,
            Self::ReadOnly => r.read_only,
            Self::Primary => !r.in_recovery,
            Self::Standby | Self::PreferStandby => r.in_recovery,
        }
    }
}

async fn probe(options: &PgConnectOptions) -> Option<Role> {
    let asked = async {
        let mut conn = match sqlx::PgConnection::connect_with(options).await {
            // A fresh server has no usersvc database yet (made once the
            // primary is chosen): ask through the maintenance one.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
                sqlx::PgConnection::connect_with(&options.clone().database("postgres")).await?
            }
            conn => conn?,
        };
        let (in_recovery, read_only): (bool, bool) =
            sqlx::query_as("SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'")
                .fetch_one(&mut conn)
                .await?;
        let _ = conn.close().await;
        Ok::<_, sqlx::Error>(Role { in_recovery, read_only })
    };
    match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
        Ok(Ok(role)) => Some(role),
        Ok(Err(e)) => {
            tracing::debug!(host = options.get_host(), port = options.get_port(), error = %e, "database probe failed");
            None
        }
        Err(_) => None,
    }
}

/// The first server that fits `attrs`, in the order given (for
/// prefer-standby: the first standby, else the first that answers).
pub async fn pick(hosts: &[PgConnectOptions], attrs: SessionAttrs) -> Option<usize> {
    let mut answered = None;
    for (i, h) in hosts.iter().enumerate() {
        if let Some(role) = probe(h).await {
            if attrs.fits(role) {
                return Some(i);
            }
            answered = answered.or(Some(i));
        }
    }
    answered.filter(|_| attrs == SessionAttrs::PreferStandby)
}

/// Time since this process's first look at the clock, in microseconds:
/// an instant that fits in an atomic.
fn now_micros() -> u64 {
    static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);
    BASE.elapsed().as_micros() as u64
}

type Tune = Box<dyn Fn(PgConnectOptions) -> PgConnectOptions + Send + Sync>;

pub struct Follower {
    hosts: Vec<PgConnectOptions>,
    attrs: SessionAttrs,
    current: AtomicUsize,
    /// When the pools last moved ([`now_micros`]); connections older are closed.
    switched_at: Arc<AtomicU64>,
    /// The pools of the LISTEN heartbeat and the eviction sender: they
    /// follow too, each with its own settings on top.
    satellites: Mutex<Vec<(PgPool, Tune)>>,
}

impl Follower {
    /// `hosts` as the main pool connects to them; `current` the one chosen.
    pub fn new(hosts: Vec<PgConnectOptions>, attrs: SessionAttrs, current: usize) -> Arc<Self> {
        Arc::new(Self {
            hosts,
            attrs,
            current: AtomicUsize::new(current),
            switched_at: Arc::new(AtomicU64::new(0)),
            satellites: Mutex::default(),
        })
    }

    /// Whether anything can move: one server with no condition never does.
    fn moves(&self) -> bool {
        self.hosts.len() > 1 || self.attrs != SessionAttrs::Any
    }

    /// `options` with the hooks that close connections made before a switch.
    pub fn pool_options(&self, options: PgPoolOptions) -> PgPoolOptions {
        if !self.moves() {
            return options;
        }
        let (a, b) = (self.switched_at.clone(), self.switched_at.clone());
        let current = move |at: &AtomicU64, meta: sqlx::pool::PoolConnectionMetadata| {
            let made = now_micros().saturating_sub(meta.age.as_micros() as u64);
            made >= at.load(Ordering::Relaxed)
        };
        options
            .before_acquire(move |_, meta| {
                let keep = current(&a, meta);
                Box::pin(async move { Ok(keep) })
            })
            .after_release(move |_, meta| {
                let keep = current(&b, meta);
                Box::pin(async move { Ok(keep) })
            })
    }

    /// A pool of its own (lazy) on the current server, with `tune` applied,
    /// that moves with the main one.
    pub fn satellite(
        &self,
        main: &PgPool,
        options: PgPoolOptions,
        tune: impl Fn(PgConnectOptions) -> PgConnectOptions + Send + Sync + 'static,
    ) -> PgPool {
        let pool = self.pool_options(options).connect_lazy_with(tune((*main.connect_options()).clone()));
        if self.moves()
            && let Ok(mut s) = self.satellites.lock()
        {
            s.push((pool.clone(), Box::new(tune)));
        }
        pool
    }

    /// Runs until `pool` closes: probes when woken by [`suspect`].
    pub async fn run(self: Arc<Self>, pool: PgPool) {
        if !self.moves() {
            return;
        }
        let mut rx = SUSPECT.subscribe();
        let mut seen = *rx.borrow_and_update();
        let closed = pool.close_event();
        tokio::pin!(closed);
        loop {
            tokio::select! {
                () = &mut closed => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
            let now = *rx.borrow_and_update();
            let read_only = now.1 != seen.1;
            seen = now;
            loop {
                let was = self.current.load(Ordering::Relaxed);
                match pick(&self.hosts, self.attrs).await {
                    // Connections on a server that turned read-only are
                    // retired even when it is still the best there is.
                    Some(i) if i != was || read_only => {
                        self.switch(&pool, i, was);
                        break;
                    }
                    Some(_) => break,
                    None => {
                        metrics::counter!("usersvc_db_probe_failed_total").increment(1);
                        tokio::select! {
                            () = &mut closed => return,
                            () = tokio::time::sleep(PROBE_EVERY) => {}
                        }
                    }
                }
            }
            tokio::select! {
                () = &mut closed => return,
                () = tokio::time::sleep(PROBE_EVERY) => {}
            }
        }
    }

    fn switch(&self, pool: &PgPool, to: usize, from: usize) {
        let options = self.hosts[to].clone();
        pool.set_connect_options(options.clone());
        if let Ok(s) = self.satellites.lock() {
            for (p, tune) in s.iter() {
                p.set_connect_options(tune(options.clone()));
            }
        }
        self.current.store(to, Ordering::Relaxed);
        self.switched_at.store(now_micros(), Ordering::Relaxed);
        metrics::counter!("usersvc_db_failovers_total").increment(1);
        // Host and port are the operator's own configuration, not a client's.
        tracing::warn!(
            from = from,
            to = to,
            host = options.get_host(),
            port = options.get_port(),
            attrs = self.attrs.as_str(),
            "database: following the server that now fits; connections to the previous one are closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{PgStore, Store, conformance::postgres_server};

    /// A port nothing listens on (bound, then let go).
    fn dead_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// The shared test server as host:port, user and database-less base.
    fn server() -> Option<(String, u16, String)> {
        let url: sqlx::postgres::PgConnectOptions = postgres_server()?.parse().ok()?;
        Some((url.get_host().to_owned(), url.get_port(), url.get_username().to_owned()))
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_is_passed_over_in_both_forms() {
        let Some((host, port, user)) = server() else {
            eprintln!("PostgreSQL run not made: set TEST_DATABASE_URL to a postgres:// server");
            return;
        };
        let db = format!("usersvc_test_{}", uuid::Uuid::new_v4().simple());
        let dead = dead_port();
        for url in [
            format!("postgres://{user}@{host}:{dead},{host}:{port}/{db}?target_session_attrs=read-write"),
            format!("host={host},{host} port={dead},{port} user={user} dbname={db} target_session_attrs=primary"),
        ] {
            // --migrate-database-url takes the same forms.
            PgStore::migrate_as_owner(&url, &url).await.unwrap();
            let store = PgStore::connect(&url, 2).await.unwrap();
            store.migrate().await.unwrap();
            let port_used: i32 = sqlx::query_scalar("SELECT inet_server_port()").fetch_one(store.pool()).await.unwrap();
            assert_eq!(port_used, i32::from(port), "{url}");
            store.pool().close().await;
        }
        // Asking for a standby of a list with none: refused as unavailable.
        let url = format!("postgres://{user}@{host}:{dead},{host}:{port}/{db}?target_session_attrs=standby");
        let err = PgStore::connect(&url, 2).await.err().expect("no standby there");
        assert!(matches!(err, crate::store::StoreError::Unavailable(_)), "{err}");
    }

    #[tokio::test]
    async fn a_write_refused_as_read_only_is_unavailable_not_an_error() {
        let Some((host, port, user)) = server() else {
            eprintln!("PostgreSQL run not made: set TEST_DATABASE_URL to a postgres:// server");
            return;
        };
        let db = format!("usersvc_test_{}", uuid::Uuid::new_v4().simple());
        let writable = PgStore::connect(&format!("postgres://{user}@{host}:{port}/{db}"), 2).await.unwrap();
        writable.migrate().await.unwrap();
        writable.pool().close().await;
        // A session as a standby's would be: every write refused with 25006.
        let url = format!("postgres://{user}@{host}:{port}/{db}?options=-c%20default_transaction_read_only%3Don");
        let store = PgStore::connect(&url, 2).await.unwrap();
        let err = store.sweep().await.expect_err("a write on a read-only session");
        assert!(matches!(err, crate::store::StoreError::Unavailable(_)), "{err}");
        store.pool().close().await;
    }
}
