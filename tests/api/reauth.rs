//! A stolen token is not ownership: changing one's own password, username
//! or primary email needs a recent sign-in or the current password; the
//! owner is told at the address they had; a deactivation ends the user's
//! sessions and voids their reset links. Over JSON and gRPC, on both stores.

use std::{path::Path, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use usersvc::{pb, store::backend::Pool};

use crate::common::{TestApp, spawn, spawn_alone, spawn_with};

const PASSWORD: &str = "correct horse battery";

/// Makes every session of the user look signed in an hour ago (before any
/// call with them: a replica may remember a session it has looked up).
async fn age_sessions(t: &TestApp, user_id: &str) {
    let id = uuid::Uuid::parse_str(user_id).unwrap();
    let done = match &t.app.pool {
        Pool::Postgres(p) => {
            sqlx::query("UPDATE sessions SET created_at = created_at - interval '1 hour' WHERE user_id = $1")
                .bind(id)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        }
        Pool::Sqlite(p) => sqlx::query("UPDATE sessions SET created_at = created_at - 3600000000 WHERE user_id = ?1")
            .bind(id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()),
    };
    assert_eq!(done.unwrap(), 1);
}

async fn put(t: &TestApp, id: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let res = t
        .http
        .put(t.url(&format!("/v2/users/{id}")))
        .header("X-Api-Key", &t.api_key)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(!text.contains(PASSWORD) && !text.contains("wrong guess"), "a password is never echoed: {text}");
    (status, serde_json::from_str(&text).unwrap())
}

fn reason(body: &Value) -> &str {
    body["errors"][0]["reason"].as_str().unwrap_or_default()
}

/// The messages in the mail folder once `n` are there: (To, Subject, whole).
async fn mail_in(dir: &Path, n: usize) -> Vec<(String, String, String)> {
    let header = |text: &str, name: &str| {
        let value = text.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default();
        value.trim().trim_start_matches('<').trim_end_matches('>').to_owned()
    };
    for _ in 0..100 {
        let mut got = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                got.push((header(&text, "To:"), header(&text, "Subject:"), text));
            }
        }
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fewer than {n} messages in {}", dir.display());
}

