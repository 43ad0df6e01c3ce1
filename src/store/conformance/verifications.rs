//! The contract of [`VerificationStore`].

use uuid::Uuid;

use super::cases::{THREE_AN_HOUR, ask, reset_request, resolved};
use super::{Fixture, HOUR, Under, chain_is_whole, change, new_app, new_user};
use crate::store::trail::record::AuditRecord;
use crate::store::*;

fn link_audit() -> AuditRecord {
    AuditRecord::new("email.verified", None)
}

fn verify_mail() -> QueuedMail {
    QueuedMail { id: Uuid::now_v7(), kind: VERIFY_EMAIL, payload_ct: b"sealed".to_vec() }
}

/// A user of the fixture with the address `mail:{name}` (as `new_user`).
async fn user(s: &dyn Store, f: &Fixture, name: &str) -> NewUser {
    let nu = new_user(f, name);
    s.create_user(nu.clone(), None, &[]).await.unwrap().unwrap();
    nu
}

async fn issue(s: &dyn Store, nu: &NewUser, token: &[u8], bidx: &[u8], expires: chrono::DateTime<chrono::Utc>) {
    s.issue_verification(nu.app_id, nu.id, token, bidx, expires).await.unwrap();
}

pub async fn verification_links_are_bound_to_the_address(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "verify app").await;
    let later = chrono::Utc::now() + chrono::Duration::hours(24);

    // The setting: never chosen, then each value, and no such app.
    assert_eq!(s.verify_email_mode(f.app.id).await.unwrap(), Some(VerifyMode::Unset));
    for mode in [VerifyMode::Required, VerifyMode::Off, VerifyMode::Optional] {
        assert!(
            s.set_verify_email_mode(f.app.id, mode, &AuditRecord::new("app.update", Some(f.app.id))).await.unwrap()
        );
        assert_eq!(s.verify_email_mode(f.app.id).await.unwrap(), Some(mode));
    }
    let nobody = Uuid::now_v7();
    assert!(!s.set_verify_email_mode(nobody, VerifyMode::Off, &AuditRecord::new("app.update", None)).await.unwrap());
    assert_eq!(s.verify_email_mode(nobody).await.unwrap(), None);

    // A sign-up's mail is queued with the user, in its transaction.
    let nu = new_user(&f, "vera");
    s.create_user_mailing(nu.clone(), None, &[verify_mail()], &[]).await.unwrap().unwrap();
    let queued = s.claim_outbox(10, HOUR).await.unwrap();
    assert_eq!(queued.iter().map(|m| (m.kind.as_str(), m.user_id)).collect::<Vec<_>>(), [(VERIFY_EMAIL, nu.id)]);
    assert_eq!(queued[0].payload_ct.as_deref(), Some(b"sealed".as_slice()));
    // Whether the row says its primary is verified (none: no such row).
    let verified = |id| async move { s.get_user(f.app.id, id).await.unwrap().map(|r| r.email_verified) };
    assert_eq!(verified(nu.id).await, Some(false));

    // An unknown link does nothing, and is not recorded.
    assert_eq!(s.verify_email(b"nope", &link_audit()).await.unwrap(), VerifyCheck::Unknown);

    // A link issued twice (a retried mail) is one link; used, it verifies
    // the address and is gone, with every other link of the user.
    let bidx = nu.email_bidx.clone().unwrap();
    issue(s, &nu, b"t1", &bidx, later).await;
    issue(s, &nu, b"t1", &bidx, later).await;
    issue(s, &nu, b"t2", &bidx, later).await;
    let ok = VerifyCheck::Verified { app_id: f.app.id, user_id: nu.id };
    let version = s.get_user(f.app.id, nu.id).await.unwrap().unwrap().version;
    assert_eq!(s.verify_email(b"t1", &link_audit()).await.unwrap(), ok);
    let row = s.get_user(f.app.id, nu.id).await.unwrap().unwrap();
    assert!(row.email_verified);
    assert_eq!(row.version, version + 1, "a change of the row: a concurrent update re-reads");
    assert_eq!(s.verify_email(b"t1", &link_audit()).await.unwrap(), VerifyCheck::Unknown, "single use");
    assert_eq!(s.verify_email(b"t2", &link_audit()).await.unwrap(), VerifyCheck::Unknown, "used up with it");

    // A new primary is not verified; a link for the old one verifies nothing.
    issue(s, &nu, b"old", &bidx, later).await;
    let mut c = change(version + 1, f.data_key.id);
    c.email_bidx = Some(b"mail:new".to_vec());
    let changed = s.update_user(f.app.id, nu.id, c, &[]).await.unwrap().unwrap();
    assert!(!changed.email_verified, "the row the change returns says so");
    assert_eq!(verified(nu.id).await, Some(false));
    assert_eq!(
        s.verify_email(b"old", &link_audit()).await.unwrap(),
        VerifyCheck::Stale { app_id: f.app.id, user_id: nu.id }
    );
    assert_eq!(s.verify_email(b"old", &link_audit()).await.unwrap(), VerifyCheck::Unknown, "voided");
    assert_eq!(verified(nu.id).await, Some(false));

    // An expired link is refused and goes; the sweep takes the others.
    issue(s, &nu, b"late", b"mail:new", chrono::Utc::now() - chrono::Duration::seconds(1)).await;
    assert_eq!(
        s.verify_email(b"late", &link_audit()).await.unwrap(),
        VerifyCheck::Expired { app_id: f.app.id, user_id: nu.id }
    );
    issue(s, &nu, b"late2", b"mail:new", chrono::Utc::now() - chrono::Duration::seconds(1)).await;
    issue(s, &nu, b"live", b"mail:new", later).await;
    assert_eq!(s.sweep_verifications().await.unwrap(), 1);
    assert_eq!(s.verify_email(b"live", &link_audit()).await.unwrap(), ok);
    assert_eq!(verified(nu.id).await, Some(true));
    // Listings read the same rows.
    let listed = s.list_users(f.app.id, &UserListFilter::default(), None, 10).await.unwrap();
    assert!(listed.iter().any(|r| r.id == nu.id && r.email_verified));

    // A deleted user takes their links and verification along.
    issue(s, &nu, b"gone", b"mail:new", later).await;
    assert!(s.delete_user(f.app.id, nu.id, &AuditRecord::new("user.delete", Some(f.app.id))).await.unwrap());
    assert_eq!(s.verify_email(b"gone", &link_audit()).await.unwrap(), VerifyCheck::Unknown);
    assert_eq!(verified(nu.id).await, None);
    assert_eq!(u.db.count("SELECT count(*) FROM email_verifications").await, 0);

    // The used links were recorded with their outcomes, naming the user.
    let all = chain_is_whole(s).await;
    let outcomes: Vec<&str> =
        all.iter().filter(|r| r.record.action == "email.verified").map(|r| r.record.outcome.as_str()).collect();
    assert_eq!(outcomes, ["ok", "denied", "expired", "ok"]);
    assert!(all.iter().filter(|r| r.record.action == "email.verified").all(|r| r.record.subject_id == Some(nu.id)));
}

