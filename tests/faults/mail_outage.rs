//! The SMTP server is down while reminders and reset links are asked for:
//! the requests are answered at once, the outbox keeps the mail, and once
//! the server is back every message arrives within the retry cap.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::free_port;
use crate::server::{Serve, create_app, long, sqlite_url};
use crate::smtp_sink::SmtpSink;

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
