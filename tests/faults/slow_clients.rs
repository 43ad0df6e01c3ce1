//! Slow and idle clients: connections that trickle their headers
//! (slowloris) or connect and say nothing, by the thousand, are cut by the
//! header timeout and held back by the connection cap, while well-behaved
//! clients are served meanwhile.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::server::{Serve, long, sqlite_url};

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until the server closes the connection; how long that took from
/// `since`, or None when it was still open after 30 s.
async fn until_cut(mut conn: TcpStream, since: Instant) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    end.ok().map(|()| since.elapsed())
}

/// A connection that sends its headers a line at a time, never finishing.
async fn slowloris(addr: SocketAddr) -> Option<Duration> {
    let since = Instant::now();
    let mut conn = TcpStream::connect(addr).await.ok()?;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: usersvc\r\n").await.ok()?;
    let (mut r, mut w) = conn.into_split();
    let trickle = async move {
        for i in 0u32.. {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if w.write_all(format!("X-Slow-{i}: a\r\n").as_bytes()).await.is_err() {
                break;
            }
        }
    };
    let mut buf = [0u8; 1024];
    let cut = async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        d = cut => Some(d),
        () = trickle => Some(since.elapsed()),
        () = tokio::time::sleep(Duration::from_secs(30)) => None,
    }
}

/// Opens `n` silent connections; each task reports when it was cut.
async fn idle(addr: SocketAddr, n: usize, set: &mut JoinSet<Option<Duration>>) {
    for _ in 0..n {
        let since = Instant::now();
        let conn = TcpStream::connect(addr).await.expect("connect");
        set.spawn(until_cut(conn, since));
    }
}

/// A well-behaved client on both doors, each request on a new connection.
async fn served(s: &Serve) -> (Duration, Duration) {
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(5)).build().unwrap();
    let t = Instant::now();
    let res = http.get(s.url("/healthz")).send().await.expect("HTTP served");
    assert_eq!(res.status(), 200);
    let http_took = t.elapsed();
    let t = Instant::now();
    let mut health = HealthClient::new(s.channel());
    health.check(HealthCheckRequest { service: String::new() }).await.expect("gRPC served");
    (http_took, t.elapsed())
}

/// The soft limit on open files of this process (and of the server it
/// starts), from /proc/self/limits.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_idle_clients_are_cut_while_others_are_served() {
    let (mut idle_n, slow_n) = if long() { (4000, 300) } else { (1000, 50) };
    // This process holds 1.5 sockets per idle connection (HTTP and gRPC)
    // besides its own files; stay within its limit.
    if let Some(limit) = open_files_limit()
        && limit < idle_n * 3 / 2 + slow_n + 256
    {
        idle_n = (limit.saturating_sub(slow_n + 256) * 2 / 3).max(100);
        eprintln!("open files limited to {limit}: {idle_n} idle connections per port instead");
    }
    // Room for them all and for the clients that behave.
    let cap = idle_n + slow_n + 100;
    let s = Serve::start(&sqlite_url(), &["--header-read-timeout", "2s", "--max-connections", &cap.to_string()]).await;

    let mut idle_http = JoinSet::new();
    let mut idle_grpc = JoinSet::new();
    let mut slow = JoinSet::new();
    for _ in 0..slow_n {
        slow.spawn(slowloris(s.http));
    }
    idle(s.http, idle_n, &mut idle_http).await;
    idle(s.grpc, idle_n / 2, &mut idle_grpc).await;

    // Others are served meanwhile, promptly: not after the idle ones are
    // cut (the machine may be busy with other tests, hence the margins).
    let (mut took_http, mut took_grpc) = (Vec::new(), Vec::new());
    let serving = Instant::now();
    while serving.elapsed() < HEADER_TIMEOUT + Duration::from_secs(2) {
        let (h, g) = served(&s).await;
        took_http.push(h);
        took_grpc.push(g);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    took_http.sort();
    took_grpc.sort();
    let served_n = took_http.len();
    let median = (took_http[served_n / 2], took_grpc[served_n / 2]);
    let worst = (took_http[served_n - 1], took_grpc[served_n - 1]);
    assert!(median.0.max(median.1) < Duration::from_millis(250), "served slowly: median {median:?}");
    assert!(worst.0.max(worst.1) < HEADER_TIMEOUT, "a request waited for the idle ones: {worst:?}");

    let mut report = Vec::new();
    for (what, set) in [("idle HTTP", &mut idle_http), ("idle gRPC", &mut idle_grpc), ("slowloris HTTP", &mut slow)] {
        let mut cuts = Vec::new();
        while let Some(r) = set.join_next().await {
            cuts.push(r.unwrap());
        }
        let open = cuts.iter().filter(|c| c.is_none()).count();
        assert_eq!(open, 0, "{open} {what} connections were never cut");
        let mut cuts: Vec<Duration> = cuts.into_iter().flatten().collect();
        cuts.sort();
        let (first, last) = (cuts[0], cuts[cuts.len() - 1]);
        assert!(first >= HEADER_TIMEOUT - Duration::from_millis(300), "{what}: cut too early ({first:?})");
        assert!(last <= HEADER_TIMEOUT + Duration::from_secs(4), "{what}: cut late ({last:?})");
        report.push(format!("{} {what} cut after {:.2}-{:.2} s", cuts.len(), first.as_secs_f64(), last.as_secs_f64()));
    }
    s.assert_no_panic();
    eprintln!(
        "FIGURES slow clients: {}; meanwhile {served_n} well-behaved requests per door on new connections, \
         median/slowest HTTP {:.0}/{:.0} ms, gRPC {:.0}/{:.0} ms",
        report.join(", "),
        median.0.as_secs_f64() * 1000.0,
        worst.0.as_secs_f64() * 1000.0,
        median.1.as_secs_f64() * 1000.0,
        worst.1.as_secs_f64() * 1000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_until_slots_free() {
    let cap = 50;
    let s = Serve::start(&sqlite_url(), &["--header-read-timeout", "2s", "--max-connections", &cap.to_string()]).await;
    // Let the start-up probe's connection close and give its slot back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra = 30;
    let mut held = JoinSet::new();
    idle(s.http, cap + extra, &mut held).await;
    let mut cuts: Vec<Duration> = Vec::new();
    while let Some(r) = held.join_next().await {
        cuts.push(r.unwrap().expect("every connection is cut"));
    }
    let at_once = cuts.iter().filter(|d| **d < Duration::from_secs(1)).count();
    let timed_out = cuts.iter().filter(|d| **d >= HEADER_TIMEOUT - Duration::from_millis(300)).count();
    eprintln!(
        "FIGURES connection cap {cap}: of {} connections {at_once} refused at once, {timed_out} cut by the header timeout",
        cap + extra
    );
    // (One slot may still be held by the start-up probe's connection.)
    assert!((extra..=extra + 1).contains(&at_once), "the connections past the cap are closed at once");
    assert_eq!(at_once + timed_out, cap + extra, "the rest hold their slots until the header timeout");
    // The slots are free again.
    served(&s).await;
}
