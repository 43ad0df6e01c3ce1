//! A supervisor lists and searches the application's users: pages that
//! cover everyone once, filters through the blind indexes, tokens that
//! cannot be forged or carried to another listing, and each user listed
//! recorded in the trail.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::{self, TestApp, spawn};

async fn list(t: &TestApp, token: &str, query: &str) -> (u16, Value) {
    list_as(t, &t.api_key, token, query).await
}

async fn list_as(t: &TestApp, api_key: &str, token: &str, query: &str) -> (u16, Value) {
    let res = t
        .http
        .get(t.url(&format!("/v2/users{query}")))
        .header("X-Api-Key", api_key)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

both_stores! {
async fn a_supervisor_pages_through_and_searches_the_users() {
    let t = spawn().await;
    let (_, boss) = t.supervisor("lister-boss").await;
    let mut ids = BTreeSet::new();
    for i in 0..5 {
        ids.insert(t.sign_up(&format!("listed-{i}")).await.0);
    }
    let (plain_id, plain) = t.sign_up("listed-plain").await;
    ids.insert(plain_id.clone());

    // Page by page, two at a time: every user once, in creation order.
    let (mut seen, mut order, mut query, mut pages) = (BTreeSet::new(), Vec::new(), "?pageSize=2".to_owned(), 0);
    loop {
        let (status, page) = list(&t, &boss, &query).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for u in page["users"].as_array().unwrap() {
            let id = u["usersId"].as_str().unwrap().to_owned();
            assert!(seen.insert(id.clone()), "{id} twice");
            // As on a GET: the username and password are never returned.
            assert!(u.get("username").is_none() && u.get("password").is_none(), "{u}");
            assert!(u["email"]["primary"].is_string(), "{u}");
            order.push(id);
        }
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => query = format!("?pageSize=2&pageToken={next}"),
            _ => break,
        }
    }
    assert!(ids.is_subset(&seen), "every user listed");
    assert_eq!(seen.len(), 7, "the five, the plain user and the supervisor");
    assert_eq!(pages, 4);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "oldest first (UUIDv7 ids)");

    // Filters, through the blind indexes.
    let (_, by_email) = list(&t, &boss, "?email=LISTED-3@example.com").await;
    let found: Vec<_> = by_email["users"].as_array().unwrap().iter().map(|u| u["email"]["primary"].clone()).collect();
    assert_eq!(found, vec![Value::from("listed-3@example.com")], "{by_email}");
    assert!(by_email.get("nextPageToken").is_none_or(|t| t == ""), "{by_email}");
    let (_, by_name) = list(&t, &boss, "?username=listed-1").await;
    assert_eq!(by_name["users"][0]["email"]["primary"], "listed-1@example.com", "{by_name}");
    assert_eq!(by_name["users"].as_array().unwrap().len(), 1);
    let (_, nobody) = list(&t, &boss, "?username=nobody-at-all").await;
    assert_eq!(nobody["users"].as_array().map(Vec::len).unwrap_or(0), 0, "{nobody}");
    let (_, active) = list(&t, &boss, "?active=true").await;
    assert_eq!(active["users"].as_array().unwrap().len(), 7);
    let (_, inactive) = list(&t, &boss, "?active=false").await;
    assert_eq!(inactive["users"].as_array().map(Vec::len).unwrap_or(0), 0, "{inactive}");

    // Bad input: a clear 400 naming the parameter.
    for (query, field) in [
        ("?pageSize=0", "pageSize"),
        ("?pageSize=abc", "pageSize"),
        ("?pageSize=1001", "pageSize"),
        ("?active=maybe", "active"),
        ("?groupsId=not-a-uuid", "groupsId"),
        ("?pageToken=forged", "pageToken"),
    ] {
        let (status, body) = list(&t, &boss, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        let named = body["errors"][0]["field"].as_str().map(|f| f.replace('_', "").to_lowercase());
        assert_eq!(named, Some(field.to_lowercase()), "{query}: {body}");
    }
    let (status, _) = list(&t, &boss, &format!("?groupsId={}", uuid::Uuid::now_v7())).await;
    assert_eq!(status, 404, "an unknown group");
    // A token of one listing does not continue another.
    let (_, first) = list(&t, &boss, "?pageSize=1").await;
    let token = first["nextPageToken"].as_str().unwrap().to_owned();
    let (status, body) = list(&t, &boss, &format!("?pageSize=1&active=true&pageToken={token}")).await;
    assert_eq!(status, 400, "{body}");

    // A plain user may not list; another application sees none of these.
    let (status, body) = list(&t, &plain, "").await;
    assert_eq!(status, 403, "{body}");
    let (other_app, other_key) = common::new_application(&t.app).await;
    let (_, other_boss) = t.sign_up_in(&other_key, "other-boss").await;
    t.make_supervisor(other_app, "other-boss").await;
    let (status, page) = list_as(&t, &other_key, &other_boss, "").await;
    assert_eq!(status, 200);
    let theirs: Vec<_> = page["users"].as_array().unwrap().iter().map(|u| u["email"]["primary"].clone()).collect();
    assert_eq!(theirs, vec![Value::from("other-boss@example.com")]);

    // Each user listed is a disclosure, recorded.
    let n = t.count("SELECT count(*) FROM audit_events WHERE action = 'user.list' AND subject_id = $1", &plain_id).await;
    assert_eq!(n, 2, "the plain user was listed on the pages and by active=true: two records");
}
}

