//! Operating the service: probes, metrics, logs without PII, and replicas
//! sharing one database.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use usersvc::pb;

use crate::common::{spawn, spawn_alone, spawn_in};

both_stores! {
async fn probes_and_metrics() {
    let t = spawn().await;
    let res = t.http.get(t.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = t.http.get(t.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{}", res.text().await.unwrap());
    let mut health = tonic_health::pb::health_client::HealthClient::new(t.channel().await);
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(status.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let (id, token) = t.sign_up("metered").await;
    let res = t
        .http
        .get(t.url(&format!("/v2/users/{id}")))
        .header("X-Api-Key", &t.api_key)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The management port: the probes and the metrics, none on the public port.
    let res = t.http.get(t.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND, "no /metrics on the public port");
    assert_eq!(res.json::<Value>().await.unwrap()["errors"][0]["reason"], "not_found");
    for probe in ["/healthz", "/readyz"] {
        let res = t.http.get(t.admin_url(probe)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{probe} on the management port");
    }
    let res = t.http.get(t.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    for name in [
        "usersvc_http_requests_total{",
        "usersvc_http_request_duration_seconds_bucket{",
        "usersvc_grpc_requests_total{",
        "usersvc_password_hash_wait_seconds",
        "usersvc_password_hash_queue_depth",
        "usersvc_db_pool_connections",
        "usersvc_outbox_backlog",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(text.contains(r#"route="/v2/users/{usersId}""#), "routes are labelled by template");
    assert!(text.contains(r#"rpc="usersvc.v1.UserService/CreateUser""#));
    assert!(!text.contains(&id) && !text.contains("metered") && !text.contains(&token), "no id, name or token in labels");
}
}

both_stores! {
async fn replicas_share_sessions_sign_outs_and_throttles() {
    let a = spawn().await;
    let mut b = spawn_in(a.db_url.clone(), |_| {}).await;
    // b serves a's application: same database, another server's memory.
    b.app_id = a.app_id;
    b.api_key = a.api_key.clone();
    let (id, token) = a.sign_up("roaming").await;
    let mut on_b = b.users().await;
    on_b.get_user(b.req(pb::GetUserRequest { users_id: id.clone() }, Some(&token))).await.expect("a's token works on b");
    a.users().await.sign_out(a.req(pb::SignOutRequest {}, Some(&token))).await.unwrap();
    // b hears of it by PostgreSQL's notification: milliseconds, not zero
    // (SQLite has one store and no cache: at once).
    let start = std::time::Instant::now();
    let code = loop {
        let r = on_b.get_user(b.req(pb::GetUserRequest { users_id: id.clone() }, Some(&token))).await;
        match r {
            Err(e) if e.code() == Code::Unauthenticated => break e.code(),
            _ if start.elapsed() < Duration::from_millis(500) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => break e.code(),
            Ok(_) => break Code::Ok,
        }
    };
    assert_eq!(code, Code::Unauthenticated, "a sign-out on a is seen by b within 500 ms");
    // Failures on both count together.
    for (i, t) in [&a, &b, &a, &b, &a].iter().enumerate() {
        let e = t
            .users()
            .await
            .sign_in(t.req(pb::SignInRequest { username: "roaming".into(), password: format!("wrong {i}") }, None))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let e = on_b
        .sign_in(b.req(pb::SignInRequest { username: "roaming".into(), password: "correct horse battery".into() }, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "the sixth attempt waits, wherever it lands");
}
}

#[test]
fn logs_carry_no_pii_passwords_or_tokens_at_any_level() {
    let dir = std::env::temp_dir().join(format!("usersvc-logs-{}", uuid::Uuid::new_v4().simple()));
    let db = format!("sqlite://{}/usersvc.db", dir.display());
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (grpc, http) = (free(), free());
    let bin = env!("CARGO_BIN_EXE_usersvc");
    let created =
        Command::new(bin).args(["app", "create", "--name", "logged", "--database-url", &db]).output().unwrap();
    assert!(created.status.success());
    let key = serde_json::from_slice::<Value>(&created.stdout).unwrap()["apiKey"].as_str().unwrap().to_owned();
    let mut server = Command::new(bin)
        .args(["serve", "--log-format", "json", "--database-url", &db])
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}"), "--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--mail-dir", &dir.join("mail").display().to_string()])
        // The client's address comes from a trusted proxy's header: it must
        // not reach the logs either.
        .args(["--admin-addr", "127.0.0.1:0", "--trusted-proxies", "127.0.0.1"])
        .env("RUST_LOG", "trace")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Read as it is written: trace logging fills a pipe's 64 KiB in
    // seconds, and a server blocked writing its log answers nothing.
    let mut stderr = server.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut logs = String::new();
        stderr.read_to_string(&mut logs).map(|_| logs)
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let secrets: Vec<String> = rt.block_on(async {
        let base = format!("http://127.0.0.1:{http}");
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.77".parse().unwrap());
        // Too long to keep: neither in the trail nor in the logs.
        headers.insert("x-request-id", "Overlong".repeat(10).parse().unwrap());
        let c = reqwest::Client::builder().default_headers(headers).build().unwrap();
        for _ in 0..100 {
            if c.get(format!("{base}/healthz")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let body = json!({
            "username": "Logan.Secretname",
            "password": "pw-Quux-Hidden-42",
            "email": {"primary": "logan.secret@example.org"},
            "name": {"firstName": "Loganfirst", "lastName": "Loganlast"},
            "ssn": "987-65-4320",
        });
        let user: Value = c
            .post(format!("{base}/v2/users"))
            .header("X-Api-Key", &key)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = user["sessionToken"].as_str().unwrap().to_owned();
        let id = user["usersId"].as_str().unwrap().to_owned();
        let auth = format!("Bearer {token}");
        c.get(format!("{base}/v2/users/{id}"))
            .header("X-Api-Key", &key)
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap();
        c.put(format!("{base}/v2/users/{id}"))
            .header("X-Api-Key", &key)
            .header("Authorization", &auth)
            .json(&json!({"name": {"lastName": "Newsecretlast"}, "password": "pw-Quux-Newer-43"}))
            .send()
            .await
            .unwrap();
        c.post(format!("{base}/v2/auth/signin"))
            .header("X-Api-Key", &key)
            .json(&json!({"username": "Logan.Secretname", "password": "pw-wrong-Guess-44"}))
            .send()
            .await
            .unwrap();
        c.post(format!("{base}/v2/users/forgotUsername"))
            .header("X-Api-Key", &key)
            .json(&json!({"email": "logan.secret@example.org"}))
            .send()
            .await
            .unwrap();
        // A connection whose own address (with its port) is known.
        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", http)).await.unwrap();
        let peer = raw.local_addr().unwrap().to_string();
        tokio::io::AsyncWriteExt::write_all(
            &mut raw,
            b"POST /v2/auth/signin HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        )
        .await
        .unwrap();
        let mut reply = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut reply).await.unwrap();
        assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 "));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        vec![token, key.clone(), "203.0.113.77".into(), "Overlong".into(), peer]
    });
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let _ = server.wait();
    let logs = reader.join().unwrap().unwrap();
    assert!(logs.lines().count() > 50, "trace logging was on");
    assert!(logs.lines().filter(|l| l.starts_with('{')).count() > 10, "JSON lines");
    let mut needles: Vec<String> = [
        "Secretname",
        "secretname",
        "pw-Quux",
        "pw-wrong",
        "logan.secret",
        "Loganfirst",
        "Loganlast",
        "Newsecretlast",
        "987-65-4320",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    needles.extend(secrets);
    for n in &needles {
        assert!(!logs.contains(n.as_str()), "the logs hold {n}");
    }
}

both_stores! {
async fn readiness_follows_the_schema() {
    // A database that is behind this build's migrations is not ready: the
    // probe and gRPC health say so until it is current again.
    let t = spawn_alone(|_| {}).await;
    let ready = || async {
        let http = t.http.get(t.url("/readyz")).send().await.unwrap().status();
        let mut health = tonic_health::pb::health_client::HealthClient::new(t.channel().await);
        let grpc = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
        (http, grpc.into_inner().status)
    };
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    assert_eq!(ready().await, (StatusCode::OK, serving));
    let last = t.scalar("SELECT max(version) FROM _sqlx_migrations").await;
    assert!(t.exec_int("UPDATE _sqlx_migrations SET success = false WHERE version = $1", last).await);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(ready().await, (StatusCode::SERVICE_UNAVAILABLE, not_serving));
    assert!(t.exec_int("UPDATE _sqlx_migrations SET success = true WHERE version = $1", last).await);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(ready().await, (StatusCode::OK, serving));
}
}
