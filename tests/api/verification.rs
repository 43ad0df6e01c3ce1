//! Email verification (`--verify-email`): the link mailed on sign-up, on a
//! change of the primary address and on request, into the mail folder and
//! over SMTP; the page it opens; `email.primaryVerified`; sign-in and reset
//! mail under `required`; the per-recipient limit; the trail.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;
use usersvc::{pb, store::VerifyMode};

use crate::common::{self, Backend, TestApp, spawn_alone};
use crate::mail_routes::all_mail_out;
use crate::smtp_sink::{SmtpSink, text_part};

const PASSWORD: &str = "correct horse battery";

fn mail_dir() -> PathBuf {
    std::env::temp_dir().join(format!("usersvc-verify-mail-{}", uuid::Uuid::new_v4().simple()))
}

/// A service on a database of its own whose mail goes to `dir`, its
/// application's `--verify-email` set to `mode`.
async fn spawn_mailing(dir: &Path, mode: VerifyMode) -> TestApp {
    let dir = dir.to_owned();
    let t = spawn_alone(|a| a.mail.mail_dir = dir).await;
    set_mode(&t, mode).await;
    t
}

async fn set_mode(t: &TestApp, mode: VerifyMode) {
    common::admin(&t.app).set_verify_email(t.app_id, mode).await.expect("app update");
}

