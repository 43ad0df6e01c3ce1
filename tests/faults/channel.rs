//! The auth cache's eviction channel cut. Each process trusts what it
//! remembers only while PostgreSQL's notifications reach it, and it checks
//! that they do with a heartbeat (a NOTIFY to itself every 2 s, lost after
//! 4 s without an echo). Two cuts: a silent one, the listening backend
//! stopped (SIGSTOP) so that its connection stays open and says nothing,
//! as a dead network path does; and a loud one, the backend terminated.
//! Either way a session ended behind the service's back (straight in the
//! database, whose trigger's NOTIFY cannot reach the cut channel) is
//! refused within the heartbeat bound, and reads go on working.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use sqlx::PgPool;
use usersvc::pb;

use crate::cluster::PgCluster;
use crate::server::{Serve, create_app};

/// Three heartbeats: the bound the service promises (two) plus a margin
/// for the echo's trip and this test's polling.
const BOUND: Duration = Duration::from_secs(6);

/// The backend of the service's listening connection, once it is up.
async fn listener_pid(look: &PgPool, not: Option<i32>) -> i32 {
    let started = Instant::now();
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'usersvc-listener' AND pid <> $1",
        )
        .bind(not.unwrap_or(0))
        .fetch_optional(look)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no listening connection");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the log says the channel came up `times` times in all.
async fn channel_up(s: &Serve, times: usize) {
    let started = Instant::now();
    while s.log_text().matches("notification channel up").count() < times {
        assert!(started.elapsed() < Duration::from_secs(20), "the channel did not come up:\n{}", s.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(sig: &str, pid: i32) {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// A stopped backend is let go on every exit of the test, so that the
/// cluster can shut down.
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

/// GET of the user by their own token: the HTTP status.
async fn get(s: &Serve, key: &str, user: &pb::User) -> u16 {
    reqwest::Client::new()
        .get(s.url(&format!("/v2/users/{}", user.users_id)))
        .header("X-Api-Key", key)
        .bearer_auth(&user.session_token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Ends a user's sessions straight in the database, as another replica's
/// sign-out would; its trigger's NOTIFY is all the service would hear.
async fn end_sessions(look: &PgPool, user: &pb::User) {
    let id = uuid::Uuid::parse_str(&user.users_id).unwrap();
    let ended = sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(id).execute(look).await.unwrap();
    assert!(ended.rows_affected() > 0);
}

/// Polls the revoked token until it is refused, while another user's reads
/// must keep succeeding; (how long the revoked one was still served, how
/// many polls saw it served, the other user's reads).
async fn until_refused(s: &Serve, key: &str, revoked: &pb::User, other: &pb::User) -> (Duration, usize, usize) {
    let cut = Instant::now();
    let (mut served, mut reads) = (0, 0);
    loop {
        let status = get(s, key, revoked).await;
        let elapsed = cut.elapsed();
        if status == 401 {
            return (elapsed, served, reads);
        }
        assert_eq!(status, 200, "the revoked session: 200 (remembered) until 401");
        served += 1;
        assert!(elapsed < BOUND + Duration::from_secs(10), "the revoked session still served after {elapsed:?}");
        assert_eq!(get(s, key, other).await, 200, "another user's read during the cut");
        reads += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_eviction_channel_stops_the_cache_within_the_heartbeat_bound() {
    let Some(pg) = PgCluster::start() else { return };
    let db = pg.url("usersvc");
    let s = Serve::start(&db, &[]).await;
    let (_, key) = create_app(&db);
    let ada = s.sign_up(&key, "ada").await;
    let bob = s.sign_up(&key, "bob").await;
    let look = pg.connect("usersvc").await;
    let pid = listener_pid(&look, None).await;
    channel_up(&s, 1).await;

    // Silent cut: the listening backend stops; its socket stays open.
    for _ in 0..3 {
        assert_eq!(get(&s, &key, &ada).await, 200, "warm the cache");
    }
    signal("-STOP", pid);
    let stopped = Stopped(pid);
    end_sessions(&look, &ada).await;
    let (silent, served, reads) = until_refused(&s, &key, &ada, &bob).await;
    assert!(served > 0, "right after the cut the session was still remembered: the cut was silent");
    assert!(silent <= BOUND, "refused {silent:?} after a silent cut, over the bound of {BOUND:?}");

    // The service gave that connection up and made another, which echoes:
    // the cache is used again.
    let new_pid = listener_pid(&look, Some(pid)).await;
    channel_up(&s, 2).await;
    let log = s.log_text();
    assert!(log.contains("notification channel lost") && log.contains("\"silent\""), "said why:\n{log}");
    let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&look).await.unwrap();
    drop(stopped);

    // Loud cut: the listening backend terminated; the service hears the
    // connection close and stops trusting its memory at once.
    let ada = s.sign_up(&key, "ada2").await;
    for _ in 0..3 {
        assert_eq!(get(&s, &key, &ada).await, 200, "warm the cache");
    }
    let terminated: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(new_pid).fetch_one(&look).await.unwrap();
    assert!(terminated);
    end_sessions(&look, &ada).await;
    let (loud, _, loud_reads) = until_refused(&s, &key, &ada, &bob).await;
    assert!(loud <= BOUND, "refused {loud:?} after the connection was terminated");
    listener_pid(&look, Some(new_pid)).await;
    channel_up(&s, 3).await;
    assert_eq!(get(&s, &key, &bob).await, 200);

    s.assert_no_panic();
    eprintln!(
        "FIGURES eviction channel (heartbeat 2 s, lost after 4 s): silent cut: revoked session refused after \
         {:.2} s ({served} polls still served it, {reads} reads by another user all 200); terminated backend: \
         refused after {:.2} s ({loud_reads} reads in between)",
        silent.as_secs_f64(),
        loud.as_secs_f64()
    );
}
