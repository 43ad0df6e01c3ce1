//! `kill -9` of serve in the middle of a read and write load: after a
//! restart on the same database, every acknowledged write is there as
//! acknowledged, the one in flight is all there or not at all, every read
//! answered 200 has its record (by the request id its reply showed), and
//! the trail covers every change and still verifies.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use pbjson_types::FieldMask;
use serde_json::json;
use sqlx::PgPool;
use tonic::Code;
use usersvc::pb;

use crate::cluster::PgCluster;
use crate::server::{Serve, create_app, long, req, usersvc};

#[derive(Debug, Default)]
struct User {
    id: String,
    token: String,
    /// extras keys written (value: the op number).
    extras: BTreeMap<String, i64>,
    groups: BTreeSet<usize>,
    updates: usize,
    adds: Vec<usize>,
    removes: Vec<usize>,
    deleted: bool,
    signed_out: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Create(String),
    Update(usize, String),
    Add(usize, usize),
    Remove(usize, usize),
    Delete(usize),
    SignOut(usize),
}

#[derive(Debug, Default)]
struct Worker {
    users: Vec<User>,
    /// The operation in flight when the process died: it may or may not
    /// have been applied, but wholly or not at all.
    pending: Option<Op>,
    acked: BTreeMap<&'static str, usize>,
    /// When the first failure came (it must be the kill).
    failed_at: Option<Instant>,
}

struct Ctx {
    /// Operations acknowledged so far, by every worker.
    acked: std::sync::atomic::AtomicUsize,
    s: Arc<Serve>,
    key: String,
    boss: String,
    groups: Vec<String>,
}

