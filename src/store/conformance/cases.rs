//! The contract's cases: each a function over a store under test
//! ([`Under`]), run on every backend by `mod.rs`.

use std::time::Duration;

use uuid::Uuid;

use super::{DAY_US, Db, HOUR, Under, chain_is_whole, change, key, new_app, new_user, session};
use crate::store::trail::record::{AuditRecord, GENESIS};
use crate::store::*;

pub async fn apps_keys_and_users(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "app one").await;
    assert_eq!(s.app_by_key_hash(b"app one").await.unwrap().unwrap().id, f.app.id);
    assert!(s.app_by_key_hash(b"nope").await.unwrap().is_none());
    assert_eq!(s.all_app_keys().await.unwrap().len(), 2);
    assert_eq!(s.current_app_key(f.app.id, "data").await.unwrap().unwrap().id, f.data_key.id);
    assert_eq!(s.app_key(f.data_key.id).await.unwrap().unwrap().wrapped, vec![7; 40]);

    // A default group takes every new user in.
    let group = GroupRecord { id: Uuid::now_v7(), name: "everyone".into(), is_default: true };
    s.create_group(f.app.id, &group, &AuditRecord::new("group.create", Some(f.app.id))).await.unwrap();

    let nu = new_user(&f, "alice");
    let created = s
        .create_user(nu.clone(), Some(session("tok-a")), &[AuditRecord::new("user.create", Some(f.app.id))])
        .await
        .unwrap()
        .unwrap();
    assert_eq!((created.version, created.active, created.supervisor), (1, true, false));
    assert_eq!(created.created_at.timestamp_subsec_nanos(), 0, "whole seconds");
    let got = s.get_user(f.app.id, nu.id).await.unwrap().unwrap();
    assert_eq!((got.id, got.created_at, got.updated_at), (nu.id, created.created_at, created.updated_at));
    assert!(s.get_user(Uuid::now_v7(), nu.id).await.unwrap().is_none(), "scoped to the application");
    let cred = s.credentials(f.app.id, b"alice").await.unwrap().unwrap();
    assert_eq!((cred.user_id, cred.password_hash.as_str(), cred.active), (nu.id, "hash-1", true));
    assert_eq!(s.list_user_groups(f.app.id, nu.id, None, 100).await.unwrap()[0].id, group.id);

    // The same username in the same application is taken; in another it is not.
    let mut dup = new_user(&f, "alice");
    dup.id = Uuid::now_v7();
    match s.create_user(dup.clone(), None, &[]).await {
        Err(StoreError::Conflict(c)) => assert_eq!(c, "users_app_username_key"),
        other => panic!("{other:?}"),
    }
    let other = new_app(s, "app two").await;
    s.create_user(new_user(&other, "alice"), None, &[]).await.unwrap();
    match s.create_user(NewUser { id: nu.id, ..new_user(&f, "bob") }, None, &[]).await {
        Err(StoreError::Conflict(c)) => assert_eq!(c, "users_pkey"),
        other => panic!("{other:?}"),
    }

    // Compare-and-set on the version.
    let keep = session("tok-keep");
    let signed_in = AuditRecord::new("session.sign_in", Some(f.app.id));
    s.create_session(f.app.id, nu.id, keep.clone(), Relief::default(), &signed_in).await.unwrap();
    let mut c = change(1, f.data_key.id);
    c.password_hash = Some("hash-2".into());
    c.end_sessions = Some(EndSessions { keep: Some(keep.id) });
    c.username = Some((b"ct:alicia".to_vec(), b"alicia".to_vec()));
    let updated = s.update_user(f.app.id, nu.id, c, &[]).await.unwrap().unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.profile_ct, b"profile-2");
    assert!(updated.updated_at >= created.updated_at);
    assert!(s.update_user(f.app.id, nu.id, change(1, f.data_key.id), &[]).await.unwrap().is_none(), "stale");
    assert_eq!(s.credentials(f.app.id, b"alicia").await.unwrap().unwrap().password_hash, "hash-2");
    assert!(s.credentials(f.app.id, b"alice").await.unwrap().is_none());
    // The password change ended every session but the one kept.
    let left = s.list_sessions(f.app.id, nu.id, HOUR, None, 100).await.unwrap();
    assert_eq!(left.iter().map(|r| r.id).collect::<Vec<_>>(), vec![keep.id]);

    // A rotated-away key makes the update a conflict.
    let new_key = key(f.app.id, "data");
    s.add_current_app_key(&new_key, &AuditRecord::new("key.rotate", Some(f.app.id))).await.unwrap();
    assert!(!s.app_key(f.data_key.id).await.unwrap().unwrap().current);
    assert!(s.update_user(f.app.id, nu.id, change(2, f.data_key.id), &[]).await.unwrap().is_none());
    let stale = s.users_not_under_key(f.app.id, new_key.id, None, 10).await.unwrap();
    assert_eq!(stale.len(), 1);
    assert!(s.reseal_user(f.app.id, &stale[0], new_key.id).await.unwrap());
    assert!(s.users_not_under_key(f.app.id, new_key.id, None, 10).await.unwrap().is_empty());
    assert_eq!(s.update_user(f.app.id, nu.id, change(2, new_key.id), &[]).await.unwrap().unwrap().version, 3);

    // So does a new user's: nothing of it is written.
    let rotated = new_user(&f, "carol");
    assert!(s.create_user(rotated.clone(), Some(session("tok-c")), &[]).await.unwrap().is_none());
    assert!(s.get_user(f.app.id, rotated.id).await.unwrap().is_none());
    assert!(s.credentials(f.app.id, b"carol").await.unwrap().is_none());
    assert!(matches!(s.lookup_session(f.app.id, b"tok-c", HOUR, HOUR).await.unwrap(), SessionLookup::Unknown));

    // Renaming onto a taken username is the same conflict.
    s.create_user(NewUser { key_id: new_key.id, ..rotated }, None, &[]).await.unwrap().unwrap();
    let mut c = change(3, new_key.id);
    c.username = Some((b"ct:carol".to_vec(), b"carol".to_vec()));
    match s.update_user(f.app.id, nu.id, c, &[]).await {
        Err(StoreError::Conflict(c)) => assert_eq!(c, "users_app_username_key"),
        other => panic!("{other:?}"),
    }

    assert!(s.set_supervisor(f.app.id, b"alicia", true, &AuditRecord::new("x", None)).await.unwrap());
    assert!(!s.set_supervisor(f.app.id, b"nobody", true, &AuditRecord::new("x", None)).await.unwrap());
    assert!(s.get_user(f.app.id, nu.id).await.unwrap().unwrap().supervisor);

    // Deleting the user takes their sessions and memberships along.
    assert!(s.delete_user(f.app.id, nu.id, &AuditRecord::new("user.delete", Some(f.app.id))).await.unwrap());
    assert!(!s.delete_user(f.app.id, nu.id, &AuditRecord::new("user.delete", Some(f.app.id))).await.unwrap());
    assert!(s.session_owner(f.app.id, keep.id).await.unwrap().is_none());
    assert!(s.list_members(f.app.id, group.id, None, 100).await.unwrap().iter().all(|m| *m != nu.id));
    chain_is_whole(s).await;
}

pub async fn sessions_and_groups(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "app").await;
    let other = new_app(s, "other").await;
    let nu = new_user(&f, "dave");
    let sess = session("tok-d");
    s.create_user(nu.clone(), Some(sess.clone()), &[]).await.unwrap();

    // A store may remember a live session for as long as its touch may
    // wait (PostgreSQL's replicas do): these lookups let it wait for none,
    // so each of them reads the database.
    match s.lookup_session(f.app.id, b"tok-d", HOUR, Duration::ZERO).await.unwrap() {
        SessionLookup::Live(info) => assert_eq!((info.session_id, info.user_id), (sess.id, nu.id)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.lookup_session(other.app.id, b"tok-d", HOUR, HOUR).await.unwrap(), SessionLookup::Unknown));
    assert_eq!(s.session_owner(f.app.id, sess.id).await.unwrap(), Some(nu.id));
    // A touch refreshes last_seen_at.
    let before = s.list_sessions(f.app.id, nu.id, HOUR, None, 100).await.unwrap()[0].last_seen_at;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(matches!(
        s.lookup_session(f.app.id, b"tok-d", HOUR, Duration::ZERO).await.unwrap(),
        SessionLookup::Live(_)
    ));
    assert!(s.list_sessions(f.app.id, nu.id, HOUR, None, 100).await.unwrap()[0].last_seen_at > before);
    // Idle past the timeout: expired, and gone.
    assert!(s.list_sessions(f.app.id, nu.id, Duration::ZERO, None, 100).await.unwrap().is_empty());
    assert!(matches!(
        s.lookup_session(f.app.id, b"tok-d", Duration::ZERO, HOUR).await.unwrap(),
        SessionLookup::Expired
    ));
    assert!(matches!(s.lookup_session(f.app.id, b"tok-d", HOUR, HOUR).await.unwrap(), SessionLookup::Unknown));

    // delete_sessions: one, then all.
    let (a, b) = (session("a"), session("b"));
    for x in [&a, &b] {
        s.create_session(f.app.id, nu.id, x.clone(), Relief::default(), &AuditRecord::new("session.sign_in", None))
            .await
            .unwrap();
    }
    assert_eq!(s.delete_sessions(f.app.id, nu.id, Some(a.id), None).await.unwrap(), 1);
    assert_eq!(s.delete_sessions(f.app.id, nu.id, Some(a.id), None).await.unwrap(), 0);
    assert_eq!(s.delete_sessions(f.app.id, nu.id, None, Some(&AuditRecord::new("x", None))).await.unwrap(), 1);

    // Groups and members stay within their application.
    let g = GroupRecord { id: Uuid::now_v7(), name: "nurses".into(), is_default: false };
    let audit = || AuditRecord::new("group", Some(f.app.id));
    s.create_group(f.app.id, &g, &audit()).await.unwrap();
    let foreign = new_user(&other, "erin");
    s.create_user(foreign.clone(), None, &[]).await.unwrap();
    assert!(!s.add_member(f.app.id, g.id, foreign.id, &audit()).await.unwrap());
    assert!(!s.add_member(other.app.id, g.id, foreign.id, &audit()).await.unwrap());
    assert!(s.add_member(f.app.id, g.id, nu.id, &audit()).await.unwrap());
    assert!(s.add_member(f.app.id, g.id, nu.id, &audit()).await.unwrap(), "again: left as it is");
    assert_eq!(s.list_members(f.app.id, g.id, None, 100).await.unwrap(), vec![nu.id]);
    let renamed = s.update_group(f.app.id, g.id, Some("RNs"), None, &audit()).await.unwrap().unwrap();
    assert_eq!((renamed.name.as_str(), renamed.is_default), ("RNs", false));
    let flagged = s.update_group(f.app.id, g.id, None, Some(true), &audit()).await.unwrap().unwrap();
    assert_eq!((flagged.name.as_str(), flagged.is_default), ("RNs", true));
    assert!(s.update_group(other.app.id, g.id, None, Some(true), &audit()).await.unwrap().is_none());
    assert_eq!(s.list_groups(f.app.id, true, None, 100).await.unwrap().len(), 1);
    assert!(s.remove_member(f.app.id, g.id, nu.id, &audit()).await.unwrap());
    assert!(!s.remove_member(f.app.id, g.id, nu.id, &audit()).await.unwrap());
    assert!(s.add_member(f.app.id, g.id, nu.id, &audit()).await.unwrap());
    assert!(s.delete_group(f.app.id, g.id, &audit()).await.unwrap());
    assert!(s.list_user_groups(f.app.id, nu.id, None, 100).await.unwrap().is_empty());
    assert!(s.get_group(f.app.id, g.id).await.unwrap().is_none());
    chain_is_whole(s).await;
}

