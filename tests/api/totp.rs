//! A second factor: TOTP (RFC 6238) with recovery codes. Enrol, confirm,
//! sign in with a code the test computes from the secret of the otpauth URI
//! (its own HMAC-SHA1, through `ring`, not the server's crate), replays and
//! used recovery codes refused, wrong codes throttled, mfaTokens that
//! expire, removal with its notice mail, the per-application rule for
//! supervisors, and the same over gRPC. On both stores.

use std::{path::Path, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tonic::Code;
use usersvc::{pb, store::backend::Pool};

use crate::common::{self, TestApp, spawn, spawn_alone};

const PASSWORD: &str = "correct horse battery";

/// RFC 4648 base32 (no padding), as otpauth URIs carry the secret.
fn base32(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut n, mut out) = (0u64, 0u32, Vec::new());
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c.to_ascii_uppercase()).expect("a base32 character");
        bits = (bits << 5) | v as u64;
        n += 5;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// The secret of an otpauth URI.
pub(crate) fn secret_of(uri: &str) -> Vec<u8> {
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    let query = uri.split_once('?').expect("a query").1;
    let secret = query.split('&').find_map(|p| p.strip_prefix("secret=")).expect("secret=");
    base32(secret)
}

/// RFC 6238 (SHA-1, 6 digits, 30 s) at `unix` seconds.
pub(crate) fn code_at(secret: &[u8], unix: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = ring::hmac::sign(&key, &(unix / 30).to_be_bytes());
    let mac = mac.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0xf);
    let value = u32::from_be_bytes([mac[offset], mac[offset + 1], mac[offset + 2], mac[offset + 3]]) & 0x7fff_ffff;
    format!("{:06}", value % 1_000_000)
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn the_test_s_own_totp_gives_rfc_6238_s_codes() {
    // Appendix B, SHA-1: the last six digits of its eight.
    assert_eq!(code_at(b"12345678901234567890", 59), "287082");
    assert_eq!(code_at(b"12345678901234567890", 1_111_111_109), "081804");
    assert_eq!(base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"), b"12345678901234567890");
}

/// One JSON call: (status, body, Retry-After).
async fn call(
    t: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value, Option<String>) {
    let mut req = t.http.request(method, t.url(path)).header("X-Api-Key", &t.api_key);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let text = res.text().await.unwrap();
    assert!(!text.contains(PASSWORD), "a password is never echoed: {text}");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), retry)
}

fn reason(body: &Value) -> &str {
    body["errors"][0]["reason"].as_str().unwrap_or_default()
}

