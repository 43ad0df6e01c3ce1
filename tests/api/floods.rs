//! Floods are shed, not queued: password hashes past the hasher's bound are
//! refused at once (503 `overloaded` with Retry-After), the probes answer
//! outside the request limits, and anonymous sign-ups are limited per
//! client address. (The 400-client flood against the real binary is in
//! tests/faults/floods.rs.)

use std::{net::IpAddr, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tonic::Code;
use tonic_types::StatusExt;
use usersvc::pb;

use crate::common::{TestApp, spawn_with};

/// A client whose connections leave from `local` (Linux routes all of
/// 127.0.0.0/8 to loopback).
fn client_from(local: &str) -> reqwest::Client {
    let ip: IpAddr = local.parse().unwrap();
    reqwest::Client::builder().local_address(ip).build().unwrap()
}

/// `POST /v2/users` from `http`: status, Retry-After, body.
async fn sign_up(
    t: &TestApp,
    http: &reqwest::Client,
    username: &str,
    token: Option<&str>,
) -> (StatusCode, Option<u64>, Value) {
    let mut req = http
        .post(t.url("/v2/users"))
        .header("X-Api-Key", &t.api_key)
        .json(&json!({"username": username, "password": "correct horse battery"}));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    reply(req.send().await.unwrap()).await
}

async fn reply(res: reqwest::Response) -> (StatusCode, Option<u64>, Value) {
    let status = res.status();
    let retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry_after, res.json().await.unwrap())
}

