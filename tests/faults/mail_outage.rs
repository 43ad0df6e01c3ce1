//! The SMTP server is down while reminders and reset links are asked for:
//! the requests are answered at once, the outbox keeps the mail, and once
//! the server is back every message arrives within the retry cap. And serve
//! killed between the reply and the mail: the request is durable, and the
//! mail goes after the restart.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::free_port;
use crate::server::{Serve, create_app, long, sqlite_url};
use crate::smtp_sink::{SmtpSink, text_part};

/// The longest wait between two attempts (src/mail: RETRY_CAP), plus the
/// poll interval and a margin for a loaded machine.
const DELIVERED_WITHIN: Duration = Duration::from_secs(60 + 15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_out_once_the_smtp_server_is_back() {
    let down_for = if long() { Duration::from_secs(60) } else { Duration::from_secs(8) };
    let port = free_port();
    let db = sqlite_url();
    let (app_id, key) = create_app(&db);
    let s =
        Serve::start(&db, &["--smtp-url", &format!("smtp://127.0.0.1:{port}"), "--mail-poll-interval", "200ms"]).await;
    let http = reqwest::Client::new();
    let people = 5;
    for i in 0..people {
        let res = http
            .post(s.url("/v2/users"))
            .header("X-Api-Key", &key)
            .json(&json!({"username": format!("patient{i}"), "password": "correct horse battery",
                          "email": {"primary": format!("patient{i}@example.org")}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let asked = Instant::now();
    for i in 0..people {
        let started = Instant::now();
        let res = http
            .get(s.url(&format!("/v2/{app_id}/reset/user/patient{i}")))
            .header("X-Api-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "a reset request is answered with the mail server down");
        let res = http
            .post(s.url("/v2/users/forgotUsername"))
            .header("X-Api-Key", &key)
            .json(&json!({"email": format!("patient{i}@example.org")}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "a reminder is answered with the mail server down");
        assert!(started.elapsed() < Duration::from_secs(2), "answered without waiting for the mail server");
    }
    let expected = 2 * people;

    tokio::time::sleep(down_for.saturating_sub(asked.elapsed())).await;
    let sink = SmtpSink::start_on(port).await;
    let up = Instant::now();
    let got = sink.wait_for(expected, DELIVERED_WITHIN.as_secs()).await;
    let took = up.elapsed();
    let mut to: Vec<String> = got.iter().flat_map(|m| m.rcpt.clone()).collect();
    to.sort();
    let mut want: Vec<String> = (0..people).flat_map(|i| vec![format!("patient{i}@example.org"); 2]).collect();
    want.sort();
    s.assert_no_panic();
    eprintln!(
        "FIGURES mail: SMTP down {:.1} s; {} of {} messages delivered {:.1} s after it came back",
        (up - asked).as_secs_f64(),
        got.len(),
        expected,
        took.as_secs_f64()
    );
    assert_eq!(to, want, "every reminder and reset link arrives, once");
    assert!(took <= DELIVERED_WITHIN);
    let retried = s.log_text().matches("mail will be retried").count();
    assert!(retried >= expected, "the sender retried while the server was down ({retried} retries logged)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_answered_before_a_kill_is_mailed_after_the_restart() {
    let sink = SmtpSink::start().await;
    let db = sqlite_url();
    let (app_id, key) = create_app(&db);
    // The sender looks for work when it starts, then not for an hour: the
    // kill comes after the replies and before any mail.
    let s = Serve::start(&db, &["--smtp-url", &sink.url(), "--mail-poll-interval", "1h"]).await;
    let http = reqwest::Client::new();
    let res = http
        .post(s.url("/v2/users"))
        .header("X-Api-Key", &key)
        .json(&json!({"username": "durable", "password": "correct horse battery",
                      "email": {"primary": "durable@example.org"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res =
        http.get(s.url(&format!("/v2/{app_id}/reset/user/durable"))).header("X-Api-Key", &key).send().await.unwrap();
    assert_eq!((res.status().as_u16(), res.text().await.unwrap()), (200, "{}".to_owned()));
    let res = http
        .post(s.url("/v2/users/forgotUsername"))
        .header("X-Api-Key", &key)
        .json(&json!({"email": "durable@example.org"}))
        .send()
        .await
        .unwrap();
    assert_eq!((res.status().as_u16(), res.text().await.unwrap()), (200, "{}".to_owned()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sink.received().is_empty(), "no mail before the kill");

    s.kill9();
    let killed = Instant::now();
    s.restart().await;
    let got = sink.wait_for(2, 20).await;
    let took = killed.elapsed();
    eprintln!("FIGURES mail after kill -9: {} of 2 messages {:.1} s after the kill", got.len(), took.as_secs_f64());
    let to: Vec<&str> = got.iter().flat_map(|m| m.rcpt.iter().map(String::as_str)).collect();
    assert_eq!(to, ["durable@example.org"; 2], "the reminder and the reset link, once each");
    let reset = got.iter().map(|m| text_part(&m.data)).find(|t| t.contains("/v2/reset/")).expect("the reset link");
    let link = reset[reset.find("http://").unwrap()..].split_whitespace().next().unwrap().to_owned();
    let form = http.get(&link).send().await.unwrap();
    assert_eq!(form.status(), 200, "the link works");
    let res = http.post(&link).form(&[("password", "a new password"), ("confirm", "a new password")]).send().await;
    assert_eq!(res.unwrap().status(), 200);
    let res = http
        .post(s.url("/v2/auth/signin"))
        .header("X-Api-Key", &key)
        .json(&json!({"username": "durable", "password": "a new password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "signed in with the new password");
    s.assert_no_panic();
}
