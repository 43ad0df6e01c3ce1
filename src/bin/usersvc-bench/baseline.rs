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

/// PostgreSQL's own rate for an audited update's work: per transaction an
/// UPDATE of a 400-byte row and an INSERT of a row shaped and indexed like
/// a trail record (as a pgbench script would: BEGIN, UPDATE, INSERT,
/// COMMIT), one connection per worker, each on rows of its own. In scratch
/// tables of the bench database, made here.
pub async fn postgres_update_insert(
    url: &str,
    conns: usize,
    warmup: Duration,
    secs: Duration,
) -> anyhow::Result<Outcome> {
    const ROWS_PER_WORKER: usize = 64;
    let mut setup = PgConnection::connect(url).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS bench_rows (id int PRIMARY KEY, payload bytea NOT NULL);
         CREATE TABLE IF NOT EXISTS bench_trail (
             seq bigserial PRIMARY KEY, id uuid NOT NULL UNIQUE, at timestamptz NOT NULL, app_id uuid,
             actor text NOT NULL, actor_id uuid, subject_id uuid, object_id uuid, action text NOT NULL,
             fields text[] NOT NULL, outcome text NOT NULL, request_id text, client_addr bytea);
         CREATE INDEX IF NOT EXISTS bench_trail_app_subject ON bench_trail (app_id, subject_id, seq);",
    )
    .execute(&mut setup)
    .await?;
    sqlx::query(
        "INSERT INTO bench_rows SELECT g, decode(repeat('ab', 400), 'hex') FROM generate_series(0, $1) g
         ON CONFLICT DO NOTHING",
    )
    .bind((conns * ROWS_PER_WORKER) as i32)
    .execute(&mut setup)
    .await?;
    let app = Uuid::new_v4();
    let mut steps = Vec::with_capacity(conns);
    for w in 0..conns {
        let conn = Arc::new(tokio::sync::Mutex::new(PgConnection::connect(url).await?));
        let mut i = 0usize;
        steps.push(move || {
            i += 1;
            let row = (w * ROWS_PER_WORKER + i % ROWS_PER_WORKER) as i32;
            let conn = conn.clone();
            async move {
                let mut conn = conn.lock().await;
                let work = async {
                    let mut tx = conn.begin().await?;
                    sqlx::query("UPDATE bench_rows SET payload = $1 WHERE id = $2")
                        .bind(vec![(i % 251) as u8; 400])
                        .bind(row)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO bench_trail (id, at, app_id, actor, actor_id, subject_id, action, fields, outcome,
                                                  request_id, client_addr)
                         VALUES ($1, now(), $2, 'user', $3, $3, 'user.update', $4, 'ok', $5, $6)",
                    )
                    .bind(Uuid::now_v7())
                    .bind(app)
                    .bind(Uuid::from_u128(row as u128))
                    .bind(vec!["name".to_owned()])
                    .bind(format!("req-{w}-{i}"))
                    .bind(vec![7u8; 44])
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await
                };
                work.await.is_ok()
            }
        });
    }
    measure(steps, warmup, secs).await
}

