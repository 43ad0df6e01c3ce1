//! PII safeguards: encryption at rest, the tamper-evident trail, throttling
//! and session control.

use std::time::Duration;

use pbjson_types::FieldMask;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tonic::Code;
use usersvc::{admin::Admin, app::Application, crypto::MasterKey, pb, store::AuditFilter};

use crate::common::{self, TestApp, spawn};

/// A user whose every field is distinctive, so that any of it would be
/// found in a dump.
fn distinctive(tag: &str) -> pb::User {
    pb::User {
        username: format!("user-{tag}"),
        password: format!("password-{tag}"),
        email: Some(pb::Email { primary: format!("mail-{tag}@example.org"), ..Default::default() }),
        name: Some(pb::Name {
            first_name: format!("First{tag}"),
            last_name: format!("Last{tag}"),
            ..Default::default()
        }),
        ssn: format!("ssn{tag}"),
        dob: "1970-01-02".into(),
        addresses: vec![pb::Address { city: format!("City{tag}"), ..Default::default() }],
        extras: Some(serde_json::from_value(json!({"note": format!("extra{tag}")})).unwrap()),
        ..Default::default()
    }
}

async fn create(t: &TestApp, user: pb::User) -> pb::User {
    t.users().await.create_user(t.req(pb::CreateUserRequest { user: Some(user) }, None)).await.unwrap().into_inner()
}

both_stores! {
async fn no_pii_in_any_table_or_dump() {
    let t = spawn().await;
    let tag = format!("Zq{}", uuid::Uuid::new_v4().simple());
    let created = create(&t, distinctive(&tag)).await;
    let token = created.session_token.clone();
    let mut users = t.users().await;
    // Read it, change it, ask for a reminder: every path that stores anything.
    users.get_user(t.req(pb::GetUserRequest { users_id: created.users_id.clone() }, Some(&token))).await.unwrap();
    let patch = pb::User { gender: format!("Gender{tag}"), ..Default::default() };
    users
        .update_user(t.req(
            pb::UpdateUserRequest {
                users_id: created.users_id.clone(),
                user: Some(patch),
                update_mask: Some(FieldMask { paths: vec!["gender".into()] }),
                ..Default::default()
            },
            Some(&token),
        ))
        .await
        .unwrap();
    users
        .forgot_username(t.req(pb::ForgotUsernameRequest { email: format!("mail-{tag}@example.org") }, None))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // pg_dump of the database, or the SQLite file itself: every table,
    // index and journal.
    let needles = [tag.clone(), tag.to_lowercase(), "127.0.0.1".to_owned()];
    let dump = t.dump().await;
    assert!(dump.contains("profile_ct"), "the dump has the users table");
    for n in &needles {
        assert!(!dump.contains(n.as_str()), "the database shows {n} in the clear");
    }
}
}

both_stores! {
async fn a_ciphertext_moved_to_another_row_does_not_open() {
    let t = spawn().await;
    let (_, sup) = t.supervisor("mover").await;
    let a = create(&t, distinctive("a")).await;
    let b = create(&t, distinctive("b")).await;
    assert!(
        t.exec2(
            "UPDATE users SET profile_ct = (SELECT profile_ct FROM users WHERE id = $1) WHERE id = $2",
            a.users_id.parse().unwrap(),
            b.users_id.parse().unwrap(),
        )
        .await
    );
    let mut users = t.users().await;
    let e = users.get_user(t.req(pb::GetUserRequest { users_id: b.users_id.clone() }, Some(&sup))).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    assert!(!e.message().contains("Firsta"), "nothing of the other row leaks");
    let got =
        users.get_user(t.req(pb::GetUserRequest { users_id: a.users_id }, Some(&sup))).await.unwrap().into_inner();
    assert_eq!(got.name.unwrap().first_name, "Firsta");
}
}

