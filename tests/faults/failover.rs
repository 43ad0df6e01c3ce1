//! The primary lost under mixed load and its synchronous standby promoted:
//! `usersvc serve` on a URL naming both follows the primary there by
//! itself, answers only successes or clean 503 / UNAVAILABLE meanwhile,
//! and every write it acknowledged is on the new primary, whose trail
//! verifies.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::cluster::PgCluster;
use crate::db_restart::{Acked, Sample, acknowledged_writes_found, worker};
use crate::server::{Outcome, Serve, create_app, long, usersvc};

/// A primary and its synchronous standby, replicating.
async fn pair() -> Option<(PgCluster, PgCluster)> {
    // Every commit waits until the standby has it on disk: what is
    // acknowledged survives the primary's loss.
    let primary = PgCluster::start_with(&[
        "wal_level = replica",
        "max_wal_senders = 4",
        "synchronous_commit = on",
        "synchronous_standby_names = '*'",
    ])?;
    // Promoted, it has no standby of its own to wait for.
    let standby = primary.standby(&["synchronous_standby_names = ''"]);
    let p = primary.connect("postgres").await;
    let started = Instant::now();
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
        .fetch_one(&p)
        .await
        .unwrap()
        == 0
    {
        assert!(started.elapsed() < Duration::from_secs(30), "the standby never became synchronous");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.close().await;
    Some((primary, standby))
}

fn multi_host_url(primary: &PgCluster, standby: &PgCluster) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/usersvc?target_session_attrs=read-write",
        primary.port, standby.port
    )
}