pub async fn quotas_refuse_past_the_window_s_attempts(u: &Under) {
    let s = u.store.as_ref();
    let quota = Quota { per_window: 3, window: HOUR };
    for _ in 0..3 {
        assert_eq!(s.quota_attempt(b"signup", quota).await.unwrap(), None);
    }
    // The fourth waits for the end of the hour that began with the first.
    let wait = s.quota_attempt(b"signup", quota).await.unwrap().expect("past the quota");
    assert!(wait > HOUR - Duration::from_secs(60) && wait <= HOUR, "{wait:?}");
    assert!(s.quota_attempt(b"signup", quota).await.unwrap().is_some());
    assert_eq!(u.db.failures(b"signup").await, 3, "refused attempts are not counted");
    // Another key has a count of its own.
    assert_eq!(s.quota_attempt(b"other", quota).await.unwrap(), None);
    assert_eq!(u.db.failures(b"other").await, 1);

    // 50 minutes into the window, 10 are left.
    u.db.run(&format!("UPDATE throttles SET last_failure = {}", u.db.ago(50 * 60 * 1_000_000))).await.unwrap();
    let wait = s.quota_attempt(b"signup", quota).await.unwrap().expect("still past the quota");
    assert!(wait > Duration::from_secs(9 * 60) && wait <= Duration::from_secs(10 * 60), "{wait:?}");
    // Room left in a window is used in it: the window does not move.
    assert_eq!(s.quota_attempt(b"other", quota).await.unwrap(), None);
    assert_eq!(u.db.failures(b"other").await, 2);
    assert!(s.quota_attempt(b"other", quota).await.unwrap().is_none());
    let wait = s.quota_attempt(b"other", quota).await.unwrap().expect("the window's three");
    assert!(wait <= Duration::from_secs(10 * 60), "{wait:?}");

    // Once the window is over, a new one begins with the next attempt.
    u.db.run(&format!("UPDATE throttles SET last_failure = {}", u.db.ago(61 * 60 * 1_000_000))).await.unwrap();
    assert_eq!(s.quota_attempt(b"signup", quota).await.unwrap(), None);
    assert_eq!(u.db.failures(b"signup").await, 1);
    for _ in 0..2 {
        assert_eq!(s.quota_attempt(b"signup", quota).await.unwrap(), None);
    }
    let wait = s.quota_attempt(b"signup", quota).await.unwrap().expect("past the new window's quota");
    assert!(wait > HOUR - Duration::from_secs(60), "{wait:?}");

    // Parallel attempts are each counted once: no more than the quota get in.
    let quota = Quota { per_window: 5, window: HOUR };
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let s = u.store.clone();
            tokio::spawn(async move { s.quota_attempt(b"parallel", quota).await.unwrap() })
        })
        .collect();
    let mut let_in = 0;
    for t in tasks {
        let_in += usize::from(t.await.unwrap().is_none());
    }
    assert_eq!(let_in, 5);
    assert_eq!(u.db.failures(b"parallel").await, 5);
}

pub async fn throttles_block_after_the_free_attempts(u: &Under) {
    let s = u.store.as_ref();
    let rule = ThrottleRule { free: 3, max_wait: Duration::from_secs(60), window: HOUR };
    let keys = vec![(b"user".to_vec(), rule), (b"addr".to_vec(), rule)];
    for _ in 0..3 {
        assert_eq!(s.throttle_attempt(&keys).await.unwrap(), None);
    }
    // The third failure set a wait of 1 s: the fourth attempt is refused.
    let wait = s.throttle_attempt(&keys).await.unwrap().expect("blocked");
    assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
    assert_eq!(u.db.failures(b"user").await, 3, "a refused attempt is not counted");
    // Any blocked key blocks the attempt, and nothing is counted.
    let other = vec![(b"fresh".to_vec(), rule), (b"addr".to_vec(), rule)];
    assert!(s.throttle_attempt(&other).await.unwrap().is_some());
    assert_eq!(u.db.failures(b"fresh").await, 0);

    // Once the wait is over the next failure doubles it.
    u.db.run(&format!("UPDATE throttles SET blocked_until = {}", u.db.ago(1))).await.unwrap();
    assert_eq!(s.throttle_attempt(&keys).await.unwrap(), None);
    let wait = s.throttle_attempt(&keys).await.unwrap().unwrap();
    assert!(wait > Duration::from_secs(1) && wait <= Duration::from_secs(2), "{wait:?}");

    // Success forgets one key and takes one off the other, with the session.
    let f = new_app(s, "throttled").await;
    let nu = new_user(&f, "alice");
    s.create_user(nu.clone(), None, &[]).await.unwrap();
    let relief = Relief { clear: Some(b"user"), forgive: Some(b"addr"), rehash: None };
    s.create_session(f.app.id, nu.id, session("ok"), relief, &AuditRecord::new("session.sign_in", None)).await.unwrap();
    assert_eq!((u.db.failures(b"user").await, u.db.failures(b"addr").await, u.db.failures(b"fresh").await), (0, 3, 0));

    // A failure past the free attempts waits from the refusal on.
    let k2 = vec![(b"late".to_vec(), ThrottleRule { free: 1, ..rule })];
    assert_eq!(s.throttle_attempt(&k2).await.unwrap(), None);
    s.throttle_failed(&k2).await.unwrap();
    let left = u.db.wait_left_us(b"late").await;
    assert!(left > 0 && left <= 1_000_000, "a wait of 1 s from now: {left}");
    assert!(s.throttle_attempt(&k2).await.unwrap().is_some());
    // Under the free attempts, a failure sets no wait.
    let k3 = vec![(b"early".to_vec(), rule)];
    assert_eq!(s.throttle_attempt(&k3).await.unwrap(), None);
    s.throttle_failed(&k3).await.unwrap();
    assert_eq!(s.throttle_attempt(&k3).await.unwrap(), None);

    // Failures older than the window are forgotten: the count starts at 1.
    let day_ago = u.db.ago(DAY_US + 1_000_000);
    u.db.run(&format!("UPDATE throttles SET last_failure = {day_ago}, blocked_until = NULL")).await.unwrap();
    assert!(s.sweep().await.unwrap() >= 4, "throttle counts long forgotten");
    assert_eq!(u.db.count("SELECT count(*) FROM throttles").await, 0);
    let short = ThrottleRule { free: 1, max_wait: Duration::from_millis(1500), window: Duration::from_secs(1) };
    let k = vec![(b"k".to_vec(), short)];
    assert_eq!(s.throttle_attempt(&k).await.unwrap(), None);
    let day_ago = u.db.ago(DAY_US + 1_000_000);
    u.db.run(&format!("UPDATE throttles SET last_failure = {day_ago}, blocked_until = NULL, failures = 9"))
        .await
        .unwrap();
    assert_eq!(s.throttle_attempt(&k).await.unwrap(), None);
    assert_eq!(u.db.failures(b"k").await, 1);
    let wait = u.db.wait_left_us(b"k").await;
    assert!(wait > 0 && wait <= 1_000_000, "2^0 s: {wait}");
    // max_wait caps the doubling.
    u.db.run("UPDATE throttles SET blocked_until = NULL, failures = 20").await.unwrap();
    assert_eq!(s.throttle_attempt(&k).await.unwrap(), None);
    let wait = u.db.wait_left_us(b"k").await;
    assert!(wait > 1_000_000 && wait <= 1_500_000, "capped: {wait}");
}

/// The server's own request id is kept beside the client's, alone and in
/// batches; a record without one hashes as records from before it did.
pub async fn server_request_ids_are_kept(u: &Under) {
    let s = u.store.as_ref();
    let app = Some(Uuid::now_v7());
    let mut old = AuditRecord::new("user.read", app);
    old.request_id = Some("client-chosen".into());
    let mut one = AuditRecord::new("user.read", app);
    one.server_request_id = Some(Uuid::new_v4());
    let batch: Vec<AuditRecord> = (0..3)
        .map(|i| {
            let mut r = AuditRecord::new("user.update", app);
            r.server_request_id = (i != 1).then(Uuid::new_v4);
            r
        })
        .collect();
    s.append_audit(std::slice::from_ref(&old)).await.unwrap();
    s.append_audit(std::slice::from_ref(&one)).await.unwrap();
    s.append_audit(&batch).await.unwrap();
    let all = chain_is_whole(s).await;
    let expected: Vec<&AuditRecord> = [&old, &one].into_iter().chain(&batch).collect();
    assert_eq!(all.iter().map(|r| &r.record).collect::<Vec<_>>(), expected);
    let text = String::from_utf8(crate::audit::canonical(&old)).unwrap();
    assert!(!text.contains("server_request_id"), "{text}");
    assert!(String::from_utf8(crate::audit::canonical(&one)).unwrap().contains("server_request_id"));
}

