//! The /v2 JSON gateway over real HTTP.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{TestApp, spawn, spawn_with};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

impl TestApp {
    /// Sends a request the way the documented clients do.
    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("X-Api-Key", format!("browser api.catalyze.io {}", self.api_key))
            .header("Accept", "application/json");
        if let Some(token) = token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            req = req.header("Content-Type", "application/json").body(body.to_string());
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("reply is not JSON ({status}): {text}"));
        (status, json)
    }

    async fn http_sign_up(&self, username: &str) -> (String, String) {
        let body = json!({"username": username, "password": "correct horse battery", "email": {"primary": format!("{username}@example.com")}});
        let (status, out) = self.call(Method::POST, "/v2/users", None, Some(&body)).await;
        assert_eq!(status, StatusCode::OK, "{out}");
        (out["usersId"].as_str().unwrap().to_owned(), out["sessionToken"].as_str().unwrap().to_owned())
    }
}

/// Every member the request sent comes back equal, but the ones the server
/// manages or never returns.
fn assert_echoed(sent: &Value, got: &Value) {
    const NOT_ECHOED: &[&str] =
        &["username", "password", "sessionToken", "usersId", "active", "createdAt", "updatedAt"];
    for (k, v) in sent.as_object().unwrap() {
        if NOT_ECHOED.contains(&k.as_str()) {
            continue;
        }
        assert_eq!(&got[k], v, "member {k}");
    }
    assert!(got.get("username").is_none() && got.get("password").is_none());
}