both_stores! {
async fn anonymous_sign_ups_are_limited_per_address_and_application() {
    let t = spawn_with(|a| a.limits.signup_per_address = 3).await;
    let here = client_from("127.0.0.1");
    let mut tokens = Vec::new();
    for i in 0..3 {
        let (status, _, body) = sign_up(&t, &here, &format!("quota{i}"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        tokens.push(body["sessionToken"].as_str().unwrap().to_owned());
    }
    // The fourth within the hour: 429, told to come back when the hour
    // that began with the first is over.
    let (status, retry_after, body) = sign_up(&t, &here, "quota3", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["errors"][0]["code"], 429);
    assert_eq!(body["errors"][0]["reason"], "throttled");
    let retry_after = retry_after.expect("a Retry-After header");
    assert!((3500..=3600).contains(&retry_after), "Retry-After: {retry_after}");
    // The gRPC door counts the same address against the same quota.
    let user = pb::User { username: "quota4".into(), password: "correct horse battery".into(), ..Default::default() };
    let err = t.users().await.create_user(t.req(pb::CreateUserRequest { user: Some(user) }, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let wait = err.get_error_details().retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
    assert!(wait > Duration::from_secs(3500), "{wait:?}");

    // Another address is not affected, nor the same address in another
    // application.
    let (status, _, body) = sign_up(&t, &client_from("127.0.0.2"), "elsewhere", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, other_key) = crate::common::new_application(&t.app).await;
    t.sign_up_in(&other_key, "other-app").await;

    // A supervisor's creations and a service token's are not counted: the
    // limit is for sign-up as nobody.
    t.make_supervisor(t.app_id, "quota0").await;
    for i in 0..3 {
        let (status, _, body) = sign_up(&t, &here, &format!("made{i}"), Some(&tokens[0])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.get("sessionToken").is_none_or(|t| t.as_str() == Some("")), "no session for a created user");
    }
    let issued = crate::common::admin(&t.app).create_token(t.app_id, "supervisor", "provisioning").await.unwrap();
    let service = secrecy::ExposeSecret::expose_secret(&issued.token).to_owned();
    let (status, _, body) = sign_up(&t, &here, "provisioned", Some(&service)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A plain user's session is no exemption.
    let (status, _, _) = sign_up(&t, &here, "friend", Some(&tokens[1])).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}
}

both_stores! {
async fn past_the_hash_queue_sign_ins_are_refused_at_once() {
    // One hashing thread and nothing waiting behind it.
    let t = spawn_with(|a| {
        a.hash_concurrency = Some(1);
        a.limits.hash_queue = Some(0);
    })
    .await;
    let names: Vec<String> = (0..4).map(|i| format!("busy{i}")).collect();
    for name in &names {
        t.sign_up(name).await;
    }
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (url, key, name) = (t.url("/v2/auth/signin"), t.api_key.clone(), names[i % names.len()].clone());
        calls.spawn(async move {
            let res = reqwest::Client::new()
                .post(url)
                .header("X-Api-Key", key)
                .json(&json!({"username": name, "password": "correct horse battery"}))
                .send()
                .await
                .unwrap();
            reply(res).await
        });
    }
    let (mut ok, mut shed) = (0, 0);
    while let Some(done) = calls.join_next().await {
        let (status, retry_after, body) = done.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                shed += 1;
                assert_eq!(body["errors"][0]["reason"], "overloaded", "{body}");
                assert_eq!(body["errors"][0]["code"], 503);
                assert!(retry_after.is_some_and(|s| s >= 1), "Retry-After: {retry_after:?}");
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(ok >= 1 && shed >= 1, "{ok} signed in, {shed} shed");

    // Over gRPC: UNAVAILABLE with RetryInfo.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..16 {
        let mut users = t.users().await;
        let req = t.req(
            pb::SignInRequest { username: names[i % names.len()].clone(), password: "correct horse battery".into() },
            None,
        );
        calls.spawn(async move { users.sign_in(req).await.map(|_| ()) });
    }
    let mut shed = 0;
    while let Some(done) = calls.join_next().await {
        if let Err(e) = done.unwrap() {
            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
            assert!(e.get_error_details().retry_info().and_then(|r| r.retry_delay).is_some(), "{e:?}");
            assert_eq!(e.get_error_details().error_info().unwrap().reason, "OVERLOADED");
            shed += 1;
        }
    }
    assert!(shed >= 1, "some gRPC sign-ins shed");
    let metrics = t.http.get(t.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("usersvc_password_hash_shed_total"), "the sheds are counted");
}
}

both_stores! {
async fn probes_answer_while_every_request_slot_is_taken() {
    let t = spawn_with(|a| a.limits.max_concurrent_requests = 1).await;
    let (id, token) = t.sign_up("prober").await;
    // The one slot, held by a request whose body never comes.
    let mut slow = tokio::net::TcpStream::connect(t.app.http_addr).await.unwrap();
    let head = format!(
        "POST /v2/users HTTP/1.1\r\nHost: usersvc\r\nX-Api-Key: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{{\"username\"",
        t.api_key
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The slot is taken: an ordinary request waits...
    let get = t.http.get(t.url(&format!("/v2/users/{id}"))).header("X-Api-Key", &t.api_key).bearer_auth(&token).send();
    let mut get = Box::pin(get);
    assert!(tokio::time::timeout(Duration::from_millis(500), &mut get).await.is_err(), "the limit holds requests");
    // ...but the probes do not.
    for probe in ["/healthz", "/readyz"] {
        let res = tokio::time::timeout(Duration::from_secs(2), t.http.get(t.url(probe)).send())
            .await
            .unwrap_or_else(|_| panic!("{probe} waited behind the request limit"))
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{probe}");
    }
    // Once the slot is free, the waiting request is served.
    drop(slow);
    let res = tokio::time::timeout(Duration::from_secs(10), get).await.expect("served after the slot").unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}
}

/// The server's own time limit, reached while the database holds a write
/// back (here a row lock; in a failover, a commit waiting for a standby that
/// was promoted away): 503 `timeout` with `Retry-After` over HTTP,
/// UNAVAILABLE with a retry hint over gRPC, never 408 or CANCELLED, which
/// clients do not retry. On PostgreSQL, whose row locks a test can hold.
#[tokio::test]
async fn a_request_past_the_time_limit_is_unavailable_and_retried() {
    if crate::common::postgres_server().is_none() {
        eprintln!("PostgreSQL run not made: set TEST_DATABASE_URL (or DATABASE_URL) to a postgres:// server");
        return;
    }
    crate::common::BACKEND
        .scope(crate::common::Backend::Postgres, async {
            let t = spawn_with(|a| a.limits.request_timeout = Duration::from_secs(1)).await;
            let (id, token) = t.sign_up("held-back").await;
            let usersvc::store::backend::Pool::Postgres(pool) = &t.app.pool else { unreachable!("a PostgreSQL run") };
            let mut holder = pool.begin().await.unwrap();
            sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
                .bind(uuid::Uuid::parse_str(&id).unwrap())
                .execute(&mut *holder)
                .await
                .unwrap();

            let put = || {
                t.http
                    .put(t.url(&format!("/v2/users/{id}")))
                    .header("X-Api-Key", &t.api_key)
                    .header("X-Request-Id", "late-put-1")
                    .bearer_auth(&token)
                    .json(&json!({ "name": { "lastName": "Late" } }))
                    .send()
            };
            let started = std::time::Instant::now();
            let res = put().await.unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(res.headers().contains_key("retry-after"), "{:?}", res.headers());
            // The reply names the request like any other, for the logs.
            assert_eq!(res.headers()["x-request-id"], "late-put-1", "{:?}", res.headers());
            assert!(res.headers().contains_key("x-server-request-id"), "{:?}", res.headers());
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["errors"][0]["code"], 503, "{body}");
            assert_eq!(body["errors"][0]["reason"], "timeout", "{body}");
            assert!(started.elapsed() < Duration::from_secs(5), "cut off at the limit: {:?}", started.elapsed());

            let mut users = t.users().await;
            let update = pb::UpdateUserRequest {
                users_id: id.clone(),
                user: Some(pb::User {
                    name: Some(pb::Name { last_name: "Later".into(), ..Default::default() }),
                    ..Default::default()
                }),
                update_mask: Some(pbjson_types::FieldMask { paths: vec!["name.last_name".into()] }),
                ..Default::default()
            };
            let e = users.update_user(t.req(update.clone(), Some(&token))).await.unwrap_err();
            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
            assert_eq!(e.get_error_details().error_info().unwrap().reason, "TIMEOUT");
            assert!(e.get_error_details().retry_info().and_then(|r| r.retry_delay).is_some(), "{e:?}");

            // Once the database answers again, so does the service: the
            // retry the replies asked for goes through.
            holder.rollback().await.unwrap();
            let res = put().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{:?}", res.text().await);
            let done = users.update_user(t.req(update, Some(&token))).await.unwrap().into_inner();
            assert_eq!(done.name.unwrap().last_name, "Later");
        })
        .await
}