pub async fn the_trail_chains_and_is_append_only(u: &Under) {
    let s = u.store.as_ref();
    let (app_a, app_b) = (Uuid::now_v7(), Uuid::now_v7());
    let subject = Uuid::now_v7();
    let mut records = Vec::new();
    for i in 0..6 {
        let mut r = AuditRecord::new("user.read", Some(if i % 2 == 0 { app_a } else { app_b }));
        r.subject_id = (i % 3 == 0).then_some(subject);
        r.fields = vec!["name".into(), format!("field{i}")];
        r.client_addr = Some(vec![i; 12]);
        r.request_id = Some(format!("req-{i}"));
        records.push(r);
    }
    s.append_audit(&records[..2]).await.unwrap();
    s.append_audit(&[]).await.unwrap();
    s.append_audit(&records[2..]).await.unwrap();
    let all = chain_is_whole(s).await;
    assert_eq!(all.iter().map(|r| &r.record).collect::<Vec<_>>(), records.iter().collect::<Vec<_>>());
    assert_eq!(all[0].chain.as_ref().map(|c| c.0.clone()).unwrap_or(GENESIS.to_vec()), GENESIS.to_vec());

    let by_app = s.audit_records(&AuditFilter { app_id: Some(app_a), limit: 100, ..Default::default() }).await;
    assert_eq!(by_app.unwrap().len(), 3);
    let by_subject =
        s.audit_records(&AuditFilter { subject_id: Some(subject), limit: 100, ..Default::default() }).await;
    assert_eq!(by_subject.unwrap().len(), 2);
    let page = s.audit_records(&AuditFilter { after_seq: all[1].seq, limit: 2, ..Default::default() }).await;
    assert_eq!(page.unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![all[2].seq, all[3].seq]);
    let since =
        s.audit_records(&AuditFilter { since: Some(records[4].at), limit: 100, ..Default::default() }).await.unwrap();
    assert!(since.len() >= 2 && since.iter().all(|r| r.record.at >= records[4].at));
    let later = s
        .audit_records(&AuditFilter {
            since: Some(records[5].at + chrono::Duration::seconds(1)),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(later.is_empty());

    for sql in ["UPDATE audit_events SET actor = 'x'", "DELETE FROM audit_events WHERE seq = 1"] {
        let e = u.db.run(sql).await.unwrap_err();
        assert!(e.contains("append-only"), "{e}");
    }
    // A duplicate id is refused and leaves the chain as it was.
    assert!(matches!(s.append_audit(&records[..1]).await, Err(StoreError::Conflict(c)) if c == "audit_events_id_key"));
    assert_eq!(chain_is_whole(s).await.len(), 6);
}

/// At most 3 mails per address an hour, as by default.
pub(super) const THREE_AN_HOUR: RecipientLimit = RecipientLimit { max: 3, window: HOUR };

fn reminder_request(app_id: Uuid, email_bidx: &[u8]) -> NewMailRequest {
    NewMailRequest {
        id: Uuid::now_v7(),
        app_id,
        kind: "username_reminder".into(),
        lookup_bidx: email_bidx.to_vec(),
        reset: None,
        request_id: Some("req-1".into()),
    }
}

pub(super) fn reset_request(app_id: Uuid, username_bidx: &[u8], token: &str) -> NewMailRequest {
    NewMailRequest {
        id: Uuid::now_v7(),
        app_id,
        kind: "password_reset".into(),
        lookup_bidx: username_bidx.to_vec(),
        reset: Some(NewReset { token_hash: token.as_bytes().to_vec(), payload_ct: b"sealed".to_vec(), lifetime: HOUR }),
        request_id: Some("req-1".into()),
    }
}

fn request_audit(r: &NewMailRequest) -> AuditRecord {
    AuditRecord::new(&format!("request.{}", r.kind), Some(r.app_id))
}

/// Stores a request, then claims and resolves every request due, as the
/// mail sender does; what they did, together.
pub(super) async fn ask(s: &dyn Store, r: NewMailRequest) -> Resolved {
    s.queue_mail_request(&r, &request_audit(&r)).await.unwrap();
    resolve_all(s).await
}

async fn resolve_all(s: &dyn Store) -> Resolved {
    let mut all = Resolved::default();
    for c in s.claim_mail_requests(100, HOUR).await.unwrap() {
        let mut audit = AuditRecord::new(&format!("resolved.{}", c.kind), Some(c.app_id));
        audit.request_id = c.request_id.clone();
        let done = s.resolve_mail_request(&c, THREE_AN_HOUR, &audit).await.unwrap();
        all.queued += done.queued;
        all.limited += done.limited;
    }
    all
}

pub(super) const fn resolved(queued: u32, limited: u32) -> Resolved {
    Resolved { queued, limited }
}

pub async fn outbox_and_password_reset(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "mail app").await;
    let nu = new_user(&f, "frank");
    s.create_user(nu.clone(), Some(session("tok-f")), &[]).await.unwrap();

    // A request stores what it looks up by and nothing else, until resolved.
    let r = reminder_request(f.app.id, b"mail:frank");
    s.queue_mail_request(&r, &request_audit(&r)).await.unwrap();
    assert_eq!(u.db.count("SELECT count(*) FROM mail_requests").await, 1);
    assert_eq!(u.db.count("SELECT count(*) FROM outbox").await, 0, "no mail before it is resolved");
    let claimed = s.claim_mail_requests(10, HOUR).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!(
        (c.id, c.kind.as_str(), c.lookup_bidx.as_slice(), c.attempts),
        (r.id, "username_reminder", &b"mail:frank"[..], 1)
    );
    assert_eq!((c.token_hash.is_none(), c.expires_at.is_none(), c.request_id.as_deref()), (true, true, Some("req-1")));
    assert!(s.claim_mail_requests(10, HOUR).await.unwrap().is_empty(), "claimed requests are leased");
    let audit = AuditRecord::new("resolved", Some(f.app.id));
    assert_eq!(s.resolve_mail_request(c, THREE_AN_HOUR, &audit).await.unwrap(), resolved(1, 0));
    assert_eq!(s.resolve_mail_request(c, THREE_AN_HOUR, &audit).await.unwrap(), resolved(0, 0), "resolved once");
    assert_eq!(u.db.count("SELECT count(*) FROM mail_requests").await, 0);
    assert_eq!(ask(s, reminder_request(f.app.id, b"mail:nobody")).await, resolved(0, 0));

    let claimed = s.claim_outbox(10, HOUR).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let m = &claimed[0];
    assert_eq!((m.user_id, m.kind.as_str(), m.attempts, m.payload_ct.is_none()), (nu.id, "username_reminder", 1, true));
    assert!(s.claim_outbox(10, HOUR).await.unwrap().is_empty(), "claimed rows are leased");
    s.outbox_retry(m.id, Duration::ZERO).await.unwrap();
    let again = s.claim_outbox(10, HOUR).await.unwrap();
    assert_eq!((again.len(), again[0].attempts, again[0].created_at), (1, 2, m.created_at));
    s.outbox_retry(m.id, Duration::ZERO).await.unwrap();
    s.outbox_give_up(m.id).await.unwrap();
    assert!(s.claim_outbox(10, HOUR).await.unwrap().is_empty(), "given up");
    let r = s.mail_recipient(f.app.id, nu.id).await.unwrap().unwrap();
    assert_eq!((r.app_name.as_str(), r.username_ct), ("mail app", b"ct:frank".to_vec()));

    // A reset for nobody stores nothing once resolved.
    assert_eq!(ask(s, reset_request(f.app.id, b"nobody", "t0")).await, resolved(0, 0));
    assert_eq!(s.reset_password(b"t0", None).await.unwrap(), ResetCheck::Unknown);
    // A second request voids the first token; each mail has its request's id.
    let (first, second) = (reset_request(f.app.id, b"frank", "t1"), reset_request(f.app.id, b"frank", "t2"));
    let ids = [first.id, second.id];
    assert_eq!(ask(s, first).await, resolved(1, 0));
    assert_eq!(ask(s, second).await, resolved(1, 0));
    assert_eq!(s.reset_password(b"t1", None).await.unwrap(), ResetCheck::Unknown);
    let live = ResetCheck::Live { app_id: f.app.id, user_id: nu.id };
    assert_eq!(s.reset_password(b"t2", None).await.unwrap(), live);
    let mut mails = s.claim_outbox(10, HOUR).await.unwrap();
    mails.sort_by_key(|m| m.id);
    assert_eq!(mails.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert!(mails.iter().all(|m| m.kind == "password_reset" && m.payload_ct.as_deref() == Some(b"sealed")));
    // The lifetime counts from the request.
    let lifetime_s = match &u.db {
        Db::Sqlite(_) => {
            "SELECT (p.expires_at - o.created_at) / 1000000 FROM password_resets p JOIN outbox o ON o.user_id = p.user_id AND o.kind = 'password_reset' ORDER BY o.created_at DESC LIMIT 1"
        }
        Db::Postgres(_) => {
            "SELECT extract(epoch FROM p.expires_at - o.created_at)::int8 FROM password_resets p JOIN outbox o ON o.user_id = p.user_id AND o.kind = 'password_reset' ORDER BY o.created_at DESC LIMIT 1"
        }
    };
    assert!((3595..=3600).contains(&u.db.count(lifetime_s).await));

    // Three mails went to frank's address this hour: a fourth request is
    // recorded, and neither mails nor voids the live link.
    assert_eq!(ask(s, reset_request(f.app.id, b"frank", "t3")).await, resolved(0, 1));
    assert_eq!(ask(s, reminder_request(f.app.id, b"mail:frank")).await, resolved(0, 1));
    assert_eq!(s.reset_password(b"t3", None).await.unwrap(), ResetCheck::Unknown);
    assert_eq!(s.reset_password(b"t2", None).await.unwrap(), live);
    assert!(s.claim_outbox(10, Duration::ZERO).await.unwrap().is_empty());
    // An hour later the window is new.
    u.db.run(&format!("UPDATE mail_quotas SET window_start = {}", u.db.ago(2 * 3_600_000_000))).await.unwrap();
    assert_eq!(ask(s, reminder_request(f.app.id, b"mail:frank")).await, resolved(1, 0));
    assert_eq!(u.db.count("SELECT count(*) FROM mail_quotas WHERE sent = 1").await, 1);

    let done = AuditRecord::new("user.reset_password", None);
    assert_eq!(s.reset_password(b"t2", Some(("hash-new", &done))).await.unwrap(), live);
    assert_eq!(s.reset_password(b"t2", None).await.unwrap(), ResetCheck::Unknown, "used up");
    let user = s.get_user(f.app.id, nu.id).await.unwrap().unwrap();
    assert_eq!(user.version, 2);
    assert_eq!(s.credentials(f.app.id, b"frank").await.unwrap().unwrap().password_hash, "hash-new");
    assert!(s.list_sessions(f.app.id, nu.id, HOUR, None, 100).await.unwrap().is_empty(), "every session ended");

    // Another user (another address). Two requests resolved out of order:
    // the older one is not issued after the newer.
    let fay = new_user(&f, "fay");
    s.create_user(fay.clone(), None, &[]).await.unwrap();
    for (name, token) in [("fay", "t5"), ("fay", "t6")] {
        let r = reset_request(f.app.id, name.as_bytes(), token);
        s.queue_mail_request(&r, &request_audit(&r)).await.unwrap();
    }
    let both = s.claim_mail_requests(10, HOUR).await.unwrap();
    assert_eq!(
        both.iter().map(|r| r.token_hash.clone().unwrap()).collect::<Vec<_>>(),
        [b"t5".to_vec(), b"t6".to_vec()]
    );
    let audit = AuditRecord::new("resolved", Some(f.app.id));
    assert_eq!(s.resolve_mail_request(&both[1], THREE_AN_HOUR, &audit).await.unwrap(), resolved(1, 0));
    assert_eq!(s.resolve_mail_request(&both[0], THREE_AN_HOUR, &audit).await.unwrap(), resolved(0, 0));
    let fay_live = ResetCheck::Live { app_id: f.app.id, user_id: fay.id };
    assert_eq!(s.reset_password(b"t6", None).await.unwrap(), fay_live);
    assert_eq!(s.reset_password(b"t5", None).await.unwrap(), ResetCheck::Unknown);

    // A request that expired before it was resolved issues nothing.
    let r = reset_request(f.app.id, b"fay", "t7");
    s.queue_mail_request(&r, &request_audit(&r)).await.unwrap();
    u.db.run(&format!("UPDATE mail_requests SET expires_at = {}", u.db.ago(1))).await.unwrap();
    assert_eq!(resolve_all(s).await, resolved(0, 0));
    assert_eq!(s.reset_password(b"t6", None).await.unwrap(), fay_live, "nor voids the live one");
    // One never resolved can be dropped.
    let r = reminder_request(f.app.id, b"mail:fay");
    s.queue_mail_request(&r, &request_audit(&r)).await.unwrap();
    s.drop_mail_request(r.id).await.unwrap();
    assert!(s.claim_mail_requests(10, HOUR).await.unwrap().is_empty());

    // An expired token is reported once, then gone.
    u.db.run(&format!("UPDATE password_resets SET expires_at = {}", u.db.ago(1))).await.unwrap();
    assert_eq!(s.reset_password(b"t6", None).await.unwrap(), ResetCheck::Expired);
    assert_eq!(s.reset_password(b"t6", None).await.unwrap(), ResetCheck::Unknown);

    // An inactive user gets no token.
    let mut c = change(1, f.data_key.id);
    c.active = false;
    s.update_user(f.app.id, fay.id, c, &[]).await.unwrap().unwrap();
    assert_eq!(ask(s, reset_request(f.app.id, b"fay", "t8")).await, resolved(0, 0));
    assert_eq!(s.reset_password(b"t8", None).await.unwrap(), ResetCheck::Unknown);

    // Every request is recorded as asked, with no subject; each user it
    // reached once more, naming them (throttled when held back).
    let trail = chain_is_whole(s).await;
    let asked = trail.iter().filter(|r| r.record.action.starts_with("request.")).collect::<Vec<_>>();
    assert_eq!(asked.len(), 13);
    assert!(asked.iter().all(|r| r.record.subject_id.is_none()));
    let reached = trail.iter().filter(|r| r.record.action.starts_with("resolved")).collect::<Vec<_>>();
    let outcomes =
        reached.iter().map(|r| (r.record.subject_id == Some(nu.id), r.record.outcome.as_str())).collect::<Vec<_>>();
    assert_eq!(
        outcomes,
        [
            (true, "ok"),
            (true, "ok"),
            (true, "ok"),
            (true, "throttled"),
            (true, "throttled"),
            (true, "ok"),
            (false, "ok")
        ]
    );
    // Those resolved as the sender does carry the request's id.
    let by_sender = reached.iter().filter(|r| r.record.action.starts_with("resolved.")).collect::<Vec<_>>();
    assert_eq!(by_sender.len(), 5);
    assert!(by_sender.iter().all(|r| r.record.request_id.as_deref() == Some("req-1")));
    let reset_done = trail.iter().find(|r| r.record.action == "user.reset_password").unwrap();
    assert_eq!((reset_done.record.app_id, reset_done.record.subject_id), (Some(f.app.id), Some(nu.id)));

    // Deleting the user takes its queued mail.
    s.delete_user(f.app.id, nu.id, &AuditRecord::new("user.delete", None)).await.unwrap();
    s.delete_user(f.app.id, fay.id, &AuditRecord::new("user.delete", None)).await.unwrap();
    assert_eq!(u.db.count("SELECT count(*) FROM outbox").await, 0);
}

pub async fn sweep_deletes_what_ran_out(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "sweep").await;
    let nu = new_user(&f, "gina");
    let short = NewSession { max_age: Duration::ZERO, ..session("gone") };
    s.create_user(nu.clone(), Some(short), &[]).await.unwrap();
    s.create_session(f.app.id, nu.id, session("stays"), Relief::default(), &AuditRecord::new("x", None)).await.unwrap();
    assert_eq!(ask(s, reset_request(f.app.id, b"gina", "r")).await, resolved(1, 0));
    u.db.run(&format!("UPDATE password_resets SET expires_at = {}", u.db.ago(1))).await.unwrap();
    // A mail quota a day old goes; this hour's stays.
    assert_eq!(ask(s, reminder_request(f.app.id, b"mail:gina")).await, resolved(1, 0));
    let dana = new_user(&f, "dana");
    s.create_user(dana, None, &[]).await.unwrap();
    assert_eq!(ask(s, reminder_request(f.app.id, b"mail:dana")).await, resolved(1, 0));
    let older = format!(
        "UPDATE mail_quotas SET window_start = {} WHERE window_start = (SELECT max(window_start) FROM mail_quotas)",
        u.db.ago(DAY_US + 1)
    );
    assert_eq!(u.db.run(&older).await, Ok(1));
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(s.sweep().await.unwrap(), 3);
    assert_eq!(u.db.count("SELECT count(*) FROM mail_quotas").await, 1);
    assert_eq!(s.list_sessions(f.app.id, nu.id, HOUR, None, 100).await.unwrap().len(), 1);
    // A huge lifetime is kept within range.
    let forever = NewSession { max_age: Duration::MAX, ..session("forever") };
    s.create_session(f.app.id, nu.id, forever, Relief::default(), &AuditRecord::new("x", None)).await.unwrap();
    assert_eq!(s.list_sessions(f.app.id, nu.id, HOUR, None, 100).await.unwrap().len(), 2);
}

pub async fn sweep_goes_on_past_a_batch(u: &Under) {
    let s = u.store.as_ref();
    let n = 2 * SWEEP_BATCH + 3;
    u.db.stale_throttles(n).await;
    // Two of them stay: one still blocked, one failing again just now.
    let (future, now) = (u.db.ago(-DAY_US), u.db.ago(0));
    let first = "SELECT key FROM throttles ORDER BY key LIMIT 1";
    let last = "SELECT key FROM throttles ORDER BY key DESC LIMIT 1";
    assert_eq!(u.db.run(&format!("UPDATE throttles SET blocked_until = {future} WHERE key IN ({first})")).await, Ok(1));
    assert_eq!(u.db.run(&format!("UPDATE throttles SET last_failure = {now} WHERE key IN ({last})")).await, Ok(1));
    assert_eq!(s.sweep().await.unwrap(), u64::try_from(n - 2).unwrap());
    assert_eq!(u.db.count("SELECT count(*) FROM throttles").await, 2);
    assert_eq!(s.sweep().await.unwrap(), 0, "nothing left to sweep");
}

pub async fn users_not_under_key_continue_after_the_last(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "rotating").await;
    let other = new_app(s, "rotating other").await;
    let mut old = Vec::new();
    for i in 0..5 {
        let nu = new_user(&f, &format!("old{i}"));
        old.push(nu.id);
        s.create_user(nu, None, &[]).await.unwrap().unwrap();
    }
    s.create_user(new_user(&other, "elsewhere"), None, &[]).await.unwrap().unwrap();
    let new_key = key(f.app.id, "data");
    s.add_current_app_key(&new_key, &AuditRecord::new("key.rotate", Some(f.app.id))).await.unwrap();
    let under_new = NewUser { key_id: new_key.id, ..new_user(&f, "fresh") };
    s.create_user(under_new, None, &[]).await.unwrap().unwrap();
    old.sort();

    // Pages in order of id, each from after the last, of this application's
    // users under another key only.
    let mut after = None;
    let mut pages = Vec::new();
    loop {
        let page = s.users_not_under_key(f.app.id, new_key.id, after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        pages.push(page.iter().map(|u| u.id).collect::<Vec<_>>());
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
    assert_eq!(pages.concat(), old);

    // Resealing the first page leaves the rest, from the start or from any id.
    for sealed in s.users_not_under_key(f.app.id, new_key.id, None, 2).await.unwrap() {
        assert!(s.reseal_user(f.app.id, &sealed, new_key.id).await.unwrap());
    }
    let left = s.users_not_under_key(f.app.id, new_key.id, None, 10).await.unwrap();
    assert_eq!(left.iter().map(|u| u.id).collect::<Vec<_>>(), old[2..]);
    let from_third = s.users_not_under_key(f.app.id, new_key.id, Some(old[2]), 10).await.unwrap();
    assert_eq!(from_third.iter().map(|u| u.id).collect::<Vec<_>>(), old[3..]);
}

pub async fn service_tokens_are_scoped_touched_listed_and_revoked(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "svc").await;
    let other = new_app(s, "svc other").await;
    let token = |hash: &str| NewServiceToken {
        id: Uuid::now_v7(),
        app_id: f.app.id,
        name: "billing sync".into(),
        role: "supervisor".into(),
        token_hash: hash.as_bytes().to_vec(),
    };
    let record = |action: &str, id: Uuid| {
        let mut r = AuditRecord::new(action, Some(f.app.id));
        r.actor = "cli".into();
        r.object_id = Some(id);
        r
    };
    let a = token("hash-a");
    s.create_service_token(&a, &record("token.create", a.id)).await.unwrap();
    assert!(s.list_service_tokens(f.app.id).await.unwrap()[0].last_used_at.is_none(), "not used yet");

    let live = Some(ServiceTokenInfo { token_id: a.id, role: "supervisor".into() });
    assert_eq!(s.lookup_service_token(f.app.id, b"hash-a", HOUR).await.unwrap(), live);
    assert_eq!(s.lookup_service_token(other.app.id, b"hash-a", HOUR).await.unwrap(), None, "scoped");
    assert_eq!(s.lookup_service_token(f.app.id, b"hash-x", HOUR).await.unwrap(), None);
    assert!(s.list_service_tokens(other.app.id).await.unwrap().is_empty());

    // The first use is written; later ones only past `touch_after`.
    let listed = s.list_service_tokens(f.app.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    let row = &listed[0];
    assert_eq!(
        (row.id, row.name.as_str(), row.role.as_str(), row.revoked_at),
        (a.id, "billing sync", "supervisor", None)
    );
    let first_use = row.last_used_at.expect("touched on first use");
    assert!(first_use >= row.created_at);
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.lookup_service_token(f.app.id, b"hash-a", HOUR).await.unwrap().unwrap();
    assert_eq!(s.list_service_tokens(f.app.id).await.unwrap()[0].last_used_at, Some(first_use));
    s.lookup_service_token(f.app.id, b"hash-a", Duration::ZERO).await.unwrap().unwrap();
    assert!(s.list_service_tokens(f.app.id).await.unwrap()[0].last_used_at.unwrap() > first_use);

    // A digest is unique; a role other than supervisor is refused.
    let dup = token("hash-a");
    match s.create_service_token(&dup, &record("token.create", dup.id)).await {
        Err(StoreError::Conflict(c)) => assert_eq!(c, "service_tokens_token_hash_key"),
        other => panic!("{other:?}"),
    }
    let admin = NewServiceToken { role: "admin".into(), ..token("hash-b") };
    assert!(s.create_service_token(&admin, &record("token.create", admin.id)).await.is_err());

    // Revocation: scoped to the application, once, and at once.
    let revoke =
        |app: Uuid, id: Uuid| async move { s.revoke_service_token(app, id, &record("token.revoke", id)).await };
    assert_eq!(revoke(other.app.id, a.id).await.unwrap(), TokenRevocation::Unknown);
    assert_eq!(revoke(f.app.id, Uuid::now_v7()).await.unwrap(), TokenRevocation::Unknown);
    assert_eq!(s.lookup_service_token(f.app.id, b"hash-a", HOUR).await.unwrap(), live, "still live");
    assert_eq!(revoke(f.app.id, a.id).await.unwrap(), TokenRevocation::Revoked);
    assert_eq!(s.lookup_service_token(f.app.id, b"hash-a", Duration::ZERO).await.unwrap(), None);
    assert_eq!(revoke(f.app.id, a.id).await.unwrap(), TokenRevocation::AlreadyRevoked);
    let listed = s.list_service_tokens(f.app.id).await.unwrap();
    assert_eq!(listed.len(), 1, "a revoked token stays listed");
    assert!(listed[0].revoked_at.is_some());

    let trail = chain_is_whole(s).await;
    let actions: Vec<_> =
        trail.iter().filter(|r| r.record.object_id == Some(a.id)).map(|r| r.record.action.as_str()).collect();
    assert_eq!(actions, ["token.create", "token.revoke"], "refused and repeated revocations write nothing");
}

pub async fn keys_rewrap_and_sign_in_attempts(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "rewrap").await;
    // Master key rotation: every key rewrapped at once, with its record.
    let mut keys = s.all_app_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    for k in &mut keys {
        k.wrapped = vec![9; 40];
        k.master_key_id = "mk2".into();
    }
    s.rewrap_app_keys(&keys, &AuditRecord::new("key.rewrap", None)).await.unwrap();
    for k in s.all_app_keys().await.unwrap() {
        assert_eq!((k.wrapped, k.master_key_id.as_str()), (vec![9; 40], "mk2"));
    }
    assert_eq!(s.current_app_key(f.app.id, "index").await.unwrap().unwrap().master_key_id, "mk2");

    // A sign-in's first step: counted, then the credentials (or none).
    let nu = new_user(&f, "ivy");
    s.create_user(nu.clone(), None, &[]).await.unwrap();
    let rule = ThrottleRule { free: 2, max_wait: Duration::from_secs(60), window: HOUR };
    let keys = vec![(b"signin:ivy".to_vec(), rule)];
    match s.sign_in_attempt(&keys, f.app.id, Some(b"ivy")).await.unwrap() {
        SignInAttempt::Go(Some(c)) => assert_eq!((c.user_id, c.password_hash.as_str()), (nu.id, "hash-1")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.sign_in_attempt(&keys, f.app.id, Some(b"nobody")).await.unwrap(), SignInAttempt::Go(None)));
    assert!(matches!(s.sign_in_attempt(&keys, f.app.id, None).await.unwrap(), SignInAttempt::Wait(_)));
    assert_eq!(u.db.failures(b"signin:ivy").await, 2, "the refused attempt is not counted");
    chain_is_whole(s).await;
}

/// Two writers on one user: the version lets exactly one of them in, and
/// the other learns it lost (and re-reads).
pub async fn two_writers_on_one_user(u: &Under) {
    let s = u.store.clone();
    let f = new_app(s.as_ref(), "racing writers").await;
    let nu = new_user(&f, "judy");
    s.create_user(nu.clone(), None, &[]).await.unwrap().unwrap();
    for round in 1..=5 {
        let writers: Vec<_> = (0..4)
            .map(|i| {
                let (s, key) = (s.clone(), f.data_key.id);
                tokio::spawn(async move {
                    let mut c = change(round, key);
                    c.profile_ct = format!("round {round} writer {i}").into_bytes();
                    let audit = [AuditRecord::new("user.update", None)];
                    s.update_user(nu.app_id, nu.id, c, &audit).await.unwrap()
                })
            })
            .collect();
        let mut won = Vec::new();
        for w in writers {
            if let Some(rec) = w.await.unwrap() {
                won.push(rec);
            }
        }
        assert_eq!(won.len(), 1, "round {round}: one writer wins");
        let now = s.get_user(f.app.id, nu.id).await.unwrap().unwrap();
        assert_eq!((now.version, &now.profile_ct), (round + 1, &won[0].profile_ct));
    }
    let trail = chain_is_whole(s.as_ref()).await;
    assert_eq!(trail.iter().filter(|r| r.record.action == "user.update").count(), 5, "the losers wrote nothing");
}

/// Racing sign-ups of one username: one user, the others a conflict.
pub async fn racing_sign_ups(u: &Under) {
    let s = u.store.clone();
    let f = new_app(s.as_ref(), "racing sign-ups").await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            let nu = new_user(&f, "kim");
            tokio::spawn(async move {
                let audit = [AuditRecord::new("user.create", None)];
                s.create_user(nu, Some(session(&format!("tok-kim-{i}"))), &audit).await
            })
        })
        .collect();
    let (mut made, mut taken) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(Some(_)) => made += 1,
            Err(StoreError::Conflict(c)) if c == "users_app_username_key" => taken += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((made, taken), (1, 7));
    let owner = s.credentials(f.app.id, b"kim").await.unwrap().unwrap().user_id;
    assert_eq!(s.list_sessions(f.app.id, owner, HOUR, None, 100).await.unwrap().len(), 1, "only the winner's session");
    let trail = chain_is_whole(s.as_ref()).await;
    assert_eq!(trail.iter().filter(|r| r.record.action == "user.create").count(), 1, "nor its record");
}

