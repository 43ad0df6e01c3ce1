//! A flood of sign-ins against the real binary: 400 at once, each from a
//! client address of its own (Linux routes all of 127.0.0.0/8 to loopback),
//! on two hashing threads. The hash queue is bounded, so every one is
//! answered within 5 s: signed in, or refused at once (503 `overloaded`, or
//! 429) with a Retry-After. Meanwhile `/healthz` and another user's reads of
//! their own record, polled every 50 ms from another address, answer within
//! 0.5 s throughout.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::task::JoinSet;

use crate::server::{Serve, create_app, long, sqlite_url};

const FLOOD: usize = 400;
/// Sign-ins per user in the flood: under the username throttle's 5 free
/// attempts, so that what refuses them is the hash queue.
const PER_USER: usize = 4;
const REPLY_WITHIN: Duration = Duration::from_secs(5);
const PROBE_WITHIN: Duration = Duration::from_millis(500);
const PASSWORD: &str = "correct horse battery";

/// A fresh database on the run's PostgreSQL when one is named (`serve`
/// creates it), else a SQLite file.
fn database() -> String {
    let pg = std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .ok()
        .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
    match pg {
        Some(url) => {
            let base = url.split('?').next().unwrap_or(&url);
            let base = base.rfind('/').filter(|i| *i > "postgres://".len()).map_or(base, |i| &base[..i]);
            // `.ci/run` drops the usersvc_test_ databases of earlier runs.
            format!("{base}/usersvc_test_{}", uuid::Uuid::new_v4().simple())
        }
        None => sqlite_url(),
    }
}

/// A client whose connections leave from `ip`.
fn client_from(ip: IpAddr) -> reqwest::Client {
    reqwest::Client::builder().local_address(ip).timeout(Duration::from_secs(30)).build().unwrap()
}

/// The flood's `n`th client address: 127.1.x.y, none shared.
fn flood_address(n: usize) -> IpAddr {
    IpAddr::from([127, 1, (n / 250) as u8, (n % 250 + 1) as u8])
}

/// What one sign-in of the flood came to.
#[derive(Debug)]
struct Reply {
    status: u16,
    retry_after: Option<u64>,
    reason: Option<String>,
    took: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_sign_ins_is_shed_while_probes_and_reads_go_on() {
    let db = database();
    let s = Arc::new(Serve::start(&db, &[]).await);
    let (_, key) = create_app(&db);

    // The flood's users, and the reader, signed up beforehand (a few at a
    // time: this is not the flood).
    let http = reqwest::Client::new();
    let mut signups = JoinSet::new();
    let mut reader = None;
    for i in 0..=FLOOD / PER_USER {
        let name = if i == FLOOD / PER_USER { "reader".to_owned() } else { format!("flood{i}") };
        let req = http
            .post(s.url("/v2/users"))
            .header("X-Api-Key", &key)
            .json(&json!({"username": name, "password": PASSWORD}));
        signups.spawn(async move {
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 200, "sign-up of {name}");
            let body: serde_json::Value = res.json().await.unwrap();
            (name, body["usersId"].as_str().unwrap().to_owned(), body["sessionToken"].as_str().unwrap().to_owned())
        });
        while signups.len() >= 4 || (i == FLOOD / PER_USER && !signups.is_empty()) {
            let (name, id, token) = signups.join_next().await.unwrap().unwrap();
            if name == "reader" {
                reader = Some((id, token));
            }
        }
    }
    let (reader_id, reader_token) = reader.expect("the reader signed up");
    flood(s, key, reader_id, reader_token).await;
}

