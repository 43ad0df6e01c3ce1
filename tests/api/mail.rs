//! Mail that arrives: reminders and resets over real SMTP to a sink on
//! loopback, the reset form over HTTP, retries, and two senders at once.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tonic::Code;
use usersvc::{app::Application, pb};

use crate::common::{self, TestApp, spawn_alone};
use crate::smtp_sink::{SmtpSink, text_part};

async fn sign_up(t: &TestApp, username: &str, email: &str) -> String {
    let user = pb::User {
        username: username.into(),
        password: "correct horse battery".into(),
        email: Some(pb::Email { primary: email.into(), ..Default::default() }),
        ..Default::default()
    };
    t.users()
        .await
        .create_user(t.req(pb::CreateUserRequest { user: Some(user) }, None))
        .await
        .unwrap()
        .into_inner()
        .users_id
}

async fn remind(t: &TestApp, email: &str) -> StatusCode {
    t.http
        .post(t.url("/v2/users/forgotUsername"))
        .header("X-Api-Key", &t.api_key)
        .header("Content-Type", "application/json")
        .body(json!({ "email": email }).to_string())
        .send()
        .await
        .unwrap()
        .status()
}

/// The reset link of a message.
fn reset_link(data: &str) -> String {
    let text = text_part(data);
    let start = text.find("http://").expect("a link");
    text[start..].split_whitespace().next().unwrap().to_owned()
}

both_stores! {
async fn username_reminder_arrives_with_the_right_username() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let t = spawn_alone(|a| a.mail.smtp_url = Some(url)).await;
    sign_up(&t, "Reminded.Person", "reminded@example.org").await;
    assert_eq!(remind(&t, "REMINDED@example.org").await, StatusCode::OK);
    assert_eq!(remind(&t, "nobody-here@example.org").await, StatusCode::OK, "the same answer for unknown addresses");
    let got = sink.wait_for(1, 10).await;
    assert_eq!(got.len(), 1, "only the known address gets mail");
    assert_eq!(got[0].rcpt, vec!["reminded@example.org".to_owned()]);
    let text = text_part(&got[0].data);
    assert!(text.contains("Your username is: Reminded.Person"), "{text}");
    assert!(got[0].data.contains("Subject: Your username for test app"), "{}", got[0].data);
    assert!(got[0].data.contains("text/html"), "an HTML part too");
    // Sent messages leave the outbox.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = t.count_app("SELECT count(*) FROM outbox WHERE app_id = $1").await;
    assert_eq!(left, 0);
}
}

both_stores! {
async fn password_reset_by_mail_and_form_end_to_end() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let t = spawn_alone(|a| a.mail.smtp_url = Some(url)).await;
    let id = sign_up(&t, "forgetful", "forgetful@example.org").await;
    let mut users = t.users().await;
    let old_session = users
        .sign_in(
            t.req(pb::SignInRequest { username: "forgetful".into(), password: "correct horse battery".into() }, None),
        )
        .await
        .unwrap()
        .into_inner()
        .session_token;
    let request = |name: &str| {
        t.http.get(t.url(&format!("/v2/{}/reset/user/{name}", t.app_id))).header("X-Api-Key", &t.api_key).send()
    };
    for name in ["forgetful", "no-such-user"] {
        let res = request(name).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.json::<serde_json::Value>().await.unwrap(), json!({}));
    }
    // A second request voids the first link.
    request("forgetful").await.unwrap();
    let got = sink.wait_for(2, 10).await;
    assert_eq!(got.len(), 2);
    // The two mails may arrive in either order: exactly one link still works.
    let (mut live, mut dead) = (Vec::new(), Vec::new());
    for m in &got {
        let l = reset_link(&m.data);
        assert!(l.starts_with(&format!("http://{}/v2/reset/", t.app.http_addr)), "{l}");
        let res = t.http.get(&l).send().await.unwrap();
        match res.status() {
            StatusCode::OK => live.push(l),
            StatusCode::BAD_REQUEST => {
                assert!(res.text().await.unwrap().contains("cannot be used"));
                dead.push(l);
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((live.len(), dead.len()), (1, 1), "the second request voids the first link");
    let link = live.remove(0);

    // The form, then its mistakes, then success.
    let res = t.http.get(&link).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["referrer-policy"], "no-referrer");
    let page = res.text().await.unwrap();
    assert!(page.contains("<form method=\"post\">") && page.contains("<label for=\"password\">"));
    let post = |pw: &str, confirm: &str| t.http.post(&link).form(&[("password", pw), ("confirm", confirm)]).send();
    let res = post("a new password", "another password").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("not the same"));
    let res = post("short", "short").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("at least 8 characters"));
    let res = post("a new password", "a new password").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("Your password has been changed"));

    // The old password and the old sessions are gone; the new one works.
    let e = users
        .sign_in(
            t.req(pb::SignInRequest { username: "forgetful".into(), password: "correct horse battery".into() }, None),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = users.get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(&old_session))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    users
        .sign_in(t.req(pb::SignInRequest { username: "forgetful".into(), password: "a new password".into() }, None))
        .await
        .unwrap();
    // The link works once.
    let res = post("yet another one", "yet another one").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("cannot be used"));
}
}