async fn run_worker(n: usize, c: Arc<Ctx>) -> Worker {
    let mut w = Worker::default();
    let mut users = c.s.users();
    let mut groups = c.s.groups();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut i: i64 = 0;
    loop {
        i += 1;
        let live: Vec<usize> = (0..w.users.len()).filter(|&u| !w.users[u].deleted).collect();
        let pick = |k: i64| live[(k as usize / 10) % live.len().max(1)];
        let op = match i % 10 {
            _ if live.is_empty() => Op::Create(format!("k{n}u{i}")),
            0 | 5 => Op::Create(format!("k{n}u{i}")),
            2 | 7 => Op::Add(pick(i), (i as usize) % 2),
            4 => {
                let u = pick(i);
                match w.users[u].groups.iter().next() {
                    Some(&g) => Op::Remove(u, g),
                    None => Op::Add(u, 0),
                }
            }
            9 if i % 20 == 9 => Op::Delete(pick(i)),
            9 if !w.users[pick(i)].signed_out => Op::SignOut(pick(i)),
            _ => Op::Update(pick(i), format!("k{i}")),
        };
        let boss = Some(c.boss.as_str());
        let id = |u: usize| w.users[u].id.clone();
        let result: Result<Option<(String, String)>, String> = match &op {
            Op::Create(name) => {
                let user = pb::User {
                    username: name.clone(),
                    password: "correct horse battery".into(),
                    email: Some(pb::Email { primary: format!("{name}@example.org"), ..Default::default() }),
                    ..Default::default()
                };
                users
                    .create_user(req(pb::CreateUserRequest { user: Some(user) }, &c.key, None))
                    .await
                    .map(|r| r.into_inner())
                    .map(|u| Some((u.users_id, u.session_token)))
                    .map_err(|e| format!("{:?} {}", e.code(), e.message()))
            }
            Op::Update(u, k) => {
                let user: pb::User = serde_json::from_value(json!({"extras": {k: i}})).unwrap();
                let mask = FieldMask { paths: vec![format!("extras.{k}")] };
                users
                    .update_user(req(
                        pb::UpdateUserRequest {
                            users_id: id(*u),
                            user: Some(user),
                            update_mask: Some(mask),
                            ..Default::default()
                        },
                        &c.key,
                        boss,
                    ))
                    .await
                    .map(|_| None)
                    .map_err(|e| format!("{:?} {}", e.code(), e.message()))
            }
            Op::Add(u, g) => groups
                .add_member(req(
                    pb::AddMemberRequest { groups_id: c.groups[*g].clone(), users_id: id(*u) },
                    &c.key,
                    boss,
                ))
                .await
                .map(|_| None)
                .map_err(|e| format!("{:?} {}", e.code(), e.message())),
            Op::Remove(u, g) => groups
                .remove_member(req(
                    pb::RemoveMemberRequest { groups_id: c.groups[*g].clone(), users_id: id(*u) },
                    &c.key,
                    boss,
                ))
                .await
                .map(|_| None)
                .map_err(|e| format!("{:?} {}", e.code(), e.message())),
            Op::Delete(u) => users
                .delete_user(req(pb::DeleteUserRequest { users_id: id(*u) }, &c.key, boss))
                .await
                .map(|_| None)
                .map_err(|e| format!("{:?} {}", e.code(), e.message())),
            Op::SignOut(u) => {
                // Over the JSON door: the gateway's sign-out.
                match http
                    .get(c.s.url("/v2/auth/signout"))
                    .header("X-Api-Key", &c.key)
                    .bearer_auth(&w.users[*u].token)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => Ok(None),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(format!("transport: {e}")),
                }
            }
        };
        let created = match result {
            Ok(created) => created,
            Err(e) => {
                eprintln!("worker {n}: {op:?} failed at the kill: {e}");
                w.failed_at = Some(Instant::now());
                w.pending = Some(op);
                return w;
            }
        };
        let kind = match &op {
            Op::Create(_) => {
                let (id, token) = created.unwrap();
                w.users.push(User { id, token, ..Default::default() });
                "create"
            }
            Op::Update(u, k) => {
                w.users[*u].extras.insert(k.clone(), i);
                w.users[*u].updates += 1;
                "update"
            }
            Op::Add(u, g) => {
                w.users[*u].groups.insert(*g);
                w.users[*u].adds.push(*g);
                "member_add"
            }
            Op::Remove(u, g) => {
                w.users[*u].groups.remove(g);
                w.users[*u].removes.push(*g);
                "member_remove"
            }
            Op::Delete(u) => {
                w.users[*u].deleted = true;
                "delete"
            }
            Op::SignOut(u) => {
                w.users[*u].signed_out = true;
                "sign_out"
            }
        };
        *w.acked.entry(kind).or_default() += 1;
        c.acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Reads the boss's record over HTTP until the kill; the request ids of
/// the reads answered 200, and when the first failure came.
async fn run_reader(n: usize, c: Arc<Ctx>, boss_id: String) -> (Vec<String>, Option<Instant>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut answered = Vec::new();
    for i in 0.. {
        let rid = format!("kill9-read-{n}-{i}");
        let res = http
            .get(c.s.url(&format!("/v2/users/{boss_id}")))
            .header("X-Api-Key", &c.key)
            .bearer_auth(&c.boss)
            .header("x-request-id", &rid)
            .send()
            .await;
        match res {
            Ok(r) if r.status() == 200 => {
                // The body too: a reply counts once it has been received.
                if r.bytes().await.is_ok() {
                    answered.push(rid);
                } else {
                    break;
                }
            }
            Ok(r) => {
                eprintln!("reader {n}: HTTP {} at the kill", r.status());
                break;
            }
            Err(_) => break,
        }
    }
    (answered, Some(Instant::now()))
}

async fn count(pool: &PgPool, sql: &str, id: uuid::Uuid) -> i64 {
    sqlx::query_scalar(sql).bind(id).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_write_load_loses_no_acknowledged_write() {
    let Some(pg) = PgCluster::start() else { return };
    let db = pg.url("usersvc");
    let serve = Arc::new(Serve::start(&db, &["--db-max-connections", "8"]).await);
    let (app_id, key) = create_app(&db);
    let app_uuid = uuid::Uuid::parse_str(&app_id).unwrap();

    // A supervisor who manages groups and the other users.
    let boss_user = serve.sign_up(&key, "boss").await;
    let boss = boss_user.session_token.clone();
    let out = usersvc()
        .args(["supervisor", "add", "--app", &app_id, "--username", "boss", "--database-url", &db])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut groups = Vec::new();
    for name in ["ward-a", "ward-b"] {
        let g = serve
            .groups()
            .create_group(req(
                pb::CreateGroupRequest { group: Some(pb::Group { name: name.into(), ..Default::default() }) },
                &key,
                Some(&boss),
            ))
            .await
            .unwrap()
            .into_inner();
        groups.push(g.groups_id);
    }

    let c = Arc::new(Ctx {
        acked: Default::default(),
        s: serve.clone(),
        key: key.clone(),
        boss: boss.clone(),
        groups: groups.clone(),
    });
    let workers: Vec<_> = (0..4).map(|n| tokio::spawn(run_worker(n, c.clone()))).collect();
    let readers: Vec<_> = (0..4).map(|n| tokio::spawn(run_reader(n, c.clone(), boss_user.users_id.clone()))).collect();
    // Killed once enough has been acknowledged (however busy the machine).
    let target = if long() { 400 } else { 60 };
    let loading = Instant::now();
    while c.acked.load(std::sync::atomic::Ordering::Relaxed) < target && loading.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = Instant::now();
    serve.kill9();
    let mut all = Vec::new();
    for w in workers {
        all.push(w.await.unwrap());
    }
    let mut reads = Vec::new();
    for r in readers {
        let (answered, failed_at) = r.await.unwrap();
        assert!(failed_at.is_some_and(|t| t >= killed_at), "a reader failed before the kill");
        reads.extend(answered);
    }
    serve.restart().await;

    let pool = pg.connect("usersvc").await;
    let mut users = serve.users();
    let (mut checked, mut found) = (0usize, 0usize);
    let mut check = |ok: bool, what: String| {
        checked += 1;
        if ok {
            found += 1;
        } else {
            eprintln!("MISSING: {what}");
        }
    };
    for w in &all {
        assert!(w.failed_at.is_some_and(|t| t >= killed_at), "a worker failed before the kill: {:?}", w.pending);
        for (u, user) in w.users.iter().enumerate() {
            let uid = uuid::Uuid::parse_str(&user.id).unwrap();
            let touched = |op: &Op| w.pending.as_ref() == Some(op);
            let rows = count(&pool, "SELECT count(*) FROM users WHERE id = $1", uid).await;
            let creates =
                count(&pool, "SELECT count(*) FROM audit_events WHERE action = 'user.create' AND subject_id = $1", uid)
                    .await;
            check(creates == 1, format!("user.create trail of {uid}"));
            if user.deleted || (touched(&Op::Delete(u)) && rows == 0) {
                check(rows == 0, format!("{uid} deleted"));
                for table in ["sessions", "memberships", "outbox"] {
                    let left = count(&pool, &format!("SELECT count(*) FROM {table} WHERE user_id = $1"), uid).await;
                    check(left == 0, format!("no {table} rows of deleted {uid}"));
                }
                if user.deleted {
                    let trail = count(
                        &pool,
                        "SELECT count(*) FROM audit_events WHERE action = 'user.delete' AND subject_id = $1",
                        uid,
                    )
                    .await;
                    check(trail == 1, format!("user.delete trail of {uid}"));
                }
                continue;
            }
            check(rows == 1, format!("{uid} present"));
            let got = users.get_user(req(pb::GetUserRequest { users_id: user.id.clone() }, &key, Some(&boss))).await;
            let extras = got.map(|r| serde_json::to_value(r.into_inner()).unwrap()["extras"].clone());
            let extras = extras.unwrap_or_else(|e| panic!("{uid} unreadable after the restart: {e:?}"));
            for (k, v) in &user.extras {
                // A protobuf Value's number is a double.
                check(extras[k].as_f64() == Some(*v as f64), format!("extras.{k} of {uid}: {}", extras[k]));
            }
            for k in extras.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                let expected = user.extras.contains_key(&k) || touched(&Op::Update(u, k.clone()));
                check(expected, format!("extras.{k} of {uid} was never acknowledged"));
            }
            let updates =
                count(&pool, "SELECT count(*) FROM audit_events WHERE action = 'user.update' AND subject_id = $1", uid)
                    .await;
            check(updates as usize >= user.updates, format!("{} user.update trail records of {uid}", user.updates));
            let member_of: BTreeSet<usize> =
                sqlx::query_scalar::<_, uuid::Uuid>("SELECT group_id FROM memberships WHERE user_id = $1")
                    .bind(uid)
                    .fetch_all(&pool)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|g| groups.iter().position(|x| *x == g.to_string()).unwrap())
                    .collect();
            for g in 0..groups.len() {
                if touched(&Op::Add(u, g)) || touched(&Op::Remove(u, g)) {
                    continue;
                }
                check(member_of.contains(&g) == user.groups.contains(&g), format!("membership of {uid} in {g}"));
            }
            for (action, list) in [("group.member_add", &user.adds), ("group.member_remove", &user.removes)] {
                for (g, group) in groups.iter().enumerate() {
                    let want = list.iter().filter(|x| **x == g).count() as i64;
                    let gid = uuid::Uuid::parse_str(group).unwrap();
                    let have: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM audit_events WHERE action = $1 AND subject_id = $2 AND object_id = $3",
                    )
                    .bind(action)
                    .bind(uid)
                    .bind(gid)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    check(have >= want, format!("{want} {action} trail records of {uid} in {g}"));
                }
            }
            if !touched(&Op::SignOut(u)) {
                let own = users
                    .get_user(req(pb::GetUserRequest { users_id: user.id.clone() }, &key, Some(&user.token)))
                    .await;
                let code = own.err().map(|e| e.code());
                if user.signed_out {
                    check(code == Some(Code::Unauthenticated), format!("{uid}'s signed-out session is gone"));
                    let trail = count(
                        &pool,
                        "SELECT count(*) FROM audit_events WHERE action = 'session.sign_out' AND subject_id = $1",
                        uid,
                    )
                    .await;
                    check(trail >= 1, format!("session.sign_out trail of {uid}"));
                } else {
                    check(code.is_none(), format!("{uid}'s session still works"));
                }
            }
        }
    }

    // Every read answered 200 was recorded before its reply left.
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT request_id) FROM audit_events WHERE action = 'user.read' AND request_id = ANY($1)",
    )
    .bind(&reads)
    .fetch_one(&pool)
    .await
    .unwrap();
    eprintln!("FIGURES kill -9 reads: {} answered 200, {recorded} recorded", reads.len());
    assert!(!reads.is_empty(), "reads were answered before the kill");
    assert_eq!(recorded as usize, reads.len(), "every read answered 200 has its record");

    // Nothing half-applied anywhere in the application.
    let orphans = [
        "SELECT count(*) FROM sessions s WHERE s.app_id = $1 AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = s.user_id)",
        "SELECT count(*) FROM memberships m WHERE m.app_id = $1 AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = m.user_id)",
        "SELECT count(*) FROM users u WHERE u.app_id = $1 AND length(u.profile_ct) = 0",
        "SELECT count(*) FROM users u WHERE u.app_id = $1 AND NOT EXISTS
             (SELECT 1 FROM audit_events a WHERE a.action = 'user.create' AND a.subject_id = u.id)",
        "SELECT count(*) FROM memberships m WHERE m.app_id = $1 AND NOT EXISTS
             (SELECT 1 FROM audit_events a WHERE a.action = 'group.member_add' AND a.subject_id = m.user_id
                                              AND a.object_id = m.group_id)",
    ];
    for sql in orphans {
        let n = count(&pool, sql, app_uuid).await;
        assert_eq!(n, 0, "{sql}");
    }
    let verify = usersvc().args(["audit", "verify", "--database-url", &db]).output().unwrap();
    assert!(
        verify.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    serve.assert_no_panic();

    let mut acked: BTreeMap<&str, usize> = BTreeMap::new();
    for w in &all {
        for (k, v) in &w.acked {
            *acked.entry(k).or_default() += v;
        }
    }
    let pending: Vec<_> = all.iter().filter_map(|w| w.pending.clone()).collect();
    eprintln!(
        "FIGURES kill -9: acknowledged {acked:?}; in flight at the kill {pending:?}; checks {checked}, passed {found}; \
         audit verify ok"
    );
    assert!(acked.values().sum::<usize>() >= target, "enough load to mean something");
    assert_eq!(found, checked, "every acknowledged write is present as acknowledged");
}