both_stores! {
async fn application_key_rotation_under_load_loses_nothing() {
    let t = spawn().await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let u = create(&t, distinctive(&format!("rot{i}"))).await;
        ids.push((u.users_id, u.session_token));
    }
    // Readers and writers run while the key changes under them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for (n, (id, token)) in ids.iter().take(6).cloned().enumerate() {
        let mut users = t.users().await;
        let req_key = t.api_key.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut last = String::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let value = format!("w{n}-{i}");
                let req = pb::UpdateUserRequest {
                    users_id: id.clone(),
                    user: Some(pb::User { race: value.clone(), ..Default::default() }),
                    update_mask: Some(FieldMask { paths: vec!["race".into()] }),
                    ..Default::default()
                };
                users
                    .update_user(common::with_auth(req, Some(&req_key), Some(&token)))
                    .await
                    .expect("update during rotation");
                last = value;
                let got = users
                    .get_user(common::with_auth(
                        pb::GetUserRequest { users_id: id.clone() },
                        Some(&req_key),
                        Some(&token),
                    ))
                    .await
                    .expect("read during rotation")
                    .into_inner();
                assert_eq!(got.race, last);
            }
            (id, last)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let admin = common::admin(&t.app);
    let resealed = admin.rotate_app(t.app_id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut users = t.users().await;
    for w in workers {
        let (id, last) = w.await.unwrap();
        let token = &ids.iter().find(|(i, _)| *i == id).unwrap().1;
        let got =
            users.get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(token))).await.unwrap().into_inner();
        assert_eq!(got.race, last, "the last acknowledged write is there");
    }
    assert!(resealed.users >= 20, "{resealed:?}");
    let old =
        t.count_app("SELECT count(*) FROM users u JOIN app_keys k ON k.id = u.key_id WHERE u.app_id = $1 AND NOT k.current").await;
    assert_eq!(old, 0, "every user is under the new key");
    for (i, (id, token)) in ids.iter().enumerate() {
        let got =
            users.get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(token))).await.unwrap().into_inner();
        assert_eq!(got.ssn, format!("ssnrot{i}"));
    }
}
}