/// `usersvc serve` on the pair's multi-host URL, with `n` writers (HTTP and
/// gRPC in turn) under way when it returns.
async fn serve_under_load(
    primary: &PgCluster,
    standby: &PgCluster,
    n: usize,
) -> (Arc<Serve>, String, Arc<AtomicBool>, Vec<tokio::task::JoinHandle<Acked>>) {
    let url = multi_host_url(primary, standby);
    let s = Arc::new(
        Serve::start(&url, &["--db-acquire-timeout", "2s", "--request-timeout", "10s", "--db-max-connections", "8"])
            .await,
    );
    let (_, key) = create_app(&url);
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(tokio::sync::Barrier::new(n + 1));
    let workers = (0..n)
        .map(|n| tokio::spawn(worker(n, n % 2 == 1, s.clone(), key.clone(), stop.clone(), ready.clone())))
        .collect();
    ready.wait().await;
    (s, key, stop, workers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_lost_and_standby_promoted_under_load() {
    let Some((primary, standby)) = pair().await else { return };
    let (warmup, undetected, after) = if long() {
        (Duration::from_secs(10), Duration::from_secs(5), Duration::from_secs(20))
    } else {
        (Duration::from_secs(2), Duration::from_secs(1), Duration::from_secs(9))
    };

    let (s, key, stop, workers) = serve_under_load(&primary, &standby, 6).await;
    tokio::time::sleep(warmup).await;

    primary.stop("immediate");
    let down = Instant::now();
    // The time a failover manager takes to decide.
    tokio::time::sleep(undetected).await;
    standby.promote();
    let promoted = Instant::now();
    let new_primary = standby.connect("usersvc").await;
    let checkpoints = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_checkpoints").fetch_one(&new_primary).await.unwrap()
    };
    let checkpoints_at_promotion = checkpoints().await;
    tokio::time::sleep(after).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Vec::new();
    for w in workers {
        all.push(w.await.unwrap());
    }
    let samples: Vec<&Sample> = all.iter().flat_map(|a| &a.samples).collect();

    // Nothing but successes and clean 503 / UNAVAILABLE: no 500, no
    // INTERNAL or UNKNOWN, no hang.
    let odd: Vec<_> = samples.iter().filter(|x| matches!(x.outcome, Outcome::Other(_))).collect();
    assert!(odd.is_empty(), "unexpected outcomes: {odd:#?}\n{}", s.log_text());
    let failed = samples.iter().filter(|x| x.outcome == Outcome::Unavailable).count();
    assert!(failed > 0, "requests were made while no primary was there");

    // Writes succeed again soon after the promotion, and from then on.
    let first_write = samples
        .iter()
        .filter(|x| x.write && x.start >= down && x.outcome == Outcome::Ok)
        .map(|x| x.end)
        .min()
        .unwrap_or_else(|| panic!("no write succeeded after the failover\n{}", s.log_text()));
    let recovered = first_write.saturating_duration_since(promoted);
    assert!(recovered <= Duration::from_secs(10), "writes came back {recovered:?} after the promotion");
    let settled = first_write + Duration::from_secs(3);
    let late: Vec<_> = samples.iter().filter(|x| x.start >= settled && x.outcome != Outcome::Ok).collect();
    assert!(late.is_empty(), "failures once writes were back: {late:#?}\n{}", s.log_text());

    // Every acknowledged write is on the new primary: extras through the
    // API (served from there now), created users in its database.
    let (checked, found) = acknowledged_writes_found(&s, &key, &all, &new_primary).await;

    // The cache's notification channel and its heartbeat followed: their
    // connections are on the new primary.
    let followed = |name: &'static str| {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(name)
            .fetch_one(&new_primary)
    };
    let started = Instant::now();
    while followed("usersvc-listener").await.unwrap() == 0 || followed("usersvc-heartbeat").await.unwrap() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the LISTEN connection or its heartbeat is not on the new primary\n{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The sealer took its lease again there, and the trail verifies.
    let sealed_after = checkpoints().await - checkpoints_at_promotion;
    assert!(sealed_after > 0, "no checkpoint was sealed on the new primary\n{}", s.log_text());
    let verify = usersvc().args(["audit", "verify", "--database-url", &standby.url("usersvc")]).output().unwrap();
    assert!(
        verify.status.success(),
        "audit verify on the new primary: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    s.assert_no_panic();

    eprintln!(
        "FIGURES failover: requests {} ({} writes); failed with 503/UNAVAILABLE {}; primary down to promotion {:.1} s; \
         first write success {:.2} s after promotion; acknowledged writes checked {}, found on the new primary {}; \
         checkpoints sealed there {}; audit verify ok",
        samples.len(),
        samples.iter().filter(|x| x.write).count(),
        failed,
        (promoted - down).as_secs_f64(),
        recovered.as_secs_f64(),
        checked,
        found,
        sealed_after,
    );
    assert!(checked > 20, "enough writes were acknowledged to mean something");
    assert_eq!(found, checked, "every acknowledged write is on the new primary");
}

/// The old primary still up but refusing writes (as one brought back as a
/// standby does, 25006) while the standby is promoted: the connections
/// already open to it are left, not only new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_turned_read_only_is_left_for_the_promoted_standby() {
    let Some((primary, standby)) = pair().await else { return };
    let (s, key, stop, workers) = serve_under_load(&primary, &standby, 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Every session of the old primary, open ones included, turns
    // read-only at its next transaction.
    let old = primary.connect("postgres").await;
    sqlx::query("ALTER SYSTEM SET default_transaction_read_only = on").execute(&old).await.unwrap();
    sqlx::query("SELECT pg_reload_conf()").execute(&old).await.unwrap();
    old.close().await;
    standby.promote();
    let promoted = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in workers {
        all.push(w.await.unwrap());
    }
    let samples: Vec<&Sample> = all.iter().flat_map(|a| &a.samples).collect();
    let odd: Vec<_> = samples.iter().filter(|x| matches!(x.outcome, Outcome::Other(_))).collect();
    assert!(odd.is_empty(), "unexpected outcomes (a 25006 must be a 503): {odd:#?}\n{}", s.log_text());
    let first_write = samples
        .iter()
        .filter(|x| x.write && x.start >= promoted && x.outcome == Outcome::Ok)
        .map(|x| x.end)
        .min()
        .unwrap_or_else(|| panic!("no write succeeded after the promotion\n{}", s.log_text()));
    let recovered = first_write - promoted;
    assert!(recovered <= Duration::from_secs(5), "writes came back {recovered:?} after the promotion");
    let settled = first_write + Duration::from_secs(2);
    let late: Vec<_> = samples.iter().filter(|x| x.start >= settled && x.outcome != Outcome::Ok).collect();
    assert!(late.is_empty(), "failures once writes were back (connections left on the read-only server?): {late:#?}");

    // What was acknowledged is on the new primary.
    let new_primary = standby.connect("usersvc").await;
    let created: Vec<uuid::Uuid> =
        all.iter().flat_map(|a| &a.created).map(|id| uuid::Uuid::parse_str(id).unwrap()).collect();
    let present: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE id = ANY($1)")
        .bind(&created)
        .fetch_one(&new_primary)
        .await
        .unwrap();
    assert_eq!(present as usize, created.len(), "every acknowledged sign-up is on the new primary");
    let (checked, found) = acknowledged_writes_found(&s, &key, &all, &new_primary).await;
    assert_eq!(found, checked, "every acknowledged update is on the new primary too");
    s.assert_no_panic();
    let failed = samples.iter().filter(|x| x.outcome == Outcome::Unavailable).count();
    eprintln!(
        "FIGURES failover (old primary read-only): requests {}; failed with 503/UNAVAILABLE {failed}; \
         first write success {:.2} s after promotion; sign-ups acknowledged {}, found {present}",
        samples.len(),
        recovered.as_secs_f64(),
        created.len(),
    );
}
