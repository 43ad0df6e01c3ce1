//! Every database connection busy: requests wait a bounded time for one
//! (`--db-acquire-timeout`) and are then answered 503 / UNAVAILABLE with
//! the usual error body; none hangs, and all is well once connections free.

use std::time::{Duration, Instant};

use sqlx::Connection;
use tokio::task::JoinSet;
use usersvc::pb;

use crate::cluster::PgCluster;
use crate::server::{Outcome, Serve, create_app, req};

const ACQUIRE: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_fast_when_every_connection_is_busy() {
    let Some(pg) = PgCluster::start() else { return };
    let db = pg.url("usersvc");
    let s = Serve::start(&db, &["--db-max-connections", "2", "--db-acquire-timeout", "1s", "--request-timeout", "20s"])
        .await;
    let (_, key) = create_app(&db);
    let created = s.sign_up(&key, "waiting").await;
    let (id, token) = (created.users_id, created.session_token);

    // Another session locks the table every read reads (API keys and
    // sessions may come from memory; the user's row never does): the
    // service's two connections get stuck behind it, and the pool is empty.
    let mut locker = sqlx::PgConnection::connect(&pg.url("usersvc")).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE").execute(&mut locker).await.unwrap();

    let mut calls = JoinSet::new();
    for i in 0..12 {
        let (url, key, token, id) = (s.url(&format!("/v2/users/{id}")), key.clone(), token.clone(), id.clone());
        let mut users = s.users();
        calls.spawn(async move {
            // Staggered, so that the first ones hold the connections.
            tokio::time::sleep(Duration::from_millis(50 * i)).await;
            let t = Instant::now();
            let outcome = if i % 2 == 0 {
                let res = reqwest::Client::new().get(&url).header("X-Api-Key", &key).bearer_auth(&token).send().await;
                Outcome::of_http(res).await.0
            } else {
                let res = users.get_user(req(pb::GetUserRequest { users_id: id }, &key, Some(&token))).await;
                Outcome::of_grpc(&res)
            };
            (outcome, t.elapsed())
        });
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();

    let mut results = Vec::new();
    while let Some(r) = calls.join_next().await {
        results.push(r.unwrap());
    }
    let refused: Vec<_> = results.iter().filter(|(o, _)| *o == Outcome::Unavailable).collect();
    let odd: Vec<_> = results.iter().filter(|(o, _)| matches!(o, Outcome::Other(_))).collect();
    assert!(odd.is_empty(), "only success or 503 / UNAVAILABLE: {odd:?}");
    assert!(refused.len() >= 8, "the calls without a connection were refused: {results:?}");
    let slowest_refusal = refused.iter().map(|(_, d)| *d).max().unwrap();
    assert!(slowest_refusal <= ACQUIRE + Duration::from_millis(1500), "refused after {slowest_refusal:?}");
    let slowest = results.iter().map(|(_, d)| *d).max().unwrap();

    // Connections free: served again.
    let res = reqwest::Client::new()
        .get(s.url(&format!("/v2/users/{id}")))
        .header("X-Api-Key", &key)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    s.assert_no_panic();
    eprintln!(
        "FIGURES pool exhaustion (2 connections, acquire timeout 1 s): {} calls, {} refused 503/UNAVAILABLE \
         (slowest refusal {:.2} s), {} served after the lock (slowest {:.2} s)",
        results.len(),
        refused.len(),
        slowest_refusal.as_secs_f64(),
        results.len() - refused.len(),
        slowest.as_secs_f64()
    );
}