both_stores! {
async fn an_old_session_must_prove_the_password_and_the_old_address_is_told() {
    let dir = std::env::temp_dir().join(format!("usersvc-reauth-{}", uuid::Uuid::new_v4().simple()));
    let mail_dir = dir.clone();
    let t = spawn_alone(move |a| a.mail.mail_dir = mail_dir).await;
    let (id, token) = t.sign_up("ada").await;
    age_sessions(&t, &id).await;

    // What would take the account over is refused without proof.
    for body in [
        json!({ "password": "a brand new password" }),
        json!({ "username": "ada2" }),
        json!({ "email": { "primary": "ada@elsewhere.example" } }),
        json!({ "name": { "firstName": "Ada" }, "password": "a brand new password" }),
    ] {
        let (status, got) = put(&t, &id, &token, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}: {got}");
        assert_eq!(reason(&got), "reauthentication_required", "{got}");
        assert_eq!(got["errors"][0]["code"], 403);
    }
    // Nothing of a refused change was applied.
    let (_, me) = put(&t, &id, &token, json!({})).await;
    assert_eq!(me["email"]["primary"], "ada@example.com");
    assert!(me["name"]["firstName"].is_null(), "{me}");

    // The rest needs no proof, nor does the address a client sends back as
    // it holds it.
    let (status, got) = put(
        &t,
        &id,
        &token,
        json!({ "name": { "firstName": "Ada" }, "phoneNumber": { "mobile": "+15550100" }, "extras": { "k": 1 },
                "email": { "primary": "ada@example.com" } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["name"]["firstName"], "Ada");

    // A wrong current password is refused (and not a sign-in's 401).
    let (status, got) =
        put(&t, &id, &token, json!({ "password": "a brand new password", "currentPassword": "wrong guess" })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{got}");
    assert_eq!(reason(&got), "invalid_current_password");
    // The right one lets the change through, and is not a member of the user.
    let (status, got) = put(
        &t,
        &id,
        &token,
        json!({ "email": { "primary": "ada@elsewhere.example" }, "currentPassword": PASSWORD }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["email"]["primary"], "ada@elsewhere.example");
    assert!(got.get("currentPassword").is_none());
    let (status, got) =
        put(&t, &id, &token, json!({ "password": "a brand new password", "currentPassword": PASSWORD })).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let res = t
        .http
        .post(t.url("/v2/auth/signin"))
        .header("X-Api-Key", &t.api_key)
        .json(&json!({ "username": "ada", "password": "a brand new password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "the new password signs in");

    // Each change is told to the address the user had when it was made.
    let mut got = mail_in(&dir, 2).await;
    got.sort();
    assert_eq!(got.len(), 2, "one notice per change: {got:?}");
    let (to, subject, text) = &got[0];
    assert_eq!((to.as_str(), subject.as_str()), ("ada@elsewhere.example", "Your test app password was changed"));
    assert!(text.contains("If this was not you"), "{text}");
    let (to, subject, text) = &got[1];
    assert_eq!(
        (to.as_str(), subject.as_str()),
        ("ada@example.com", "The email address of your test app account was changed")
    );
    assert!(text.contains("If this was not you"), "{text}");
    for (_, _, text) in &got {
        assert!(!text.contains("a brand new password") && !text.contains(PASSWORD), "no secret in a notice");
    }
    // Refusals are in the trail as denied updates.
    let denied = t
        .count("SELECT count(*) FROM audit_events WHERE action = 'user.update' AND outcome = 'denied' AND subject_id = $1", &id)
        .await;
    assert_eq!(denied, 5, "four without proof, one with a wrong password");
    std::fs::remove_dir_all(dir).ok();
}
}

both_stores! {
async fn a_fresh_session_needs_no_proof_and_a_supervisor_none_for_others() {
    let t = spawn().await;
    let (bob, bob_token) = t.sign_up("bob").await;
    // Signed in a moment ago: its own password, name and address change.
    let (status, got) = put(
        &t,
        &bob,
        &bob_token,
        json!({ "password": "bob's second password", "username": "bobby", "email": { "primary": "bob@new.example" } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{got}");

    // A supervisor's session of an hour ago changes another user's address
    // (recorded as a supervisor's doing), but not its own password.
    let (boss, boss_token) = t.supervisor("boss").await;
    age_sessions(&t, &boss).await;
    let (status, got) = put(&t, &bob, &boss_token, json!({ "email": { "primary": "bob@third.example" } })).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["email"]["primary"], "bob@third.example");
    let by_boss = t
        .count(
            "SELECT count(*) FROM audit_events WHERE action = 'user.update' AND actor = 'supervisor' AND subject_id = $1",
            &bob,
        )
        .await;
    assert_eq!(by_boss, 1);
    let (status, got) = put(&t, &boss, &boss_token, json!({ "password": "the boss's new one" })).await;
    assert_eq!((status, reason(&got)), (StatusCode::FORBIDDEN, "reauthentication_required"));
}
}

both_stores! {
async fn the_privileged_age_is_a_flag_and_grpc_says_why() {
    let t = spawn_with(|a| a.sessions.privileged_session_max_age = Duration::from_secs(1)).await;
    let (id, token) = t.sign_up("grace").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut users = t.users().await;
    let change = |current: &str| pb::UpdateUserRequest {
        users_id: id.clone(),
        user: Some(pb::User { password: "grace's new password".into(), ..Default::default() }),
        update_mask: Some(pbjson_types::FieldMask { paths: vec!["password".into()] }),
        current_password: current.into(),
    };
    let reason_of = |s: &tonic::Status| {
        use tonic_types::StatusExt;
        s.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
    };
    let e = users.update_user(t.req(change(""), Some(&token))).await.unwrap_err();
    assert_eq!((e.code(), reason_of(&e).as_str()), (Code::PermissionDenied, "REAUTHENTICATION_REQUIRED"));
    let e = users.update_user(t.req(change("wrong guess"), Some(&token))).await.unwrap_err();
    assert_eq!((e.code(), reason_of(&e).as_str()), (Code::PermissionDenied, "INVALID_CURRENT_PASSWORD"));
    users.update_user(t.req(change(PASSWORD), Some(&token))).await.expect("the right password lets it through");
    // A name change needs no proof, however old the session.
    let rename = pb::UpdateUserRequest {
        users_id: id.clone(),
        user: Some(pb::User { name: Some(pb::Name { first_name: "Grace".into(), ..Default::default() }), ..Default::default() }),
        update_mask: Some(pbjson_types::FieldMask { paths: vec!["name.first_name".into()] }),
        ..Default::default()
    };
    users.update_user(t.req(rename, Some(&token))).await.unwrap();
}
}

both_stores! {
async fn guessing_the_current_password_is_throttled_with_sign_in() {
    let t = spawn_with(|a| a.sessions.privileged_session_max_age = Duration::from_secs(1)).await;
    let (id, token) = t.sign_up("mallory-target").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let guess = json!({ "password": "taken over", "currentPassword": "wrong guess" });
    // The username's five free failures, then a wait...
    for _ in 0..5 {
        let (status, got) = put(&t, &id, &token, guess.clone()).await;
        assert_eq!((status, reason(&got)), (StatusCode::FORBIDDEN, "invalid_current_password"));
    }
    let (status, got) = put(&t, &id, &token, guess.clone()).await;
    assert_eq!((status, reason(&got)), (StatusCode::TOO_MANY_REQUESTS, "throttled"), "{got}");
    // ... which sign-in shares: the same count of guesses at the password.
    let res = t
        .http
        .post(t.url("/v2/auth/signin"))
        .header("X-Api-Key", &t.api_key)
        .json(&json!({ "username": "mallory-target", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}
}

both_stores! {
async fn deactivation_ends_sessions_and_voids_reset_links() {
    let t = spawn().await;
    let (id, token) = t.sign_up("leaving").await;
    let (_, boss) = t.supervisor("hr").await;
    let mut users = t.users().await;
    users
        .request_password_reset(
            t.req(pb::RequestPasswordResetRequest { app_id: String::new(), username: "leaving".into() }, None),
        )
        .await
        .unwrap();
    // The mail sender issues the link in the background.
    let resets = || t.count("SELECT count(*) FROM password_resets WHERE user_id = $1", &id);
    for _ in 0..100 {
        if resets().await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(resets().await, 1, "the requested link is issued");
    // The link's token only ever leaves in the mail: a token of our own,
    // put beside it, stands for it.
    let token_of_link = "a-reset-token-for-this-test";
    let digest = usersvc::auth::secret::digest(token_of_link);
    let user_id = uuid::Uuid::parse_str(&id).unwrap();
    let app_id = t.app_id;
    match &t.app.pool {
        Pool::Postgres(p) => sqlx::query(
            "INSERT INTO password_resets (token_hash, app_id, user_id, expires_at)
             VALUES ($1, $2, $3, now() + interval '1 hour')",
        )
        .bind(&digest)
        .bind(app_id)
        .bind(user_id)
        .execute(p)
        .await
        .map(|r| r.rows_affected())
        .unwrap(),
        Pool::Sqlite(p) => sqlx::query(
            "INSERT INTO password_resets (token_hash, app_id, user_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(&digest)
        .bind(app_id)
        .bind(user_id)
        .bind((chrono::Utc::now().timestamp_micros()) + 3_600_000_000)
        .execute(p)
        .await
        .map(|r| r.rows_affected())
        .unwrap(),
    };
    let link = t.url(&format!("/v2/reset/{token_of_link}"));
    assert_eq!(t.http.get(&link).send().await.unwrap().status(), StatusCode::OK, "the link works before");

    let (status, got) = put(&t, &id, &boss, json!({ "active": false })).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["active"], false);

    // The user's token answers 401 at once; the link is dead.
    let res = t
        .http
        .get(t.url(&format!("/v2/users/{id}")))
        .header("X-Api-Key", &t.api_key)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = t.http.get(&link).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("cannot be used"));
    let e = users
        .reset_password(tonic::Request::new(pb::ResetPasswordRequest {
            token: token_of_link.into(),
            new_password: "back in again".into(),
            check_only: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(resets().await, 0, "both links voided");
    assert_eq!(t.count("SELECT count(*) FROM sessions WHERE user_id = $1", &id).await, 0);
}
}