/// Signs up over JSON; (usersId, sessionToken, the reply).
async fn sign_up(t: &TestApp, username: &str, email: &str) -> (String, String, Value) {
    let res = t
        .http
        .post(t.url("/v2/users"))
        .header("X-Api-Key", &t.api_key)
        .json(&json!({ "username": username, "password": PASSWORD, "email": { "primary": email } }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    (body["usersId"].as_str().unwrap().to_owned(), body["sessionToken"].as_str().unwrap().to_owned(), body)
}

async fn sign_in(t: &TestApp, username: &str, password: &str) -> (StatusCode, Value) {
    let res = t
        .http
        .post(t.url("/v2/auth/signin"))
        .header("X-Api-Key", &t.api_key)
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

async fn get_user(t: &TestApp, id: &str, token: &str) -> Value {
    let res = t
        .http
        .get(t.url(&format!("/v2/users/{id}")))
        .header("X-Api-Key", &t.api_key)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

/// `POST /v2/users/{id}/verification` as `token`.
async fn resend(t: &TestApp, id: &str, token: &str) -> (StatusCode, Value) {
    let res = t
        .http
        .post(t.url(&format!("/v2/users/{id}/verification")))
        .header("X-Api-Key", &t.api_key)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

/// The verification link of a message (raw, as sent or as filed).
fn verify_link(data: &str) -> String {
    let text = text_part(data);
    let start = text.find("http://").expect("a link");
    let link = text[start..].split_whitespace().next().unwrap().to_owned();
    assert!(link.contains("/v2/verify/"), "{link}");
    link
}

fn token_of(link: &str) -> String {
    link.rsplit('/').next().unwrap().to_owned()
}

/// The messages of the folder: (To, Subject, raw).
fn folder(dir: &Path) -> Vec<(String, String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let raw = std::fs::read_to_string(p).unwrap();
            let header = |name: &str| raw.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().to_owned();
            (header("To: "), header("Subject: "), raw)
        })
        .collect()
}

/// Waits until the folder holds at least `n` messages.
async fn wait_for_files(dir: &Path, n: usize) -> Vec<(String, String, String)> {
    let started = Instant::now();
    loop {
        let got = folder(dir);
        if got.len() >= n || started.elapsed() > Duration::from_secs(15) {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Trail records of the application with this action and outcome.
async fn records(t: &TestApp, action: &str, outcome: &str) -> i64 {
    t.count_app(&format!(
        "SELECT count(*) FROM audit_events WHERE app_id = $1 AND action = '{action}' AND outcome = '{outcome}'"
    ))
    .await
}

both_stores! {
async fn the_sign_up_link_from_the_mail_folder_verifies_once() {
    let dir = mail_dir();
    let t = spawn_mailing(&dir, VerifyMode::Optional).await;
    let (id, token, reply) = sign_up(&t, "vera", "Vera@Example.org").await;
    assert_eq!(reply["email"], json!({ "primary": "Vera@Example.org" }), "not verified: no primaryVerified");
    let got = wait_for_files(&dir, 1).await;
    assert_eq!(got.len(), 1, "one mail");
    let (to, subject, raw) = &got[0];
    assert_eq!(to, "Vera@Example.org");
    assert_eq!(subject, "Confirm your email address for test app");
    let link = verify_link(raw);
    assert!(link.starts_with(&format!("http://{}/v2/verify/", t.app.http_addr)), "{link}");
    assert!(raw.contains("within 24 hours"), "{raw}");

    // Opening the link (a mail scanner's prefetch) changes nothing.
    for _ in 0..2 {
        let res = t.http.get(&link).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["cache-control"], "no-store");
        assert_eq!(res.headers()["referrer-policy"], "no-referrer");
        assert_eq!(res.headers()["x-frame-options"], "DENY");
        assert!(res.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
        let page = res.text().await.unwrap();
        assert!(page.contains("<form method=\"post\">") && page.contains("<button type=\"submit\">"), "{page}");
        assert!(!page.to_ascii_lowercase().contains("<script"), "{page}");
    }
    assert_eq!(get_user(&t, &id, &token).await["email"], json!({ "primary": "Vera@Example.org" }));

    // The button verifies, once.
    let res = t.http.post(&link).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("Your email address is confirmed"));
    let user = get_user(&t, &id, &token).await;
    assert_eq!(user["email"], json!({ "primary": "Vera@Example.org", "primaryVerified": true }));
    let res = t.http.post(&link).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let page = res.text().await.unwrap();
    assert!(page.contains("This link cannot be used") && page.contains("used, replaced or never issued"), "{page}");

    // gRPC shows the same; the token is refused there too now.
    let mut users = t.users().await;
    let got = users.get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(&token))).await.unwrap();
    assert!(got.into_inner().email.unwrap().primary_verified);
    let e = users.verify_email(tonic::Request::new(pb::VerifyEmailRequest { token: token_of(&link) })).await;
    let e = e.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(common::violation_field(&e).as_deref(), Some("token"));

    // In the trail: the mail, the verification (ids only, no addresses).
    assert_eq!(records(&t, "email.verification_sent", "ok").await, 1);
    assert_eq!(records(&t, "email.verified", "ok").await, 1);
    let subject = t
        .count(
            "SELECT count(*) FROM audit_events WHERE subject_id = $1 AND action IN ('email.verification_sent', 'email.verified')",
            &id,
        )
        .await;
    assert_eq!(subject, 2);
    let _ = std::fs::remove_dir_all(&dir);
}
}

both_stores! {
async fn required_refuses_an_unverified_sign_in_until_the_smtp_link_is_used() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let t = spawn_alone(|a| a.mail.smtp_url = Some(url)).await;
    // As an operator does it: the command line.
    let out = common::app_update(&t, &["--verify-email", "required"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, json!({ "appId": t.app_id, "verifyEmail": "required" }));
    assert_eq!(records(&t, "app.update", "ok").await, 1);

    let (id, _, _) = sign_up(&t, "rita", "rita@example.org").await;
    // The right password: 403 email_unverified and nothing else.
    let (status, body) = sign_in(&t, "rita", PASSWORD).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body.as_object().unwrap().keys().collect::<Vec<_>>(), ["errors"], "{body}");
    let error = &body["errors"][0];
    assert_eq!((error["code"].as_i64(), error["reason"].as_str()), (Some(403), Some("email_unverified")));
    assert!(!body.to_string().contains(&id) && !body.to_string().contains("rita@"), "{body}");
    // A wrong password is told as ever: no oracle.
    let (status, body) = sign_in(&t, "rita", "not the password").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errors"][0]["reason"], "invalid_credentials");
    // gRPC the same.
    let mut users = t.users().await;
    let req = pb::SignInRequest { username: "rita".into(), password: PASSWORD.into() };
    let e = users.sign_in(t.req(req.clone(), None)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(e.get_error_details().error_info().unwrap().reason, "EMAIL_UNVERIFIED");
    assert_eq!(records(&t, "session.sign_in", "unverified").await, 2);

    // Each refused sign-in mails a new link (the sign-up's may have
    // expired, or never come), up to the per-recipient limit (3 an hour;
    // the sign-up's link is not counted); the reply never tells.
    let got = sink.wait_for(3, 10).await;
    assert_eq!(got.len(), 3, "the sign-up's link and one per refused sign-in");
    assert!(got.iter().all(|m| m.rcpt == ["rita@example.org"]));
    for _ in 0..2 {
        let (status, body) = sign_in(&t, "rita", PASSWORD).await;
        assert_eq!((status, body["errors"][0]["reason"].as_str()), (StatusCode::FORBIDDEN, Some("email_unverified")));
    }
    assert_eq!(sink.wait_for(5, 3).await.len(), 4, "the fifth is past the limit");
    assert_eq!(records(&t, "email.verification_sent", "ok").await, 4);
    assert_eq!(records(&t, "email.verification_sent", "throttled").await, 1);
    let by_herself = t
        .count("SELECT count(*) FROM audit_events WHERE action = 'email.verification_sent' AND actor_id = $1", &id)
        .await;
    assert_eq!(by_herself, 4, "asked by the user: three at sign-in, and her sign-up");

    // The link over SMTP, used over gRPC: the sign-up's works still.
    let link = verify_link(&got[0].data);
    users.verify_email(tonic::Request::new(pb::VerifyEmailRequest { token: token_of(&link) })).await.unwrap();
    let out = users.sign_in(t.req(req, None)).await.unwrap().into_inner();
    assert!(!out.session_token.is_empty());
    assert!(out.email.unwrap().primary_verified);
    let (status, body) = sign_in(&t, "rita", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["email"]["primaryVerified"], true);
}
}

both_stores! {
async fn an_expired_link_fails_clearly() {
    let dir = mail_dir();
    let t = spawn_mailing(&dir, VerifyMode::Optional).await;
    let (id, token, _) = sign_up(&t, "late", "late@example.org").await;
    let link = verify_link(&wait_for_files(&dir, 1).await[0].2);
    let past = match common::backend() {
        Backend::Postgres => "now() - interval '1 second'",
        Backend::Sqlite => "0",
    };
    let user = uuid::Uuid::parse_str(&id).unwrap();
    let sql = format!("UPDATE email_verifications SET expires_at = {past} WHERE app_id = $1 AND user_id = $2");
    assert!(t.exec2(&sql, t.app_id, user).await);
    assert_eq!(t.count("SELECT count(*) FROM email_verifications WHERE user_id = $1", &id).await, 1);
    let res = t.http.post(&link).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("This verification link has expired; ask for a new one"));
    assert!(get_user(&t, &id, &token).await["email"].get("primaryVerified").is_none());
    assert_eq!(records(&t, "email.verified", "expired").await, 1);
    let _ = std::fs::remove_dir_all(&dir);
}
}

both_stores! {
async fn a_new_primary_is_unverified_and_mailed_and_the_old_link_verifies_nothing() {
    let dir = mail_dir();
    let t = spawn_mailing(&dir, VerifyMode::Optional).await;
    // primaryVerified on input is ignored.
    let res = t
        .http
        .post(t.url("/v2/users"))
        .header("X-Api-Key", &t.api_key)
        .json(&json!({ "username": "mover", "password": PASSWORD,
                       "email": { "primary": "old@example.org", "primaryVerified": true } }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["email"], json!({ "primary": "old@example.org" }));
    let (id, token) = (body["usersId"].as_str().unwrap().to_owned(), body["sessionToken"].as_str().unwrap().to_owned());
    let first = verify_link(&wait_for_files(&dir, 1).await[0].2);

    let put = |patch: Value| {
        t.http.put(t.url(&format!("/v2/users/{id}"))).header("X-Api-Key", &t.api_key).bearer_auth(&token).json(&patch).send()
    };
    let res = put(json!({ "email": { "primaryVerified": true } })).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["email"], json!({ "primary": "old@example.org" }));
    assert_eq!(folder(&dir).len(), 1, "no change of address, no mail");

    // A new primary: a link to it, a notice to the old one.
    let res = put(json!({ "email": { "primary": "new@example.org" } })).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["email"], json!({ "primary": "new@example.org" }));
    let got = wait_for_files(&dir, 3).await;
    let to_new: Vec<_> = got.iter().filter(|(to, ..)| to == "new@example.org").collect();
    assert_eq!(to_new.len(), 1, "{:?}", got.iter().map(|(to, s, _)| (to, s)).collect::<Vec<_>>());
    assert!(got.iter().any(|(to, subject, _)| to == "old@example.org" && !subject.starts_with("Confirm")));
    let second = verify_link(&to_new[0].2);

    // The link mailed to the old address does not verify the new one.
    let res = t.http.post(&first).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("an email address the account no longer has"));
    assert!(get_user(&t, &id, &token).await["email"].get("primaryVerified").is_none());
    assert_eq!(records(&t, "email.verified", "denied").await, 1);
    let res = t.http.post(&second).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(get_user(&t, &id, &token).await["email"]["primaryVerified"], true);

    // Changed again: unverified again (the flag shows the primary's state).
    let res = put(json!({ "email": { "primary": "newer@example.org" } })).await.unwrap();
    assert!(res.json::<Value>().await.unwrap()["email"].get("primaryVerified").is_none());
    assert_eq!(records(&t, "email.verification_sent", "ok").await, 3);
    let _ = std::fs::remove_dir_all(&dir);
}
}