/// Concurrent claims of the outbox: each message goes to one sender.
pub async fn claims_of_one_outbox_message(u: &Under) {
    let s = u.store.clone();
    let f = new_app(s.as_ref(), "claims").await;
    for name in ["lee", "max", "ned"] {
        s.create_user(new_user(&f, name), None, &[]).await.unwrap();
        assert_eq!(
            ask(s.as_ref(), reminder_request(f.app.id, format!("mail:{name}").as_bytes())).await,
            resolved(1, 0)
        );
    }
    let senders: Vec<_> = (0..6)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.claim_outbox(2, HOUR).await.unwrap() })
        })
        .collect();
    let mut claimed = Vec::new();
    for t in senders {
        claimed.extend(t.await.unwrap().into_iter().map(|m| m.id));
    }
    claimed.sort();
    let n = claimed.len();
    claimed.dedup();
    assert_eq!((n, claimed.len()), (3, 3), "each message claimed once");
    for id in &claimed {
        s.outbox_sent(*id).await.unwrap();
    }
    assert!(s.claim_outbox(10, Duration::ZERO).await.unwrap().is_empty(), "sent is done");
}

/// The trail's tree: sealed into signed checkpoints that grow and that an
/// altered or removed record, or a removed checkpoint's records, break.
pub async fn the_trail_seals_into_signed_checkpoints(u: &Under) {
    use crate::audit::{check, checkpoint::CheckpointKey};
    let s = u.store.as_ref();
    let key =
        CheckpointKey::from_master(&crate::crypto::MasterKey::parse(&format!("{}=", "A".repeat(43))).unwrap()).unwrap();
    assert!(s.seal_trail(&key, 100).await.unwrap().is_none(), "nothing to seal");
    let app = Some(Uuid::now_v7());
    let records: Vec<AuditRecord> = (0..7).map(|i| AuditRecord::new(&format!("user.read{i}"), app)).collect();
    s.append_audit(&records[..3]).await.unwrap();
    let first = sealed(s, &key, 100).await;
    assert_eq!(first.tree_size, 3);
    s.append_audit(&records[3..]).await.unwrap();
    // At most `max` at a time: the rest waits for the next checkpoint.
    assert_eq!(sealed(s, &key, 2).await.tree_size, 5);
    let last = sealed(s, &key, 100).await;
    assert_eq!(last.tree_size, 7);
    assert_eq!(s.latest_checkpoint().await.unwrap(), Some(last.clone()));
    assert_eq!(s.checkpoints(0, 10).await.unwrap().iter().map(|c| c.tree_size).collect::<Vec<_>>(), vec![3, 5, 7]);
    let ordered = s.trail_in_tree_order(crate::store::TREE_START, 100).await.unwrap();
    assert_eq!(
        ordered.iter().map(|r| r.record.id).collect::<Vec<_>>(),
        records.iter().map(|r| r.id).collect::<Vec<_>>()
    );
    let report = check::check(s, &key, None).await.unwrap().unwrap();
    assert_eq!((report.records, report.checkpoints, report.covered), (7, 3, 7));

    // Another deployment's key does not vouch for these checkpoints.
    let other =
        CheckpointKey::from_master(&crate::crypto::MasterKey::parse(&format!("{}=", "B".repeat(42) + "A")).unwrap())
            .unwrap();
    let e = check::check(s, &other, None).await.unwrap().unwrap_err();
    assert!(e.contains("does not verify"), "{e}");

    // An operator with the owner's rights alters a record behind the trigger.
    u.db.script(&u.db.without_trail_triggers("UPDATE audit_events SET outcome = 'denied' WHERE action = 'user.read4'"))
        .await
        .unwrap();
    let e = check::check(s, &key, None).await.unwrap().unwrap_err();
    assert!(e.contains("altered"), "{e}");
}

