//! UserService over gRPC.

use std::time::Duration;

use pbjson_types::FieldMask;
use tonic::Code;
use usersvc::pb;

use crate::common::{self, spawn, with_auth};

fn full_user(username: &str) -> pb::User {
    pb::User {
        username: username.into(),
        password: "s3cret-passw0rd".into(),
        email: Some(pb::Email {
            primary: "primary@email.com".into(),
            secondary: "secondary@email.com".into(),
            work: "work@email.com".into(),
            other: "other@email.com".into(),
            ..Default::default()
        }),
        name: Some(pb::Name {
            prefix: "Dr.".into(),
            first_name: "Ada".into(),
            middle_name: "M".into(),
            last_name: "Lovelace".into(),
            maiden_name: "Byron".into(),
            suffix: "jr".into(),
        }),
        dob: "2000-01-01".into(),
        age: Some(21),
        addresses: vec![pb::Address {
            r#type: "Home".into(),
            city: "Milwaukee".into(),
            geocode: Some(pb::Geocode { latitude: Some(1.0), longitude: Some(2.0) }),
            ..Default::default()
        }],
        ssn: "123456789".into(),
        extras: Some(serde_json::from_value(serde_json::json!({"extra1": "value1", "n": [1, 2]})).unwrap()),
        ..Default::default()
    }
}

