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
