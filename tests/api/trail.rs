//! The trail's promises tried the way an operator, an attacker or a broken
//! disk would: a read whose record cannot be written is not answered; a
//! checkpoint kept off the database catches a database rolled back to an
//! earlier dump or cut short; forged checkpoints are refused.

use std::process::Output;

use serde_json::{Value, json};

use usersvc::store::backend::Pool;

use crate::common::{self, BACKEND, Backend, TestApp};

async fn get_self(t: &TestApp, id: &str, token: &str, request_id: &str) -> reqwest::Response {
    t.http
        .get(t.url(&format!("/v2/users/{id}")))
        .header("X-Api-Key", &t.api_key)
        .header("Authorization", format!("Bearer {token}"))
        .header("x-request-id", request_id)
        .send()
        .await
        .unwrap()
}

/// A statement on the service's database as its owner.
async fn as_owner(t: &TestApp, sql: &str) {
    match &t.app.pool {
        Pool::Postgres(p) => {
            sqlx::raw_sql(sql).execute(p).await.unwrap();
        }
        Pool::Sqlite(p) => {
            sqlx::raw_sql(sql).execute(p).await.unwrap();
        }
    }
}

both_stores! {
async fn a_read_whose_record_cannot_be_written_is_refused() {
    let t = common::spawn_alone(|_| {}).await;
    let (id, token) = t.sign_up("fail-closed").await;
    assert_eq!(get_self(&t, &id, &token, "before-0001").await.status(), 200);

    // The trail's table stops taking records (a full disk, a broken
    // partition, a revoked grant): reads that would disclose are refused.
    let (break_it, mend_it) = match common::backend() {
        Backend::Postgres => (
            "CREATE FUNCTION refuse_trail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
             CREATE TRIGGER refuse_trail BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_trail();",
            "DROP TRIGGER refuse_trail ON audit_events; DROP FUNCTION refuse_trail();",
        ),
        Backend::Sqlite => (
            "CREATE TRIGGER refuse_trail BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
            "DROP TRIGGER refuse_trail;",
        ),
    };
    as_owner(&t, break_it).await;
    let res = get_self(&t, &id, &token, "refused-0001").await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["reason"], "trail_unavailable", "{body}");
    assert!(!body.to_string().contains("fail-closed"), "nothing of the profile: {body}");
    // gRPC says the same.
    let mut users = t.users().await;
    let get = usersvc::pb::GetUserRequest { users_id: id.clone() };
    let e = users.get_user(t.req(get.clone(), Some(&token))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);

    as_owner(&t, mend_it).await;
    let res = get_self(&t, &id, &token, "after-0001").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-request-id"], "after-0001");
    // The record of that read was committed before its reply left, with the
    // request id the reply showed; the refused one left none.
    let t = &t;
    let n = |rid: &str| {
        let sql = format!("SELECT count(*) FROM audit_events WHERE action = 'user.read' AND request_id = '{rid}'");
        async move { t.scalar(&sql).await }
    };
    assert_eq!(n("after-0001").await, 1);
    assert_eq!(n("before-0001").await, 1);
    assert_eq!(n("refused-0001").await, 0);
}
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Exports the latest checkpoint to a file, as an operator would.
async fn export_checkpoint(db: &str, dir: &std::path::Path, name: &str) -> (std::path::PathBuf, Value) {
    let out = common::cli(db, &["audit", "checkpoint"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &out.stdout).unwrap();
    (path, c)
}

async fn verify_against(db: &str, checkpoint: &std::path::Path) -> Output {
    common::cli(db, &["audit", "verify", "--checkpoint", checkpoint.to_str().unwrap()]).await
}

async fn activity(t: &TestApp, who: &str) {
    let (id, token) = t.sign_up(who).await;
    for i in 0..3 {
        assert_eq!(get_self(t, &id, &token, &format!("{who}-{i}")).await.status(), 200);
    }
}

#[tokio::test]
async fn a_checkpoint_kept_elsewhere_catches_a_rollback_and_a_cut_tail() {
    if common::postgres_server().is_none() {
        eprintln!("PostgreSQL run not made: set TEST_DATABASE_URL");
        return;
    }
    BACKEND
        .scope(Backend::Postgres, async {
            let dir = std::env::temp_dir().join(format!("usersvc-checkpoints-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            let db = common::fresh_database().await;
            let t = common::spawn_in(db.clone(), |_| {}).await;
            activity(&t, "before-dump").await;
            let (early, early_c) = export_checkpoint(&db, &dir, "early.json").await;

            // A dump, as a nightly backup would take.
            let dump = dir.join("dump.sql");
            let out = std::process::Command::new("pg_dump")
                .args(["--no-owner", "-f", dump.to_str().unwrap(), &db])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));

            activity(&t, "after-dump").await;
            let (late, late_c) = export_checkpoint(&db, &dir, "late.json").await;
            assert!(late_c["treeSize"].as_i64() > early_c["treeSize"].as_i64());
            drop(t);

            // Today's trail extends both exported checkpoints.
            for c in [&early, &late] {
                let out = verify_against(&db, c).await;
                assert!(out.status.success(), "{}", text(&out));
                assert!(text(&out).contains("the trail extends the exported checkpoint"), "{}", text(&out));
            }

            // The database restored from the dump: consistent in itself, and
            // `verify` alone cannot tell, but the later checkpoint can.
            let restored = common::fresh_database().await;
            let out = std::process::Command::new("psql")
                .args(["-q", "-v", "ON_ERROR_STOP=1", "-d", &restored, "-f", dump.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            let alone = common::cli(&restored, &["audit", "verify"]).await;
            assert!(alone.status.success(), "{}", text(&alone));
            let out = verify_against(&restored, &late).await;
            assert!(!out.status.success(), "a rolled-back database passes: {}", text(&out));
            assert!(text(&out).contains("rolled back or its tail cut"), "{}", text(&out));
            assert!(text(&out).contains(&format!("vouches for {} records", late_c["treeSize"])), "{}", text(&out));
            assert!(
                verify_against(&restored, &early).await.status.success(),
                "the earlier checkpoint still holds there"
            );

            // The live database's tail cut by someone with the owner's rights,
            // records and the checkpoints that covered them alike.
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db).await.unwrap();
            let cut = format!(
                "ALTER TABLE audit_events DISABLE TRIGGER USER; ALTER TABLE audit_checkpoints DISABLE TRIGGER USER;
                 DELETE FROM audit_events WHERE (xid, seq) > (
                     (SELECT last_xid FROM audit_checkpoints WHERE tree_size = {size})::text::xid8,
                     (SELECT last_seq FROM audit_checkpoints WHERE tree_size = {size}));
                 DELETE FROM audit_checkpoints WHERE tree_size > {size};
                 ALTER TABLE audit_events ENABLE TRIGGER USER; ALTER TABLE audit_checkpoints ENABLE TRIGGER USER;",
                size = early_c["treeSize"]
            );
            sqlx::raw_sql(&cut).execute(&mut conn).await.unwrap();
            assert!(common::cli(&db, &["audit", "verify"]).await.status.success(), "consistent in itself");
            let out = verify_against(&db, &late).await;
            assert!(!out.status.success(), "a cut tail passes: {}", text(&out));
            assert!(text(&out).contains("rolled back or its tail cut"), "{}", text(&out));
            let _ = std::fs::remove_dir_all(&dir);
        })
        .await;
}

both_stores! {
async fn forged_and_foreign_checkpoints_are_refused() {
    let dir = std::env::temp_dir().join(format!("usersvc-forged-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = common::fresh_database().await;
    let t = common::spawn_in(db.clone(), |_| {}).await;
    activity(&t, "forger").await;
    let (good, c) = export_checkpoint(&db, &dir, "good.json").await;
    assert!(verify_against(&db, &good).await.status.success());

    let altered = |change: &dyn Fn(&mut Value)| {
        let mut v = c.clone();
        change(&mut v);
        v
    };
    let size = c["treeSize"].as_i64().unwrap();
    let forgeries = [
        ("a larger tree", altered(&|v| v["treeSize"] = json!(size + 5))),
        ("a smaller tree", altered(&|v| v["treeSize"] = json!(size - 1))),
        ("another root", altered(&|v| v["rootHash"] = json!(base64_of(&[7u8; 32])))),
        ("another time", altered(&|v| v["timestamp"] = json!("2030-01-01T00:00:00.000000Z"))),
        ("a bad signature", altered(&|v| v["signature"] = json!(base64_of(&[1u8; 64])))),
        ("another log", altered(&|v| v["log"] = json!("someone-else/v1"))),
    ];
    for (what, forged) in forgeries {
        let path = dir.join("forged.json");
        std::fs::write(&path, forged.to_string()).unwrap();
        let out = verify_against(&db, &path).await;
        assert!(!out.status.success(), "{what} passes: {}", text(&out));
        assert!(text(&out).contains("the checkpoint file is refused"), "{what}: {}", text(&out));
    }
    for junk in ["", "{}", "not json", "[1,2]", &altered(&|v| v["extra"] = json!(1)).to_string()] {
        let path = dir.join("junk.json");
        std::fs::write(&path, junk).unwrap();
        let out = verify_against(&db, &path).await;
        assert!(!out.status.success() && text(&out).contains("refused"), "{junk:?}: {}", text(&out));
    }

    // Signed under another master key (another deployment's checkpoint):
    // refused, whatever it says.
    let other = usersvc::crypto::MasterKey::generate();
    let out = common::usersvc_awaited()
        .args(["audit", "verify", "--checkpoint", good.to_str().unwrap()])
        .env("DATABASE_URL", &db)
        .env("USERSVC_MASTER_KEY", secrecy::ExposeSecret::expose_secret(&other))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