/// How long records waited to be covered by a signed checkpoint: for each
/// record written since `since`, the time from its `at` to the first
/// checkpoint that covers it (records still uncovered count from `at` to
/// now). Seconds: (p50, p99, max, records).
pub async fn checkpoint_lag(url: &str, since: chrono::DateTime<chrono::Utc>) -> anyhow::Result<(f64, f64, f64, usize)> {
    let mut conn = PgConnection::connect(url).await?;
    let records: Vec<(i64, i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT xid::text::bigint, seq, at FROM audit_events WHERE at >= $1 ORDER BY xid, seq")
            .bind(since)
            .fetch_all(&mut conn)
            .await?;
    let checkpoints: Vec<(i64, i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT last_xid, last_seq, at FROM audit_checkpoints WHERE at >= $1 ORDER BY tree_size")
            .bind(since)
            .fetch_all(&mut conn)
            .await?;
    anyhow::ensure!(!records.is_empty(), "no trail records since {since}");
    let now = chrono::Utc::now();
    let mut lags = Vec::with_capacity(records.len());
    let mut c = 0;
    for (xid, seq, at) in &records {
        while c < checkpoints.len() && (checkpoints[c].0, checkpoints[c].1) < (*xid, *seq) {
            c += 1;
        }
        let covered = checkpoints.get(c).map_or(now, |k| k.2);
        lags.push((covered - *at).num_microseconds().unwrap_or(0) as f64 / 1e6);
    }
    lags.sort_by(f64::total_cmp);
    let q = |p: f64| lags[((lags.len() - 1) as f64 * p).round() as usize];
    Ok((q(0.5), q(0.99), lags[lags.len() - 1], lags.len()))
}

/// The trail at scale: `records` made straight in a database of its own
/// (migrated here), spread over the past twelve months, 10 applications and
/// 100,000 users; then a user's accounting and the last day's records, as
/// `usersvc audit list --user` / `--since` and the disclosures route read
/// them (one page of up to 5,000, through the store), each timed 5 times.
/// Milliseconds: (fill seconds, user page median, since page median, app and
/// user page median).
pub async fn trail_scale(url: &str, records: i64) -> anyhow::Result<(f64, f64, f64, f64)> {
    use usersvc::store::AuditFilter;
    let (store, _) = usersvc::store::backend::open(url, 4).await?;
    store.migrate().await?;
    let mut conn = PgConnection::connect(url).await?;
    sqlx::query("SELECT audit_partitions(now() - interval '13 months', 24)").execute(&mut conn).await?;
    let fill = Instant::now();
    let step = 1_000_000i64;
    let mut done = 0;
    while done < records {
        let n = step.min(records - done);
        sqlx::query(
            "INSERT INTO audit_events (id, at, app_id, actor, actor_id, subject_id, action, fields, outcome,
                                       request_id, client_addr)
             SELECT gen_random_uuid(), now() - ((g * 3) % 31536000) * interval '1 second',
                    ('00000000-0000-0000-0000-' || lpad(to_hex(g % 10), 12, '0'))::uuid, 'user',
                    s, s, 'user.read', '{name,email}', 'ok', 'req-' || g, decode(repeat('ab', 44), 'hex')
             FROM generate_series($1::bigint, $2::bigint) AS g,
                  LATERAL (SELECT ('00000000-0000-0000-0001-' || lpad(to_hex(g % 100000), 12, '0'))::uuid AS s) AS u",
        )
        .bind(done)
        .bind(done + n - 1)
        .execute(&mut conn)
        .await?;
        done += n;
        eprintln!("bench: trail at scale: {done} records");
    }
    sqlx::query("ANALYZE audit_events").execute(&mut conn).await?;
    let fill_s = fill.elapsed().as_secs_f64();
    let subject = Uuid::parse_str("00000000-0000-0000-0001-000000000007")?;
    let app = Uuid::parse_str("00000000-0000-0000-0000-000000000007")?;
    let timed = |filter: AuditFilter| {
        let store = store.clone();
        async move {
            let mut ms = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                let page = store.audit_records(&filter).await?;
                anyhow::ensure!(!page.is_empty(), "the page is empty");
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            ms.sort_by(f64::total_cmp);
            Ok::<f64, anyhow::Error>(ms[2])
        }
    };
    let user = timed(AuditFilter { subject_id: Some(subject), limit: 5000, ..Default::default() }).await?;
    let since = timed(AuditFilter {
        since: Some(chrono::Utc::now() - chrono::Duration::days(1)),
        limit: 5000,
        ..Default::default()
    })
    .await?;
    let app_user =
        timed(AuditFilter { app_id: Some(app), subject_id: Some(subject), limit: 1000, ..Default::default() }).await?;
    Ok((fill_s, user, since, app_user))
}