/// Signs up over JSON; (id, token).
async fn sign_up(t: &TestApp, username: &str) -> (String, String) {
    let body =
        json!({"username": username, "password": PASSWORD, "email": {"primary": format!("{username}@example.com")}});
    let (status, user, _) = call(t, Method::POST, "/v2/users", None, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    (user["usersId"].as_str().unwrap().to_owned(), user["sessionToken"].as_str().unwrap().to_owned())
}

async fn sign_in(t: &TestApp, username: &str) -> Value {
    let body = json!({"username": username, "password": PASSWORD});
    let (status, out, _) = call(t, Method::POST, "/v2/auth/signin", None, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    out
}

/// Enrols and confirms; (secret, recovery codes). The code of the current
/// step is taken by the confirmation.
pub(crate) async fn enrol(t: &TestApp, id: &str, token: &str) -> (Vec<u8>, Vec<String>) {
    let path = format!("/v2/users/{id}/mfa/totp");
    let (status, got, _) = call(t, Method::POST, &path, Some(token), Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let members: Vec<&String> = got.as_object().unwrap().keys().collect();
    assert_eq!(members, ["otpauthUri", "qrCode"], "{got}");
    assert!(got["qrCode"].as_str().unwrap().starts_with("data:image/svg+xml;base64,"));
    let secret = secret_of(got["otpauthUri"].as_str().unwrap());
    assert_eq!(secret.len(), 20, "160 bits");
    let confirm = format!("/v2/users/{id}/mfa/totp/confirm");
    let (status, got, _) =
        call(t, Method::POST, &confirm, Some(token), Some(json!({"code": code_at(&secret, now())}))).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let codes: Vec<String> =
        got["recoveryCodes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

/// The second step: (status, body).
async fn second_step(t: &TestApp, mfa_token: &str, code: &str) -> (StatusCode, Value, Option<String>) {
    call(t, Method::POST, "/v2/auth/signin/mfa", None, Some(json!({"mfaToken": mfa_token, "code": code}))).await
}

/// Trail records of the test's application with this action and outcome.
async fn recorded(t: &TestApp, action: &str, outcome: &str) -> i64 {
    let sql = format!(
        "SELECT count(*) FROM audit_events WHERE app_id = $1 AND action = '{action}' AND outcome = '{outcome}'"
    );
    t.count_app(&sql).await
}

both_stores! {
async fn enrol_confirm_sign_in_replay_and_recovery_codes() {
    let t = spawn().await;
    let (id, token) = sign_up(&t, "ada").await;

    // Pending: sign-in is as before until the code confirms it.
    let path = format!("/v2/users/{id}/mfa/totp");
    let (status, pending, _) = call(&t, Method::POST, &path, Some(&token), None).await;
    assert_eq!(status, StatusCode::OK, "{pending}");
    assert!(sign_in(&t, "ada").await["sessionToken"].is_string());
    let confirm = format!("/v2/users/{id}/mfa/totp/confirm");
    let (status, got, _) = call(&t, Method::POST, &confirm, Some(&token), Some(json!({"code": "12345"}))).await;
    assert_eq!((status, reason(&got), got["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, "invalid_field", Some("code")));
    // A new enrolment replaces the pending one: the first secret's code no
    // longer confirms.
    let (secret, codes) = enrol(&t, &id, &token).await;
    assert_ne!(secret_of(pending["otpauthUri"].as_str().unwrap()), secret);
    assert_eq!(recorded(&t, "mfa.totp_enrolled", "ok").await, 2);
    assert_eq!(recorded(&t, "mfa.totp_confirmed", "ok").await, 1);
    let (status, got, _) = call(&t, Method::POST, &path, Some(&token), None).await;
    assert_eq!((status, reason(&got)), (StatusCode::CONFLICT, "mfa_already_enrolled"), "{got}");

    // The password alone gives exactly this, and no session.
    let first = sign_in(&t, "ada").await;
    let members: Vec<&String> = first.as_object().unwrap().keys().collect();
    assert_eq!(members, ["mfaRequired", "mfaToken"], "{first}");
    assert_eq!(first["mfaRequired"], true);
    let mfa_token = first["mfaToken"].as_str().unwrap();
    assert_eq!(recorded(&t, "session.sign_in", "mfa_required").await, 1);

    // The next step's code (the current one went to the confirmation).
    let code = code_at(&secret, now() + 30);
    let (status, user, _) = second_step(&t, mfa_token, &code).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["usersId"], id.as_str());
    assert_eq!(user["email"]["primary"], "ada@example.com");
    let session = user["sessionToken"].as_str().unwrap().to_owned();
    let (status, me, _) = call(&t, Method::GET, &format!("/v2/users/{id}"), Some(&session), None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    // The token was used up.
    let (status, got, _) = second_step(&t, mfa_token, &code_at(&secret, now())).await;
    assert_eq!((status, reason(&got)), (StatusCode::UNAUTHORIZED, "invalid_mfa_token"), "{got}");

    // The same code again, in a new sign-in: refused (its step was taken),
    // and so is the step before it.
    let again = sign_in(&t, "ada").await;
    let again = again["mfaToken"].as_str().unwrap();
    let (status, got, _) = second_step(&t, again, &code).await;
    assert_eq!((status, reason(&got)), (StatusCode::UNAUTHORIZED, "invalid_code"), "{got}");
    assert_eq!(got["errors"][0]["code"], 401);
    // A wrong code leaves the token good: a recovery code (typed loosely)
    // finishes the sign-in, once.
    let typed = codes[0].to_uppercase().replace('-', " ");
    let (status, user, _) = second_step(&t, again, &typed).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert!(user["sessionToken"].is_string());
    let third = sign_in(&t, "ada").await;
    let (status, got, _) = second_step(&t, third["mfaToken"].as_str().unwrap(), &codes[0]).await;
    assert_eq!((status, reason(&got)), (StatusCode::UNAUTHORIZED, "invalid_code"), "{got}");
    let (status, _, _) = second_step(&t, third["mfaToken"].as_str().unwrap(), &codes[1]).await;
    assert_eq!(status, StatusCode::OK);

    // The trail: each step, by factor kind, never a code.
    assert_eq!(recorded(&t, "session.sign_in_mfa", "ok").await, 3);
    // The used token, the replayed code, the used recovery code.
    assert_eq!(recorded(&t, "session.sign_in_mfa", "failed").await, 3);
    assert_eq!(recorded(&t, "mfa.recovery_code_used", "ok").await, 2);
    let has_kind = match &t.app.pool {
        Pool::Postgres(_) => "'recovery_code' = ANY(fields)",
        Pool::Sqlite(_) => "fields LIKE '%\"recovery_code\"%'",
    };
    let kinds = t
        .count_app(&format!(
            "SELECT count(*) FROM audit_events WHERE app_id = $1 AND action = 'session.sign_in_mfa' AND {has_kind}"
        ))
        .await;
    assert_eq!(kinds, 3, "the failed recovery code and the two that worked");
    let dump = t.dump().await;
    for c in &codes {
        assert!(!dump.contains(c.as_str()), "a recovery code is stored only as its digest");
    }
}
}

both_stores! {
async fn wrong_codes_are_throttled_and_tokens_expire() {
    let t = spawn().await;
    let (id, token) = sign_up(&t, "bo").await;
    let (secret, _) = enrol(&t, &id, &token).await;

    let (status, got, _) = second_step(&t, "not-a-token", "123456").await;
    assert_eq!((status, reason(&got)), (StatusCode::UNAUTHORIZED, "invalid_mfa_token"), "{got}");
    let (status, got, _) = second_step(&t, "", "123456").await;
    assert_eq!((status, got["errors"][0]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("mfaToken")), "{got}");

    let first = sign_in(&t, "bo").await;
    let mfa_token = first["mfaToken"].as_str().unwrap();
    let right = code_at(&secret, now() + 30);
    let wrong = if right == "000000" { "111111" } else { "000000" };
    for i in 0..5 {
        let (status, got, _) = second_step(&t, mfa_token, wrong).await;
        assert_eq!((status, reason(&got)), (StatusCode::UNAUTHORIZED, "invalid_code"), "attempt {i}: {got}");
    }
    // Now even the right code waits, as a password would.
    let (status, got, retry) = second_step(&t, mfa_token, &right).await;
    assert_eq!((status, reason(&got)), (StatusCode::TOO_MANY_REQUESTS, "throttled"), "{got}");
    assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1));
    assert_eq!(recorded(&t, "session.sign_in_mfa", "throttled").await, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, got, _) = second_step(&t, mfa_token, &right).await;
    assert_eq!(status, StatusCode::OK, "{got}");

    // A token past its 5 minutes is refused.
    let later = sign_in(&t, "bo").await;
    let past = match &t.app.pool {
        Pool::Postgres(_) => "UPDATE mfa_challenges SET expires_at = now() - interval '1 second' WHERE app_id = $1",
        Pool::Sqlite(_) => "UPDATE mfa_challenges SET expires_at = 0 WHERE app_id = $1",
    };
    let app = t.app_id;
    assert!(t.exec2(&format!("{past} AND user_id = $2"), app, uuid::Uuid::parse_str(&id).unwrap()).await);
    let (status, got, _) = second_step(&t, later["mfaToken"].as_str().unwrap(), &code_at(&secret, now() + 60)).await;
    assert_eq!((status, reason(&got)), (StatusCode::UNAUTHORIZED, "invalid_mfa_token"), "{got}");
    // Another application's key does not know the token.
    let (_, other_key) = crate::common::new_application(&t.app).await;
    let fresh = sign_in(&t, "bo").await;
    let res = t
        .http
        .post(t.url("/v2/auth/signin/mfa"))
        .header("X-Api-Key", &other_key)
        .json(&json!({"mfaToken": fresh["mfaToken"], "code": code_at(&secret, now() + 60)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // An imported hash (bcrypt) is replaced at the password step, as a
    // sign-in without a second factor replaces it.
    let imported = bcrypt::hash(PASSWORD, 4).unwrap();
    let sql = format!("UPDATE users SET password_hash = '{imported}' WHERE app_id = $1 AND id = $2");
    assert!(t.exec2(&sql, app, uuid::Uuid::parse_str(&id).unwrap()).await);
    assert_eq!(sign_in(&t, "bo").await["mfaRequired"], true);
    let argon = "SELECT count(*) FROM users WHERE id = $1 AND password_hash LIKE '$argon2id$%'";
    assert_eq!(t.count(argon, &id).await, 1);
}
}

/// The messages in the mail folder whose subject has `subject`, once `n`
/// are there: (To, whole text).
async fn mails(dir: &Path, subject: &str, n: usize) -> Vec<(String, String)> {
    for _ in 0..100 {
        let mut got = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let header =
                |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().trim().to_owned();
            if header("Subject:").contains(subject) {
                got.push((header("To:"), text.clone()));
            }
        }
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fewer than {n} '{subject}' messages in {}", dir.display());
}

both_stores! {
async fn removal_by_self_needs_a_recent_sign_in_and_by_a_supervisor_mails_a_notice() {
    let dir = std::env::temp_dir().join(format!("usersvc-totp-{}", uuid::Uuid::new_v4().simple()));
    let mail_dir = dir.clone();
    let t = spawn_alone(move |a| {
        a.mail.mail_dir = mail_dir;
        a.sessions.privileged_session_max_age = Duration::from_secs(2);
    })
    .await;
    let (id, token) = sign_up(&t, "cy").await;
    let (boss, boss_token) = t.supervisor("boss").await;
    let (secret, _) = enrol(&t, &id, &token).await;
    let path = format!("/v2/users/{id}/mfa/totp");
    // Another plain user cannot touch it.
    let (_, other_token) = sign_up(&t, "eve").await;
    let (status, _, _) = call(&t, Method::DELETE, &path, Some(&other_token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A session older than the privileged age must sign in again, or give
    // the password in the body.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, got, _) = call(&t, Method::DELETE, &path, Some(&token), None).await;
    assert_eq!((status, reason(&got)), (StatusCode::FORBIDDEN, "reauthentication_required"), "{got}");
    let wrong = json!({"currentPassword": "wrong guess"});
    let (status, got, _) = call(&t, Method::DELETE, &path, Some(&token), Some(wrong)).await;
    assert_eq!((status, reason(&got)), (StatusCode::FORBIDDEN, "invalid_current_password"), "{got}");
    let (status, got, _) = call(&t, Method::DELETE, &path, Some(&token), Some(json!({"usersId": id, "x": 1}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an unknown member: {got}");
    let first = sign_in(&t, "cy").await;
    let (status, user, _) = second_step(&t, first["mfaToken"].as_str().unwrap(), &code_at(&secret, now() + 30)).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    let fresh = user["sessionToken"].as_str().unwrap();
    let (status, got, _) = call(&t, Method::DELETE, &path, Some(&token), Some(json!({"currentPassword": PASSWORD}))).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert!(sign_in(&t, "cy").await["sessionToken"].is_string(), "the password alone again");
    let (status, _, _) = call(&t, Method::DELETE, &path, Some(fresh), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing left to remove");
    let sent = mails(&dir, "second factor", 1).await;
    assert_eq!(sent[0].0, "cy@example.com");
    assert!(sent[0].1.contains("removed"), "{}", sent[0].1);

    // Enrolled again (with the password, once the session is old), and
    // removed by a supervisor, who needs no proof.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, got, _) =
        call(&t, Method::POST, &path, Some(fresh), Some(json!({"currentPassword": "wrong guess"}))).await;
    assert_eq!((status, reason(&got)), (StatusCode::FORBIDDEN, "invalid_current_password"));
    let (status, got, _) = call(&t, Method::POST, &path, Some(fresh), Some(json!({"currentPassword": PASSWORD}))).await;
    assert_eq!(status, StatusCode::OK, "{}", reason(&got));
    let secret = secret_of(got["otpauthUri"].as_str().unwrap());
    let confirm = format!("/v2/users/{id}/mfa/totp/confirm");
    let (status, _, _) = call(&t, Method::POST, &confirm, Some(fresh), Some(json!({"code": code_at(&secret, now())}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sign_in(&t, "cy").await["mfaRequired"], true);
    // A supervisor cannot enrol someone else.
    let (status, _, _) = call(&t, Method::POST, &path, Some(&boss_token), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, got, _) = call(&t, Method::DELETE, &path, Some(&boss_token), None).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert!(sign_in(&t, "cy").await["sessionToken"].is_string());
    assert_eq!(mails(&dir, "second factor", 2).await.len(), 2);
    let by_supervisor = t
        .count(
            "SELECT count(*) FROM audit_events WHERE action = 'mfa.totp_removed' AND outcome = 'ok' AND actor_id = $1",
            &boss,
        )
        .await;
    assert_eq!(by_supervisor, 1);
    assert_eq!(recorded(&t, "mfa.totp_removed", "ok").await, 2);
    assert_eq!(recorded(&t, "mfa.totp_removed", "denied").await, 3);
}
}

/// `usersvc app update --mfa POLICY` on the test's application, beside the
/// running server.
async fn set_mfa(t: &TestApp, policy: &str) {
    let out = common::app_update(t, &["--mfa", policy]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

both_stores! {
async fn a_supervisor_without_a_second_factor_is_refused_where_the_app_requires_one() {
    let t = spawn().await;
    let (boss, boss_token) = t.supervisor("chief").await;
    let (other, _) = sign_up(&t, "patient").await;
    let (status, _, _) = call(&t, Method::GET, "/v2/users", Some(&boss_token), None).await;
    assert_eq!(status, StatusCode::OK, "optional by default");

    set_mfa(&t, "required-for-supervisors").await;
    assert_eq!(t.count_app("SELECT count(*) FROM audit_events WHERE app_id = $1 AND action = 'app.update'").await, 1);
    let bad = common::app_update(&t, &["--mfa", "always"]).await;
    assert!(!bad.status.success());

    // Supervisor actions: refused with mfa_required, on the same session.
    for (method, path) in [
        (Method::GET, "/v2/users".to_owned()),
        (Method::GET, format!("/v2/users/{other}")),
        (Method::GET, format!("/v2/users/{other}/groups")),
    ] {
        let (status, got, _) = call(&t, method.clone(), &path, Some(&boss_token), None).await;
        assert_eq!((status, reason(&got)), (StatusCode::FORBIDDEN, "mfa_required"), "{method} {path}: {got}");
    }
    let (status, got, _) =
        call(&t, Method::POST, "/v2/groups", Some(&boss_token), Some(json!({"name": "ward"}))).await;
    assert_eq!((status, reason(&got)), (StatusCode::FORBIDDEN, "mfa_required"), "{got}");
    let mut groups = t.groups().await;
    let err = groups
        .create_group(t.req(pb::CreateGroupRequest { group: Some(pb::Group { name: "ward".into(), ..Default::default() }) }, Some(&boss_token)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    {
        use tonic_types::StatusExt;
        assert_eq!(err.get_error_details().error_info().unwrap().reason, "MFA_REQUIRED");
    }
    // Their own record stays theirs, so that they can enrol.
    let (status, _, _) = call(&t, Method::GET, &format!("/v2/users/{boss}"), Some(&boss_token), None).await;
    assert_eq!(status, StatusCode::OK);
    enrol(&t, &boss, &boss_token).await;
    let (status, got, _) = call(&t, Method::GET, "/v2/users", Some(&boss_token), None).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let (status, _, _) = call(&t, Method::GET, &format!("/v2/users/{other}"), Some(&boss_token), None).await;
    assert_eq!(status, StatusCode::OK);

    // Back to optional: a supervisor without a factor is one again.
    let (_, second_token) = t.supervisor("deputy").await;
    let (status, _, _) = call(&t, Method::GET, "/v2/users", Some(&second_token), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    set_mfa(&t, "optional").await;
    let (status, _, _) = call(&t, Method::GET, "/v2/users", Some(&second_token), None).await;
    assert_eq!(status, StatusCode::OK);
}
}

both_stores! {
async fn the_same_over_grpc() {
    let t = spawn().await;
    let (id, token) = t.sign_up("grace").await;
    let mut users = t.users().await;
    let enrolled = users
        .enrol_totp(t.req(pb::EnrolTotpRequest { users_id: id.clone(), current_password: String::new() }, Some(&token)))
        .await
        .unwrap()
        .into_inner();
    assert!(enrolled.qr_code.starts_with("data:image/svg+xml;base64,"));
    let secret = secret_of(&enrolled.otpauth_uri);
    let wrong = users
        .confirm_totp(t.req(pb::ConfirmTotpRequest { users_id: id.clone(), code: "000000".into() }, Some(&token)))
        .await;
    if code_at(&secret, now()) != "000000" {
        let err = wrong.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        use tonic_types::StatusExt;
        assert_eq!(err.get_error_details().error_info().unwrap().reason, "INVALID_CODE");
    }
    let confirmed = users
        .confirm_totp(t.req(pb::ConfirmTotpRequest { users_id: id.clone(), code: code_at(&secret, now()) }, Some(&token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.recovery_codes.len(), 10);

    let first = users
        .sign_in(t.req(pb::SignInRequest { username: "grace".into(), password: PASSWORD.into() }, None))
        .await
        .unwrap()
        .into_inner();
    assert!(first.mfa_required && !first.mfa_token.is_empty());
    assert!(first.session_token.is_empty() && first.users_id.is_empty() && first.email.is_none());
    let user = users
        .sign_in_mfa(t.req(pb::SignInMfaRequest { mfa_token: first.mfa_token.clone(), code: code_at(&secret, now() + 30), ..Default::default() }, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.users_id, id);
    assert!(!user.session_token.is_empty() && !user.mfa_required && user.mfa_token.is_empty());
    let err = users
        .sign_in_mfa(t.req(pb::SignInMfaRequest { mfa_token: first.mfa_token, code: confirmed.recovery_codes[0].clone(), ..Default::default() }, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "used token");
    let err = users
        .sign_in_mfa(t.req(pb::SignInMfaRequest { mfa_token: String::new(), code: "1".into(), ..Default::default() }, None))
        .await
        .unwrap_err();
    assert_eq!((err.code(), crate::common::violation_field(&err).as_deref()), (Code::InvalidArgument, Some("mfa_token")));

    users
        .remove_totp(t.req(pb::RemoveTotpRequest { users_id: id.clone(), current_password: String::new() }, Some(&user.session_token)))
        .await
        .unwrap();
    let plain = users
        .sign_in(t.req(pb::SignInRequest { username: "grace".into(), password: PASSWORD.into() }, None))
        .await
        .unwrap()
        .into_inner();
    assert!(!plain.session_token.is_empty() && !plain.mfa_required);
}
}

both_stores! {
async fn an_app_without_totp_sees_the_sign_in_reply_it_always_did() {
    let t = spawn().await;
    let (id, token) = sign_up(&t, "hal").await;
    let out = sign_in(&t, "hal").await;
    let members: Vec<&str> = out.as_object().unwrap().keys().map(String::as_str).collect();
    assert!(members.contains(&"sessionToken") && members.contains(&"usersId"), "{out}");
    assert!(!members.iter().any(|m| m.starts_with("mfa")), "{out}");
    // A client that sends the whole user back, new members too, has them
    // ignored as server-managed.
    let mut back = out.clone();
    back["mfaRequired"] = json!(true);
    back["mfaToken"] = json!("x");
    let (status, got, _) = call(&t, Method::PUT, &format!("/v2/users/{id}"), Some(&token), Some(back)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert!(!got.as_object().unwrap().keys().any(|m| m.starts_with("mfa")), "{got}");
}
}
