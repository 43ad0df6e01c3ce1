//! The anonymous mail routes (forgotUsername, the reset request) as an
//! attacker probing for registered addresses and names sees them: the same
//! reply after the same time whether or not anyone matches, and no more
//! than a few mails per recipient however often they are asked for.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use rand::{SeedableRng, seq::SliceRandom};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{TestApp, spawn_alone};
use crate::smtp_sink::{SmtpSink, text_part};

/// Requests per class (matching, not matching) and route; each name is
/// asked for at most 18 times and each client address at most 18 times per
/// route, under the 20 a quarter-hour the per-name and per-address
/// throttles allow.
const PER_CLASS: usize = 180;
const WARM_UP: usize = 20;
const NAMES: usize = 12;
const CLIENTS: usize = 40;

async fn sign_up(t: &TestApp, username: &str, email: &str) {
    sign_up_from(t, &t.http, username, email).await;
}

async fn sign_up_from(t: &TestApp, http: &reqwest::Client, username: &str, email: &str) {
    let res = http
        .post(t.url("/v2/users"))
        .header("X-Api-Key", &t.api_key)
        .json(&json!({"username": username, "password": "correct horse battery", "email": {"primary": email}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{}", res.text().await.unwrap());
}

/// HTTP clients from distinct loopback addresses (127.0.0.10 and up), so
/// that a few hundred requests stay within the per-address throttle.
fn clients() -> Vec<reqwest::Client> {
    (0..CLIENTS)
        .map(|i| {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + u8::try_from(i).unwrap()));
            reqwest::Client::builder().local_address(ip).build().unwrap()
        })
        .collect()
}

/// The reply as a user sees it.
#[derive(Debug, PartialEq)]
struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    body: String,
}

async fn forgot(t: &TestApp, http: &reqwest::Client, email: &str) -> Reply {
    let res = http
        .post(t.url("/v2/users/forgotUsername"))
        .header("X-Api-Key", &t.api_key)
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    reply(res).await
}

async fn reset(t: &TestApp, http: &reqwest::Client, username: &str) -> Reply {
    let res = http
        .get(t.url(&format!("/v2/{}/reset/user/{username}", t.app_id)))
        .header("X-Api-Key", &t.api_key)
        .send()
        .await
        .unwrap();
    reply(res).await
}

async fn reply(res: reqwest::Response) -> Reply {
    let status = res.status();
    let content_type = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    Reply { status, content_type, body: res.text().await.unwrap() }
}

/// Milliseconds at quantile `q` of sorted samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[i]
}

/// The Mann-Whitney rank-sum statistic of `a` against `b`, as a z-score
/// (normal approximation, ties given their mean rank).
fn rank_sum_z(a: &[f64], b: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = a.iter().map(|x| (*x, true)).chain(b.iter().map(|x| (*x, false))).collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut rank_a = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_a += all[i..=j].iter().filter(|x| x.1).count() as f64 * mean_rank;
        i = j + 1;
    }
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let u = rank_a - n1 * (n1 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let sd = (n1 * n2 * (n1 + n2 + 1.0) / 12.0).sqrt();
    (u - mean) / sd
}

