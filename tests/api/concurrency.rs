//! Many clients at once on one record: no lost update, one winner for a
//! username, and a delete that races updates leaves nothing behind.

use pbjson_types::FieldMask;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tonic::Code;
use usersvc::pb;

use crate::common::spawn;

/// Sets one member of a user's extras over gRPC, with a field mask naming
/// only it.
async fn set_extra(
    users: &mut pb::user_service_client::UserServiceClient<tonic::transport::Channel>,
    key: &str,
    token: &str,
    users_id: String,
    name: &str,
    value: i64,
) -> Result<(), tonic::Status> {
    let user: pb::User = serde_json::from_value(json!({"extras": {name: value}})).expect("a user");
    let mask = FieldMask { paths: vec![format!("extras.{name}")] };
    let req = pb::UpdateUserRequest { users_id, user: Some(user), update_mask: Some(mask), ..Default::default() };
    users.update_user(crate::common::with_auth(req, Some(key), Some(token))).await.map(|_| ())
}

both_stores! {
async fn concurrent_updates_of_different_fields_all_persist() {
    let t = spawn().await;
    let (id, token) = t.sign_up("contended").await;
    let n = 12;
    let mut updates = JoinSet::new();
    for i in 0..n {
        // Half through gRPC with a field mask, half through the JSON merge patch.
        let (id, token, key, url) = (id.clone(), token.clone(), t.api_key.clone(), t.url(&format!("/v2/users/{id}")));
        let mut users = t.users().await;
        updates.spawn(async move {
            if i % 2 == 0 {
                set_extra(&mut users, &key, &token, id, &format!("f{i}"), i)
                    .await
                    .map_err(|e| format!("{:?} {}", e.code(), e.message()))
            } else {
                let res = reqwest::Client::new()
                    .put(url)
                    .header("X-Api-Key", &key)
                    .bearer_auth(&token)
                    .json(&json!({"extras": {format!("f{i}"): i}}))
                    .send()
                    .await
                    .unwrap();
                if res.status() == StatusCode::OK { Ok(()) } else { Err(res.text().await.unwrap()) }
            }
        });
    }
    while let Some(r) = updates.join_next().await {
        r.unwrap().expect("every concurrent update succeeds");
    }
    let got = t
        .users()
        .await
        .get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(&token)))
        .await
        .unwrap()
        .into_inner();
    let extras = serde_json::to_value(&got).unwrap()["extras"].clone();
    for i in 0..n {
        assert_eq!(extras[format!("f{i}")].as_f64(), Some(i as f64), "update {i} was lost: {extras}");
    }
    let version = t.count("SELECT version FROM users WHERE id = $1", &id).await;
    assert!(version > n, "each update moved the version on ({version})");
}
}

both_stores! {
async fn one_username_signed_up_at_once_from_many_connections_makes_one_user() {
    let t = spawn().await;
    let mut sign_ups = JoinSet::new();
    for i in 0..10 {
        let (url, key) = (t.url("/v2/users"), t.api_key.clone());
        sign_ups.spawn(async move {
            // A client of its own each: a connection of its own.
            let res = reqwest::Client::new()
                .post(url)
                .header("X-Api-Key", key)
                .json(&json!({"username": if i % 2 == 0 { "Same.Name" } else { "same.name" },
                              "password": "correct horse battery"}))
                .send()
                .await
                .unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        });
    }
    let mut created = 0;
    while let Some(r) = sign_ups.join_next().await {
        let (status, body) = r.unwrap();
        match status {
            StatusCode::OK => created += 1,
            StatusCode::CONFLICT => assert_eq!(body["errors"][0]["reason"], "username_taken", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created, 1, "exactly one sign-up wins");
    assert_eq!(t.count_app("SELECT count(*) FROM users WHERE app_id = $1").await, 1);
}
}

both_stores! {
async fn a_user_deleted_while_being_updated_ends_deleted_with_nothing_left() {
    let t = spawn().await;
    let (_, boss) = t.supervisor("boss").await;
    let group = t
        .groups()
        .await
        .create_group(t.req(
            pb::CreateGroupRequest { group: Some(pb::Group { name: "ward".into(), default: Some(true), ..Default::default() }) },
            Some(&boss),
        ))
        .await
        .unwrap()
        .into_inner();
    for round in 0..3 {
        let (id, token) = t.sign_up(&format!("doomed{round}")).await;
        // A second session, and a membership beside the default one.
        let second = t
            .users()
            .await
            .sign_in(t.req(
                pb::SignInRequest { username: format!("doomed{round}"), password: "correct horse battery".into() },
                None,
            ))
            .await
            .unwrap()
            .into_inner()
            .session_token;
        assert!(!second.is_empty());
        assert_eq!(t.count("SELECT count(*) FROM memberships WHERE user_id = $1", &id).await, 1);

        let mut racers = JoinSet::new();
        for i in 0..8 {
            let (id, token, key) = (id.clone(), token.clone(), t.api_key.clone());
            let mut users = t.users().await;
            racers.spawn(async move {
                set_extra(&mut users, &key, &token, id, &format!("r{i}"), i).await.map_err(|e| e.code())
            });
        }
        let deleted = t.users().await.delete_user(t.req(pb::DeleteUserRequest { users_id: id.clone() }, Some(&boss))).await;
        deleted.expect("the delete succeeds");
        while let Some(r) = racers.join_next().await {
            // Before the delete, an update lands; after it, the user (or the
            // session) is gone. Never an internal error.
            if let Err(code) = r.unwrap() {
                assert!(matches!(code, Code::NotFound | Code::Unauthenticated), "{code:?}");
            }
        }
        for sql in [
            "SELECT count(*) FROM users WHERE id = $1",
            "SELECT count(*) FROM sessions WHERE user_id = $1",
            "SELECT count(*) FROM memberships WHERE user_id = $1",
            "SELECT count(*) FROM outbox WHERE user_id = $1",
        ] {
            assert_eq!(t.count(sql, &id).await, 0, "{sql}");
        }
        let e = t.users().await.get_user(t.req(pb::GetUserRequest { users_id: id.clone() }, Some(&boss))).await;
        assert_eq!(e.unwrap_err().code(), Code::NotFound);
    }
    assert!(!group.groups_id.is_empty());
}
}