/// A transaction that commits after a later one is not passed over: the
/// sealer waits for it (PostgreSQL; SQLite has one writer at a time).
pub async fn a_late_commit_is_sealed_in_its_place(u: &Under) {
    use crate::audit::{check, checkpoint::CheckpointKey};
    let super::Db::Postgres(pool) = &u.db else { return };
    let s = u.store.as_ref();
    let key =
        CheckpointKey::from_master(&crate::crypto::MasterKey::parse(&format!("{}=", "C".repeat(42) + "A")).unwrap())
            .unwrap();
    let early = AuditRecord::new("user.read.early", None);
    let late = AuditRecord::new("user.read.late", None);
    let mut tx = pool.begin().await.unwrap();
    crate::store::trail::postgres::append(&mut *tx, std::slice::from_ref(&early)).await.unwrap();
    // A later transaction commits first.
    s.append_audit(std::slice::from_ref(&late)).await.unwrap();
    assert!(s.seal_trail(&key, 100).await.unwrap().is_none(), "the later record waits for the earlier transaction");
    tx.commit().await.unwrap();
    let c = sealed(s, &key, 100).await;
    assert_eq!(c.tree_size, 2);
    let ordered = s.trail_in_tree_order(crate::store::TREE_START, 10).await.unwrap();
    assert_eq!(ordered.iter().map(|r| r.record.id).collect::<Vec<_>>(), vec![early.id, late.id]);
    check::check(s, &key, None).await.unwrap().unwrap();
}

