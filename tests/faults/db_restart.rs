//! PostgreSQL stops under mixed load and comes back: requests fail fast
//! and cleanly while it is away, health says so, the service recovers by
//! itself, and nothing acknowledged is lost.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use pbjson_types::FieldMask;
use serde_json::{Value, json};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use usersvc::pb;

use crate::cluster::PgCluster;
use crate::server::{Outcome, Serve, create_app, long, req};

const ACQUIRE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Sample {
    pub start: Instant,
    pub end: Instant,
    pub write: bool,
    pub grpc: bool,
    pub outcome: Outcome,
}

/// What one worker saw acknowledged.
#[derive(Default)]
pub struct Acked {
    /// The worker's own user: id, token, and extras keys written.
    pub user: (String, String),
    pub extras: BTreeMap<String, i64>,
    /// Users created during the run.
    pub created: Vec<String>,
    pub samples: Vec<Sample>,
}

async fn sign_up_http(http: &reqwest::Client, s: &Serve, key: &str, name: &str) -> (Outcome, Option<(String, String)>) {
    let res = http
        .post(s.url("/v2/users"))
        .header("X-Api-Key", key)
        .json(&json!({"username": name, "password": "correct horse battery", "email": {"primary": format!("{name}@example.org")}}))
        .send()
        .await;
    let (o, body) = Outcome::of_http(res).await;
    let ids = body
        .filter(|_| o == Outcome::Ok)
        .map(|b| (b["usersId"].as_str().unwrap().to_owned(), b["sessionToken"].as_str().unwrap().to_owned()));
    (o, ids)
}

async fn sign_up_grpc(s: &Serve, key: &str, name: &str) -> (Outcome, Option<(String, String)>) {
    let user = pb::User {
        username: name.into(),
        password: "correct horse battery".into(),
        email: Some(pb::Email { primary: format!("{name}@example.org"), ..Default::default() }),
        ..Default::default()
    };
    let res = s.users().create_user(req(pb::CreateUserRequest { user: Some(user) }, key, None)).await;
    let o = Outcome::of_grpc(&res);
    (o, res.ok().map(|r| r.into_inner()).map(|u| (u.users_id, u.session_token)))
}

/// One client: reads and writes of its own user, and now and then a new
/// user, until told to stop (the failover test's load too).
pub async fn worker(
    n: usize,
    grpc: bool,
    s: Arc<Serve>,
    key: String,
    stop: Arc<AtomicBool>,
    ready: Arc<tokio::sync::Barrier>,
) -> Acked {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut users = s.users();
    let name = format!("worker{n}");
    let (o, ids) = if grpc { sign_up_grpc(&s, &key, &name).await } else { sign_up_http(&http, &s, &key, &name).await };
    let (id, token) = ids.unwrap_or_else(|| panic!("sign-up before the outage: {o:?}\n{}", s.log_text()));
    // Every worker signed up before the clock starts.
    ready.wait().await;
    let mut acked = Acked { user: (id.clone(), token.clone()), ..Default::default() };
    let mut i: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let start = Instant::now();
        let (write, outcome) = if i % 25 == 0 {
            let name = format!("w{n}new{i}");
            let (o, ids) =
                if grpc { sign_up_grpc(&s, &key, &name).await } else { sign_up_http(&http, &s, &key, &name).await };
            if let Some((new_id, _)) = ids {
                acked.created.push(new_id);
            }
            (true, o)
        } else if i % 3 == 0 {
            let k = format!("k{i}");
            let o = if grpc {
                let user: pb::User = serde_json::from_value(json!({"extras": {&k: i}})).unwrap();
                let res = users
                    .update_user(req(
                        pb::UpdateUserRequest {
                            users_id: id.clone(),
                            user: Some(user),
                            update_mask: Some(FieldMask { paths: vec![format!("extras.{k}")] }),
                            ..Default::default()
                        },
                        &key,
                        Some(&token),
                    ))
                    .await;
                Outcome::of_grpc(&res)
            } else {
                let res = http
                    .put(s.url(&format!("/v2/users/{id}")))
                    .header("X-Api-Key", &key)
                    .bearer_auth(&token)
                    .json(&json!({"extras": {&k: i}}))
                    .send()
                    .await;
                Outcome::of_http(res).await.0
            };
            if o == Outcome::Ok {
                acked.extras.insert(k, i);
            }
            (true, o)
        } else if grpc {
            let res = users.get_user(req(pb::GetUserRequest { users_id: id.clone() }, &key, Some(&token))).await;
            (false, Outcome::of_grpc(&res))
        } else {
            let res =
                http.get(s.url(&format!("/v2/users/{id}"))).header("X-Api-Key", &key).bearer_auth(&token).send().await;
            (false, Outcome::of_http(res).await.0)
        };
        acked.samples.push(Sample { start, end: Instant::now(), write, grpc, outcome });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acked
}

