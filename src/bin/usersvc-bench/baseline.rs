//! The machine's own limits, measured by the same tool in the same run: a
//! PostgreSQL point lookup at the same connection count, and argon2 at the
//! service's parameters on every core.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::measure::{Outcome, measure};

/// `SELECT` of one user row by primary key, one connection per worker, over
/// the users the service holds (the same row the service reads for a GET).
pub async fn postgres(url: &str, conns: usize, warmup: Duration, secs: Duration) -> anyhow::Result<Outcome> {
    let mut probe = PgConnection::connect(url).await?;
    let keys: Vec<(Uuid, Uuid)> =
        sqlx::query_as("SELECT app_id, id FROM users ORDER BY id LIMIT 10000").fetch_all(&mut probe).await?;
    anyhow::ensure!(!keys.is_empty(), "the database holds no users yet: run a scenario first");
    let keys = Arc::new(keys);
    let mut steps = Vec::with_capacity(conns);
    for w in 0..conns {
        let conn = Arc::new(tokio::sync::Mutex::new(PgConnection::connect(url).await?));
        let keys = keys.clone();
        let mut i = w;
        steps.push(move || {
            i = (i + 7919) % keys.len();
            let (app_id, id) = keys[i];
            let conn = conn.clone();
            async move {
                let mut conn = conn.lock().await;
                sqlx::query(
                    "SELECT id, app_id, profile_ct, active, supervisor, version, created_at, updated_at
                     FROM users WHERE app_id = $1 AND id = $2",
                )
                .bind(app_id)
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .is_ok_and(|r| r.is_some())
            }
        });
    }
    measure(steps, warmup, secs).await
}

/// Hashes per second on `threads` threads, each hashing as the service's
/// hash pool does (`usersvc::auth::password::hash_here`: its parameters,
/// salt and memory reuse); hashing and verifying cost the same.
pub fn argon2(threads: usize, secs: Duration) -> anyhow::Result<f64> {
    use usersvc::auth::password::hash_here;
    hash_here("bench password of some length").map_err(|e| anyhow::anyhow!("{e}"))?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (done, stop) = (done.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if hash_here("bench password of some length").is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(secs);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