/// The next checkpoint. On PostgreSQL, a writing transaction anywhere on
/// the server (another test's database too) holds sealing back until it
/// ends: wait for it.
async fn sealed(s: &dyn Store, key: &dyn CheckpointSigner, max: i64) -> Checkpoint {
    for _ in 0..200 {
        if let Some(c) = s.seal_trail(key, max).await.unwrap() {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing was sealed in 10 s");
}

pub async fn imports_skip_known_usernames_and_rehash_in_place(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "importing").await;
    let everyone = GroupRecord { id: Uuid::now_v7(), name: "everyone".into(), is_default: true };
    let nurses = GroupRecord { id: Uuid::now_v7(), name: "nurses".into(), is_default: false };
    for g in [&everyone, &nurses] {
        s.create_group(f.app.id, g, &AuditRecord::new("group.create", Some(f.app.id))).await.unwrap();
    }
    assert_eq!(s.groups_named(f.app.id, "nurses").await.unwrap()[0].id, nurses.id);
    assert!(s.groups_named(f.app.id, "Nurses").await.unwrap().is_empty(), "names match exactly");
    s.create_user(new_user(&f, "known"), None, &[]).await.unwrap();

    let joined = chrono::DateTime::parse_from_rfc3339("2019-03-04T05:06:07Z").unwrap().to_utc();
    let imported = |name: &str, groups: Vec<Uuid>| ImportedUser {
        user: NewUser { password_hash: format!("$2b$04${name}"), ..new_user(&f, name) },
        supervisor: name == "boss",
        created_at: joined,
        groups,
    };
    let batch = [imported("boss", vec![nurses.id]), imported("known", vec![]), imported("plain", vec![])];
    let mut twice = imported("plain", vec![]);
    twice.user.id = Uuid::now_v7();
    let batch = [batch.as_slice(), &[twice]].concat();
    let records: Vec<AuditRecord> = batch
        .iter()
        .map(|i| {
            let mut r = AuditRecord::new("user.import", Some(f.app.id));
            r.subject_id = Some(i.user.id);
            r
        })
        .collect();
    let ids = s.import_users(f.app.id, f.data_key.id, &batch, &records).await.unwrap().unwrap();
    assert_eq!(ids.len(), 2, "a known username and a repeat within the batch are skipped");
    s.analyze_users().await.unwrap();
    let boss = s.get_user(f.app.id, batch[0].user.id).await.unwrap().unwrap();
    assert!(boss.supervisor);
    assert_eq!(boss.created_at, joined);
    let mut groups: Vec<Uuid> =
        s.list_user_groups(f.app.id, boss.id, None, 10).await.unwrap().iter().map(|g| g.id).collect();
    groups.sort();
    let mut expected = vec![everyone.id, nurses.id];
    expected.sort();
    assert_eq!(groups, expected, "default groups and its own");
    assert_eq!(s.list_user_groups(f.app.id, batch[2].user.id, None, 10).await.unwrap().len(), 1);
    let written = s
        .audit_records(&AuditFilter { app_id: Some(f.app.id), limit: 100, ..Default::default() })
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.record.action == "user.import")
        .count();
    assert_eq!(written, 2, "records of the users written only");
    let secrets = s.user_secrets(f.app.id, &[boss.id, Uuid::now_v7()]).await.unwrap();
    assert_eq!(secrets.len(), 1);
    assert_eq!(
        (secrets[0].username_ct.as_slice(), secrets[0].password_hash.as_str()),
        (b"ct:boss".as_slice(), "$2b$04$boss")
    );
    assert!(s.user_secrets(Uuid::now_v7(), &[boss.id]).await.unwrap().is_empty(), "scoped to the application");

    // A rotated-away key writes nothing.
    let new_key = key(f.app.id, "data");
    s.add_current_app_key(&new_key, &AuditRecord::new("key.rotate", Some(f.app.id))).await.unwrap();
    let late = [imported("late", vec![])];
    assert!(s.import_users(f.app.id, f.data_key.id, &late, &[]).await.unwrap().is_none());
    assert!(s.credentials(f.app.id, b"late").await.unwrap().is_none());

    // A sign-in replaces the hash it checked, and only that one.
    let signed_in = AuditRecord::new("session.sign_in", Some(f.app.id));
    let rehash = Rehash { old: "$2b$04$boss", new: "$argon2id$new" };
    let relief = Relief { rehash: Some(rehash), ..Relief::default() };
    s.create_session(f.app.id, boss.id, session("boss-1"), relief, &signed_in).await.unwrap();
    assert_eq!(s.credentials(f.app.id, b"boss").await.unwrap().unwrap().password_hash, "$argon2id$new");
    let stale = Relief { rehash: Some(Rehash { old: "$2b$04$boss", new: "$argon2id$other" }), ..Relief::default() };
    let again = AuditRecord::new("session.sign_in", Some(f.app.id));
    s.create_session(f.app.id, boss.id, session("boss-2"), stale, &again).await.unwrap();
    assert_eq!(s.credentials(f.app.id, b"boss").await.unwrap().unwrap().password_hash, "$argon2id$new");
}

/// Walks an id-ordered listing `size` at a time, as the services page it:
/// each page starts after the last id of the one before, until a page
/// comes back short. Every page holds at most `size`.
async fn walk<F, Fut>(size: i64, mut page: F) -> Vec<Uuid>
where
    F: FnMut(Option<Uuid>, i64) -> Fut,
    Fut: std::future::Future<Output = Vec<Uuid>>,
{
    let (mut all, mut after) = (Vec::new(), None);
    loop {
        let got = page(after, size).await;
        assert!(got.len() as i64 <= size, "a page of {} for {size}", got.len());
        all.extend(got.iter().copied());
        if (got.len() as i64) < size {
            return all;
        }
        after = got.last().copied();
    }
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

pub async fn members_page_in_user_id_order(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "app").await;
    let other = new_app(s, "other").await;
    let audit = || AuditRecord::new("group.member_add", Some(f.app.id));
    let (g, h) = (
        GroupRecord { id: Uuid::now_v7(), name: "g".into(), is_default: false },
        GroupRecord { id: Uuid::now_v7(), name: "h".into(), is_default: false },
    );
    s.create_group(f.app.id, &g, &audit()).await.unwrap();
    s.create_group(f.app.id, &h, &audit()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..7 {
        let nu = new_user(&f, &format!("member-{i}"));
        s.create_user(nu.clone(), None, &[]).await.unwrap();
        ids.push(nu.id);
    }
    // Joined newest first: the pages still go in user id order.
    for id in ids.iter().rev() {
        assert!(s.add_member(f.app.id, g.id, *id, &audit()).await.unwrap());
    }
    let outsider = new_user(&f, "only-in-h");
    s.create_user(outsider.clone(), None, &[]).await.unwrap();
    s.add_member(f.app.id, h.id, outsider.id, &audit()).await.unwrap();
    s.create_user(new_user(&other, "elsewhere"), None, &[]).await.unwrap();

    for size in [1, 3, 7, 100] {
        let got = walk(size, |after, n| async move { s.list_members(f.app.id, g.id, after, n).await.unwrap() }).await;
        assert_eq!(got, sorted(ids.clone()), "pages of {size}: each member once, in id order");
    }
    let last = *sorted(ids.clone()).last().unwrap();
    assert!(s.list_members(f.app.id, g.id, Some(last), 10).await.unwrap().is_empty(), "nothing after the last");
    assert_eq!(s.list_members(f.app.id, h.id, None, 10).await.unwrap(), vec![outsider.id]);
    assert!(s.list_members(other.app.id, g.id, None, 10).await.unwrap().is_empty(), "scoped to the application");
}

pub async fn groups_page_in_id_order(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "app").await;
    let other = new_app(s, "other").await;
    let audit = || AuditRecord::new("group.create", Some(f.app.id));
    let (mut all, mut defaults) = (Vec::new(), Vec::new());
    for i in 0..6 {
        let g = GroupRecord { id: Uuid::now_v7(), name: format!("group {i}"), is_default: i % 2 == 0 };
        s.create_group(f.app.id, &g, &audit()).await.unwrap();
        all.push(g.id);
        if g.is_default {
            defaults.push(g.id);
        }
    }
    let theirs = GroupRecord { id: Uuid::now_v7(), name: "theirs".into(), is_default: true };
    s.create_group(other.app.id, &theirs, &audit()).await.unwrap();

    for size in [1, 2, 6, 100] {
        let got = walk(size, |after, n| async move {
            s.list_groups(f.app.id, false, after, n).await.unwrap().iter().map(|g| g.id).collect()
        })
        .await;
        assert_eq!(got, all, "pages of {size}: each group once, oldest first");
        let got = walk(size, |after, n| async move {
            s.list_groups(f.app.id, true, after, n).await.unwrap().iter().map(|g| g.id).collect()
        })
        .await;
        assert_eq!(got, defaults, "pages of {size}: each default group once");
    }
    let page = s.list_groups(f.app.id, false, None, 1).await.unwrap();
    assert_eq!((page[0].name.as_str(), page[0].is_default), ("group 0", true));
    let last = all.last().copied();
    assert!(s.list_groups(f.app.id, false, last, 10).await.unwrap().is_empty(), "nothing after the last");
    assert!(s.list_groups(f.app.id, true, last, 10).await.unwrap().is_empty());
}