fn is_timestamp(v: &Value) -> bool {
    v.as_str().is_some_and(|s| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ").is_ok())
}

both_stores! {
async fn documented_full_model_round_trips() {
    let t = spawn().await;
    let sent = fixture("create_full.json");
    let (status, created) =
        t.call(Method::POST, "/v2/users", Some("0c7f26c8-5b4a-4a32-b35a-2e249448bbf2"), Some(&sent)).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_echoed(&sent, &created);
    let id = created["usersId"].as_str().unwrap();
    assert_ne!(id, "a564ef59-085b-4803-b514-37288e32709e", "ids are the server's");
    uuid::Uuid::parse_str(id).unwrap();
    assert!(is_timestamp(&created["createdAt"]) && is_timestamp(&created["updatedAt"]));
    assert_ne!(created["createdAt"], "2013-11-07T12:00:00Z");
    assert_eq!(created["active"], true, "a self sign-up is active whatever it sends");
    let token = created["sessionToken"].as_str().unwrap();
    assert_ne!(token, "25074b4e-bc7f-4ee3-aae0-f9ff0db1786e");

    let (status, got) = t.call(Method::GET, &format!("/v2/users/{id}"), Some(token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_echoed(&sent, &got);
    assert!(got.get("sessionToken").is_none());
    assert_eq!(got["createdAt"], created["createdAt"]);

    // The documented update body, sent back whole; its 7-character password
    // is below the minimum, so it is refused and nothing changes.
    let update = fixture("update.json");
    let (status, err) = t.call(Method::PUT, &format!("/v2/users/{id}"), Some(token), Some(&update)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["errors"][0]["field"], "password");
    let (_, after) = t.call(Method::GET, &format!("/v2/users/{id}"), Some(token), None).await;
    assert_eq!(after, got);

    // Without the password it applies: the documented members replace.
    let mut update = update;
    update.as_object_mut().unwrap().remove("password");
    update["username"] = json!("renamed");
    let (status, updated) = t.call(Method::PUT, &format!("/v2/users/{id}"), Some(token), Some(&update)).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_echoed(&update, &updated);
    assert_eq!(updated["phoneNumber"], sent["phoneNumber"], "absent members are kept");
    let (status, _) = t
        .call(
            Method::POST,
            "/v2/auth/signin",
            None,
            Some(&json!({"username": "renamed", "password": "documented-password"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = t.call(Method::DELETE, &format!("/v2/users/{id}"), Some(token), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, _) = t.call(Method::GET, &format!("/v2/users/{id}"), Some(token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
}

both_stores! {
async fn documented_short_create_and_reminder() {
    // The document's own password, "test123", is seven characters: accepted
    // where the operator sets the minimum to seven, refused by default.
    let t = spawn().await;
    let sent = fixture("create_short.json");
    let (status, err) = t.call(Method::POST, "/v2/users", None, Some(&sent)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["errors"][0]["field"], "password");

    let t = spawn_with(|a| a.min_password_length = 7).await;
    let (status, created) = t.call(Method::POST, "/v2/users", None, Some(&sent)).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_echoed(&sent, &created);
    let (status, body) =
        t.call(Method::POST, "/v2/users/forgotUsername", None, Some(&fixture("forgot_username.json"))).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
}
}

both_stores! {
async fn merge_patch_semantics() {
    let t = spawn().await;
    let (id, token) = t.http_sign_up("merger").await;
    let path = format!("/v2/users/{id}");
    let first = json!({
        "name": {"firstName": "Ada", "lastName": "Byron"},
        "extras": {"keep": 1, "nested": {"a": 1, "b": 2}, "drop": "x"},
        "dob": "1990-05-06",
        "age": 35,
    });
    let (status, _) = t.call(Method::PUT, &path, Some(&token), Some(&first)).await;
    assert_eq!(status, StatusCode::OK);
    let patch = json!({
        "name": {"lastName": "King"},
        "extras": {"nested": {"b": null, "c": 3}, "drop": null},
        "dob": null,
        "usersId": "someone-else",
        "createdAt": "not even a time",
    });
    let (status, got) = t.call(Method::PUT, &path, Some(&token), Some(&patch)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["name"], json!({"firstName": "Ada", "lastName": "King"}), "objects merge");
    assert_eq!(got["extras"], json!({"keep": 1, "nested": {"a": 1, "c": 3}}), "extras merge; null removes");
    assert!(got.get("dob").is_none(), "null clears");
    assert_eq!(got["age"], 35, "absent members stay");
    assert_eq!(got["usersId"], id.as_str(), "server-managed members are ignored");
    // An empty patch changes nothing but is fine.
    let (status, again) = t.call(Method::PUT, &path, Some(&token), Some(&json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["name"], got["name"]);
}
}

both_stores! {
async fn sign_in_and_out() {
    let t = spawn().await;
    let (id, _) = t.http_sign_up("walker").await;
    let creds = json!({"username": "Walker", "password": "correct horse battery"});
    let (status, user) = t.call(Method::POST, "/v2/auth/signin", None, Some(&creds)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["usersId"], id.as_str());
    let token = user["sessionToken"].as_str().unwrap().to_owned();
    let (status, body) = t.call(Method::GET, "/v2/auth/signout", Some(&token), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, err) = t.call(Method::GET, &format!("/v2/users/{id}"), Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(err["errors"][0]["code"], 401);
    assert_eq!(err["errors"][0]["reason"], "invalid_session");
    let (status, err) = t
        .call(Method::POST, "/v2/auth/signin", None, Some(&json!({"username": "walker", "password": "wrong password"})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(err["errors"][0]["code"], 401);
    assert_eq!(err["errors"][0]["reason"], "invalid_credentials");
}
}

both_stores! {
async fn groups_in_documented_shapes() {
    let t = spawn().await;
    let (_, sup) = t.http_sign_up("chief").await;
    t.make_supervisor(t.app_id, "chief").await;
    let (status, group) = t
        .call(Method::POST, "/v2/groups", Some(&sup), Some(&json!({"name": "A Really Cool Group", "default": false})))
        .await;
    assert_eq!(status, StatusCode::OK, "{group}");
    assert_eq!(group["name"], "A Really Cool Group");
    assert_eq!(group["default"], false);
    let gid = group["groupsId"].as_str().unwrap().to_owned();
    let (_, default_group) =
        t.call(Method::POST, "/v2/groups", Some(&sup), Some(&json!({"name": "All", "default": true}))).await;
    let (uid, token) = t.http_sign_up("member").await;

    let (status, body) =
        t.call(Method::POST, &format!("/v2/groups/{gid}/users/{uid}"), Some(&sup), Some(&json!({}))).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, members) = t.call(Method::GET, &format!("/v2/groups/{gid}/members"), Some(&sup), None).await;
    assert_eq!((status, members), (StatusCode::OK, json!([uid])));
    let (status, mine) = t.call(Method::GET, &format!("/v2/users/{uid}/groups"), Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    // In group id order (UUIDv7: the order the groups were made in), not the order joined.
    assert_eq!(
        mine,
        json!([{"groupsId": gid, "name": "A Really Cool Group"}, {"groupsId": default_group["groupsId"], "name": "All"}])
    );
    let (status, updated) =
        t.call(Method::PUT, &format!("/v2/groups/{gid}"), Some(&sup), Some(&json!({"default": true}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated, json!({"groupsId": gid, "name": "A Really Cool Group", "default": true}));
    let (status, all) = t.call(Method::GET, &format!("/v2/app/{}/groups", t.app_id), Some(&sup), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, defaults) = t.call(Method::GET, &format!("/v2/app/{}/groups/default", t.app_id), Some(&sup), None).await;
    assert!(defaults.as_array().unwrap().iter().all(|g| g["default"] == true));
    let (status, _) = t.call(Method::GET, &format!("/v2/app/{}/groups", uuid::Uuid::new_v4()), Some(&sup), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A plain user may not manage groups.
    let (status, err) = t.call(Method::GET, &format!("/v2/groups/{gid}"), Some(&token), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(err["errors"][0]["message"].is_string());
    let (status, body) = t.call(Method::DELETE, &format!("/v2/groups/{gid}/users/{uid}"), Some(&sup), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, body) = t.call(Method::DELETE, &format!("/v2/groups/{gid}"), Some(&sup), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, _) = t.call(Method::GET, &format!("/v2/groups/{gid}"), Some(&sup), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
}

both_stores! {
async fn authorisation_matrix_over_http() {
    let t = spawn().await;
    let (alice, alice_token) = t.http_sign_up("alice").await;
    let (bob, _) = t.http_sign_up("bob").await;
    let path = format!("/v2/users/{alice}");
    let send = |key: Option<String>, token: Option<String>, path: String| {
        let mut req = t.http.get(t.url(&path));
        if let Some(k) = key {
            req = req.header("X-Api-Key", k);
        }
        if let Some(tok) = token {
            req = req.header("Authorization", format!("Bearer {tok}"));
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status();
            let body: Value = res.json().await.unwrap();
            assert!(body["errors"][0]["code"] == status.as_u16() || status == StatusCode::OK, "{body}");
            status
        }
    };
    let key = Some(t.api_key.clone());
    let tok = Some(alice_token.clone());
    assert_eq!(send(None, tok.clone(), path.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(send(Some("browser x nope".into()), tok.clone(), path.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(send(key.clone(), None, path.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(send(key.clone(), Some("garbage".into()), path.clone()).await, StatusCode::UNAUTHORIZED);
    let (_, other_key) = crate::common::new_application(&t.app).await;
    assert_eq!(send(Some(other_key.clone()), tok.clone(), path.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(send(key.clone(), tok.clone(), format!("/v2/users/{bob}")).await, StatusCode::NOT_FOUND);
    assert_eq!(send(key.clone(), tok.clone(), path.clone()).await, StatusCode::OK);
    let (stranger, _) = t.sign_up_in(&other_key, "stranger").await;
    t.make_supervisor(t.app_id, "alice").await;
    assert_eq!(send(key.clone(), tok.clone(), format!("/v2/users/{stranger}")).await, StatusCode::NOT_FOUND);
}
}

both_stores! {
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let t = spawn().await;
    let (id, token) = t.http_sign_up("steady").await;
    let (_, before) = t.call(Method::GET, &format!("/v2/users/{id}"), Some(&token), None).await;
    let key = format!("browser x {}", t.api_key);
    let user_path = format!("/v2/users/{id}");
    let big =
        format!("{{\"username\":\"big\",\"password\":\"long enough\",\"extras\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    // (case, method, path, body, content type, expected status, field named)
    type Case<'a> = (&'a str, Method, &'a str, Vec<u8>, &'a str, StatusCode, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "truncated JSON",
            Method::POST,
            "/v2/users",
            br#"{"username": "a", "pass"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "non-UTF-8",
            Method::POST,
            "/v2/users",
            b"{\"username\": \"\xff\xfe\", \"password\": \"long enough\"}".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "array body",
            Method::POST,
            "/v2/users",
            b"[1, 2]".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "no username",
            Method::POST,
            "/v2/users",
            br#"{"password": "long enough"}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("username"),
        ),
        (
            "no password",
            Method::POST,
            "/v2/users",
            br#"{"username": "nopw"}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("password"),
        ),
        (
            "short password",
            Method::POST,
            "/v2/users",
            br#"{"username": "shorty", "password": "abc"}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("password"),
        ),
        (
            "huge username",
            Method::POST,
            "/v2/users",
            format!(r#"{{"username": "{}", "password": "long enough"}}"#, "u".repeat(10_000)).into_bytes(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("username"),
        ),
        (
            "email as string",
            Method::POST,
            "/v2/users",
            br#"{"username": "e1", "password": "long enough", "email": "a@b.com"}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("email"),
        ),
        (
            "age as string",
            Method::POST,
            "/v2/users",
            br#"{"username": "a1", "password": "long enough", "age": "21"}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("age"),
        ),
        (
            "impossible dob",
            Method::POST,
            "/v2/users",
            br#"{"username": "d1", "password": "long enough", "dob": "2001-02-30"}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("dob"),
        ),
        (
            "malformed address",
            Method::POST,
            "/v2/users",
            br#"{"username": "m1", "password": "long enough", "addresses": {"city": "x"}}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("addresses"),
        ),
        (
            "malformed address item",
            Method::POST,
            "/v2/users",
            br#"{"username": "m2", "password": "long enough", "addresses": [{"geocode": {"latitude": "north"}}]}"#
                .to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("addresses[0].geocode.latitude"),
        ),
        (
            "bad email address",
            Method::POST,
            "/v2/users",
            br#"{"username": "m3", "password": "long enough", "email": {"primary": "nope"}}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("email.primary"),
        ),
        (
            "duplicate username, other case",
            Method::POST,
            "/v2/users",
            br#"{"username": "STEADY", "password": "long enough"}"#.to_vec(),
            "application/json",
            StatusCode::CONFLICT,
            None,
        ),
        (
            "2 MiB body",
            Method::POST,
            "/v2/users",
            big.into_bytes(),
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            "a form body, not JSON",
            Method::POST,
            "/v2/users",
            b"username=a&password=b".to_vec(),
            "application/x-www-form-urlencoded",
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "a type that never carries JSON",
            Method::POST,
            "/v2/users",
            b"--x\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\na\r\n--x--\r\n".to_vec(),
            "multipart/form-data; boundary=x",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
        ),
        (
            "a member the model does not have",
            Method::PUT,
            &user_path,
            br#"{"name": {"nickname": "Al"}}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("name.nickname"),
        ),
        (
            "malformed id",
            Method::GET,
            "/v2/users/not-a-uuid",
            vec![],
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("usersId"),
        ),
        (
            "PUT with wrong types",
            Method::PUT,
            &user_path,
            br#"{"name": {"firstName": 5}}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("name.firstName"),
        ),
        (
            "PUT truncated",
            Method::PUT,
            &user_path,
            br#"{"name": "#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            None,
        ),
        ("unknown route", Method::GET, "/v2/nothing/here", vec![], "application/json", StatusCode::NOT_FOUND, None),
        ("wrong method", Method::PATCH, "/v2/users", vec![], "application/json", StatusCode::METHOD_NOT_ALLOWED, None),
    ];
    for (name, method, path, body, content_type, want, field) in cases {
        let res = t
            .http
            .request(method, t.url(path))
            .header("X-Api-Key", &key)
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(status, want, "{name}: {text}");
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{name}: not JSON: {text}"));
        let err = &json["errors"][0];
        assert_eq!(err["code"], status.as_u16(), "{name}: {json}");
        assert!(err["reason"].as_str().is_some_and(|c| !c.is_empty()), "{name}: {json}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {json}");
        if let Some(field) = field {
            assert_eq!(err["field"], field, "{name}: {json}");
        }
    }
    // The service still serves, and the data is as it was.
    let (status, after) = t.call(Method::GET, &format!("/v2/users/{id}"), Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(after, before);
    let n = t.count_app("SELECT count(*) FROM users WHERE app_id = $1").await;
    assert_eq!(n, 1, "no bad request created a user");
}
}

both_stores! {
async fn request_ids_and_cors() {
    let t = spawn_with(|a| a.gateway.cors_origins = vec!["https://app.example.com".into()]).await;
    let res = t.http.get(t.url("/v2/users/x")).header("X-Request-Id", "trace-123").send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-123");
    let res = t.http.get(t.url("/v2/users/x")).send().await.unwrap();
    assert!(!res.headers()["x-request-id"].is_empty(), "generated when absent");

    let preflight = t
        .http
        .request(Method::OPTIONS, t.url("/v2/users"))
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "x-api-key, authorization, content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://app.example.com");
    let allowed = preflight.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("x-api-key") && allowed.contains("authorization"), "{allowed}");
    let other = t
        .http
        .request(Method::OPTIONS, t.url("/v2/users"))
        .header("Origin", "https://evil.example.com")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
}

both_stores! {
async fn hostile_shapes_get_clear_400s() {
    let t = spawn().await;
    let (_, sup) = t.http_sign_up("shaper").await;
    t.make_supervisor(t.app_id, "shaper").await;
    // Deeply nested extras: refused by name, never a 500.
    let mut deep = json!(1);
    for _ in 0..60 {
        deep = json!({ "a": deep });
    }
    let body = json!({"username": "deep", "password": "long enough", "extras": deep});
    let (status, err) = t.call(Method::POST, "/v2/users", None, Some(&body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["errors"][0]["field"], "extras");
    let mut deep_list = json!(1);
    for _ in 0..60 {
        deep_list = json!([deep_list]);
    }
    let body = json!({"username": "deep2", "password": "long enough", "extras": deep_list});
    let (status, _) = t.call(Method::POST, "/v2/users", None, Some(&body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A wide list of numbers is no 500 either.
    let wide: Vec<u8> = vec![1; 400_000];
    let body = json!({"username": "wide", "password": "long enough", "extras": wide});
    let (status, err) = t.call(Method::POST, "/v2/users", None, Some(&body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["errors"][0]["field"], "extras");
    // A NUL in a group name.
    let (status, err) = t.call(Method::POST, "/v2/groups", Some(&sup), Some(&json!({"name": "a\u{0}b"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["errors"][0]["field"], "name");
}
}

both_stores! {
async fn another_applications_user_is_not_found_for_a_plain_user() {
    let t = spawn().await;
    let (_, token) = t.http_sign_up("local").await;
    let (neighbour, _) = t.http_sign_up("neighbour").await;
    let (_, other_key) = crate::common::new_application(&t.app).await;
    let (stranger, _) = t.sign_up_in(&other_key, "stranger").await;
    let (status, _) = t.call(Method::GET, &format!("/v2/users/{stranger}"), Some(&token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = t.call(Method::GET, &format!("/v2/users/{}", uuid::Uuid::now_v7()), Some(&token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A neighbour's record answers as an id of nobody's does: the same
    // status and body, so a plain user cannot learn which ids are users.
    let (status, body) = t.call(Method::GET, &format!("/v2/users/{neighbour}"), Some(&token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, nobody) = t.call(Method::GET, &format!("/v2/users/{}", uuid::Uuid::now_v7()), Some(&token), None).await;
    assert_eq!(body["errors"][0]["reason"], nobody["errors"][0]["reason"]);
    assert_eq!(body["errors"][0]["message"], nobody["errors"][0]["message"]);
}
}

both_stores! {
async fn concurrent_group_updates_of_different_fields_both_stand() {
    let t = spawn().await;
    let (_, sup) = t.http_sign_up("grouper").await;
    t.make_supervisor(t.app_id, "grouper").await;
    for round in 0..8 {
        let (_, g) =
            t.call(Method::POST, "/v2/groups", Some(&sup), Some(&json!({"name": "before", "default": false}))).await;
        let path = format!("/v2/groups/{}", g["groupsId"].as_str().unwrap());
        let name = json!({"name": format!("after {round}")});
        let default = json!({"default": true});
        let (a, b) = tokio::join!(
            t.call(Method::PUT, &path, Some(&sup), Some(&name)),
            t.call(Method::PUT, &path, Some(&sup), Some(&default)),
        );
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
        let (_, got) = t.call(Method::GET, &path, Some(&sup), None).await;
        assert_eq!(got["name"], format!("after {round}"));
        assert_eq!(got["default"], true);
    }
}
}
