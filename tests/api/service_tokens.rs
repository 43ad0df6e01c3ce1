//! Service credentials for internal callers: `usersvc token create|list|revoke`,
//! and calls made with a service token over gRPC and HTTP.

use std::process::Output;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use usersvc::{pb, store::AuditFilter};

use crate::common::{self, TestApp, spawn, with_auth};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `token create`; returns its JSON.
async fn create_token(t: &TestApp, name: &str) -> Value {
    let app = t.app_id.to_string();
    let out = common::cli(&t.db_url, &["token", "create", "--app", &app, "--role", "supervisor", "--name", name]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `token list`, line by line; the raw output too.
async fn list_tokens(t: &TestApp) -> (Vec<Value>, String) {
    let out = common::cli(&t.db_url, &["token", "list", "--app", &t.app_id.to_string()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    (text.lines().map(|l| serde_json::from_str(l).unwrap()).collect(), text)
}

async fn revoke_token(t: &TestApp, token_id: &str) -> Output {
    common::cli(&t.db_url, &["token", "revoke", "--app", &t.app_id.to_string(), "--token-id", token_id]).await
}

/// The application's trail, from the operator's view.
async fn trail(t: &TestApp) -> Vec<Value> {
    // Read records are written in batches a moment later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut out = Vec::new();
    let filter = AuditFilter { app_id: Some(t.app_id), ..Default::default() };
    common::admin(&t.app).list_trail(filter, &mut out).await.unwrap();
    String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn find<'a>(trail: &'a [Value], action: &str, check: impl Fn(&Value) -> bool) -> &'a Value {
    trail
        .iter()
        .find(|r| r["action"] == action && check(r))
        .unwrap_or_else(|| panic!("no {action} in {}", serde_json::to_string_pretty(trail).unwrap()))
}

/// GET /v2/users/{id} with this key and token.
async fn http_get_user(t: &TestApp, api_key: &str, token: &str, id: &str) -> (StatusCode, Value) {
    let res = t
        .http
        .get(t.url(&format!("/v2/users/{id}")))
        .header("X-Api-Key", api_key)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

both_stores! {
async fn a_service_token_acts_as_supervisor_until_revoked() {
    let t = spawn().await;
    let (patient, _) = t.sign_up("patient.zero").await;

    let created = create_token(&t, "billing sync").await;
    let token_id = created["tokenId"].as_str().unwrap().to_owned();
    let token = created["token"].as_str().unwrap().to_owned();
    uuid::Uuid::parse_str(&token_id).unwrap();
    assert_eq!(token.len(), 43, "32 random bytes, base64url");
    assert_eq!(created["appId"], t.app_id.to_string());
    assert_eq!((&created["name"], &created["role"]), (&json!("billing sync"), &json!("supervisor")));
    assert_eq!(created.as_object().unwrap().len(), 5, "{created}");

    // gRPC: any user of the application is readable, groups are manageable.
    let mut users = t.users().await;
    let got = users
        .get_user(t.req(pb::GetUserRequest { users_id: patient.clone() }, Some(&token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.users_id, patient);
    assert_eq!(got.email.unwrap().primary, "patient.zero@example.com");
    let group = pb::Group { name: "Billing".into(), default: Some(false), ..Default::default() };
    let group = t
        .groups()
        .await
        .create_group(t.req(pb::CreateGroupRequest { group: Some(group) }, Some(&token)))
        .await
        .unwrap()
        .into_inner();

    // HTTP, through the gateway: the same.
    let (status, body) = http_get_user(&t, &t.api_key, &token, &patient).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&body["usersId"], &body["email"]["primary"]), (&json!(patient), &json!("patient.zero@example.com")));
    let res = t
        .http
        .post(t.url("/v2/groups"))
        .header("X-Api-Key", format!("server usersvc {}", t.api_key))
        .header("Authorization", format!("Bearer {token}"))
        .json(&json!({"name": "Coding", "default": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let http_group: Value = res.json().await.unwrap();

    // A user made by the service is not signed in as them.
    let new = pb::User { username: "made.by.service".into(), password: "long enough pw".into(), ..Default::default() };
    let made = users.create_user(t.req(pb::CreateUserRequest { user: Some(new) }, Some(&token))).await.unwrap();
    assert!(made.get_ref().session_token.is_empty());

    // The trail names the service and its token, never a user.
    let records = trail(&t).await;
    let by_service = |r: &Value| r["actor"] == "service" && r["actorId"] == token_id.as_str();
    let read = find(&records, "user.read", |r| r["subjectId"] == patient.as_str() && by_service(r));
    assert_eq!(read["outcome"], "ok");
    find(&records, "group.create", |r| r["objectId"] == group.groups_id.as_str() && by_service(r));
    find(&records, "group.create", |r| r["objectId"] == http_group["groupsId"] && by_service(r));
    find(&records, "user.create", |r| r["subjectId"] == made.get_ref().users_id.as_str() && by_service(r));
    let issued = find(&records, "token.create", |r| r["objectId"] == token_id.as_str());
    assert_eq!((&issued["actor"], &issued["actorId"]), (&json!("cli"), &Value::Null));
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains(&token) && !text.contains("billing sync"), "neither the token nor its name");

    // The token is of this application only.
    let (_, other_key) = common::new_application(&t.app).await;
    let e = users
        .get_user(with_auth(pb::GetUserRequest { users_id: patient.clone() }, Some(&other_key), Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let (status, _) = http_get_user(&t, &other_key, &token, &patient).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The list shows it, and when it was last used, but never the token.
    let (listed, raw) = list_tokens(&t).await;
    assert!(!raw.contains(&token), "token list printed the token");
    assert_eq!(listed.len(), 1);
    let row = &listed[0];
    assert_eq!((&row["tokenId"], &row["name"], &row["role"]), (&json!(token_id), &json!("billing sync"), &json!("supervisor")));
    assert_eq!(row["revoked"], false);
    assert!(row["createdAt"].is_string() && row["lastUsedAt"].is_string(), "{row}");
    // Only its digest is stored.
    assert!(!t.dump().await.contains(&token), "the token is in the database");

    // A second replica on the same database takes it too...
    let replica = common::spawn_in(t.db_url.clone(), |_| {}).await;
    let mut replica_users = replica.users().await;
    replica_users.get_user(t.req(pb::GetUserRequest { users_id: patient.clone() }, Some(&token))).await.unwrap();

    // ...and after a revocation neither does, from the next call on.
    let out = revoke_token(&t, &token_id).await;
    assert!(out.status.success(), "{}", stderr(&out));
    for u in [&mut users, &mut replica_users] {
        let e = u.get_user(t.req(pb::GetUserRequest { users_id: patient.clone() }, Some(&token))).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    let (status, _) = http_get_user(&t, &t.api_key, &token, &patient).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let group = pb::Group { name: "Too late".into(), ..Default::default() };
    let e = t
        .groups()
        .await
        .create_group(t.req(pb::CreateGroupRequest { group: Some(group) }, Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // Open calls take a revoked token as none: a sign-up is a plain one.
    let new = pb::User { username: "after.revoke".into(), password: "long enough pw".into(), ..Default::default() };
    let made = users.create_user(t.req(pb::CreateUserRequest { user: Some(new) }, Some(&token))).await.unwrap();
    assert!(!made.get_ref().session_token.is_empty(), "signed up as anyone, not created by the service");

    let (listed, _) = list_tokens(&t).await;
    assert_eq!(listed[0]["revoked"], true);
    let records = trail(&t).await;
    let revoked = find(&records, "token.revoke", |r| r["objectId"] == token_id.as_str());
    assert_eq!(revoked["actor"], "cli");

    // Revoking again changes nothing and says so.
    let out = revoke_token(&t, &token_id).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("already revoked"), "{}", stderr(&out));
    let again = trail(&t).await;
    assert_eq!(again.iter().filter(|r| r["action"] == "token.revoke").count(), 1);
}
}

both_stores! {
async fn a_service_token_has_no_session_of_its_own() {
    let t = spawn().await;
    let (patient, patient_token) = t.sign_up("patient.one").await;
    let token = create_token(&t, "scheduler").await["token"].as_str().unwrap().to_owned();
    let mut users = t.users().await;

    // Signing out would end nothing: it is refused, and the token still works.
    let e = users.sign_out(t.req(pb::SignOutRequest {}, Some(&token))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("usersvc token revoke"), "{}", e.message());
    let res = t
        .http
        .get(t.url("/v2/auth/signout"))
        .header("X-Api-Key", &t.api_key)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // Its "own" sessions are none.
    let own = users.list_sessions(t.req(pb::ListSessionsRequest::default(), Some(&token))).await.unwrap();
    assert!(own.get_ref().sessions.is_empty());
    match users.revoke_session(t.req(pb::RevokeSessionRequest::default(), Some(&token))).await {
        Ok(_) => {}
        Err(e) => assert_eq!(e.code(), Code::NotFound, "{e:?}"),
    }
    users.get_user(t.req(pb::GetUserRequest { users_id: patient.clone() }, Some(&token))).await.unwrap();

    // As a supervisor it sees and ends a user's sessions.
    let theirs = users
        .list_sessions(t.req(pb::ListSessionsRequest { users_id: patient.clone(), ..Default::default() }, Some(&token)))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(theirs.len(), 1);
    assert!(!theirs[0].current);
    let req = pb::RevokeSessionRequest { session_id: theirs[0].session_id.clone(), users_id: String::new() };
    users.revoke_session(t.req(req, Some(&token))).await.unwrap();
    let e = users.get_user(t.req(pb::GetUserRequest { users_id: patient }, Some(&patient_token))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    users.list_sessions(t.req(pb::ListSessionsRequest::default(), Some(&token))).await.unwrap();
}
}

both_stores! {
async fn token_commands_refuse_what_they_cannot_do() {
    let t = spawn().await;
    let app = t.app_id.to_string();

    // Only the supervisor role exists.
    let out = common::cli(&t.db_url, &["token", "create", "--app", &app, "--role", "admin", "--name", "x"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("role") && stderr(&out).contains("supervisor"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    // A name is needed; the application must exist.
    let out = common::cli(&t.db_url, &["token", "create", "--app", &app, "--role", "supervisor", "--name", "  "]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("name"), "{}", stderr(&out));
    let nowhere = uuid::Uuid::now_v7().to_string();
    let out = common::cli(&t.db_url, &["token", "create", "--app", &nowhere, "--role", "supervisor", "--name", "x"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no application"), "{}", stderr(&out));
    let (listed, _) = list_tokens(&t).await;
    assert!(listed.is_empty(), "nothing was created: {listed:?}");

    // An unknown token, or another application's, is not revoked.
    let out = revoke_token(&t, &uuid::Uuid::now_v7().to_string()).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no service token"), "{}", stderr(&out));
    let mine = create_token(&t, "mine").await;
    let (other_id, other_key) = common::new_application(&t.app).await;
    let out = common::cli(
        &t.db_url,
        &["token", "revoke", "--app", &other_id.to_string(), "--token-id", mine["tokenId"].as_str().unwrap()],
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no service token"), "{}", stderr(&out));
    let (listed, _) = list_tokens(&t).await;
    assert_eq!(listed[0]["revoked"], false);
    // Nor is another application's token any use with this key, or this one's with that key.
    let out = common::cli(
        &t.db_url,
        &["token", "create", "--app", &other_id.to_string(), "--role", "supervisor", "--name", "theirs"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (patient, _) = t.sign_up("patient.two").await;
    let mut users = t.users().await;
    let e = users
        .get_user(t.req(pb::GetUserRequest { users_id: patient.clone() }, theirs["token"].as_str()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = users
        .get_user(with_auth(pb::GetUserRequest { users_id: patient.clone() }, Some(&other_key), mine["token"].as_str()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // A made-up token is as unknown as ever.
    let e = users.get_user(t.req(pb::GetUserRequest { users_id: patient }, Some("not-a-token"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}
}
