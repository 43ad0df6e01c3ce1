//! The edge (issue 22): the client's address behind trusted proxies, IPv6
//! clients throttled by their /64, request ids, and the user.create record.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;
use usersvc::{pb, store::AuditFilter};

use crate::common::{self, TestApp, spawn, spawn_with};

/// A service that believes the proxies in `nets` (the test's requests come
/// from 127.0.0.1).
async fn behind(nets: &[&str]) -> TestApp {
    let nets: Vec<_> = nets.iter().map(|n| usersvc::edge::parse_net(n).unwrap()).collect();
    spawn_with(|a| a.gateway.trusted_proxies = nets).await
}

/// This test's application's trail, client addresses opened.
async fn trail(t: &TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    let filter = AuditFilter { app_id: Some(t.app_id), ..Default::default() };
    common::admin(&t.app).list_trail(filter, &mut out).await.unwrap();
    String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The user.create record of the user made with `username`'s reply `id`.
async fn created_record(t: &TestApp, id: &str) -> Value {
    let all = trail(t).await;
    all.into_iter()
        .find(|r| r["action"] == "user.create" && r["subjectId"] == id)
        .unwrap_or_else(|| panic!("no user.create record of {id}"))
}

/// Signs up `username` over HTTP with extra headers; the reply.
async fn sign_up_with(t: &TestApp, username: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = t
        .http
        .post(t.url("/v2/users"))
        .header("X-Api-Key", &t.api_key)
        .json(&json!({"username": username, "password": "correct horse battery"}));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.unwrap()
}

/// The client address the trail recorded for a sign-up with these headers.
async fn recorded_address(t: &TestApp, username: &str, headers: &[(&str, &str)]) -> Value {
    let res = sign_up_with(t, username, headers).await;
    assert_eq!(res.status(), StatusCode::OK, "{headers:?}");
    let id = res.json::<Value>().await.unwrap()["usersId"].as_str().unwrap().to_owned();
    created_record(t, &id).await["clientAddr"].clone()
}

/// A sign-in over HTTP through the proxy, which names its client in
/// `header`.
fn sign_in_via(
    t: &TestApp,
    header: &'static str,
    client: &str,
    username: &str,
    password: &str,
) -> impl Future<Output = StatusCode> + Send + 'static {
    let req = t
        .http
        .post(t.url("/v2/auth/signin"))
        .header("X-Api-Key", &t.api_key)
        .header(header, client)
        .json(&json!({"username": username, "password": password}));
    async move { req.send().await.unwrap().status() }
}

async fn sign_in_from(t: &TestApp, client: &str, username: &str, password: &str) -> StatusCode {
    sign_in_via(t, "X-Forwarded-For", client, username, password).await
}

async fn sign_in_forwarded(t: &TestApp, forwarded: &str, username: &str, password: &str) -> StatusCode {
    sign_in_via(t, "Forwarded", forwarded, username, password).await
}

/// `n` failed sign-ins from one client (unknown usernames, so that only
/// the address counts), four at a time; their statuses in order.
async fn fail_sign_ins(t: &TestApp, header: &'static str, client: &str, n: usize) -> Vec<StatusCode> {
    let mut statuses = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(4) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|i| tokio::spawn(sign_in_via(t, header, client, &format!("nobody-{i}"), "wrong password")))
            .collect();
        for task in tasks {
            statuses.push(task.await.unwrap());
        }
    }
    statuses
}

