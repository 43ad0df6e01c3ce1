//! Pages of the lists that grow (issue 21): a group's members, the
//! application's groups, a user's groups and sessions. Over gRPC, AIP-158
//! pages; over JSON, the documented bare arrays, at most 1000 items to a
//! reply unless the client asks for fewer, with an RFC 8288 `Link`
//! rel="next" to the rest. Tokens are bound to what they list.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use usersvc::{pb, store::NewUser};
use uuid::Uuid;

use crate::common::{TestApp, spawn, violation_field};

/// A GET with the application's key and a session: status, body, and the
/// target of its `Link` rel="next", if any.
async fn get(t: &TestApp, token: &str, path: &str) -> (StatusCode, Value, Option<String>) {
    let res = t
        .http
        .get(t.url(path))
        .header("X-Api-Key", &t.api_key)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let links: Vec<String> = res.headers().get_all("link").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert!(links.len() <= 1, "{links:?}");
    let next = links.first().map(|l| {
        let target =
            l.strip_prefix('<').and_then(|l| l.strip_suffix(">; rel=\"next\"")).unwrap_or_else(|| panic!("{l}"));
        target.to_owned()
    });
    (status, res.json().await.unwrap_or(Value::Null), next)
}

/// Follows `Link` rel="next" from `path` to the last page: every item, and
/// each page's length.
async fn walk(t: &TestApp, token: &str, path: &str) -> (Vec<Value>, Vec<usize>) {
    let (mut items, mut pages, mut next) = (Vec::new(), Vec::new(), Some(path.to_owned()));
    while let Some(path) = next.take() {
        let (status, body, link) = get(t, token, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let page = body.as_array().unwrap_or_else(|| panic!("{path}: a bare array, not {body}"));
        pages.push(page.len());
        items.extend(page.iter().cloned());
        next = link;
    }
    (items, pages)
}

async fn post(t: &TestApp, token: &str, path: &str, body: &Value) -> Value {
    let res = t
        .http
        .post(t.url(path))
        .header("X-Api-Key", &t.api_key)
        .header("Authorization", format!("Bearer {token}"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

async fn new_group(t: &TestApp, sup: &str, name: &str, default: bool) -> String {
    let g = post(t, sup, "/v2/groups", &json!({"name": name, "default": default})).await;
    g["groupsId"].as_str().unwrap().to_owned()
}

/// Users written straight to the store, joining the default groups as on
/// sign-up: a sign-up's password hash would take most of the test's time.
/// Nothing here opens their (dummy) profiles.
async fn seed_users(t: &TestApp, n: usize) -> Vec<String> {
    let store = t.app.store.clone();
    let key = store.current_app_key(t.app_id, "data").await.unwrap().expect("a data key");
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let id = Uuid::now_v7();
        let user = NewUser {
            id,
            app_id: t.app_id,
            key_id: key.id,
            username_ct: vec![0],
            username_bidx: id.as_bytes().to_vec(),
            password_hash: "not a hash".into(),
            email_bidx: None,
            profile_ct: vec![0],
            active: true,
            mrn_bidx: Vec::new(),
        };
        store.create_user(user, None, &[]).await.unwrap().expect("the key is current");
        ids.push(id.to_string());
    }
    ids
}

fn field(body: &Value) -> &str {
    body["errors"][0]["field"].as_str().unwrap_or_default()
}

both_stores! {
async fn a_big_group_answers_1000_members_and_a_link_to_the_rest() {
    let t = spawn().await;
    let (_, sup) = t.supervisor("pager").await;
    let gid = new_group(&t, &sup, "Everyone", true).await;
    let seeded = seed_users(&t, 1001).await;
    let members = format!("/v2/groups/{gid}/members");

    // No pageSize: the first 1000, and a Link to the one left.
    let (status, first, link) = get(&t, &sup, &members).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first.as_array().unwrap().len(), 1000);
    let link = link.expect("a Link to the rest");
    assert!(link.starts_with(&format!("{members}?pageSize=1000&pageToken=")), "{link}");
    let (status, rest, after) = get(&t, &sup, &link).await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    assert_eq!(rest.as_array().unwrap().len(), 1);
    assert_eq!(after, None, "no Link on the last page");
    let listed: Vec<String> =
        first.as_array().unwrap().iter().chain(rest.as_array().unwrap()).map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(listed, seeded, "each member once, in id order");
    // Each member listed is a disclosure, recorded as before.
    let n = t.count("SELECT count(*) FROM audit_events WHERE action = 'group.members_read' AND object_id = $1", &gid).await;
    assert_eq!(n, 1001);

    // A size asked for is kept, in the Link too.
    let (items, pages) = walk(&t, &sup, &format!("{members}?pageSize=400")).await;
    assert_eq!(pages, vec![400, 400, 201]);
    assert_eq!(items.len(), 1001);

    // Over gRPC: AIP-158 pages, each member exactly once.
    let mut groups = t.groups().await;
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let req = pb::ListMembersRequest { groups_id: gid.clone(), page_size: 300, page_token: token };
        let out = groups.list_members(t.req(req, Some(&sup))).await.unwrap().into_inner();
        assert!(out.users_ids.len() <= 300);
        seen.extend(out.users_ids);
        pages += 1;
        if out.next_page_token.is_empty() {
            break;
        }
        token = out.next_page_token;
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, seeded);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 1001);
    // Without page_size, gRPC's default page.
    let out = groups
        .list_members(t.req(pb::ListMembersRequest { groups_id: gid.clone(), ..Default::default() }, Some(&sup)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.users_ids.len(), 100);
}
}

both_stores! {
async fn page_tokens_and_sizes_are_checked() {
    let t = spawn().await;
    let (_, sup) = t.supervisor("checker").await;
    let (a, b) = (new_group(&t, &sup, "A", false).await, new_group(&t, &sup, "B", false).await);
    let (one, two) = (t.sign_up("first-member").await.0, t.sign_up("second-member").await.0);
    for g in [&a, &b] {
        for u in [&one, &two] {
            post(&t, &sup, &format!("/v2/groups/{g}/users/{u}"), &json!({})).await;
        }
    }
    let (_, _, link) = get(&t, &sup, &format!("/v2/groups/{a}/members?pageSize=1")).await;
    let link = link.expect("a Link");
    let token = link.split("pageToken=").nth(1).unwrap().to_owned();

    // A token of group A does not go on through group B, nor another list.
    let (status, body, _) = get(&t, &sup, &format!("/v2/groups/{b}/members?pageSize=1&pageToken={token}")).await;
    assert_eq!((status, field(&body)), (StatusCode::BAD_REQUEST, "pageToken"), "{body}");
    let (status, body, _) = get(&t, &sup, &format!("/v2/users/{one}/groups?pageToken={token}")).await;
    assert_eq!((status, field(&body)), (StatusCode::BAD_REQUEST, "pageToken"), "{body}");
    let mut groups = t.groups().await;
    let req = pb::ListMembersRequest { groups_id: b.clone(), page_size: 1, page_token: token.clone() };
    let e = groups.list_members(t.req(req, Some(&sup))).await.unwrap_err();
    assert_eq!((e.code(), violation_field(&e).as_deref()), (Code::InvalidArgument, Some("page_token")));
    // Tampered with: refused too.
    let mut forged = token.clone().into_bytes();
    forged[0] = if forged[0] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (status, body, _) = get(&t, &sup, &format!("/v2/groups/{a}/members?pageToken={forged}")).await;
    assert_eq!((status, field(&body)), (StatusCode::BAD_REQUEST, "pageToken"), "{body}");
    // On its own group it goes on to the other member.
    let (status, body, after) = get(&t, &sup, &link).await;
    assert_eq!((status, after), (StatusCode::OK, None), "{body}");
    assert_eq!(body, json!([two]));

    // A page size of 1 to 1000, on every paged bare array.
    let app = t.app_id;
    for path in [
        format!("/v2/groups/{a}/members"),
        format!("/v2/app/{app}/groups"),
        format!("/v2/app/{app}/groups/default"),
        format!("/v2/users/{one}/groups"),
        "/v2/auth/sessions".to_owned(),
    ] {
        for size in ["0", "5000", "abc", "-1"] {
            let (status, body, _) = get(&t, &sup, &format!("{path}?pageSize={size}")).await;
            assert_eq!((status, field(&body)), (StatusCode::BAD_REQUEST, "pageSize"), "{path} {size}: {body}");
            assert_eq!(body["errors"][0]["code"], 400, "{body}");
        }
    }
    for page_size in [-1, 1001, 5000] {
        let req = pb::ListMembersRequest { groups_id: a.clone(), page_size, ..Default::default() };
        let e = groups.list_members(t.req(req, Some(&sup))).await.unwrap_err();
        assert_eq!((e.code(), violation_field(&e).as_deref()), (Code::InvalidArgument, Some("page_size")));
    }
}
}

both_stores! {
async fn groups_user_groups_and_sessions_come_in_pages() {
    let t = spawn().await;
    let (_, sup) = t.supervisor("organiser").await;
    let mut made = Vec::new();
    for (name, default) in [("G1", true), ("G2", false), ("G3", true), ("G4", false), ("G5", true)] {
        made.push(new_group(&t, &sup, name, default).await);
    }
    let app = t.app_id;
    let ids = |items: &[Value]| -> Vec<String> {
        items.iter().map(|g| g["groupsId"].as_str().unwrap().to_owned()).collect()
    };

    // The application's groups, oldest first; the default ones on their own.
    let (all, pages) = walk(&t, &sup, &format!("/v2/app/{app}/groups?pageSize=2")).await;
    assert_eq!((ids(&all), pages), (made.clone(), vec![2, 2, 1]));
    let (defaults, pages) = walk(&t, &sup, &format!("/v2/app/{app}/groups/default?pageSize=2")).await;
    let want: Vec<String> = [0, 2, 4].iter().map(|i| made[*i].clone()).collect();
    assert_eq!((ids(&defaults), pages), (want.clone(), vec![2, 1]));
    let (_, body, link) = get(&t, &sup, &format!("/v2/app/{app}/groups")).await;
    assert_eq!((body.as_array().unwrap().len(), link), (5, None), "one page without pageSize");
    // A token of all groups does not go on through the default ones.
    let (_, _, link) = get(&t, &sup, &format!("/v2/app/{app}/groups?pageSize=1")).await;
    let token = link.unwrap().split("pageToken=").nth(1).unwrap().to_owned();
    let (status, body, _) = get(&t, &sup, &format!("/v2/app/{app}/groups/default?pageToken={token}")).await;
    assert_eq!((status, field(&body)), (StatusCode::BAD_REQUEST, "pageToken"), "{body}");
    let mut groups = t.groups().await;
    let req = pb::ListGroupsRequest { page_size: 3, ..Default::default() };
    let out = groups.list_groups(t.req(req, Some(&sup))).await.unwrap().into_inner();
    assert_eq!(out.groups.len(), 3);
    let req = pb::ListGroupsRequest { page_size: 3, page_token: out.next_page_token, ..Default::default() };
    let out = groups.list_groups(t.req(req, Some(&sup))).await.unwrap().into_inner();
    assert_eq!((out.groups.len(), out.next_page_token.as_str()), (2, ""));

    // A user's groups (the default ones joined at sign-up, one more added).
    let (uid, token) = t.sign_up("joiner").await;
    post(&t, &sup, &format!("/v2/groups/{}/users/{uid}", made[1]), &json!({})).await;
    let (mine, pages) = walk(&t, &token, &format!("/v2/users/{uid}/groups?pageSize=3")).await;
    let want: Vec<String> = [0, 1, 2, 4].iter().map(|i| made[*i].clone()).collect();
    assert_eq!((ids(&mine), pages), (want, vec![3, 1]));
    assert!(mine.iter().all(|g| g["name"].is_string()));
    // Each page is recorded, as the whole list was.
    let n = t.count("SELECT count(*) FROM audit_events WHERE action = 'user.groups_read' AND subject_id = $1", &uid).await;
    assert_eq!(n, 2);
    // Another user's listing does not take this user's token.
    let (other, _) = t.sign_up("bystander").await;
    let (_, _, link) = get(&t, &sup, &format!("/v2/users/{uid}/groups?pageSize=1")).await;
    let user_token = link.unwrap().split("pageToken=").nth(1).unwrap().to_owned();
    let (status, body, _) = get(&t, &sup, &format!("/v2/users/{other}/groups?pageToken={user_token}")).await;
    assert_eq!((status, field(&body)), (StatusCode::BAD_REQUEST, "pageToken"), "{body}");

    // Sessions: the sign-up's and two sign-ins, oldest first.
    let mut users = t.users().await;
    for _ in 0..2 {
        let req = pb::SignInRequest { username: "joiner".into(), password: "correct horse battery".into() };
        users.sign_in(t.req(req, None)).await.unwrap();
    }
    let (sessions, pages) = walk(&t, &token, "/v2/auth/sessions?pageSize=2").await;
    assert_eq!(pages, vec![2, 1]);
    let session_ids: Vec<&str> = sessions.iter().map(|s| s["sessionId"].as_str().unwrap()).collect();
    let mut sorted = session_ids.clone();
    sorted.sort();
    assert_eq!((session_ids.len(), &session_ids), (3, &sorted));
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    // The supervisor's own sessions do not take the user's token.
    let (_, _, link) = get(&t, &token, "/v2/auth/sessions?pageSize=1").await;
    let session_token = link.unwrap().split("pageToken=").nth(1).unwrap().to_owned();
    let (status, body, _) = get(&t, &sup, &format!("/v2/auth/sessions?pageToken={session_token}")).await;
    assert_eq!((status, field(&body)), (StatusCode::BAD_REQUEST, "pageToken"), "{body}");
    // Over gRPC, a supervisor pages through the user's sessions.
    let req = pb::ListSessionsRequest { users_id: uid.clone(), page_size: 2, page_token: String::new() };
    let out = users.list_sessions(t.req(req, Some(&sup))).await.unwrap().into_inner();
    assert_eq!(out.sessions.len(), 2);
    let req = pb::ListSessionsRequest { users_id: uid.clone(), page_size: 2, page_token: out.next_page_token };
    let last = users.list_sessions(t.req(req, Some(&sup))).await.unwrap().into_inner();
    assert_eq!((last.sessions.len(), last.next_page_token.as_str()), (1, ""));
    // A session is still verified by its token, however many its user has.
    let out = users.verify_session(t.req(pb::VerifySessionRequest {}, Some(&token))).await.unwrap().into_inner();
    assert_eq!(out.users_id, uid);
}
}