pub async fn resends_count_per_recipient_and_reset_mail_waits_for_verification(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "resend app").await;
    let nu = user(s, &f, "rhea").await;
    let bidx = nu.email_bidx.clone().unwrap();
    let sent = || AuditRecord::new("email.verification_sent", Some(f.app.id));
    let resend = |bidx: Vec<u8>| {
        let audit = sent();
        async move { s.queue_verification(f.app.id, nu.id, &bidx, &verify_mail(), THREE_AN_HOUR, &audit).await.unwrap() }
    };
    // Three a window, then nothing queued (recorded as throttled).
    for _ in 0..3 {
        assert_eq!(resend(bidx.clone()).await, Resend::Queued);
    }
    assert_eq!(resend(bidx.clone()).await, Resend::Limited);
    assert_eq!(u.db.count("SELECT count(*) FROM outbox WHERE kind = 'verify_email'").await, 3);
    assert_eq!(resend(b"mail:other".to_vec()).await, Resend::Changed, "an address the user does not have");
    let mail = verify_mail();
    let missing = s.queue_verification(f.app.id, Uuid::now_v7(), &bidx, &mail, THREE_AN_HOUR, &sent()).await;
    assert_eq!(missing.unwrap(), Resend::Gone);

    // Under `required`, a reset goes only to a verified address.
    let update = || AuditRecord::new("app.update", Some(f.app.id));
    assert!(s.set_verify_email_mode(f.app.id, VerifyMode::Required, &update()).await.unwrap());
    let other = user(s, &f, "ruth").await;
    assert_eq!(ask(s, reset_request(f.app.id, b"ruth", "r1")).await, resolved(0, 0), "unverified: no link");
    assert_eq!(u.db.count("SELECT count(*) FROM password_resets").await, 0);
    s.issue_verification(
        f.app.id,
        other.id,
        b"v",
        other.email_bidx.as_deref().unwrap(),
        chrono::Utc::now() + chrono::Duration::hours(1),
    )
    .await
    .unwrap();
    assert!(matches!(
        s.verify_email(b"v", &AuditRecord::new("email.verified", None)).await.unwrap(),
        VerifyCheck::Verified { .. }
    ));
    assert_eq!(ask(s, reset_request(f.app.id, b"ruth", "r2")).await, resolved(1, 0), "verified: the link goes");
    // Optional: no such condition.
    assert!(s.set_verify_email_mode(f.app.id, VerifyMode::Optional, &update()).await.unwrap());
    assert_eq!(ask(s, reset_request(f.app.id, b"rhea", "r3")).await, resolved(0, 1), "rhea's address had its 3");

    // Verified, a resend is refused.
    assert_eq!(
        s.queue_verification(
            f.app.id,
            other.id,
            other.email_bidx.as_deref().unwrap(),
            &verify_mail(),
            THREE_AN_HOUR,
            &sent()
        )
        .await
        .unwrap(),
        Resend::AlreadyVerified
    );
    let all = chain_is_whole(s).await;
    let sent: Vec<&str> = all
        .iter()
        .filter(|r| r.record.action == "email.verification_sent")
        .map(|r| r.record.outcome.as_str())
        .collect();
    assert_eq!(sent, ["ok", "ok", "ok", "throttled", "conflict"]);
    assert!(all.iter().any(|r| r.record.outcome == "unverified" && r.record.subject_id == Some(other.id)));
}
