//! Usernames compare as RFC 8265's UsernameCaseMapped profile says (width
//! mapping, case mapping, NFC): "Ａda" (a fullwidth A), "ADA" and "ada" are
//! one name for sign-up, sign-in and the listing's filter, while the name
//! is kept as the user wrote it. Names the API always took but the profile
//! does not (spaces, symbols) are still taken. Users indexed before are
//! re-indexed when the service starts.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::common::{self, TestApp, spawn};
use usersvc::store::backend::Pool;

const PASSWORD: &str = "correct horse battery";

/// `POST /v2/users`: (status, body).
async fn sign_up(t: &TestApp, username: &str) -> (u16, Value) {
    let res = t
        .http
        .post(t.url("/v2/users"))
        .header("X-Api-Key", &t.api_key)
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
}

/// `POST /v2/auth/signin`: the user id signed in as, if any.
async fn sign_in(t: &TestApp, username: &str) -> Option<String> {
    sign_in_with(t, &t.api_key, username).await
}

async fn sign_in_with(t: &TestApp, api_key: &str, username: &str) -> Option<String> {
    let res = t
        .http
        .post(t.url("/v2/auth/signin"))
        .header("X-Api-Key", api_key)
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    match status {
        200 => Some(body["usersId"].as_str().unwrap().to_owned()),
        401 => None,
        other => panic!("sign-in as {username:?}: {other} {body}"),
    }
}

/// `GET /v2/users?username=`: the ids listed.
async fn listed(t: &TestApp, token: &str, username: &str) -> BTreeSet<String> {
    let name = percent_encoding::utf8_percent_encode(username, percent_encoding::NON_ALPHANUMERIC);
    crate::listing::ids(t, token, &format!("?username={name}")).await
}

both_stores! {
async fn fullwidth_and_case_variants_are_one_name() {
    let t = spawn().await;
    let (status, body) = sign_up(&t, "Ａda").await;
    assert_eq!(status, 200, "{body}");
    let ada = body["usersId"].as_str().unwrap().to_owned();

    for name in ["ada", "ADA", "Ａda", "ＡＤＡ", " ada "] {
        assert_eq!(sign_in(&t, name).await.as_deref(), Some(ada.as_str()), "signed in as {name:?}");
    }
    assert_eq!(sign_in(&t, "adb").await, None);

    // The same name again, in another form: taken.
    for name in ["ada", "ADA", "ａｄａ"] {
        let (status, body) = sign_up(&t, name).await;
        assert_eq!(status, 409, "{name:?}: {body}");
        assert_eq!(body["errors"][0]["code"], 409);
    }

    // The listing's filter finds them by either form.
    let (_, boss) = t.supervisor("boss").await;
    assert_eq!(listed(&t, &boss, "ada").await, BTreeSet::from([ada.clone()]));
    assert_eq!(listed(&t, &boss, "Ａda").await, BTreeSet::from([ada.clone()]));
    assert!(listed(&t, &boss, "adb").await.is_empty());

    // Names the API took before and the profile does not: still taken,
    // compared the same way.
    let (status, body) = sign_up(&t, "Ａda Lovelace").await;
    assert_eq!(status, 200, "{body}");
    let lovelace = body["usersId"].as_str().unwrap().to_owned();
    assert_eq!(sign_in(&t, "ADA LOVELACE").await, Some(lovelace));
    assert_eq!(sign_up(&t, "ada lovelace").await.0, 409);
    let (status, body) = sign_up(&t, "Bob☃").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sign_in(&t, "bob☃").await, body["usersId"].as_str().map(str::to_owned));
    // An email address as a username, as Catalyze clients send.
    assert_eq!(sign_up(&t, "Ada@Example.com").await.0, 200);
    assert!(sign_in(&t, "ada@example.com").await.is_some());
}
}

both_stores! {
async fn names_indexed_before_are_indexed_anew_when_the_service_starts() {
    // A database of its own: the backfill reads every application's users.
    let t = common::spawn_alone(|_| {}).await;
    let (status, body) = sign_up(&t, "Ｚoë").await;
    assert_eq!(status, 200, "{body}");
    let zoe = body["usersId"].as_str().unwrap().to_owned();
    let zoe_id = uuid::Uuid::parse_str(&zoe).unwrap();
    let admin = common::admin(&t.app);
    // As the migration leaves a user written before it: the index of the
    // name lowercased ("ｚoë", still fullwidth), unflagged.
    let old = admin.keyring.blind(t.app_id, "username", &usersvc::service::profile::fold("Ｚoë")).await.unwrap();
    let forget = || async {
        let sql = "UPDATE users SET username_bidx = $1, username_precis = false WHERE id = $2";
        let done = match &t.app.pool {
            Pool::Postgres(p) => sqlx::query(sql).bind(&old).bind(zoe_id).execute(p).await.unwrap().rows_affected(),
            Pool::Sqlite(p) => sqlx::query(sql).bind(&old).bind(zoe_id).execute(p).await.unwrap().rows_affected(),
        };
        assert_eq!(done, 1);
    };
    forget().await;
    assert_eq!(sign_in(&t, "zoë").await, None, "not found by the new comparison before the backfill");
    let done = usersvc::service::usernames::rekey(t.app.store.as_ref(), &admin.keyring).await.unwrap();
    assert_eq!((done.changed, done.taken, done.failed), (1, 0, 0), "{done:?}");
    assert_eq!(done.kept, 0, "the users written since were flagged when written");
    assert_eq!(sign_in(&t, "zoë").await, Some(zoe.clone()));
    assert_eq!(sign_in(&t, "ＺＯË").await, Some(zoe.clone()));
    let again = usersvc::service::usernames::rekey(t.app.store.as_ref(), &admin.keyring).await.unwrap();
    assert_eq!(again, usersvc::service::usernames::Rekeyings::default(), "once");

    // A service started on the database does it by itself, in the background.
    forget().await;
    let restarted = common::spawn_in(t.db_url.clone(), |_| {}).await;
    let mut found = None;
    for _ in 0..100 {
        found = sign_in_with(&restarted, &t.api_key, "zoë").await;
        if found.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(found, Some(zoe));
}
}
