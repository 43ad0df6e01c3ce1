//! The restore drill of docs/operations.md, run: a primary archiving its
//! WAL, a `pg_basebackup -Ft -z -X stream`, a checkpoint exported with
//! `usersvc audit checkpoint`, then the documented restore on a new data
//! folder and port. Restored to the archive's end, `audit verify
//! --checkpoint` passes and every acknowledged user and update is there;
//! restored to a time before the exported checkpoint's records, it fails
//! with the documented message.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::cluster::{PgCluster, running_as_root};
use crate::server::{Serve, create_app, usersvc};

/// A folder the cluster's owner can write (the archive, the backups),
/// removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("usersvc-drill-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("archive")).unwrap();
        if running_as_root() {
            let status = Command::new("chown").args(["-R", "postgres:"]).arg(&dir).status().unwrap();
            assert!(status.success(), "chown of the drill folder to postgres");
        }
        Self(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A user as acknowledged: id, session token, extras written.
struct Acked {
    id: String,
    token: String,
    extras: serde_json::Map<String, Value>,
}

/// Signs up `n` users, alternating HTTP and gRPC, and writes two extras
/// to each (an audited update), the other door each time.
async fn write(s: &Serve, key: &str, tag: &str, n: usize) -> Vec<Acked> {
    let http = reqwest::Client::new();
    let mut acked = Vec::new();
    for i in 0..n {
        let name = format!("{tag}{i}");
        let (id, token) = if i % 2 == 0 {
            let r = http
                .post(s.url("/v2/users"))
                .header("X-Api-Key", key)
                .json(&json!({"username": name, "password": "correct horse battery"}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let b: Value = r.json().await.unwrap();
            assert!(status.is_success(), "sign-up over HTTP: {status} {b}");
            (b["usersId"].as_str().unwrap().to_owned(), b["sessionToken"].as_str().unwrap().to_owned())
        } else {
            let u = s.sign_up(key, &name).await;
            (u.users_id, u.session_token)
        };
        let mut extras = serde_json::Map::new();
        for k in ["a", "b"] {
            let value = json!(format!("{tag}-{i}-{k}"));
            let r = http
                .put(s.url(&format!("/v2/users/{id}")))
                .header("X-Api-Key", key)
                .bearer_auth(&token)
                .json(&json!({"extras": {k: value}}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "update: {}", r.status());
            extras.insert(k.to_owned(), value);
        }
        acked.push(Acked { id, token, extras });
    }
    acked
}

/// The documented restore into `restored`'s folder, with `extra`
/// recovery settings; started, and out of recovery.
async fn restore(restored: &PgCluster, scratch: &Scratch, extra: &str) {
    let data = restored.dir().join("data").display().to_string();
    let (base, archive) = (scratch.path("base"), scratch.path("archive"));
    restored.shell(&format!(
        "mkdir -p -m 700 {data} && tar -xzf {base}/base.tar.gz -C {data}
tar -xzf {base}/pg_wal.tar.gz -C {data}/pg_wal
cat >> {data}/postgresql.conf <<'CONF'
restore_command = 'cp {archive}/%f %p'
synchronous_standby_names = ''
{extra}
CONF
touch {data}/recovery.signal"
    ));
    restored.start_again();
    let pool = restored.connect("postgres").await;
    let started = Instant::now();
    while sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(&pool).await.unwrap() {
        assert!(started.elapsed() < Duration::from_secs(30), "the restore never left recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.close().await;
}

fn verify(db: &str, checkpoint: Option<&Path>) -> Output {
    let mut c = usersvc();
    c.args(["audit", "verify", "--database-url", db]);
    if let Some(f) = checkpoint {
        c.arg("--checkpoint").arg(f);
    }
    c.output().unwrap()
}

fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_restore_drill_keeps_the_trail_and_catches_a_rollback() {
    let scratch = Scratch::new();
    let archive_command = format!("archive_command = 'test ! -f {0}/%f && cp %p {0}/%f'", scratch.path("archive"));
    let Some(primary) = PgCluster::start_with(&["archive_mode = on", &archive_command]) else { return };
    let started = Instant::now();
    let url = primary.url("usersvc");
    let s = Serve::start(&url, &[]).await;
    let (_, key) = create_app(&url);

    let mut acked = write(&s, &key, "before", 4).await;

    // The nightly backup, as documented.
    primary.shell(&format!(
        "pg_basebackup -h 127.0.0.1 -p {} -U postgres -D {} -Ft -z -X stream --checkpoint=fast",
        primary.port,
        scratch.path("base")
    ));
    let pool = primary.connect("postgres").await;
    let backed_up: String = sqlx::query_scalar("SELECT clock_timestamp()::text").fetch_one(&pool).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let after_backup = write(&s, &key, "after", 4).await;
    let checkpoint = scratch.0.join("checkpoint.json");
    let out = usersvc().args(["audit", "checkpoint", "--database-url", &url]).output().unwrap();
    assert!(out.status.success(), "audit checkpoint: {}", said(&out));
    std::fs::write(&checkpoint, &out.stdout).unwrap();
    let exported: Value = serde_json::from_slice(&out.stdout).expect("the checkpoint is one JSON object");
    acked.extend(after_backup);
    acked.extend(write(&s, &key, "later", 2).await);

    // Everything acknowledged is in WAL the archive holds before the
    // primary goes.
    s.kill9();
    let last: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())").fetch_one(&pool).await.unwrap();
    let wait = Instant::now();
    while !Path::new(&scratch.path("archive")).join(&last).exists() {
        assert!(wait.elapsed() < Duration::from_secs(30), "{last} never reached the archive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.close().await;
    primary.stop("fast");

    // To the archive's end: the trail extends the exported checkpoint, and
    // every user and update acknowledged is there.
    let restored = primary.empty();
    restore(&restored, &scratch, "").await;
    let db = restored.url("usersvc");
    let ok = verify(&db, Some(&checkpoint));
    assert!(ok.status.success(), "audit verify --checkpoint on the restore: {}", said(&ok));
    let r = Serve::start(&db, &[]).await;
    let http = reqwest::Client::new();
    for a in &acked {
        let res = http
            .get(r.url(&format!("/v2/users/{}", a.id)))
            .header("X-Api-Key", &key)
            .bearer_auth(&a.token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "user {} on the restore", a.id);
        let user: Value = res.json().await.unwrap();
        for (k, v) in &a.extras {
            assert_eq!(&user["extras"][k], v, "extras.{k} of {} on the restore", a.id);
        }
    }
    drop(r);
    drop(restored);

    // To a time before the writes the exported checkpoint covers: the trail
    // is whole in itself, but `--checkpoint` sees the rollback.
    let early = primary.empty();
    restore(&early, &scratch, &format!("recovery_target_time = '{backed_up}'\nrecovery_target_action = 'promote'"))
        .await;
    let db = early.url("usersvc");
    let plain = verify(&db, None);
    assert!(plain.status.success(), "audit verify without --checkpoint on the early restore: {}", said(&plain));
    let caught = verify(&db, Some(&checkpoint));
    let message = said(&caught);
    assert!(!caught.status.success(), "audit verify --checkpoint passed on a rolled-back restore: {message}");
    assert!(
        message.contains("the database was rolled back or its tail cut; records") && message.contains("are missing"),
        "the documented message: {message}"
    );
    let pool = early.connect("usersvc").await;
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&pool).await.unwrap();
    pool.close().await;

    eprintln!(
        "FIGURES restore_drill: users acknowledged {}, all on the restore to the archive's end; exported checkpoint \
         of {} records; restore to before it holds {users} users and verify --checkpoint says: {}; {:.1} s",
        acked.len(),
        exported["treeSize"],
        message.lines().find(|l| l.contains("rolled back")).unwrap_or_default().trim(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(users, 4, "the early restore holds the users signed up before the backup only");
}