both_stores! {
async fn expired_reset_links_fail_clearly() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let t = spawn_alone(|a| {
        a.mail.smtp_url = Some(url);
        a.mail.reset_link_lifetime = Duration::from_secs(2);
    })
    .await;
    sign_up(&t, "late", "late@example.org").await;
    let mut users = t.users().await;
    users
        .request_password_reset(
            t.req(pb::RequestPasswordResetRequest { app_id: String::new(), username: "late".into() }, None),
        )
        .await
        .unwrap();
    let got = sink.wait_for(1, 10).await;
    let link = reset_link(&got[0].data);
    assert!(text_part(&got[0].data).contains("within 1 minutes") || text_part(&got[0].data).contains("minutes"));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let token = link.rsplit('/').next().unwrap().to_owned();
    let e = users
        .reset_password(tonic::Request::new(pb::ResetPasswordRequest {
            token,
            new_password: "a fine password".into(),
            check_only: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("expired"), "{}", e.message());
    let res = t.http.get(&link).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("This link cannot be used"));
}
}

both_stores! {
async fn a_dead_smtp_server_delays_but_loses_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let t = spawn_alone(|a| a.mail.smtp_url = Some(format!("smtp://127.0.0.1:{port}"))).await;
    let mut gone = String::new();
    for i in 0..3 {
        let id = sign_up(&t, &format!("patient{i}"), &format!("patient{i}@example.org")).await;
        if i == 1 {
            gone = id;
        }
        assert_eq!(remind(&t, &format!("patient{i}@example.org")).await, StatusCode::OK);
    }
    // Nobody listens: the messages wait in the outbox, tried again and again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tried = t.ints_app("SELECT attempts FROM outbox WHERE app_id = $1 AND failed_at IS NULL").await;
    assert_eq!(tried.len(), 3);
    assert!(tried.iter().all(|a| *a >= 1), "{tried:?}");
    // A user deleted meanwhile takes their queued mail along.
    let (_, sup) = t.supervisor("postmaster").await;
    t.users().await.delete_user(t.req(pb::DeleteUserRequest { users_id: gone }, Some(&sup))).await.unwrap();
    // The server comes back: all the others arrive.
    let sink = SmtpSink::start_on(port).await;
    let got = sink.wait_for(2, 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut to: Vec<String> = sink.received().iter().flat_map(|m| m.rcpt.clone()).collect();
    to.sort();
    assert_eq!(to, vec!["patient0@example.org", "patient2@example.org"], "{got:?}");
}
}

both_stores! {
async fn two_senders_never_send_a_message_twice() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let t = spawn_alone(|a| a.mail.smtp_url = Some(url.clone())).await;
    let mut args = common::serve_args(t.db_url.clone());
    args.mail.smtp_url = Some(url);
    let second = Application::start(&args).await.unwrap();
    let n = 16;
    for i in 0..n {
        sign_up(&t, &format!("twice{i}"), &format!("twice{i}@example.org")).await;
    }
    for i in 0..n {
        assert_eq!(remind(&t, &format!("twice{i}@example.org")).await, StatusCode::OK);
    }
    let got = sink.wait_for(n, 20).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got_after = sink.received();
    assert_eq!(got.len(), got_after.len(), "nothing more came later");
    let mut ids: Vec<String> = got_after
        .iter()
        .map(|m| m.data.lines().find(|l| l.starts_with("Message-ID:")).unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "each message once");
    second.abort();
}
}

both_stores! {
async fn an_overloaded_reset_form_says_when_to_come_back() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    // One hashing thread and nothing waiting behind it.
    let t = spawn_alone(|a| {
        a.mail.smtp_url = Some(url);
        a.hash_concurrency = Some(1);
        a.limits.hash_queue = Some(0);
    })
    .await;
    sign_up(&t, "crowded", "crowded@example.org").await;
    let res =
        t.http.get(t.url(&format!("/v2/{}/reset/user/crowded", t.app_id))).header("X-Api-Key", &t.api_key).send();
    assert_eq!(res.await.unwrap().status(), StatusCode::OK);
    let link = reset_link(&sink.wait_for(1, 10).await[0].data);
    let mut posts = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (http, link) = (t.http.clone(), link.clone());
        posts.spawn(async move {
            let res = http.post(&link).form(&[("password", "a new password"), ("confirm", "a new password")]);
            let res = res.send().await.unwrap();
            let retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (res.status(), retry_after, res.text().await.unwrap())
        });
    }
    let mut refused = 0;
    while let Some(done) = posts.join_next().await {
        let (status, retry_after, page) = done.unwrap();
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                let secs: u64 = retry_after.expect("Retry-After on the busy page").parse().unwrap();
                assert!(secs >= 1);
                assert!(page.contains("Your password was not changed"), "{page}");
            }
            // The one that got the hasher, and those after it found the link used.
            StatusCode::OK | StatusCode::BAD_REQUEST => assert!(retry_after.is_none()),
            other => panic!("{other}: {page}"),
        }
    }
    assert!(refused >= 1, "twelve hashes at once on a hasher that holds one");
}
}