both_stores! {
async fn lifecycle_create_read_update_sign_out_in_delete() {
    let t = spawn().await;
    let mut users = t.users().await;
    let created = users
        .create_user(t.req(pb::CreateUserRequest { user: Some(full_user("ada")) }, None))
        .await
        .unwrap()
        .into_inner();
    assert!(!created.session_token.is_empty(), "self sign-up returns a session token");
    assert!(created.username.is_empty() && created.password.is_empty(), "credentials are never returned");
    assert_eq!(created.active, Some(true));
    assert_eq!(created.created_at.len(), "2013-11-07T12:00:00Z".len());
    assert!(created.created_at.ends_with('Z'));
    let token = created.session_token.clone();
    let id = created.users_id.clone();

    let got =
        users.get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(&token))).await.unwrap().into_inner();
    assert_eq!(got.name, created.name);
    assert_eq!(got.extras, created.extras);
    assert_eq!(got.addresses, created.addresses);
    assert!(got.session_token.is_empty(), "a read carries no token");

    let patch =
        pb::User { name: Some(pb::Name { last_name: "King".into(), ..Default::default() }), ..Default::default() };
    let req = pb::UpdateUserRequest {
        users_id: id.clone(),
        user: Some(patch),
        update_mask: Some(FieldMask { paths: vec!["name.last_name".into(), "ssn".into()] }),
        ..Default::default()
    };
    let updated = users.update_user(t.req(req, Some(&token))).await.unwrap().into_inner();
    let name = updated.name.unwrap();
    assert_eq!(name.last_name, "King");
    assert_eq!(name.first_name, "Ada", "paths not in the mask are kept");
    assert!(updated.ssn.is_empty(), "a listed path absent from the user is cleared");
    assert_eq!(updated.dob, "2000-01-01");

    users.sign_out(t.req(pb::SignOutRequest {}, Some(&token))).await.unwrap();
    let err = users.get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(&token))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "a signed-out token is dead");

    let signed_in = users
        .sign_in(t.req(pb::SignInRequest { username: "ADA".into(), password: "s3cret-passw0rd".into() }, None))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(signed_in.session_token, token);
    assert_eq!(signed_in.users_id, id);
    let token = signed_in.session_token;

    users.delete_user(t.req(pb::DeleteUserRequest { users_id: id.clone() }, Some(&token))).await.unwrap();
    assert_eq!(t.count("SELECT count(*) FROM users WHERE id = $1", &id).await, 0);
    assert_eq!(t.count("SELECT count(*) FROM sessions WHERE user_id = $1", &id).await, 0);
    let err = users.get_user(t.req(pb::GetUserRequest { users_id: id }, Some(&token))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = users
        .sign_in(t.req(pb::SignInRequest { username: "ada".into(), password: "s3cret-passw0rd".into() }, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}
}

both_stores! {
async fn authorisation_matrix() {
    let t = spawn().await;
    let mut users = t.users().await;
    let (alice, alice_token) = t.sign_up("alice").await;
    let (bob, _) = t.sign_up("bob").await;
    let (_, sup_token) = t.supervisor("sue").await;
    let get = |id: &str| pb::GetUserRequest { users_id: id.to_owned() };

    // No key, an unknown key, a malformed key.
    let e = users.get_user(with_auth(get(&alice), None, Some(&alice_token))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = users.get_user(with_auth(get(&alice), Some("not-a-key"), Some(&alice_token))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // No token, a garbage token.
    let e = users.get_user(t.req(get(&alice), None)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = users.get_user(t.req(get(&alice), Some("garbage"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // A token under another application's key.
    let (_, other_key) = common::new_application(&t.app).await;
    let e = users.get_user(with_auth(get(&alice), Some(&other_key), Some(&alice_token))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // User against user: read, update, delete, groups; another's record is
    // not there, as an id of nobody's is not (no oracle of which ids exist).
    let e = users.get_user(t.req(get(&bob), Some(&alice_token))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = users
        .update_user(t.req(
            pb::UpdateUserRequest { users_id: bob.clone(), user: Some(pb::User::default()), update_mask: None, ..Default::default() },
            Some(&alice_token),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = users
        .delete_user(t.req(pb::DeleteUserRequest { users_id: bob.clone() }, Some(&alice_token)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = users
        .list_user_groups(t.req(pb::ListUserGroupsRequest { users_id: bob.clone(), ..Default::default() }, Some(&alice_token)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // A supervisor reads any user of their application...
    users.get_user(t.req(get(&bob), Some(&sup_token))).await.unwrap();
    // ...but nothing of another application, which is simply not there.
    let (stranger, _) = t.sign_up_in(&other_key, "stranger").await;
    let e = users.get_user(t.req(get(&stranger), Some(&sup_token))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = users
        .delete_user(t.req(pb::DeleteUserRequest { users_id: stranger.clone() }, Some(&sup_token)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(t.count("SELECT count(*) FROM users WHERE id = $1", &stranger).await, 1);
    // A malformed id is a bad argument.
    let e = users.get_user(t.req(get("not-a-uuid"), Some(&sup_token))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(common::violation_field(&e).as_deref(), Some("users_id"));
}
}

both_stores! {
async fn field_mask_updates_nested_extras_and_clearing() {
    let t = spawn().await;
    let mut users = t.users().await;
    let created = users
        .create_user(t.req(pb::CreateUserRequest { user: Some(full_user("mask")) }, None))
        .await
        .unwrap()
        .into_inner();
    let token = created.session_token.clone();
    let update = |user: pb::User, paths: &[&str]| pb::UpdateUserRequest {
        users_id: created.users_id.clone(),
        user: Some(user),
        update_mask: Some(FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() }),
        ..Default::default()
    };
    let extras = serde_json::from_value(serde_json::json!({"extra1": "changed", "new": {"deep": true}})).unwrap();
    let out = users
        .update_user(t.req(
            update(
                pb::User { extras: Some(extras), age: Some(0), ..Default::default() },
                &["extras.extra1", "extras.new.deep", "age", "name", "email.work"],
            ),
            Some(&token),
        ))
        .await
        .unwrap()
        .into_inner();
    let extras_json = serde_json::to_value(out.extras.unwrap()).unwrap();
    assert_eq!(extras_json, serde_json::json!({"extra1": "changed", "n": [1.0, 2.0], "new": {"deep": true}}));
    assert_eq!(out.age, Some(0), "zero is a value, not an absence");
    assert!(out.name.is_none(), "a whole message path absent from the request clears it");
    let email = out.email.unwrap();
    assert!(email.work.is_empty());
    assert_eq!(email.primary, "primary@email.com");
    assert!(out.updated_at >= created.updated_at);

    // Paths that do not exist, or reach into a scalar, are refused.
    for bad in ["nope", "age.x", "addresses.city", "name..x"] {
        let e = users.update_user(t.req(update(pb::User::default(), &[bad]), Some(&token))).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(common::violation_field(&e).as_deref(), Some("update_mask"), "{bad}");
    }
    // Server-managed paths are ignored; `active` from a user too.
    let out = users
        .update_user(t.req(
            update(
                pb::User { users_id: "x".into(), active: Some(false), ..Default::default() },
                &["users_id", "created_at", "active"],
            ),
            Some(&token),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.users_id, created.users_id);
    assert_eq!(out.active, Some(true));
    assert_eq!(out.created_at, created.created_at);
}
}

both_stores! {
async fn password_change_revokes_other_sessions() {
    let t = spawn().await;
    let mut users = t.users().await;
    let (id, first) = t.sign_up("pat").await;
    let sign_in = |pw: &str| pb::SignInRequest { username: "pat".into(), password: pw.into() };
    let second = users.sign_in(t.req(sign_in("correct horse battery"), None)).await.unwrap().into_inner().session_token;
    let change = pb::UpdateUserRequest {
        users_id: id.clone(),
        user: Some(pb::User { password: "a whole new password".into(), ..Default::default() }),
        update_mask: Some(FieldMask { paths: vec!["password".into()] }),
        ..Default::default()
    };
    users.update_user(t.req(change, Some(&first))).await.unwrap();
    // The session that changed it lives on; the other one is gone.
    users.get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(&first))).await.unwrap();
    let e = users.get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(&second))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(
        users.sign_in(t.req(sign_in("correct horse battery"), None)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    users.sign_in(t.req(sign_in("a whole new password"), None)).await.unwrap();
    // A short new password is refused, naming the field.
    let change = pb::UpdateUserRequest {
        users_id: id,
        user: Some(pb::User { password: "short".into(), ..Default::default() }),
        update_mask: Some(FieldMask { paths: vec!["password".into()] }),
        ..Default::default()
    };
    let e = users.update_user(t.req(change, Some(&first))).await.unwrap_err();
    assert_eq!(common::violation_field(&e).as_deref(), Some("password"));
}
}

both_stores! {
async fn sessions_expire_when_idle_and_at_their_maximum_age() {
    let t = common::spawn_with(|a| {
        a.sessions.session_idle_timeout = Duration::from_millis(1500);
        a.sessions.session_max_age = Duration::from_secs(4);
    })
    .await;
    let mut users = t.users().await;
    let (id, token) = t.sign_up("sleepy").await;
    let get = || pb::GetUserRequest { users_id: id.clone() };
    // Used every 0.5 s, the session outlives its idle timeout...
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        users.get_user(t.req(get(), Some(&token))).await.expect("a used session stays alive");
    }
    // ...but not its maximum age.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let e = users.get_user(t.req(get(), Some(&token))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let fresh = users
        .sign_in(t.req(pb::SignInRequest { username: "sleepy".into(), password: "correct horse battery".into() }, None))
        .await
        .unwrap()
        .into_inner()
        .session_token;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let e = users.get_user(t.req(get(), Some(&fresh))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "an idle session ends");
    assert!(e.message().contains("expired"), "{}", e.message());
}
}

both_stores! {
async fn validation_rules_name_their_field() {
    let t = spawn().await;
    let mut users = t.users().await;
    let base = || pb::User {
        username: format!("v{}", uuid::Uuid::new_v4().simple()),
        password: "long enough".into(),
        ..Default::default()
    };
    let cases: Vec<(&str, pb::User)> = vec![
        ("username", pb::User { username: String::new(), ..base() }),
        ("username", pb::User { username: "x".repeat(129), ..base() }),
        ("password", pb::User { password: String::new(), ..base() }),
        ("password", pb::User { password: "1234567".into(), ..base() }),
        ("password", pb::User { password: "x".repeat(1025), ..base() }),
        (
            "email.primary",
            pb::User { email: Some(pb::Email { primary: "not-an-address".into(), ..Default::default() }), ..base() },
        ),
        (
            "email.secondary",
            pb::User { email: Some(pb::Email { secondary: "a@b".into(), ..Default::default() }), ..base() },
        ),
        ("dob", pb::User { dob: "2001-02-29".into(), ..base() }),
        ("dob", pb::User { dob: "01/01/2000".into(), ..base() }),
        ("age", pb::User { age: Some(151), ..base() }),
        ("age", pb::User { age: Some(-1), ..base() }),
        ("gender", pb::User { gender: "g".repeat(1025), ..base() }),
        (
            "addresses[0].city",
            pb::User { addresses: vec![pb::Address { city: "c".repeat(1025), ..Default::default() }], ..base() },
        ),
        ("mrns", pb::User { mrns: vec![pb::Mrn::default(); 101], ..base() }),
        (
            "extras",
            pb::User {
                extras: Some(serde_json::from_value(serde_json::json!({"blob": "x".repeat(70 * 1024)})).unwrap()),
                ..base()
            },
        ),
    ];
    for (field, user) in cases {
        let e = users.create_user(t.req(pb::CreateUserRequest { user: Some(user) }, None)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert_eq!(common::violation_field(&e).as_deref(), Some(field), "{e:?}");
    }
    // Nothing was stored by any of them.
    let n = t.count_app("SELECT count(*) FROM users WHERE app_id = $1").await;
    assert_eq!(n, 0);

    // A username is unique regardless of letter case.
    t.sign_up("Casey").await;
    let dup = pb::User { username: "cASEY".into(), password: "long enough".into(), ..Default::default() };
    let e = users.create_user(t.req(pb::CreateUserRequest { user: Some(dup) }, None)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
}
}

both_stores! {
async fn sign_in_failures_look_alike() {
    let t = spawn().await;
    let mut users = t.users().await;
    let (inactive, _) = t.sign_up("inactive").await;
    let (_, sup) = t.supervisor("boss").await;
    t.sign_up("known").await;
    let deactivate = pb::UpdateUserRequest {
        users_id: inactive,
        user: Some(pb::User { active: Some(false), ..Default::default() }),
        update_mask: Some(FieldMask { paths: vec!["active".into()] }),
        ..Default::default()
    };
    let out = users.update_user(t.req(deactivate, Some(&sup))).await.unwrap().into_inner();
    assert_eq!(out.active, Some(false));
    let mut seen = Vec::new();
    for (name, pw) in
        [("nobody", "correct horse battery"), ("known", "wrong password!"), ("inactive", "correct horse battery")]
    {
        let e = users
            .sign_in(t.req(pb::SignInRequest { username: name.into(), password: pw.into() }, None))
            .await
            .unwrap_err();
        seen.push((e.code(), e.message().to_owned()));
    }
    assert_eq!(seen[0].0, Code::Unauthenticated);
    assert!(seen.iter().all(|s| *s == seen[0]), "{seen:?}");
}
}

both_stores! {
async fn forgot_username_queues_mail_and_answers_alike() {
    let t = spawn().await;
    let mut users = t.users().await;
    let (id, _) = t.sign_up("forgetful").await;
    for email in ["FORGETFUL@example.com", "nobody@example.com"] {
        users
            .forgot_username(t.req(pb::ForgotUsernameRequest { email: email.into() }, None))
            .await
            .expect("the same empty answer for known and unknown addresses");
    }
    // One reminder, for the known address: the mail sender resolves the
    // requests in the background and the trail names whom it went to (its
    // delivery is tested in mail.rs).
    let sql = "SELECT count(*) FROM audit_events WHERE action = 'user.forgot_username' AND subject_id = $1";
    let started = std::time::Instant::now();
    while t.count(sql, &id).await == 0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.count(sql, &id).await, 1);
    let e = users.forgot_username(t.req(pb::ForgotUsernameRequest { email: "nope".into() }, None)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}
}

both_stores! {
async fn supervisor_creates_users_without_a_session_and_sets_active() {
    let t = spawn().await;
    let mut users = t.users().await;
    let (_, sup) = t.supervisor("creator").await;
    let user = pb::User {
        username: "patient".into(),
        password: "long enough".into(),
        active: Some(false),
        ..Default::default()
    };
    let out =
        users.create_user(t.req(pb::CreateUserRequest { user: Some(user) }, Some(&sup))).await.unwrap().into_inner();
    assert!(out.session_token.is_empty());
    assert_eq!(out.active, Some(false));
    // A self sign-up cannot create itself inactive (or active against a rule).
    let user = pb::User {
        username: "selfie".into(),
        password: "long enough".into(),
        active: Some(false),
        ..Default::default()
    };
    let out = users.create_user(t.req(pb::CreateUserRequest { user: Some(user) }, None)).await.unwrap().into_inner();
    assert_eq!(out.active, Some(true));
}
}

both_stores! {
async fn health_is_served() {
    let t = spawn().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(t.channel().await);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest { service: "usersvc.v1.UserService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}
}