both_stores! {
async fn reset_mail_goes_only_to_a_verified_address_under_required() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let t = spawn_alone(|a| a.mail.smtp_url = Some(url)).await;
    set_mode(&t, VerifyMode::Required).await;
    sign_up(&t, "resetter", "resetter@example.org").await;
    let request = || {
        t.http.get(t.url(&format!("/v2/{}/reset/user/resetter", t.app_id))).header("X-Api-Key", &t.api_key).send()
    };
    let res = request().await.unwrap();
    assert_eq!((res.status(), res.text().await.unwrap()), (StatusCode::OK, "{}".to_owned()));
    all_mail_out(&t).await;
    let got = sink.received();
    assert_eq!(got.len(), 1, "only the verification mail");
    assert!(got[0].data.contains("/v2/verify/"));
    assert_eq!(records(&t, "user.password_reset_request", "unverified").await, 1);

    // Verified, the same request mails a reset link.
    let res = t.http.post(verify_link(&got[0].data)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = request().await.unwrap();
    assert_eq!((res.status(), res.text().await.unwrap()), (StatusCode::OK, "{}".to_owned()));
    let got = sink.wait_for(2, 10).await;
    assert_eq!(got.len(), 2);
    assert!(got[1].data.contains("/v2/reset/"), "{}", got[1].data);
}
}