both_stores! {
async fn list_users_over_grpc_for_a_supervisor_only() {
    use usersvc::pb;
    let t = spawn().await;
    let (_, boss) = t.supervisor("grpc-lister").await;
    let (_, plain) = t.sign_up("grpc-listed").await;
    let mut users = t.users().await;
    let req = pb::ListUsersRequest { page_size: 10, active: Some(true), ..Default::default() };
    let out = users.list_users(t.req(req.clone(), Some(&boss))).await.unwrap().into_inner();
    let emails: BTreeSet<_> = out.users.iter().filter_map(|u| u.email.as_ref().map(|e| e.primary.clone())).collect();
    let want = ["grpc-lister@example.com".to_owned(), "grpc-listed@example.com".to_owned()];
    assert_eq!(emails, BTreeSet::from(want));
    assert!(out.next_page_token.is_empty());
    let e = users.list_users(t.req(req, Some(&plain))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
}
}

/// A user with these MRNs (institution, number), made by the supervisor.
async fn patient(t: &TestApp, boss: &str, username: &str, mrns: &[(&str, &str)]) -> String {
    let mrns: Vec<Value> =
        mrns.iter().map(|(inst, mrn)| serde_json::json!({"institutionsId": inst, "mrn": mrn})).collect();
    let body = serde_json::json!({
        "username": username,
        "password": "correct horse battery",
        "email": {"primary": format!("{username}@example.com")},
        "mrns": mrns,
    });
    let res = t
        .http
        .post(t.url("/v2/users"))
        .header("X-Api-Key", &t.api_key)
        .bearer_auth(boss)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let user: Value = res.json().await.unwrap();
    user["usersId"].as_str().unwrap().to_owned()
}

/// The ids a listing's page holds.
pub async fn ids(t: &TestApp, token: &str, query: &str) -> BTreeSet<String> {
    let (status, page) = list(t, token, query).await;
    assert_eq!(status, 200, "{query}: {page}");
    page["users"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|u| u["usersId"].as_str().unwrap().to_owned())
        .collect()
}

both_stores! {
async fn a_supervisor_finds_users_by_mrn_through_the_blind_index() {
    let t = spawn().await;
    let (_, boss) = t.supervisor("mrn-boss").await;
    let (_, plain) = t.sign_up("mrn-plain").await;
    // Two users share MRN-100 (at different institutions, in different
    // case); the second has MRN-200 as well.
    let one = patient(&t, &boss, "mrn-one", &[("inst-a", "MRN-100")]).await;
    let two = patient(&t, &boss, "mrn-two", &[("inst-b", "mrn-100"), ("inst-a", "MRN-200")]).await;
    let three = patient(&t, &boss, "mrn-three", &[("inst-a", "MRN-300")]).await;
    let set = |ids: &[&String]| ids.iter().map(|s| (*s).clone()).collect::<BTreeSet<_>>();

    assert_eq!(ids(&t, &boss, "?mrn=MRN-100").await, set(&[&one, &two]), "exactly the two who share it");
    assert_eq!(ids(&t, &boss, "?mrn=%20mrn-200%20").await, set(&[&two]), "case and spaces aside");
    assert_eq!(ids(&t, &boss, "?mrn=MRN-300").await, set(&[&three]));
    assert!(ids(&t, &boss, "?mrn=MRN-1").await.is_empty(), "exact, not a prefix");
    assert_eq!(ids(&t, &boss, "?mrn=MRN-100&username=mrn-two").await, set(&[&two]), "with the other filters");

    // Pages of an MRN search continue only that search.
    let (_, first) = list(&t, &boss, "?mrn=MRN-100&pageSize=1").await;
    let next = first["nextPageToken"].as_str().unwrap().to_owned();
    assert_eq!(ids(&t, &boss, &format!("?mrn=MRN-100&pageSize=1&pageToken={next}")).await, set(&[&two]));
    let (status, body) = list(&t, &boss, &format!("?mrn=MRN-200&pageSize=1&pageToken={next}")).await;
    assert_eq!(status, 400, "a token of another MRN's search: {body}");
    let (status, body) = list(&t, &boss, &format!("?pageSize=1&pageToken={next}")).await;
    assert_eq!(status, 400, "nor of the unfiltered listing: {body}");

    // An update changing the first user's MRN: the old one no longer finds
    // them, the new one does.
    let res = t
        .http
        .put(t.url(&format!("/v2/users/{one}")))
        .header("X-Api-Key", &t.api_key)
        .bearer_auth(&boss)
        .json(&serde_json::json!({"mrns": [{"institutionsId": "inst-a", "mrn": "MRN-101"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(ids(&t, &boss, "?mrn=MRN-100").await, set(&[&two]));
    assert_eq!(ids(&t, &boss, "?mrn=MRN-101").await, set(&[&one]));
    // An update of something else keeps them.
    let res = t
        .http
        .put(t.url(&format!("/v2/users/{two}")))
        .header("X-Api-Key", &t.api_key)
        .bearer_auth(&boss)
        .json(&serde_json::json!({"gender": "f"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(ids(&t, &boss, "?mrn=MRN-200").await, set(&[&two]));

    // A plain user may not search.
    let (status, body) = list(&t, &plain, "?mrn=MRN-100").await;
    assert_eq!(status, 403, "{body}");
}
}

both_stores! {
async fn users_from_before_the_index_are_indexed_when_the_service_starts() {
    // A database of its own: the backfill reads every application's users.
    let t = common::spawn_alone(|_| {}).await;
    let (_, boss) = t.supervisor("old-boss").await;
    let old = patient(&t, &boss, "old-patient", &[("inst-a", "MRN-900")]).await;
    let set = BTreeSet::from([old.clone()]);
    // As the migration leaves a user written before it: no rows, unflagged.
    let old_id = uuid::Uuid::parse_str(&old).unwrap();
    let forget = || async {
        assert!(t.exec2("DELETE FROM user_mrns WHERE user_id = $1 AND app_id = $2", old_id, t.app_id).await);
        assert!(t.exec2("UPDATE users SET mrns_indexed = false WHERE id = $1 AND app_id = $2", old_id, t.app_id).await);
    };
    forget().await;
    assert!(ids(&t, &boss, "?mrn=MRN-900").await.is_empty(), "not found before it is indexed");
    let admin = common::admin(&t.app);
    let done = usersvc::service::mrns::backfill(t.app.store.as_ref(), &admin.keyring).await.unwrap();
    assert_eq!((done.indexed, done.failed), (1, 0), "the one user left, and only them");
    assert_eq!(ids(&t, &boss, "?mrn=MRN-900").await, set);
    let again = usersvc::service::mrns::backfill(t.app.store.as_ref(), &admin.keyring).await.unwrap();
    assert_eq!(again, usersvc::service::mrns::Backfilled::default(), "once");

    // A service started on the database does it by itself, in the background.
    forget().await;
    let restarted = common::spawn_in(t.db_url.clone(), |_| {}).await;
    let mut found = Value::Null;
    for _ in 0..100 {
        let res = restarted
            .http
            .get(restarted.url("/v2/users?mrn=MRN-900"))
            .header("X-Api-Key", &t.api_key)
            .bearer_auth(&boss)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        found = res.json().await.unwrap();
        if found["users"].as_array().is_some_and(|u| !u.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(found["users"][0]["usersId"], old.as_str(), "{found}");
    assert_eq!(found["users"].as_array().map(Vec::len), Some(1), "{found}");
}
}

both_stores! {
async fn imported_users_are_found_by_mrn() {
    use usersvc::import::{Importer, formats::Format};
    let t = spawn().await;
    let (_, boss) = t.supervisor("import-mrn-boss").await;
    let lines = [
        serde_json::json!({"username": "imp-one", "password": "correct horse battery",
            "mrns": [{"institutionsId": "inst-a", "mrn": "IMP-1"}, {"institutionsId": "inst-b", "mrn": "IMP-2"}]}),
        serde_json::json!({"username": "imp-two", "password": "correct horse battery",
            "mrns": [{"institutionsId": "inst-b", "mrn": "imp-2"}]}),
    ]
    .map(|l| l.to_string())
    .join("\n");
    let admin = common::admin(&t.app);
    let hasher = usersvc::auth::PasswordHasher::new(1).unwrap();
    let summary = Importer::new(t.app.store.clone(), &admin.keyring, hasher, t.app_id, 8)
        .run(Format::Jsonl, std::io::Cursor::new(lines.into_bytes()), |f| panic!("{}", f.reason), |_| {})
        .await
        .unwrap();
    assert_eq!(summary.imported, 2);
    let (_, one) = list(&t, &boss, "?mrn=IMP-1").await;
    let names: Vec<_> = one["users"].as_array().unwrap().iter().map(|u| u["mrns"][0]["mrn"].clone()).collect();
    assert_eq!(names, vec![Value::from("IMP-1")], "{one}");
    let (_, two) = list(&t, &boss, "?mrn=IMP-2").await;
    assert_eq!(two["users"].as_array().unwrap().len(), 2, "both who hold it: {two}");
}
}