both_stores! {
async fn a_trusted_proxy_names_the_client() {
    let t = behind(&["127.0.0.1"]).await;
    assert_eq!(recorded_address(&t, "fwd-xff", &[("X-Forwarded-For", "198.51.100.1, 203.0.113.5")]).await, "203.0.113.5");
    // Forwarded wins over X-Forwarded-For; a quoted IPv6 address with a port.
    let both = [("Forwarded", r#"for=192.0.2.60;proto=https, for="[2001:db8:cafe::17]:4711""#), ("X-Forwarded-For", "198.51.100.1")];
    assert_eq!(recorded_address(&t, "fwd-v6", &both).await, "2001:db8:cafe::17");
    // Several header lines are one list, read from the right; the proxy's
    // own hops (trusted) are passed over.
    let lines = [("X-Forwarded-For", "203.0.113.99, 203.0.113.6"), ("X-Forwarded-For", "127.0.0.1")];
    assert_eq!(recorded_address(&t, "fwd-lines", &lines).await, "203.0.113.6");
    // What names no address, or cannot be read, leaves the proxy's own.
    for (i, bad) in ["for=unknown", "for=_hidden", "for=\"[2001:db8::1\"", "nonsense", "for=203.0.113.7, proto=http"]
        .iter()
        .enumerate()
    {
        assert_eq!(recorded_address(&t, &format!("fwd-bad{i}"), &[("Forwarded", bad)]).await, "127.0.0.1", "{bad}");
    }

    // gRPC: a proxy's X-Forwarded-For, and a standalone gateway's x-client-addr.
    let mut users = t.users().await;
    for (i, (name, value, expected)) in
        [("x-forwarded-for", "203.0.113.8", "203.0.113.8"), ("x-client-addr", "2001:db8::8", "2001:db8::8")].into_iter().enumerate()
    {
        let user = pb::User { username: format!("grpc-fwd{i}"), password: "correct horse battery".into(), ..Default::default() };
        let mut req = t.req(pb::CreateUserRequest { user: Some(user) }, None);
        req.metadata_mut().insert(name, MetadataValue::try_from(value).unwrap());
        let id = users.create_user(req).await.unwrap().into_inner().users_id;
        assert_eq!(created_record(&t, &id).await["clientAddr"], expected, "{name}");
    }
}
}

both_stores! {
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    // Trusted: some other network; the test's requests come from 127.0.0.1.
    let t = behind(&["10.0.0.0/8"]).await;
    let headers = [("X-Forwarded-For", "203.0.113.5"), ("Forwarded", "for=203.0.113.5")];
    assert_eq!(recorded_address(&t, "spoof-http", &headers).await, "127.0.0.1");
    let mut users = t.users().await;
    let user = pb::User { username: "spoof-grpc".into(), password: "correct horse battery".into(), ..Default::default() };
    let mut req = t.req(pb::CreateUserRequest { user: Some(user) }, None);
    req.metadata_mut().insert("x-client-addr", MetadataValue::from_static("203.0.113.5"));
    req.metadata_mut().insert("x-forwarded-for", MetadataValue::from_static("203.0.113.5"));
    let id = users.create_user(req).await.unwrap().into_inner().users_id;
    assert_eq!(created_record(&t, &id).await["clientAddr"], "127.0.0.1");
}
}

both_stores! {
async fn one_client_behind_a_proxy_does_not_throttle_another() {
    let t = behind(&["127.0.0.1"]).await;
    t.sign_up("bystander").await;
    let statuses = fail_sign_ins(&t, "X-Forwarded-For", "203.0.113.10", 60).await;
    let refused = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    assert!((50..60).contains(&refused), "50 free failures, then waits: {statuses:?}");
    assert_eq!(sign_in_from(&t, "203.0.113.10", "nobody-else", "wrong password").await, StatusCode::TOO_MANY_REQUESTS);
    // Another client of the same proxy signs in at once.
    assert_eq!(sign_in_from(&t, "203.0.113.11", "bystander", "correct horse battery").await, StatusCode::OK);
    // And the trail names the clients, not the proxy.
    let all = trail(&t).await;
    let throttled: Vec<_> = all.iter().filter(|r| r["action"] == "session.sign_in" && r["outcome"] == "throttled").collect();
    assert!(!throttled.is_empty());
    assert!(throttled.iter().all(|r| r["clientAddr"] == "203.0.113.10"), "{throttled:?}");
    let ok = all.iter().rfind(|r| r["action"] == "session.sign_in" && r["outcome"] == "ok").unwrap();
    assert_eq!(ok["clientAddr"], "203.0.113.11");
}
}

both_stores! {
async fn ipv6_clients_share_a_throttle_per_slash_64() {
    let t = behind(&["127.0.0.1"]).await;
    t.sign_up("neighbour").await;
    t.sign_up("stranger").await;
    // A quoted IPv6 `for=` with a port, from the trusted proxy.
    let fails = fail_sign_ins(&t, "Forwarded", r#"for="[2001:db8:1:2::a]:1234""#, 56).await;
    assert!(fails.contains(&StatusCode::TOO_MANY_REQUESTS), "{fails:?}");
    // Another address of the same /64 waits too, even with the right password.
    let res = sign_in_forwarded(&t, r#"for="[2001:db8:1:2:ffff::b]""#, "neighbour", "correct horse battery").await;
    assert_eq!(res, StatusCode::TOO_MANY_REQUESTS);
    // One of the next /64 does not.
    let res = sign_in_forwarded(&t, r#"for="[2001:db8:1:3::a]""#, "stranger", "correct horse battery").await;
    assert_eq!(res, StatusCode::OK);
    // The trail keeps the whole address.
    let all = trail(&t).await;
    assert!(all.iter().any(|r| r["outcome"] == "throttled" && r["clientAddr"] == "2001:db8:1:2:ffff::b"));
    assert!(all.iter().any(|r| r["outcome"] == "ok" && r["action"] == "session.sign_in" && r["clientAddr"] == "2001:db8:1:3::a"));
}
}

both_stores! {
async fn request_ids_kept_only_when_printable_and_short_beside_the_servers_own() {
    let t = spawn().await;
    let uuid_of = |res: &reqwest::Response, name: &str| -> String {
        let v = res.headers().get(name).unwrap_or_else(|| panic!("no {name}")).to_str().unwrap().to_owned();
        uuid::Uuid::parse_str(&v).unwrap_or_else(|_| panic!("{name} {v} is not a UUID"));
        v
    };
    // A good one: echoed, and in the trail with the server's.
    let res = sign_up_with(&t, "rid-good", &[("x-request-id", "good-id_1:2.3"), ("x-server-request-id", "forged")]).await;
    assert_eq!(res.headers()["x-request-id"], "good-id_1:2.3");
    let server = uuid_of(&res, "x-server-request-id");
    let id = res.json::<Value>().await.unwrap()["usersId"].as_str().unwrap().to_owned();
    let r = created_record(&t, &id).await;
    assert_eq!(r["requestId"], "good-id_1:2.3");
    assert_eq!(r["serverRequestId"], server.as_str(), "the server's id, not a client's claim");

    // Too long, or not printable: dropped; the reply and the trail name the
    // request by the server's id.
    let long = "L".repeat(65);
    for (i, bad) in [long.as_str(), "has space", "semi;colon"].into_iter().enumerate() {
        let res = sign_up_with(&t, &format!("rid-bad{i}"), &[("x-request-id", bad)]).await;
        let server = uuid_of(&res, "x-server-request-id");
        assert_eq!(res.headers()["x-request-id"], server.as_str());
        let id = res.json::<Value>().await.unwrap()["usersId"].as_str().unwrap().to_owned();
        let r = created_record(&t, &id).await;
        assert_eq!((r["requestId"].as_str(), r["serverRequestId"].as_str()), (Some(server.as_str()), Some(server.as_str())));
    }
    let res = t
        .http
        .post(t.url("/v2/users"))
        .header("X-Api-Key", &t.api_key)
        .header("x-request-id", reqwest::header::HeaderValue::from_bytes("café".as_bytes()).unwrap())
        .json(&json!({"username": "rid-utf8", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], uuid_of(&res, "x-server-request-id").as_str());
    // None sent: the server's id, on every reply (errors too).
    let res = t.http.get(t.url("/v2/nowhere")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["x-request-id"], uuid_of(&res, "x-server-request-id").as_str());

    // gRPC alike, the ids in the reply's metadata.
    let mut users = t.users().await;
    for (i, (sent, kept)) in [("grpc-good", true), (long.as_str(), false)].into_iter().enumerate() {
        let user = pb::User { username: format!("rid-grpc{i}"), password: "correct horse battery".into(), ..Default::default() };
        let mut req = t.req(pb::CreateUserRequest { user: Some(user) }, None);
        req.metadata_mut().insert("x-request-id", MetadataValue::try_from(sent).unwrap());
        req.metadata_mut().insert("x-server-request-id", MetadataValue::from_static("0193a1a0-0000-7000-8000-000000000000"));
        let res = users.create_user(req).await.unwrap();
        let server = res.metadata().get("x-server-request-id").unwrap().to_str().unwrap().to_owned();
        assert_ne!(server, "0193a1a0-0000-7000-8000-000000000000");
        let r = created_record(&t, &res.into_inner().users_id).await;
        assert_eq!(r["serverRequestId"], server.as_str());
        assert_eq!(r["requestId"], if kept { sent } else { server.as_str() });
    }
    let text = serde_json::to_string(&trail(&t).await).unwrap();
    for absent in [long.as_str(), "has space", "semi;colon", "café", "forged"] {
        assert!(!text.contains(absent), "{absent} is in the trail");
    }
    // Records with and without the server's id chain and verify.
    if common::backend() == common::Backend::Sqlite {
        common::audit_verified(&t.db_url).await.unwrap();
    }
}
}

both_stores! {
async fn the_user_create_record_names_username_once() {
    let t = spawn().await;
    let res = sign_up_with(&t, "named-once", &[]).await;
    let id = res.json::<Value>().await.unwrap()["usersId"].as_str().unwrap().to_owned();
    let r = created_record(&t, &id).await;
    let fields: Vec<&str> = r["fields"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert_eq!(fields.iter().filter(|f| **f == "username").count(), 1, "{fields:?}");
    assert_eq!(fields.iter().filter(|f| **f == "password").count(), 1, "{fields:?}");
}
}

both_stores! {
async fn the_deprecated_trusted_gateways_flag_adds_to_the_proxies() {
    let nets = vec![usersvc::edge::parse_net("127.0.0.1").unwrap()];
    let t = spawn_with(|a| a.trusted_gateways = nets).await;
    let user = pb::User { username: "via-old-flag".into(), password: "correct horse battery".into(), ..Default::default() };
    let mut req = t.req(pb::CreateUserRequest { user: Some(user) }, None);
    req.metadata_mut().insert("x-client-addr", MetadataValue::from_static("203.0.113.12"));
    let id = t.users().await.create_user(req).await.unwrap().into_inner().users_id;
    assert_eq!(created_record(&t, &id).await["clientAddr"], "203.0.113.12");
    assert_eq!(recorded_address(&t, "via-old-flag-http", &[("X-Forwarded-For", "203.0.113.13")]).await, "203.0.113.13");
}
}