/// Wilcoxon's signed-rank statistic of paired differences, as a z-score
/// (zeros dropped, ties given their mean rank).
fn signed_rank_z(diffs: &[f64]) -> f64 {
    let mut d: Vec<f64> = diffs.iter().copied().filter(|x| *x != 0.0).collect();
    d.sort_by(|x, y| x.abs().total_cmp(&y.abs()));
    let mut w = 0.0;
    let mut i = 0;
    while i < d.len() {
        let mut j = i;
        while j + 1 < d.len() && d[j + 1].abs() == d[i].abs() {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        w += d[i..=j].iter().map(|x| x.signum() * mean_rank).sum::<f64>();
        i = j + 1;
    }
    let n = d.len() as f64;
    w / (n * (n + 1.0) * (2.0 * n + 1.0) / 6.0).sqrt()
}

/// One round's verdict: None when the two classes look alike.
fn judge(route: &str, round: usize, hit: &mut [f64], miss: &mut [f64], diffs: &[f64]) -> Option<String> {
    let z = rank_sum_z(hit, miss);
    let zp = signed_rank_z(diffs);
    hit.sort_by(f64::total_cmp);
    miss.sort_by(f64::total_cmp);
    let (med_h, med_m) = (quantile(hit, 0.5), quantile(miss, 0.5));
    let (p75_h, p75_m) = (quantile(hit, 0.75), quantile(miss, 0.75));
    eprintln!(
        "FIGURES {route} ({:?}, round {round}): median {med_h:.3} ms matching vs {med_m:.3} ms not; \
         p75 {p75_h:.3} vs {p75_m:.3} ms; p95 {:.3} vs {:.3} ms; rank-sum z {z:.2}; paired signed-rank z {zp:.2} \
         (n = {} pairs)",
        crate::common::backend(),
        quantile(hit, 0.95),
        quantile(miss, 0.95),
        diffs.len()
    );
    // A gap between the medians (or p75) past the tolerance counts when the
    // ranks say it is real: on a busy machine (medians of 10 ms and more)
    // noise alone opens 10 % gaps, but not with a consistent rank shift.
    // A strong shift fails whatever its size.
    let close = |a: f64, b: f64, rel: f64, abs: f64| (a - b).abs() <= (rel * a.max(b)).max(abs);
    let shifted = z.abs() >= 2.5 || zp.abs() >= 2.5;
    if shifted && !close(med_h, med_m, 0.10, 0.15) {
        return Some(format!("medians differ: {med_h:.3} vs {med_m:.3} ms (z {z:.2}, {zp:.2})"));
    }
    if shifted && !close(p75_h, p75_m, 0.15, 0.25) {
        return Some(format!("p75 differ: {p75_h:.3} vs {p75_m:.3} ms (z {z:.2}, {zp:.2})"));
    }
    if z.abs() >= 4.0 || zp.abs() >= 4.0 {
        return Some(format!("one class is systematically slower (rank-sum z {z:.2}, signed-rank z {zp:.2})"));
    }
    None
}

/// Rounds of measurement before a difference is believed: the noise of a
/// busy machine can push one round past a tolerance; a real difference
/// fails every round.
const ROUNDS: usize = 3;

/// Times `ask(matching, name index, client)` in pairs, one matching and one
/// not, in a random order within each pair, so that drift of a busy
/// machine (and the background work a match leaves behind) falls on both
/// classes alike; after a warm-up. Compares the two latency distributions,
/// prints them, and fails when they differ in every round.
async fn compare<F, Fut>(t: &TestApp, route: &str, ask: F)
where
    F: Fn(bool, usize, usize) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    let expected = ask(false, 0, 0).await;
    assert_eq!(expected.status, StatusCode::OK, "{expected:?}");
    for i in 0..WARM_UP {
        assert_eq!(ask(i % 2 == 0, NAMES - 1 - i % NAMES, i % CLIENTS).await, expected);
    }
    let mut asked = WARM_UP;
    let mut failures = Vec::new();
    for round in 1..=ROUNDS {
        if round > 1 {
            // Another round's names and addresses start from a clean slate
            // of the per-name and per-address throttles.
            assert!(t.exec_int("DELETE FROM throttles WHERE failures >= $1", 0).await);
        }
        let (mut hit, mut miss, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..PER_CLASS {
            let mut order = [true, false];
            order.shuffle(&mut rng);
            let mut pair = [0.0; 2];
            for matching in order {
                let started = Instant::now();
                let got = ask(matching, i % NAMES, asked % CLIENTS).await;
                let ms = started.elapsed().as_secs_f64() * 1e3;
                asked += 1;
                assert_eq!(got, expected, "the same reply whether or not anyone matches");
                pair[usize::from(!matching)] = ms;
            }
            hit.push(pair[0]);
            miss.push(pair[1]);
            diffs.push(pair[0] - pair[1]);
        }
        match judge(route, round, &mut hit, &mut miss, &diffs) {
            None => return,
            Some(why) => failures.push(why),
        }
    }
    panic!("{route}: matching and not matching take different times in every round: {failures:?}");
}

both_stores! {
async fn match_and_no_match_take_the_same_time() {
    // The two stores' runs measure one at a time, not each other.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut folder = std::path::PathBuf::new();
    let t = spawn_alone(|a| folder = a.mail.mail_dir.clone()).await;
    let clients = clients();
    // From addresses of their own, as the requests come.
    for (i, http) in clients.iter().take(NAMES).enumerate() {
        sign_up_from(&t, http, &format!("timed{i}"), &format!("timed{i}@example.org")).await;
    }
    let t = &t;
    let clients = &clients;
    compare(t, "forgotUsername", |matching, name, client| async move {
        let email = if matching { format!("timed{name}@example.org") } else { format!("absent{name}@example.org") };
        forgot(t, &clients[client], &email).await
    })
    .await;
    compare(t, "reset request", |matching, name, client| async move {
        let username = if matching { format!("timed{name}") } else { format!("absent{name}") };
        reset(t, &clients[client], &username).await
    })
    .await;

    // Every matching address got mail, up to its limit; nobody else did.
    all_mail_out(t).await;
    let mut to = std::collections::BTreeMap::<String, usize>::new();
    for file in std::fs::read_dir(&folder).unwrap() {
        let mail = std::fs::read_to_string(file.unwrap().path()).unwrap();
        let rcpt = mail.lines().find_map(|l| l.strip_prefix("To: ")).expect("a recipient").to_owned();
        *to.entry(rcpt).or_default() += 1;
    }
    let want = (0..NAMES).map(|i| (format!("timed{i}@example.org"), 3)).collect::<std::collections::BTreeMap<_, _>>();
    assert_eq!(to, want, "three mails per matching address (--mail-per-recipient 3/h)");
}
}

/// Waits until every request of the application is resolved and every mail
/// it made is sent (the outbox keeps a row until then).
pub(crate) async fn all_mail_out(t: &TestApp) {
    let started = Instant::now();
    loop {
        let waiting = t.count_app("SELECT count(*) FROM mail_requests WHERE app_id = $1").await
            + t.count_app("SELECT count(*) FROM outbox WHERE app_id = $1 AND failed_at IS NULL").await;
        if waiting == 0 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{waiting} requests and mails still waiting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

both_stores! {
async fn a_fourth_mail_within_the_hour_is_not_sent_and_the_reply_does_not_tell() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let t = spawn_alone(|a| a.mail.smtp_url = Some(url)).await;
    sign_up(&t, "often", "often@example.org").await;
    sign_up(&t, "other", "other@example.org").await;
    let http = reqwest::Client::new();
    let nobody = forgot(&t, &http, "nobody@example.org").await;
    assert_eq!((nobody.status, nobody.body.as_str()), (StatusCode::OK, "{}"));
    // A reset link, two reminders, then a fourth request: a reset again.
    let mut replies = vec![reset(&t, &http, "often").await];
    all_mail_out(&t).await;
    for _ in 0..2 {
        replies.push(forgot(&t, &http, "OFTEN@example.org").await);
    }
    replies.push(reset(&t, &http, "often").await);
    assert!(replies.iter().all(|r| *r == nobody), "the same reply each time: {replies:?}");
    all_mail_out(&t).await;
    let got = sink.received();
    let to: Vec<&str> = got.iter().flat_map(|m| m.rcpt.iter().map(String::as_str)).collect();
    assert_eq!(to, ["often@example.org"; 3], "three mails, not four");
    let resets: Vec<_> = got.iter().filter(|m| text_part(&m.data).contains("/v2/reset/")).collect();
    assert_eq!(resets.len(), 1, "the fourth request's link was not sent");
    // Nor did it void the link that was: it still opens the form.
    let text = text_part(&resets[0].data);
    let link = text[text.find("http://").unwrap()..].split_whitespace().next().unwrap().to_owned();
    assert_eq!(t.http.get(&link).send().await.unwrap().status(), StatusCode::OK);
    // The trail shows it (to a supervisor, not to the caller).
    let held = t
        .count_app("SELECT count(*) FROM audit_events WHERE app_id = $1 AND outcome = 'throttled' AND subject_id IS NOT NULL")
        .await;
    assert_eq!(held, 1);

    // Another address is not held back by this one's count.
    assert_eq!(forgot(&t, &http, "other@example.org").await, nobody);
    all_mail_out(&t).await;
    let last = sink.received();
    assert_eq!(last.len(), 4);
    assert_eq!(last[3].rcpt, ["other@example.org"]);
}
}