both_stores! {
async fn sign_ups_after_a_rotation_elsewhere_are_under_the_new_key() {
    // The service remembers the current key for a moment; a rotation made
    // by another process (here the admin tool) must not leave new users
    // under the old one, nor fail them.
    let t = spawn().await;
    let first = create(&t, distinctive("before")).await;
    let resealed = common::admin(&t.app).rotate_app(t.app_id).await.unwrap();
    assert_eq!(resealed.users, 1);
    let mut after = Vec::new();
    for i in 0..3 {
        after.push(create(&t, distinctive(&format!("after{i}"))).await);
    }
    let old =
        t.count_app("SELECT count(*) FROM users u JOIN app_keys k ON k.id = u.key_id WHERE u.app_id = $1 AND NOT k.current").await;
    assert_eq!(old, 0, "every user is under the new key");
    let mut users = t.users().await;
    for (u, tag) in [(&first, "before"), (&after[0], "after0"), (&after[2], "after2")] {
        let got = users
            .get_user(t.req(pb::GetUserRequest { users_id: u.users_id.clone() }, Some(&u.session_token)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.ssn, format!("ssn{tag}"));
    }
    // And one trail record per sign-up: none for the write the rotation refused.
    let creates = t.count_app("SELECT count(*) FROM audit_events WHERE app_id = $1 AND action = 'user.create'").await;
    assert_eq!(creates, 4);
}
}

both_stores! {
async fn master_key_rotation_rewraps_and_the_old_key_stops_working() {
    let db = common::fresh_database().await;
    let old_key = MasterKey::generate();
    let new_key = MasterKey::generate();
    let start = |key: &SecretString| {
        let mut args = common::serve_args(db.clone());
        args.keys.master_key = Some(key.clone());
        async move { Application::start(&args).await.unwrap() }
    };
    let app = start(&old_key).await;
    let admin = Admin::new(app.store.clone(), MasterKey::parse(old_key.expose_secret()).unwrap());
    let (created, api_key) = admin.create_app("rotating").await.unwrap();
    let t =
        TestApp {
            app,
            app_id: created.id,
            api_key: api_key.expose_secret().to_owned(),
            http: reqwest::Client::new(),
            db_url: db.clone(),
        };
    let user = create(&t, distinctive("mk")).await;
    // A checkpoint signed under the old master key, kept elsewhere.
    let exported = admin.checkpoint().await.unwrap();
    let new_master = MasterKey::parse(new_key.expose_secret()).unwrap();
    assert_eq!(admin.rotate_master(&new_master).await.unwrap(), 2);
    t.app.abort();

    // Restarted with the new key, everything reads.
    let t = TestApp {
        app: start(&new_key).await,
        app_id: t.app_id,
        api_key: t.api_key.clone(),
        http: t.http.clone(),
        db_url: db.clone(),
    };
    let got = t
        .users()
        .await
        .get_user(t.req(pb::GetUserRequest { users_id: user.users_id.clone() }, Some(&user.session_token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.ssn, "ssnmk");
    // The trail's checkpoints from before the rotation, and the exported
    // one, still verify under the new key (it vouched for the old one); under
    // an unrelated key they do not.
    let after = Admin::new(t.app.store.clone(), MasterKey::parse(new_key.expose_secret()).unwrap());
    let report = after.verify_trail(Some(&exported)).await.unwrap();
    assert!(report.as_ref().is_ok_and(|r| r.checkpoints >= 2), "{report:?}");
    let stranger = Admin::new(t.app.store.clone(), MasterKey::parse(MasterKey::generate().expose_secret()).unwrap());
    assert!(stranger.verify_trail(Some(&exported)).await.unwrap().is_err());
    assert!(stranger.checkpoint().await.is_err(), "a stranger's key does not sign the log");
    assert!(after.verify_trail(None).await.unwrap().is_ok(), "nor did its verify: the log is as it was");
    // With the old one, the keys no longer open.
    let t = TestApp {
        app: start(&old_key).await,
        app_id: t.app_id,
        api_key: t.api_key.clone(),
        http: t.http.clone(),
        db_url: db.clone(),
    };
    let e = t
        .users()
        .await
        .get_user(t.req(pb::GetUserRequest { users_id: user.users_id }, Some(&user.session_token)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal);
}
}

both_stores! {
async fn serve_needs_a_master_key_on_postgres_and_makes_one_on_sqlite() {
    let db = common::database_url().await;
    let mut args = common::serve_args(db.clone());
    args.keys.master_key = None;
    match common::backend() {
        common::Backend::Postgres => {
            let err = Application::start(&args).await.err().expect("refused").to_string();
            assert!(err.contains("usersvc keys generate"), "{err}");
        }
        common::Backend::Sqlite => {
            // The first start makes master.key beside the database, readable
            // by its owner only; the next start reads the same key.
            let app = Application::start(&args).await.unwrap();
            let (app_id, api_key) = common::new_application_keyed(&app, None).await;
            let t = TestApp { app, app_id, api_key, http: reqwest::Client::new(), db_url: db.clone() };
            let (id, token) = t.sign_up("keyed").await;
            t.app.abort();
            let dir = usersvc::store::backend::sqlite_dir(&db).unwrap();
            let meta = std::fs::metadata(dir.join("master.key")).unwrap();
            #[cfg(unix)]
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
            let again = Application::start(&args).await.unwrap();
            let t = TestApp { app: again, app_id: t.app_id, api_key: t.api_key.clone(), http: t.http.clone(), db_url: db };
            let got = t.users().await.get_user(t.req(pb::GetUserRequest { users_id: id }, Some(&token))).await.unwrap();
            assert_eq!(got.into_inner().active, Some(true), "the user and their session outlived the restart");
            let master = usersvc::config::KeyArgs { master_key_file: None, master_key: None }.load_for(&t.db_url).unwrap();
            let trail = Admin::new(t.app.store.clone(), master).verify_trail(None).await.unwrap();
            assert!(trail.as_ref().is_ok_and(|r| r.records >= 3), "the trail outlived it too: {trail:?}");
        }
    }
    args.keys.master_key = Some(SecretString::from("too short".to_owned()));
    assert!(Application::start(&args).await.is_err());
}
}

async fn trail_of(t: &TestApp, subject: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let filter = AuditFilter { subject_id: Some(subject.parse().unwrap()), ..Default::default() };
    common::admin(&t.app).list_trail(filter, &mut out).await.unwrap();
    String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

both_stores! {
async fn the_trail_records_each_access_by_field_name_only() {
    let t = spawn().await;
    let (_, sup) = t.supervisor("auditor").await;
    let created = create(&t, distinctive("trail")).await;
    let id = created.users_id.clone();
    let mut users = t.users().await;
    users.get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(&sup))).await.unwrap();
    let patch = pb::User {
        name: Some(pb::Name { last_name: "SecretSurname".into(), ..Default::default() }),
        ..Default::default()
    };
    users
        .update_user(t.req(
            pb::UpdateUserRequest {
                users_id: id.clone(),
                user: Some(patch),
                update_mask: Some(FieldMask { paths: vec!["name.last_name".into()] }),
                ..Default::default()
            },
            Some(&created.session_token),
        ))
        .await
        .unwrap();
    let bad = pb::SignInRequest { username: "user-trail".into(), password: "not it at all".into() };
    users.sign_in(t.req(bad, None)).await.unwrap_err();
    let (other, other_token) = t.sign_up("nosy").await;
    users.get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(&other_token))).await.unwrap_err();
    users.delete_user(t.req(pb::DeleteUserRequest { users_id: id.clone() }, Some(&sup))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let trail = trail_of(&t, &id).await;
    let text = serde_json::to_string(&trail).unwrap();
    assert!(!text.contains("SecretSurname") && !text.contains("Firsttrail"), "no values in the trail");
    let find = |action: &str, outcome: &str| {
        trail
            .iter()
            .find(|r| r["action"] == action && r["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {action}/{outcome} in {text}"))
            .clone()
    };
    let c = find("user.create", "ok");
    assert_eq!(c["actor"], "anonymous");
    assert!(c["fields"].as_array().unwrap().contains(&json!("ssn")));
    assert!(c["clientAddr"].as_str().is_some_and(|a| a.starts_with("127.")), "{c}");
    // The supervisor's read (the update's reply is recorded as a read too,
    // by the user, in the update's own transaction).
    let r = trail
        .iter()
        .find(|r| r["action"] == "user.read" && r["outcome"] == "ok" && r["actor"] == "supervisor")
        .unwrap_or_else(|| panic!("no supervisor's read in {text}"));
    assert!(r["fields"].as_array().unwrap().contains(&json!("name")));
    let u = find("user.update", "ok");
    assert_eq!(u["fields"], json!(["name"]));
    assert_eq!(u["actorId"], id.as_str());
    assert_eq!(find("session.sign_in", "failed")["actor"], "anonymous");
    find("session.sign_in", "ok");
    assert_eq!(find("user.read", "denied")["actorId"], other.as_str());
    find("user.delete", "ok");
}
}

both_stores! {
async fn audit_verify_finds_the_altered_record() {
    let db = common::fresh_database().await;
    let mut args = common::serve_args(db.clone());
    args.keys.master_key = Some(SecretString::from(common::master_key().to_owned()));
    let app = Application::start(&args).await.unwrap();
    let (app_id, api_key) = common::new_application(&app).await;
    let t = TestApp { app, app_id, api_key, http: reqwest::Client::new(), db_url: db.clone() };
    for i in 0..3 {
        t.sign_up(&format!("chain{i}")).await;
    }
    // Sealed: every record so far is under a signed checkpoint.
    let out = common::cli(&db, &["audit", "verify"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let n = common::audit_verified(&db).await.expect("the trail is whole");
    assert!(text.contains(&format!("covering {n} records")), "{text}");

    // The table refuses changes...
    let seq = t.scalar("SELECT seq FROM audit_events ORDER BY seq LIMIT 1 OFFSET 2").await;
    assert!(!t.exec_int("UPDATE audit_events SET outcome = 'ok' WHERE seq = $1", seq).await);
    assert!(!t.exec_int("DELETE FROM audit_events WHERE seq = $1", seq).await);
    // ...but a superuser who gets around the trigger can: the signed
    // checkpoint that covers it (and on SQLite the chain) shows it.
    t.tamper_with_trail(seq).await;
    let text = common::audit_verified(&db).await.expect_err("the tree shows the change");
    assert!(text.contains("altered"), "{text}");
    if common::backend() == common::Backend::Sqlite {
        assert!(text.contains(&format!("record {seq} ")), "the chain names the record: {text}");
    }
}
}

both_stores! {
async fn sign_in_is_throttled_per_username_over_http() {
    let t = spawn().await;
    t.sign_up("guarded").await;
    let sign_in = |pw: &'static str| {
        t.http
            .post(t.url("/v2/auth/signin"))
            .header("X-Api-Key", &t.api_key)
            .header("Content-Type", "application/json")
            .body(json!({"username": "guarded", "password": pw}).to_string())
            .send()
    };
    for _ in 0..5 {
        assert_eq!(sign_in("wrong password").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    // Now even the right password waits.
    let res = sign_in("correct horse battery").await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], 429);
    assert_eq!(body["errors"][0]["reason"], "throttled");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(sign_in("correct horse battery").await.unwrap().status(), StatusCode::OK);
    // Success clears the count: one more failure does not block.
    assert_eq!(sign_in("wrong password").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(sign_in("correct horse battery").await.unwrap().status(), StatusCode::OK);

    // The waits grow: 1 s, then 2 s.
    for _ in 0..6 {
        sign_in("wrong password").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let res = sign_in("correct horse battery").await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait >= 1, "{wait}");
}
}

both_stores! {
async fn users_see_and_end_their_sessions() {
    let t = spawn().await;
    let (id, first) = t.sign_up("sessions").await;
    let mut users = t.users().await;
    let second = users
        .sign_in(
            t.req(pb::SignInRequest { username: "sessions".into(), password: "correct horse battery".into() }, None),
        )
        .await
        .unwrap()
        .into_inner()
        .session_token;
    let list = |token: String| {
        let t = &t;
        async move {
            let res = t
                .http
                .get(t.url("/v2/auth/sessions"))
                .header("X-Api-Key", &t.api_key)
                .header("Authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            res.json::<Vec<Value>>().await.unwrap()
        }
    };
    let sessions = list(first.clone()).await;
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    let other = sessions.iter().find(|s| s["current"] != true).unwrap()["sessionId"].as_str().unwrap().to_owned();
    let res = t
        .http
        .delete(t.url(&format!("/v2/auth/sessions/{other}")))
        .header("X-Api-Key", &t.api_key)
        .header("Authorization", format!("Bearer {first}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let e = users.get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(&second))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(list(first.clone()).await.len(), 1);

    // Someone else's session is not there for a user; a supervisor ends all.
    let (_, nosy) = t.sign_up("nosy2").await;
    let mine = list(first.clone()).await[0]["sessionId"].as_str().unwrap().to_owned();
    let e = users
        .revoke_session(t.req(pb::RevokeSessionRequest { session_id: mine, users_id: String::new() }, Some(&nosy)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let (_, sup) = t.supervisor("sessionboss").await;
    users
        .revoke_session(t.req(pb::RevokeSessionRequest { session_id: String::new(), users_id: id.clone() }, Some(&sup)))
        .await
        .unwrap();
    let e = users.get_user(t.req(pb::GetUserRequest { users_id: id }, Some(&first))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}
}

/// A sign-in over HTTP, sent from its own task (to race others).
fn sign_in_task(t: &TestApp, username: &str, password: &str) -> tokio::task::JoinHandle<StatusCode> {
    let (http, url, key) = (t.http.clone(), t.url("/v2/auth/signin"), t.api_key.clone());
    let body = json!({"username": username, "password": password}).to_string();
    tokio::spawn(async move {
        http.post(url)
            .header("X-Api-Key", key)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    })
}

both_stores! {
async fn parallel_guesses_cannot_slip_past_the_count() {
    let t = spawn().await;
    t.sign_up("hammered").await;
    let mut tasks = Vec::new();
    for _ in 0..30 {
        tasks.push(sign_in_task(&t, "hammered", "a wrong guess"));
    }
    let mut checked = 0;
    let mut throttled = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => throttled += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(checked <= 5, "{checked} guesses were checked");
    assert_eq!(checked + throttled, 30);
}
}

both_stores! {
async fn sign_ins_racing_each_other_all_succeed() {
    // A success forgets the username's count and takes one off the
    // address's while other attempts of the same name from the same address
    // are counting theirs: neither side may wait on the other (a deadlock
    // is broken by failing one of them).
    let t = spawn().await;
    t.sign_up("doubleclick").await;
    for _ in 0..4 {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            tasks.push(sign_in_task(&t, "doubleclick", "correct horse battery"));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), StatusCode::OK);
        }
    }
}
}

both_stores! {
async fn a_forwarded_address_is_believed_only_from_a_trusted_gateway() {
    let t = spawn().await;
    let mut req = t.req(
        pb::CreateUserRequest {
            user: Some(pb::User { username: "spoofer".into(), password: "long enough".into(), ..Default::default() }),
        },
        None,
    );
    req.metadata_mut().insert("x-client-addr", "203.0.113.9".parse().unwrap());
    let id = t.users().await.create_user(req).await.unwrap().into_inner().users_id;
    let trail = trail_of(&t, &id).await;
    let created = trail.iter().find(|r| r["action"] == "user.create").unwrap();
    assert_eq!(created["clientAddr"], "127.0.0.1", "the peer's own address, not the claim");
}
}

both_stores! {
async fn every_disclosure_is_recorded_with_the_fields_it_carries() {
    let t = spawn().await;
    let (_, sup) = t.supervisor("disclosure.sup").await;
    let (id, _) = t.sign_up("disclosed").await;
    let mut users = t.users().await;
    let mut groups = t.groups().await;

    // Sign-in: its reply carries the profile, and its record names the fields.
    let signin = pb::SignInRequest { username: "disclosed".into(), password: "correct horse battery".into() };
    let token = users.sign_in(t.req(signin, None)).await.unwrap().into_inner().session_token;
    // An update's reply carries the whole profile, not only the change.
    let patch = pb::User { dob: "1990-01-02".into(), ..Default::default() };
    let mask = FieldMask { paths: vec!["dob".into()] };
    let req = pb::UpdateUserRequest { users_id: id.clone(), user: Some(patch), update_mask: Some(mask), ..Default::default() };
    users.update_user(t.req(req, Some(&token))).await.unwrap();
    // Memberships and sessions.
    users.list_user_groups(t.req(pb::ListUserGroupsRequest { users_id: id.clone(), ..Default::default() }, Some(&token))).await.unwrap();
    users.list_sessions(t.req(pb::ListSessionsRequest { users_id: id.clone(), ..Default::default() }, Some(&token))).await.unwrap();
    let group = pb::Group { name: "ward 7".into(), ..Default::default() };
    let g = groups.create_group(t.req(pb::CreateGroupRequest { group: Some(group) }, Some(&sup))).await.unwrap();
    let groups_id = g.into_inner().groups_id;
    let add = pb::AddMemberRequest { groups_id: groups_id.clone(), users_id: id.clone() };
    groups.add_member(t.req(add, Some(&sup))).await.unwrap();
    groups.list_members(t.req(pb::ListMembersRequest { groups_id: groups_id.clone(), ..Default::default() }, Some(&sup))).await.unwrap();
    // A reminder for an address nobody has is recorded too (and answered alike).
    let forgot = pb::ForgotUsernameRequest { email: format!("nobody-{}@example.com", uuid::Uuid::new_v4().simple()) };
    users.forgot_username(t.req(forgot, None)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let trail = trail_of(&t, &id).await;
    let text = serde_json::to_string(&trail).unwrap();
    let find = |action: &str| {
        trail.iter().find(|r| r["action"] == action).unwrap_or_else(|| panic!("no {action} in {text}")).clone()
    };
    let names = |r: &Value| r["fields"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_owned()).collect::<Vec<_>>();
    let signed_in = trail.iter().rfind(|r| r["action"] == "session.sign_in" && r["actor"] == "user").unwrap();
    assert!(names(signed_in).contains(&"email".to_owned()), "the sign-in reply's fields: {signed_in}");
    let update = find("user.update");
    assert_eq!(names(&update), ["dob"], "what changed");
    let read = trail
        .iter()
        .find(|r| r["action"] == "user.read" && r["requestId"] == update["requestId"])
        .unwrap_or_else(|| panic!("the update's reply is recorded as a read: {text}"));
    assert!(names(read).contains(&"dob".to_owned()) && names(read).contains(&"email".to_owned()), "{read}");
    assert_eq!(names(&find("user.groups_read")), ["groups"]);
    assert_eq!(names(&find("session.list")), ["sessions"]);
    let members = find("group.members_read");
    assert_eq!((members["objectId"].as_str(), members["actor"].as_str()), (Some(groups_id.as_str()), Some("supervisor")));

    // The unmatched reminder, by application.
    let mut out = Vec::new();
    let filter = AuditFilter { app_id: Some(t.app_id), ..Default::default() };
    common::admin(&t.app).list_trail(filter, &mut out).await.unwrap();
    let all: Vec<Value> = String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        all.iter().any(|r| r["action"] == "user.forgot_username" && r["subjectId"].is_null()),
        "a reminder that matched nobody is recorded"
    );
    // Listing the trail is itself recorded, by the operator, with its filter.
    let listed = all.iter().filter(|r| r["action"] == "audit.list").collect::<Vec<_>>();
    assert!(listed.iter().any(|r| r["subjectId"].is_null() && r["actor"] == "cli"), "{listed:?}");
    let again = trail_of(&t, &id).await;
    assert!(
        again.iter().any(|r| r["action"] == "audit.list" && r["actor"] == "cli"),
        "the first listing, of this user, is in the user's trail"
    );
}
}

both_stores! {
async fn a_user_lists_who_accessed_their_record_page_by_page() {
    let t = spawn().await;
    let (_, sup) = t.supervisor("accounting.sup").await;
    let created = create(&t, distinctive("acct")).await;
    let (id, token) = (created.users_id.clone(), created.session_token.clone());
    let (_, nosy) = t.sign_up("accounting.nosy").await;
    let mut users = t.users().await;
    for _ in 0..3 {
        users.get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(&sup))).await.unwrap();
    }
    users.get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(&nosy))).await.unwrap_err();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let list = |query: String, bearer: String| {
        let req = t
            .http
            .get(t.url(&format!("/v2/users/{id}/disclosures{query}")))
            .header("X-Api-Key", &t.api_key)
            .bearer_auth(bearer);
        async move {
            let res = req.send().await.unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }
    };
    let (status, all) = list(String::new(), token.clone()).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let all = all["disclosures"].as_array().unwrap().clone();
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains("Firstacct") && !text.contains("acct@"), "never values: {text}");
    let actions: Vec<&str> = all.iter().map(|d| d["action"].as_str().unwrap()).collect();
    assert_eq!(actions.iter().filter(|a| **a == "user.read").count(), 4, "{text}");
    assert!(actions.contains(&"user.create"), "{text}");
    let read = all.iter().find(|d| d["actor"] == "supervisor").unwrap();
    assert!(read["fields"].as_array().unwrap().contains(&json!("name")), "{read}");
    assert_eq!(read["clientAddr"], "127.0.0.1");
    assert!(all.iter().any(|d| d["outcome"] == "denied"), "the refused read is there too: {text}");

    // Page by page: the same records, each once, in order.
    let (mut paged, mut query) = (Vec::new(), "?pageSize=2".to_owned());
    loop {
        let (status, page) = list(query.clone(), token.clone()).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["disclosures"].as_array().unwrap();
        assert!(items.len() <= 2);
        paged.extend(items.iter().cloned());
        match page["nextPageToken"].as_str() {
            Some(next) => query = format!("?pageSize=2&pageToken={next}"),
            None => break,
        }
    }
    // The listing is recorded (as the first listing was) after what it shows.
    assert_eq!(paged[..all.len()], all[..], "pages follow one another");
    assert!(paged[all.len()..].iter().all(|d| d["action"] == "user.disclosures_read"), "{paged:?}");

    // A supervisor may; to another user the record is not there; another
    // application sees nothing.
    assert_eq!(list(String::new(), sup.clone()).await.0, StatusCode::OK);
    let (status, err) = list(String::new(), nosy.clone()).await;
    assert_eq!((status, &err["errors"][0]["code"]), (StatusCode::NOT_FOUND, &json!(404)));
    let (_, other_key) = common::new_application(&t.app).await;
    let (_, stranger) = t.sign_up_in(&other_key, "accounting.stranger").await;
    let res = t
        .http
        .get(t.url(&format!("/v2/users/{id}/disclosures")))
        .header("X-Api-Key", &other_key)
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // Page tokens are this listing's own; sizes are bounded.
    let (_, first) = list("?pageSize=1".into(), token.clone()).await;
    let next = first["nextPageToken"].as_str().unwrap().to_owned();
    let mut forged = next.clone().into_bytes();
    forged[2] = if forged[2] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for (query, field) in [
        (format!("?pageToken={forged}"), "pageToken"),
        ("?pageToken=not-a-token".to_owned(), "pageToken"),
        ("?pageSize=0".to_owned(), "pageSize"),
        ("?pageSize=5000".to_owned(), "pageSize"),
        ("?pageSize=lots".to_owned(), "pageSize"),
    ] {
        let (status, err) = list(query.clone(), token.clone()).await;
        assert_eq!((status, &err["errors"][0]["field"]), (StatusCode::BAD_REQUEST, &json!(field)), "{query}: {err}");
    }
    let (nosy_id, _) = t.sign_up("accounting.other").await;
    let res = t
        .http
        .get(t.url(&format!("/v2/users/{nosy_id}/disclosures?pageToken={next}")))
        .header("X-Api-Key", &t.api_key)
        .bearer_auth(&sup)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "another user's token");
}
}

/// PostgreSQL only: roles are PostgreSQL's.
#[tokio::test]
async fn serve_runs_as_a_role_that_cannot_rewrite_the_trail() {
    use sqlx::Connection;
    let Some(server) = common::postgres_server() else {
        eprintln!("PostgreSQL run not made: set TEST_DATABASE_URL to a postgres:// server");
        return;
    };
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (role, db) = (format!("usersvc_rt_{}", &suffix[..12]), format!("usersvc_test_{suffix}"));
    let mut admin_conn = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::query(&format!("CREATE ROLE {role} LOGIN PASSWORD 'runtime-secret'")).execute(&mut admin_conn).await.unwrap();
    let owner_url = common::with_database(&server, &db);
    // The same server and database, as the runtime role.
    let (scheme, rest) = owner_url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    let runtime_url = format!("{scheme}://{role}:runtime-secret@{host}");

    let t = common::spawn_in(runtime_url.clone(), |a| a.db.migrate_database_url = Some(owner_url.clone())).await;
    // Serving works: sign-up, read, update, sign-in, each recorded.
    let created = create(&t, distinctive("least")).await;
    let mut users = t.users().await;
    let get = pb::GetUserRequest { users_id: created.users_id.clone() };
    users.get_user(t.req(get, Some(&created.session_token))).await.unwrap();
    let signin = pb::SignInRequest { username: "user-least".into(), password: "password-least".into() };
    users.sign_in(t.req(signin, None)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The runtime role may not rewrite, cut or unprotect the trail.
    let mut rt = sqlx::PgConnection::connect(&runtime_url).await.unwrap();
    for sql in [
        "DELETE FROM audit_events",
        "UPDATE audit_events SET actor = 'x'",
        "TRUNCATE audit_events",
        "ALTER TABLE audit_events DISABLE TRIGGER ALL",
        "DROP TABLE audit_events",
        "DELETE FROM _sqlx_migrations",
        // Its months one by one, and the signed checkpoints.
        "TRUNCATE audit_events_default",
        "DELETE FROM audit_events_default",
        "DELETE FROM audit_checkpoints",
        "UPDATE audit_checkpoints SET root = ''",
        "TRUNCATE audit_checkpoints",
        "DELETE FROM audit_checkpoint_keys",
    ] {
        let e = sqlx::query(sql).execute(&mut rt).await.expect_err(sql).to_string();
        assert!(e.contains("permission denied") || e.contains("must be owner"), "{sql}: {e}");
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&mut rt).await.unwrap();
    assert!(n >= 4, "the trail is there and readable: {n}");
    let month: String = sqlx::query_scalar("SELECT 'audit_events_' || to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')")
        .fetch_one(&mut rt)
        .await
        .unwrap();
    let e = sqlx::query(&format!("TRUNCATE {month}")).execute(&mut rt).await.expect_err("this month").to_string();
    assert!(e.contains("permission denied"), "{e}");
    // The service sealed the trail as that role: checkpoints are there.
    let sealed = async {
        loop {
            let c: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_checkpoints").fetch_one(&mut rt).await.unwrap();
            if c > 0 {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), sealed).await.expect("a checkpoint made by the runtime role");
    rt.close().await.ok();
    assert!(common::admin(&t.app).verify_trail(None).await.unwrap().is_ok(), "the chain is whole");
    drop(t);
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&mut admin_conn).await.ok();
    sqlx::query(&format!("DROP ROLE IF EXISTS {role}")).execute(&mut admin_conn).await.ok();
}
