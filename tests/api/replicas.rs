//! Two replicas on one PostgreSQL database. Each keeps API keys, sessions
//! and user records in memory for a moment; whatever ends a session or
//! changes a user on one must be seen on the other at once (PostgreSQL
//! LISTEN/NOTIFY), and on the replica that made it, before the reply.

use std::time::{Duration, Instant};

use crate::common::{self, BACKEND, Backend, TestApp, spawn, spawn_in};

/// Two replicas of one application on one PostgreSQL database (None
/// without a PostgreSQL server to run on).
async fn two_replicas() -> Option<(TestApp, TestApp)> {
    if common::postgres_server().is_none() {
        eprintln!("PostgreSQL run not made: set TEST_DATABASE_URL");
        return None;
    }
    BACKEND
        .scope(Backend::Postgres, async {
            let a = spawn().await;
            let b = spawn_in(a.db_url.clone(), |_| {}).await;
            Some((a, b))
        })
        .await
}

async fn status(app: &TestApp, key: &str, token: &str, path: &str) -> u16 {
    first_name(app, key, token, path).await.0
}

#[tokio::test]
async fn ending_a_session_on_one_replica_ends_it_on_every_other_at_once() {
    let Some((a, b)) = two_replicas().await else { return };
    let key = a.api_key.clone();
    BACKEND
        .scope(Backend::Postgres, async {
            // Sign-out.
            let (id, token) = a.sign_up("replica-signout").await;
            let me = format!("/v2/users/{id}");
            for _ in 0..3 {
                assert_eq!(status(&b, &key, &token, &me).await, 200, "read on the other replica");
                assert_eq!(status(&a, &key, &token, &me).await, 200);
            }
            assert_eq!(status(&a, &key, &token, "/v2/auth/signout").await, 200);
            assert_eq!(status(&a, &key, &token, &me).await, 401, "the replica that signed out, at once");
            let took = seen_after(&b, &key, &token, &me, |s, _| s == 401)
                .await
                .expect("the other replica refuses the session");
            assert!(took < Duration::from_millis(500), "seen by the other replica after {took:?}");

            // A password change ends the user's other sessions.
            let (id, first) = a.sign_up("replica-password").await;
            let me = format!("/v2/users/{id}");
            let second = a
                .http
                .post(a.url("/v2/auth/signin"))
                .header("X-Api-Key", &key)
                .json(&serde_json::json!({"username": "replica-password", "password": "correct horse battery"}))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()["sessionToken"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(status(&b, &key, &first, &me).await, 200);
            let res = b
                .http
                .put(b.url(&me))
                .header("X-Api-Key", &key)
                .bearer_auth(&second)
                .json(&serde_json::json!({"password": "another horse battery"}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), 200);
            assert_eq!(status(&b, &key, &first, &me).await, 401, "ended on the replica that changed it");
            let took = seen_after(&a, &key, &first, &me, |s, _| s == 401).await.expect("ended on the other replica");
            assert!(took < Duration::from_millis(500), "seen by the other replica after {took:?}");
            assert_eq!(status(&a, &key, &second, &me).await, 200, "the session that changed it stays");
        })
        .await
}

async fn first_name(app: &TestApp, key: &str, token: &str, path: &str) -> (u16, Option<String>) {
    let res = app.http.get(app.url(path)).header("X-Api-Key", key).bearer_auth(token).send().await.unwrap();
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    (status, body["name"]["firstName"].as_str().map(str::to_owned))
}

/// How long until `path` on `app` answers what `want` accepts (None: not
/// within two seconds).
async fn seen_after(
    app: &TestApp,
    key: &str,
    token: &str,
    path: &str,
    want: impl Fn(u16, Option<&str>) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let (status, name) = first_name(app, key, token, path).await;
        if want(status, name.as_deref()) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test]
async fn a_change_to_a_user_on_one_replica_is_read_on_every_other_at_once() {
    let Some((a, b)) = two_replicas().await else { return };
    let key = a.api_key.clone();
    BACKEND
        .scope(Backend::Postgres, async {
            let (id, token) = a.sign_up("replica-reader").await;
            let (_, boss) = a.supervisor("replica-boss").await;
            let me = format!("/v2/users/{id}");

            // Both replicas have read the record (and may remember it).
            for app in [&a, &b] {
                for _ in 0..3 {
                    assert_eq!(first_name(app, &key, &token, &me).await, (200, None));
                    assert_eq!(first_name(app, &key, &boss, &me).await.0, 200);
                }
            }

            let res = a
                .http
                .put(a.url(&me))
                .header("X-Api-Key", &key)
                .bearer_auth(&token)
                .json(&serde_json::json!({"name": {"firstName": "Ada"}}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), 200);
            assert_eq!(first_name(&a, &key, &token, &me).await, (200, Some("Ada".into())), "read after write");
            assert_eq!(first_name(&a, &key, &boss, &me).await, (200, Some("Ada".into())));
            let took = seen_after(&b, &key, &boss, &me, |s, n| s == 200 && n == Some("Ada"))
                .await
                .expect("the other replica reads the change");
            assert!(took < Duration::from_millis(500), "seen by the other replica after {took:?}");
            assert_eq!(first_name(&b, &key, &token, &me).await, (200, Some("Ada".into())));

            // Deleted on one replica: gone on the other.
            let res = a.http.delete(a.url(&me)).header("X-Api-Key", &key).bearer_auth(&boss).send().await.unwrap();
            assert!(res.status().is_success(), "delete: {}", res.status());
            assert_eq!(first_name(&a, &key, &boss, &me).await.0, 404, "gone at once where it was deleted");
            let took = seen_after(&b, &key, &boss, &me, |s, _| s == 404).await.expect("gone on the other replica");
            assert!(took < Duration::from_millis(500), "seen by the other replica after {took:?}");
        })
        .await
}

/// Audited writes of every kind on `app`: sign-ups (two records, the batch
/// writer), sign-ins (one record inside the sign-in's statement), refused
/// sign-ins (one record on its own) and reads (the read trail's batches).
async fn audited_writes(app: &TestApp, key: &str, tag: &str) {
    for i in 0..4 {
        let username = format!("chain-{tag}-{i}");
        let (id, token) = app.sign_up_in(key, &username).await;
        for (password, want) in [("correct horse battery", 200), ("wrong horse battery", 401)] {
            let res = app
                .http
                .post(app.url("/v2/auth/signin"))
                .header("X-Api-Key", key)
                .json(&serde_json::json!({"username": username, "password": password}))
                .send()
                .await
                .unwrap();
            let got = res.status().as_u16();
            assert_eq!(got, want, "sign-in of {username}: {}", res.text().await.unwrap_or_default());
        }
        assert_eq!(status(app, key, &token, &format!("/v2/users/{id}")).await, 200);
    }
}

#[tokio::test]
async fn both_replicas_writing_the_trail_at_once_keep_one_chain() {
    let Some((a, b)) = two_replicas().await else { return };
    let key = a.api_key.clone();
    BACKEND
        .scope(Backend::Postgres, async {
            tokio::join!(
                audited_writes(&a, &key, "a0"),
                audited_writes(&a, &key, "a1"),
                audited_writes(&b, &key, "b0"),
                audited_writes(&b, &key, "b1"),
            );
        })
        .await;
    let records = common::audit_verified(&a.db_url).await.expect("the chain is whole");
    assert!(records >= 4 * 4 * 4, "{records} records in the chain");
    // Each replica's records are all there: 4 workers x 4 users x (sign-up,
    // its session, a sign-in, a refused one).
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&a.db_url).await.unwrap();
    let (ours,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM audit_events WHERE app_id = $1 AND action IN ('user.create', 'session.sign_in')",
    )
    .bind(a.app_id)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(ours, 4 * 4 * 4);
}