pub async fn user_groups_page_in_group_id_order(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "app").await;
    let audit = || AuditRecord::new("group.member_add", Some(f.app.id));
    let (nu, neighbour) = (new_user(&f, "joiner"), new_user(&f, "neighbour"));
    s.create_user(nu.clone(), None, &[]).await.unwrap();
    s.create_user(neighbour.clone(), None, &[]).await.unwrap();
    let mut groups = Vec::new();
    for i in 0..5 {
        let g = GroupRecord { id: Uuid::now_v7(), name: format!("group {i}"), is_default: false };
        s.create_group(f.app.id, &g, &audit()).await.unwrap();
        groups.push(g.id);
    }
    // Joined newest group first; the neighbour in one other group only.
    for g in groups.iter().rev() {
        s.add_member(f.app.id, *g, nu.id, &audit()).await.unwrap();
    }
    let lone = GroupRecord { id: Uuid::now_v7(), name: "lone".into(), is_default: false };
    s.create_group(f.app.id, &lone, &audit()).await.unwrap();
    s.add_member(f.app.id, lone.id, neighbour.id, &audit()).await.unwrap();

    for size in [1, 2, 5, 100] {
        let got = walk(size, |after, n| async move {
            s.list_user_groups(f.app.id, nu.id, after, n).await.unwrap().iter().map(|g| g.id).collect()
        })
        .await;
        assert_eq!(got, groups, "pages of {size}: each group once, in id order");
    }
    let page = s.list_user_groups(f.app.id, nu.id, None, 1).await.unwrap();
    assert_eq!(page[0].name, "group 0");
    assert!(s.list_user_groups(f.app.id, nu.id, groups.last().copied(), 10).await.unwrap().is_empty());
    let theirs = s.list_user_groups(f.app.id, neighbour.id, None, 10).await.unwrap();
    assert_eq!(theirs.iter().map(|g| g.id).collect::<Vec<_>>(), vec![lone.id]);
}

pub async fn sessions_page_in_id_order(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "app").await;
    let (nu, neighbour) = (new_user(&f, "traveller"), new_user(&f, "neighbour"));
    s.create_user(nu.clone(), None, &[]).await.unwrap();
    s.create_user(neighbour.clone(), Some(session("tok-neighbour")), &[]).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let sess = session(&format!("tok-{i}"));
        let audit = AuditRecord::new("session.sign_in", Some(f.app.id));
        s.create_session(f.app.id, nu.id, sess.clone(), Relief::default(), &audit).await.unwrap();
        ids.push(sess.id);
    }
    for size in [1, 2, 5, 100] {
        let got = walk(size, |after, n| async move {
            s.list_sessions(f.app.id, nu.id, HOUR, after, n).await.unwrap().iter().map(|r| r.id).collect()
        })
        .await;
        assert_eq!(got, ids, "pages of {size}: each session once, oldest first");
    }
    assert!(s.list_sessions(f.app.id, nu.id, HOUR, ids.last().copied(), 10).await.unwrap().is_empty());
    // One session found by the page of one from just before its id, as
    // VerifySession finds it.
    let just_before = Uuid::from_u128(ids[2].as_u128() - 1);
    let one = s.list_sessions(f.app.id, nu.id, HOUR, Some(just_before), 1).await.unwrap();
    assert_eq!(one.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ids[2]]);
    assert!(s.list_sessions(f.app.id, nu.id, Duration::ZERO, None, 10).await.unwrap().is_empty(), "only live ones");
}

/// A user's MRN indexes live in `user_mrns`, written with the row by create,
/// update (the whole set replaced) and import, gone with it on delete, and
/// the listing's `mrn_bidx` filter finds through them; users written before
/// the table are found by `users_without_mrn_index` and indexed once.
pub async fn mrn_indexes_follow_the_user_row(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "clinic").await;
    let other = new_app(s, "other clinic").await;
    let with = |name: &str, f: &super::Fixture, mrns: &[&str]| NewUser {
        mrn_bidx: mrns.iter().map(|m| m.as_bytes().to_vec()).collect(),
        ..new_user(f, name)
    };
    let mrn_rows = || u.db.count("SELECT count(*) FROM user_mrns");
    let by_mrn = |app: Uuid, mrn: &str, after: Option<Uuid>| {
        let filter = UserListFilter { mrn_bidx: Some(mrn.as_bytes().to_vec()), ..Default::default() };
        async move {
            let rows = s.list_users(app, &filter, after, 100).await.unwrap();
            rows.iter().map(|r| r.id).collect::<Vec<_>>()
        }
    };

    // Create: two users share m1, the first has m2 as well; another
    // application's user with m1 is not theirs to find.
    let a = with("ann", &f, &["m1", "m2"]);
    let b = with("ben", &f, &["m1"]);
    for nu in [&a, &b] {
        s.create_user(nu.clone(), None, &[]).await.unwrap().unwrap();
    }
    s.create_user(with("cat", &other, &["m1"]), None, &[]).await.unwrap().unwrap();
    assert_eq!(mrn_rows().await, 4);
    assert_eq!(by_mrn(f.app.id, "m1", None).await, vec![a.id, b.id], "in id order, this application's only");
    assert_eq!(by_mrn(f.app.id, "m2", None).await, vec![a.id]);
    assert_eq!(by_mrn(other.app.id, "m1", None).await.len(), 1);
    assert!(by_mrn(f.app.id, "nope", None).await.is_empty());
    // With the other filters and a page's start: every parameter in its place.
    assert_eq!(by_mrn(f.app.id, "m1", Some(a.id)).await, vec![b.id]);
    let narrow = UserListFilter {
        email_bidx: Some(b"mail:ben".to_vec()),
        username_bidx: Some(b"ben".to_vec()),
        active: Some(true),
        mrn_bidx: Some(b"m1".to_vec()),
        ..Default::default()
    };
    let found = s.list_users(f.app.id, &narrow, None, 100).await.unwrap();
    assert_eq!(found.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b.id]);
    assert!(
        s.list_users(f.app.id, &UserListFilter { active: Some(false), ..narrow }, None, 100).await.unwrap().is_empty()
    );

    // Update: the new set replaces the old; a lost compare-and-set changes
    // nothing.
    let mut c = change(1, f.data_key.id);
    c.mrn_bidx = vec![b"m2".to_vec(), b"m3".to_vec()];
    s.update_user(f.app.id, a.id, c, &[]).await.unwrap().unwrap();
    assert_eq!(by_mrn(f.app.id, "m1", None).await, vec![b.id], "the old MRN no longer finds them");
    assert_eq!(by_mrn(f.app.id, "m2", None).await, vec![a.id], "the kept one still does");
    assert_eq!(by_mrn(f.app.id, "m3", None).await, vec![a.id]);
    let mut stale = change(1, f.data_key.id);
    stale.mrn_bidx = vec![b"m9".to_vec()];
    assert!(s.update_user(f.app.id, a.id, stale, &[]).await.unwrap().is_none());
    assert!(by_mrn(f.app.id, "m9", None).await.is_empty());
    assert_eq!(by_mrn(f.app.id, "m3", None).await, vec![a.id]);
    // An update to no MRNs leaves none.
    s.update_user(f.app.id, b.id, change(1, f.data_key.id), &[]).await.unwrap().unwrap();
    assert!(by_mrn(f.app.id, "m1", None).await.is_empty());

    // Import: the users inserted get theirs; a skipped one (known username)
    // writes none.
    let joined = chrono::Utc::now();
    let imported = |nu: NewUser| ImportedUser { user: nu, supervisor: false, created_at: joined, groups: vec![] };
    let dan = with("dan", &f, &["m4", "m5"]);
    let batch = [imported(dan.clone()), imported(with("ann", &f, &["m6"]))];
    let ids = s.import_users(f.app.id, f.data_key.id, &batch, &[]).await.unwrap().unwrap();
    assert_eq!(ids, vec![dan.id]);
    assert_eq!(by_mrn(f.app.id, "m4", None).await, vec![dan.id]);
    assert_eq!(by_mrn(f.app.id, "m5", None).await, vec![dan.id]);
    assert!(by_mrn(f.app.id, "m6", None).await.is_empty(), "the skipped user's MRN is not indexed");

    // Nothing under a rotated-away key.
    let new_key = key(f.app.id, "data");
    s.add_current_app_key(&new_key, &AuditRecord::new("key.rotate", Some(f.app.id))).await.unwrap();
    let before = mrn_rows().await;
    assert!(s.create_user(with("eve", &f, &["m7"]), None, &[]).await.unwrap().is_none());
    let late = [imported(with("fay", &f, &["m8"]))];
    assert!(s.import_users(f.app.id, f.data_key.id, &late, &[]).await.unwrap().is_none());
    assert_eq!(mrn_rows().await, before);

    // Delete: the user's indexes go with them.
    assert!(s.delete_user(f.app.id, dan.id, &AuditRecord::new("user.delete", Some(f.app.id))).await.unwrap());
    assert!(by_mrn(f.app.id, "m4", None).await.is_empty());
    assert_eq!(mrn_rows().await, before - 2);

    // Every user written above is indexed (with no MRNs, too).
    assert!(s.users_without_mrn_index(None, 100).await.unwrap().is_empty());
    // Users from before the table: unflagged, with no rows.
    u.db.script("DELETE FROM user_mrns; UPDATE users SET mrns_indexed = false").await.unwrap();
    let mut left = Vec::new();
    let mut after = None;
    loop {
        let page = s.users_without_mrn_index(after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        left.extend(page.iter().map(|r| r.id));
    }
    let mut sorted = left.clone();
    sorted.sort();
    assert_eq!(left, sorted, "in id order, page after page");
    assert_eq!(left.len(), 3, "ann, ben and cat, of every application");
    assert!(s.index_mrns(f.app.id, a.id, &[b"m2".to_vec(), b"m3".to_vec()]).await.unwrap());
    assert!(!s.index_mrns(f.app.id, a.id, &[b"m9".to_vec()]).await.unwrap(), "once");
    assert!(!s.index_mrns(other.app.id, b.id, &[b"m9".to_vec()]).await.unwrap(), "scoped to the application");
    assert_eq!(by_mrn(f.app.id, "m3", None).await, vec![a.id]);
    assert!(by_mrn(f.app.id, "m9", None).await.is_empty());
    // A write that got there first indexed the user itself: the backfill's
    // (read before it) is not applied.
    let mut c = change(2, new_key.id);
    c.mrn_bidx = vec![b"m1".to_vec()];
    s.update_user(f.app.id, b.id, c, &[]).await.unwrap().unwrap();
    assert!(!s.index_mrns(f.app.id, b.id, &[b"stale".to_vec()]).await.unwrap());
    assert_eq!(by_mrn(f.app.id, "m1", None).await, vec![b.id]);
    assert!(by_mrn(f.app.id, "stale", None).await.is_empty());
    let still: Vec<Uuid> = s.users_without_mrn_index(None, 100).await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(still.len(), 1, "only cat is left");
    assert!(!still.contains(&a.id) && !still.contains(&b.id));
}