async fn flood(s: Arc<Serve>, key: String, reader_id: String, reader_token: String) {
    // The probes, from an address of their own, every 50 ms until told; on
    // a thread and runtime of their own, so that what they time is the
    // server and not this process's 400 clients.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (s, key, stop) = (s.clone(), key.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let http = client_from(IpAddr::from([127, 2, 0, 1]));
                let me = s.url(&format!("/v2/users/{reader_id}"));
                let (mut health, mut reads) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let res = http.get(s.url("/healthz")).send().await.expect("/healthz answers");
                    assert_eq!(res.status(), 200, "/healthz during the flood");
                    health.push(t.elapsed());
                    let t = Instant::now();
                    let res = http.get(&me).header("X-Api-Key", &key).bearer_auth(&reader_token).send().await.unwrap();
                    assert_eq!(res.status(), 200, "the reader's GET during the flood");
                    res.bytes().await.unwrap();
                    reads.push(t.elapsed());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                (health, reads)
            })
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Every client ready (its own address, its own connection) before any
    // sends, so that they arrive together.
    let start = Arc::new(tokio::sync::Barrier::new(FLOOD + 1));
    let mut calls = JoinSet::new();
    for n in 0..FLOOD {
        let (url, key, start) = (s.url("/v2/auth/signin"), key.clone(), start.clone());
        let body = json!({"username": format!("flood{}", n % (FLOOD / PER_USER)), "password": PASSWORD});
        calls.spawn(async move {
            let http = client_from(flood_address(n));
            start.wait().await;
            let t = Instant::now();
            let res = http.post(url).header("X-Api-Key", key).json(&body).send().await;
            let res = res.unwrap_or_else(|e| panic!("sign-in {n} got no reply: {e}"));
            let status = res.status().as_u16();
            let retry_after = res.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            let took = t.elapsed();
            let reason = body["errors"][0]["reason"].as_str().map(str::to_owned);
            Reply { status, retry_after, reason, took }
        });
    }
    let flood_began = Instant::now();
    start.wait().await;
    let mut replies = Vec::with_capacity(FLOOD);
    while let Some(r) = calls.join_next().await {
        replies.push(r.unwrap());
    }
    let flood_took = flood_began.elapsed();
    // The probes go on a moment after the last reply.
    tokio::time::sleep(Duration::from_millis(if long() { 2000 } else { 300 })).await;
    stop.store(true, Ordering::Relaxed);
    let (health, reads) = prober.join().unwrap();

    let count = |status: u16| replies.iter().filter(|r| r.status == status).count();
    let (ok, shed, throttled) = (count(200), count(503), count(429));
    let slowest = replies.iter().map(|r| r.took).max().unwrap_or_default();
    let slowest_ok = replies.iter().filter(|r| r.status == 200).map(|r| r.took).max().unwrap_or_default();
    let slowest_refusal = replies.iter().filter(|r| r.status != 200).map(|r| r.took).max().unwrap_or_default();
    let max_health = health.iter().max().copied().unwrap_or_default();
    let max_read = reads.iter().max().copied().unwrap_or_default();
    let median = |d: &[Duration]| {
        let mut d = d.to_vec();
        d.sort();
        d.get(d.len() / 2).copied().unwrap_or_default().as_secs_f64() * 1e3
    };
    eprintln!(
        "FIGURES flood: {FLOOD} sign-ins from {FLOOD} addresses on 2 hashing threads in {:.2} s: {ok} signed in \
         (slowest {:.2} s), {shed} shed 503, {throttled} throttled 429 (slowest refusal {:.3} s), slowest reply \
         {:.2} s; during it {} /healthz polls (median {:.1} ms, max {:.1} ms) and {} reads by another user \
         (median {:.1} ms, max {:.1} ms)",
        flood_took.as_secs_f64(),
        slowest_ok.as_secs_f64(),
        slowest_refusal.as_secs_f64(),
        slowest.as_secs_f64(),
        health.len(),
        median(&health),
        max_health.as_secs_f64() * 1e3,
        reads.len(),
        median(&reads),
        max_read.as_secs_f64() * 1e3,
    );

    for r in &replies {
        match r.status {
            200 => {}
            503 | 429 => {
                assert!(r.retry_after.is_some_and(|s| s >= 1), "a refusal without Retry-After: {r:?}");
                let expected = if r.status == 503 { "overloaded" } else { "throttled" };
                assert_eq!(r.reason.as_deref(), Some(expected), "{r:?}");
            }
            _ => panic!("a reply that is neither 200 nor a refusal: {r:?}"),
        }
        assert!(r.took <= REPLY_WITHIN, "a reply after {:?}: {r:?}", r.took);
    }
    assert_eq!(ok + shed + throttled, FLOOD);
    assert!(ok > 0, "some signed in");
    assert!(shed > 0, "the flood overflowed the hash queue (else it tested nothing)");
    assert!(health.len() >= 3 && reads.len() >= 3, "the probes ran during the flood");
    assert!(max_health <= PROBE_WITHIN, "/healthz took {max_health:?}");
    assert!(max_read <= PROBE_WITHIN, "a read by another user took {max_read:?}");
    s.assert_no_panic();
}