both_stores! {
async fn resends_are_limited_per_recipient_and_only_for_oneself_or_a_supervisor() {
    let dir = mail_dir();
    let t = spawn_mailing(&dir, VerifyMode::Optional).await;
    let (ann, ann_token, _) = sign_up(&t, "ann", "ann@example.org").await;
    let (bob, bob_token, _) = sign_up(&t, "bob", "bob@example.org").await;
    wait_for_files(&dir, 2).await;

    // Three an hour to one address (--mail-per-recipient 3/h), then the
    // same answer and no mail.
    for _ in 0..4 {
        assert_eq!(resend(&t, &ann, &ann_token).await, (StatusCode::OK, json!({})));
    }
    all_mail_out(&t).await;
    let to_ann = folder(&dir).iter().filter(|(to, ..)| to == "ann@example.org").count();
    assert_eq!(to_ann, 4, "the sign-up's and three resends");
    assert_eq!(records(&t, "email.verification_sent", "throttled").await, 1);

    // Someone else's: 404, as for any record not one's own; recorded.
    let (status, body) = resend(&t, &ann, &bob_token).await;
    assert_eq!((status, body["errors"][0]["reason"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    assert_eq!(records(&t, "email.verification_sent", "denied").await, 1);
    // Bob's link verifies Bob, not Ann.
    let bobs = folder(&dir).into_iter().find(|(to, ..)| to == "bob@example.org").unwrap();
    assert_eq!(t.http.post(verify_link(&bobs.2)).send().await.unwrap().status(), StatusCode::OK);
    assert!(get_user(&t, &ann, &ann_token).await["email"].get("primaryVerified").is_none());
    assert_eq!(get_user(&t, &bob, &bob_token).await["email"]["primaryVerified"], true);
    // Verified already: 409 already_verified.
    let (status, body) = resend(&t, &bob, &bob_token).await;
    assert_eq!((status, body["errors"][0]["reason"].as_str()), (StatusCode::CONFLICT, Some("already_verified")));

    // A supervisor may, for anyone of the application; over gRPC too.
    let (cid, _, _) = sign_up(&t, "cy", "cy@example.org").await;
    let (_, sup) = t.supervisor("super").await;
    assert_eq!(resend(&t, &cid, &sup).await, (StatusCode::OK, json!({})));
    let mut users = t.users().await;
    users.send_verification(t.req(pb::SendVerificationRequest { users_id: cid.clone() }, Some(&sup))).await.unwrap();
    let e = users
        .send_verification(t.req(pb::SendVerificationRequest { users_id: bob.clone() }, Some(&sup)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);

    // Off: nothing to resend.
    set_mode(&t, VerifyMode::Off).await;
    let (status, body) = resend(&t, &ann, &ann_token).await;
    assert_eq!((status, body["errors"][0]["reason"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    // What was verified before stays so (the row says it; no query per read).
    assert_eq!(get_user(&t, &bob, &bob_token).await["email"]["primaryVerified"], true);
    let _ = std::fs::remove_dir_all(&dir);
}
}

both_stores! {
async fn an_application_that_never_chose_sees_no_change() {
    let dir = mail_dir();
    let d = dir.clone();
    let t = spawn_alone(|a| a.mail.mail_dir = d).await;
    let (id, token, reply) = sign_up(&t, "plain", "plain@example.org").await;
    assert_eq!(reply["email"], json!({ "primary": "plain@example.org" }));
    let (status, _) = sign_in(&t, "plain", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let res = t
        .http
        .put(t.url(&format!("/v2/users/{id}")))
        .header("X-Api-Key", &t.api_key)
        .bearer_auth(&token)
        .json(&json!({ "email": { "primary": "moved@example.org" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    all_mail_out(&t).await;
    let got = folder(&dir);
    assert!(got.iter().all(|(_, subject, _)| !subject.starts_with("Confirm")), "no verification mail by itself");
    assert_eq!(t.count_app("SELECT count(*) FROM email_verifications WHERE app_id = $1").await, 0);
    // On request it works, as `optional` does.
    assert_eq!(resend(&t, &id, &token).await, (StatusCode::OK, json!({})));
    let got = wait_for_files(&dir, got.len() + 1).await;
    let link = verify_link(&got.iter().find(|(_, s, _)| s.starts_with("Confirm")).unwrap().2);
    assert_eq!(t.http.post(&link).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(get_user(&t, &id, &token).await["email"]["primaryVerified"], true);
    let _ = std::fs::remove_dir_all(&dir);
}
}

#[tokio::test]
async fn the_document_describes_the_routes_and_the_read_only_flag() {
    let t = common::spawn().await;
    let doc: Value = t.http.get(t.url("/v2/openapi.json")).send().await.unwrap().json().await.unwrap();
    let flag = &doc["components"]["schemas"]["Email"]["properties"]["primaryVerified"];
    assert_eq!((flag["type"].as_str(), flag["readOnly"].as_bool()), (Some("boolean"), Some(true)), "{flag}");
    let paths = &doc["paths"];
    assert_eq!(paths["/v2/users/{usersId}/verification"]["post"]["operationId"], "sendVerification");
    assert_eq!(paths["/v2/verify/{token}"]["get"]["operationId"], "verifyEmailForm");
    assert_eq!(paths["/v2/verify/{token}"]["post"]["operationId"], "verifyEmail");
    assert!(paths["/v2/auth/signin"]["post"]["responses"].get("403").is_some());
    let reasons = doc["components"]["schemas"]["ErrorItem"]["properties"]["reason"]["description"].as_str().unwrap();
    assert!(reasons.contains("`email_unverified`") && reasons.contains("`already_verified`"), "{reasons}");
}
