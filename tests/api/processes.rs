//! The binary itself: the CLI, and `usersvc gateway` as a separate process
//! talking to the gRPC service over TCP.

use std::process::Stdio;

use serde_json::{Value, json};

use crate::common::{Child, spawn, usersvc};

both_stores! {
async fn cli_creates_applications_and_supervisors() {
    let t = spawn().await;
    let db = t.db_url.clone();
    let out = usersvc().args(["app", "create", "--name", "clinic"]).env("DATABASE_URL", &db).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let app_id = created["appId"].as_str().unwrap().to_owned();
    uuid::Uuid::parse_str(&app_id).unwrap();
    assert!(created["apiKey"].as_str().unwrap().len() >= 32);

    let out = usersvc()
        .args(["supervisor", "add", "--app", &app_id, "--username", "nobody"])
        .env("DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());

    // A user of that application can be made a supervisor and then manage groups.
    let mut t2 = t;
    t2.app_id = app_id.parse().unwrap();
    t2.api_key = created["apiKey"].as_str().unwrap().to_owned();
    t2.sign_up("Head.Nurse").await;
    let out = usersvc()
        .args(["supervisor", "add", "--app", &app_id, "--username", "head.nurse"])
        .env("DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
}

both_stores! {
async fn standalone_gateway_talks_to_the_service_over_tcp() {
    let t = spawn().await;
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (port, admin) = (free(), free());
    let _gateway = Child(
        usersvc()
            .args([
                "gateway",
                "--grpc-upstream",
                &format!("http://{}", t.grpc_addr()),
                "--http-addr",
                &format!("127.0.0.1:{port}"),
                "--admin-addr",
                &format!("127.0.0.1:{admin}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut created = None;
    for _ in 0..100 {
        let res = client
            .post(format!("{base}/v2/users"))
            .header("X-Api-Key", &t.api_key)
            .json(&json!({"username": "remote", "password": "long enough", "name": {"firstName": "Re"}}))
            .send()
            .await;
        if let Ok(res) = res {
            created = Some((res.status(), res.json::<Value>().await.unwrap()));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, user) = created.expect("the gateway came up");
    assert_eq!(status, 200, "{user}");
    let id = user["usersId"].as_str().unwrap();
    // The same record is visible through the in-process gateway.
    let res = client
        .get(t.url(&format!("/v2/users/{id}")))
        .header("X-Api-Key", &t.api_key)
        .header("Authorization", format!("Bearer {}", user["sessionToken"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["name"]["firstName"], "Re");
    // Errors keep their shape through the remote hop.
    let res = client.get(format!("{base}/v2/users/{id}")).header("X-Api-Key", &t.api_key).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let err = res.json::<Value>().await.unwrap();
    assert_eq!((&err["errors"][0]["code"], &err["errors"][0]["reason"]), (&json!(401), &json!("missing_session")));
    // Its metrics and probes are on its management port, not the public one.
    assert_eq!(client.get(format!("{base}/metrics")).send().await.unwrap().status(), 404);
    let metrics = client.get(format!("http://127.0.0.1:{admin}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("usersvc_http_requests_total"));
    let ready = client.get(format!("http://127.0.0.1:{admin}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}
}