/// (when, /readyz status, gRPC health status)
type Probe = (Instant, u16, i32);
/// Of the writes `acked` were answered 2xx for, how many there are and how
/// many are found: each extra read back through the API (by its user's own
/// session), each created user counted in `db`.
pub async fn acknowledged_writes_found(s: &Serve, key: &str, acked: &[Acked], db: &sqlx::PgPool) -> (usize, usize) {
    let http = reqwest::Client::new();
    let (mut checked, mut found) = (0, 0);
    for a in acked {
        let (id, token) = &a.user;
        let user: Value = http
            .get(s.url(&format!("/v2/users/{id}")))
            .header("X-Api-Key", key)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for (k, v) in &a.extras {
            checked += 1;
            found += usize::from(user["extras"][k] == json!(v));
        }
    }
    let created: Vec<uuid::Uuid> =
        acked.iter().flat_map(|a| &a.created).map(|id| uuid::Uuid::parse_str(id).unwrap()).collect();
    let present: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE id = ANY($1)").bind(&created).fetch_one(db).await.unwrap();
    (checked + created.len(), found + present as usize)
}

async fn probe(s: Arc<Serve>, stop: Arc<AtomicBool>) -> Vec<Probe> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut health = HealthClient::new(s.channel());
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        let ready = http.get(s.url("/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
        let grpc = health
            .check(HealthCheckRequest { service: "usersvc.v1.UserService".into() })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1);
        seen.push((at, ready, grpc));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_restart_under_load() {
    let Some(pg) = PgCluster::start() else { return };
    // While the database is away, each request takes about the acquire
    // timeout and the workers' requests fall in step. The outage must hold
    // a whole request after the first moments whatever their phase: at 4 s
    // (twice the timeout), one run in ten had none, and nothing to check.
    let (warmup, outage, after) = if long() {
        (Duration::from_secs(5), Duration::from_secs(15), Duration::from_secs(15))
    } else {
        (Duration::from_secs(2), ACQUIRE * 2 + Duration::from_secs(1), Duration::from_secs(7))
    };
    let db = pg.url("usersvc");
    let s = Arc::new(
        Serve::start(&db, &["--db-acquire-timeout", "2s", "--request-timeout", "10s", "--db-max-connections", "8"])
            .await,
    );
    let (_, key) = create_app(&db);

    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(tokio::sync::Barrier::new(7));
    let workers: Vec<_> = (0..6)
        .map(|n| tokio::spawn(worker(n, n % 2 == 1, s.clone(), key.clone(), stop.clone(), ready.clone())))
        .collect();
    ready.wait().await;
    let prober = tokio::spawn(probe(s.clone(), stop.clone()));
    tokio::time::sleep(warmup).await;

    // The short form shuts PostgreSQL down cleanly; the long one crashes it
    // (recovery from the WAL at the next start).
    let mode = if long() { "immediate" } else { "fast" };
    let stopping = Instant::now();
    pg.stop(mode);
    let down = Instant::now();
    tokio::time::sleep(outage).await;
    let starting = Instant::now();
    pg.start_again();
    let up = Instant::now();
    tokio::time::sleep(after).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Vec::new();
    for w in workers {
        all.push(w.await.unwrap());
    }
    let probes = prober.await.unwrap();
    let samples: Vec<&Sample> = all.iter().flat_map(|a| &a.samples).collect();

    // No request anywhere ends in anything but success or a clean 503 /
    // UNAVAILABLE: no 500, no hang, no transport error.
    let odd: Vec<_> = samples.iter().filter(|x| matches!(x.outcome, Outcome::Other(_))).collect();
    assert!(odd.is_empty(), "unexpected outcomes: {odd:#?}");
    let slowest_failure =
        samples.iter().filter(|x| x.outcome == Outcome::Unavailable).map(|x| x.end - x.start).max().unwrap_or_default();
    // The acquire timeout, and what ran before the failing query (a
    // loaded machine, a password hash).
    assert!(slowest_failure <= ACQUIRE + Duration::from_secs(3), "a failure took {slowest_failure:?}");

    // While the database is away, every request fails, fast. (In the first
    // moments a replica may still answer a read from the records it keeps
    // in memory: it forgets them as soon as its notification channel drops.)
    let settled = down + Duration::from_millis(250);
    let during: Vec<_> = samples.iter().filter(|x| x.start >= settled && x.end <= starting).collect();
    assert!(!during.is_empty(), "requests were made during the outage");
    let served: Vec<_> = during
        .iter()
        .filter(|x| x.outcome != Outcome::Unavailable)
        .map(|x| (x.start - down, x.end - down, x.grpc, x.write, &x.outcome))
        .collect();
    assert!(served.is_empty(), "answered during the outage (from its start): {served:?}\n{}", s.log_text());
    assert!(during.iter().any(|x| x.grpc) && during.iter().any(|x| !x.grpc), "both doors were tried");

    // Health said so, and says so no longer.
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    assert!(
        probes.iter().any(|(at, r, g)| *at >= down && *at <= up && *r == 503 && *g == not_serving),
        "readiness reported the outage: {probes:?}"
    );
    let last = probes.last().unwrap();
    assert_eq!((last.1, last.2), (200, serving), "ready again at the end");

    // Back within 5 s, with nothing failing from then on.
    let first_ok = samples.iter().filter(|x| x.start >= up && x.outcome == Outcome::Ok).map(|x| x.end).min();
    let recovered = first_ok.expect("a success after the restart") - up;
    assert!(recovered <= Duration::from_secs(5), "recovered after {recovered:?}");
    let settled = up + Duration::from_secs(5);
    let late_failures: Vec<_> = samples.iter().filter(|x| x.start >= settled && x.outcome != Outcome::Ok).collect();
    assert!(late_failures.is_empty(), "{late_failures:#?}");
    let failed_after = samples.iter().filter(|x| x.start >= up && x.outcome != Outcome::Ok).count();

    // Every acknowledged write is there: extras through the API, created
    // users in the database.
    let (writes_checked, writes_found) = acknowledged_writes_found(&s, &key, &all, &pg.connect("usersvc").await).await;
    s.assert_no_panic();

    let count = |f: &dyn Fn(&Sample) -> bool| samples.iter().filter(|x| f(x)).count();
    eprintln!(
        "FIGURES db restart ({mode} stop): outage {:.1} s (stop took {:.1} s, start {:.1} s); requests {} ({} writes); \
         during outage {} all failed fast (slowest failure {:.2} s); failed after restart {}; \
         first success {:.2} s after restart; acknowledged writes checked {}, found {}",
        (up - down).as_secs_f64(),
        (down - stopping).as_secs_f64(),
        (up - starting).as_secs_f64(),
        samples.len(),
        count(&|x| x.write),
        during.len(),
        slowest_failure.as_secs_f64(),
        failed_after,
        recovered.as_secs_f64(),
        writes_checked,
        writes_found,
    );
    assert!(writes_checked > 20, "enough writes were acknowledged to mean something");
    assert_eq!(writes_found, writes_checked, "every acknowledged write is present");
}