/// Username indexes from before RFC 8265 comparison: every write flags its
/// row; unflagged ones are found by `usernames_to_rekey` in id order, and
/// `rekey_username` gives one its new index once, leaves a row renamed
/// since alone, and keeps the old index (flagged) when the new one is
/// another user's.
pub async fn usernames_are_rekeyed_once(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "names").await;
    let other = new_app(s, "other names").await;
    let (ada, bob, big_zed, zed) =
        (new_user(&f, "ａda"), new_user(&f, "bob"), new_user(&f, "Zed"), new_user(&f, "zed"));
    for nu in [&ada, &bob, &big_zed, &zed] {
        s.create_user(nu.clone(), None, &[]).await.unwrap().unwrap();
    }
    let cat = new_user(&other, "cat");
    s.create_user(cat.clone(), None, &[]).await.unwrap().unwrap();
    let dan = new_user(&f, "dan");
    let imported =
        ImportedUser { user: dan.clone(), supervisor: false, created_at: chrono::Utc::now(), groups: vec![] };
    s.import_users(f.app.id, f.data_key.id, &[imported], &[]).await.unwrap().unwrap();
    assert!(s.usernames_to_rekey(None, 100).await.unwrap().is_empty(), "create and import flag their rows");

    // As written before the flag existed.
    u.db.script("UPDATE users SET username_precis = false").await.unwrap();
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let page = s.usernames_to_rekey(after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        rows.extend(page);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "in id order, page after page");
    assert_eq!(ids.len(), 6, "of every application");
    let row = |id: Uuid| rows.iter().find(|r| r.id == id).unwrap().clone();
    let a = row(ada.id);
    assert_eq!(
        (a.app_id, a.username_ct.as_slice(), a.username_bidx.as_slice()),
        (f.app.id, ada.username_ct.as_slice(), ada.username_bidx.as_slice())
    );
    let who =
        |name: &'static str| async move { s.credentials(f.app.id, name.as_bytes()).await.unwrap().map(|c| c.user_id) };

    // A new index, once.
    assert_eq!(s.rekey_username(&a, b"ada").await.unwrap(), Rekeyed::Done);
    assert_eq!(who("ada").await, Some(ada.id));
    assert_eq!(who("ａda").await, None);
    assert_eq!(s.rekey_username(&a, b"ada-again").await.unwrap(), Rekeyed::Skipped, "once");
    assert_eq!(who("ada").await, Some(ada.id));
    // The same index: flagged.
    assert_eq!(s.rekey_username(&row(cat.id), b"cat").await.unwrap(), Rekeyed::Done);
    // Another user holds the new index: both keep theirs.
    assert_eq!(s.rekey_username(&row(big_zed.id), b"zed").await.unwrap(), Rekeyed::Taken);
    assert_eq!(who("Zed").await, Some(big_zed.id));
    assert_eq!(who("zed").await, Some(zed.id));
    // Renamed since it was read: the rename stands.
    let mut c = change(1, f.data_key.id);
    c.username = Some((b"ct:bobby".to_vec(), b"bobby".to_vec()));
    s.update_user(f.app.id, bob.id, c, &[]).await.unwrap().unwrap();
    assert_eq!(s.rekey_username(&row(bob.id), b"bob-new").await.unwrap(), Rekeyed::Skipped);
    assert_eq!(who("bobby").await, Some(bob.id));
    assert_eq!(who("bob-new").await, None);

    let left: Vec<Uuid> = s.usernames_to_rekey(None, 100).await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(left.len(), 2, "zed and dan are left");
    assert!(left.contains(&zed.id) && left.contains(&dan.id));
}

/// A change to a user carries its notices and, for a deactivation, voids
/// the user's reset links, in its own transaction: nothing of either when
/// the compare-and-set loses. A success outside sign-in relieves the
/// throttles as a sign-in does.
pub async fn user_changes_void_resets_and_queue_notices(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "notices").await;
    let nu = new_user(&f, "nora");
    s.create_user(nu.clone(), Some(session("tok-n")), &[]).await.unwrap();
    // A reset link, issued as the mail sender issues one.
    let request = reset_request(f.app.id, b"nora", "r1");
    s.queue_mail_request(&request, &request_audit(&request)).await.unwrap();
    let audit = AuditRecord::new("user.password_reset_request", Some(f.app.id));
    for c in s.claim_mail_requests(10, HOUR).await.unwrap() {
        assert_eq!(s.resolve_mail_request(&c, THREE_AN_HOUR, &audit).await.unwrap(), resolved(1, 0));
    }
    let outbox = |kind: &'static str| async move {
        u.db.count(&format!("SELECT count(*) FROM outbox WHERE kind = '{kind}'")).await
    };
    let notice = |kind: &'static str| QueuedMail { id: Uuid::now_v7(), kind, payload_ct: b"to".to_vec() };

    // A lost compare-and-set writes neither the mail nor the voiding.
    let mut stale = change(99, f.data_key.id);
    stale.mail = vec![notice(PASSWORD_CHANGED)];
    stale.void_resets = true;
    assert!(s.update_user(f.app.id, nu.id, stale, &[]).await.unwrap().is_none());
    assert_eq!(outbox(PASSWORD_CHANGED).await, 0);
    let live = ResetCheck::Live { app_id: f.app.id, user_id: nu.id };
    assert_eq!(s.reset_password(b"r1", None).await.unwrap(), live);

    // A change with both notices queues both, sealed payload kept; the reset
    // link lives on while the user stays active.
    let mut c = change(1, f.data_key.id);
    c.mail = vec![notice(PASSWORD_CHANGED), notice(EMAIL_CHANGED)];
    s.update_user(f.app.id, nu.id, c, &[]).await.unwrap().unwrap();
    let mut claimed = s.claim_outbox(10, HOUR).await.unwrap();
    claimed.retain(|m| m.kind != "password_reset");
    let mut kinds: Vec<&str> = claimed.iter().map(|m| m.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, [EMAIL_CHANGED, PASSWORD_CHANGED]);
    assert!(claimed.iter().all(|m| m.user_id == nu.id && m.payload_ct.as_deref() == Some(b"to")));
    assert_eq!(s.reset_password(b"r1", None).await.unwrap(), live);

    // A deactivation voids the links (and ends the sessions).
    let mut off = change(2, f.data_key.id);
    off.active = false;
    off.void_resets = true;
    off.end_sessions = Some(EndSessions { keep: None });
    s.update_user(f.app.id, nu.id, off, &[]).await.unwrap().unwrap();
    assert_eq!(s.reset_password(b"r1", None).await.unwrap(), ResetCheck::Unknown);
    assert_eq!(u.db.count("SELECT count(*) FROM password_resets").await, 0);
    assert_eq!(outbox("password_reset").await, 0, "the link's mail not yet sent goes with it");
    assert_eq!(outbox(EMAIL_CHANGED).await, 1, "other mail stays");
    assert!(s.list_sessions(f.app.id, nu.id, HOUR, None, 100).await.unwrap().is_empty());

    // Relief: one key forgotten, one attempt off the other.
    let rule = ThrottleRule { free: 5, max_wait: Duration::from_secs(60), window: HOUR };
    let keys = vec![(b"re-user".to_vec(), rule), (b"re-addr".to_vec(), rule)];
    for _ in 0..3 {
        assert_eq!(s.throttle_attempt(&keys).await.unwrap(), None);
    }
    s.throttle_relieved(b"re-user", Some(b"re-addr")).await.unwrap();
    assert_eq!((u.db.failures(b"re-user").await, u.db.failures(b"re-addr").await), (0, 2));
    s.throttle_relieved(b"re-user", None).await.unwrap();
    assert_eq!(u.db.failures(b"re-addr").await, 2);
    chain_is_whole(s).await;
}
