//! The contract of second factors ([`FactorStore`]): pending and confirmed
//! TOTP factors, time steps taken once, recovery codes used once, removal
//! with its notice, mfaTokens that expire, and the per-application policy.

use std::time::Duration;

use uuid::Uuid;

use super::{Under, new_app, new_user};
use crate::store::trail::record::AuditRecord;
use crate::store::*;

pub async fn second_factors_are_pending_then_confirmed_and_used_once(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "mfa app").await;
    let other = new_app(s, "other app").await;
    let nu = new_user(&f, "ada");
    s.create_user(nu.clone(), None, &[]).await.unwrap();
    let (app, user) = (f.app.id, nu.id);
    let audit = |action: &str| AuditRecord::new(action, Some(app));

    assert!(!s.has_second_factor(app, user).await.unwrap());
    assert!(s.totp_factor(app, user).await.unwrap().is_none());
    assert!(s.put_pending_totp(app, user, b"secret-1", &audit("mfa.totp_enrolled")).await.unwrap());
    // A pending factor is replaced, and is no second factor yet.
    assert!(s.put_pending_totp(app, user, b"secret-2", &audit("mfa.totp_enrolled")).await.unwrap());
    let pending = s.totp_factor(app, user).await.unwrap().unwrap();
    assert_eq!((pending.secret_ct.as_slice(), pending.confirmed), (b"secret-2".as_slice(), false));
    assert!(!s.has_second_factor(app, user).await.unwrap());
    assert!(!s.accept_totp_step(app, user, 10).await.unwrap(), "no step of a pending factor");
    assert!(s.totp_factor(other.app.id, user).await.unwrap().is_none(), "scoped to the application");

    let hashes: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 32]).collect();
    assert!(s.confirm_totp(app, user, 100, &hashes, &audit("mfa.totp_confirmed")).await.unwrap());
    assert!(!s.confirm_totp(app, user, 101, &hashes, &audit("mfa.totp_confirmed")).await.unwrap());
    assert!(s.has_second_factor(app, user).await.unwrap());
    assert!(!s.has_second_factor(other.app.id, user).await.unwrap());
    // The same answer beside the application's email mode, in one read.
    let gates = s.sign_in_gates(app, user).await.unwrap();
    assert_eq!((gates.verify_mode, gates.second_factor), (VerifyMode::Unset, true));
    assert!(!s.sign_in_gates(other.app.id, user).await.unwrap().second_factor);
    assert!(s.set_verify_email_mode(app, VerifyMode::Required, &audit("app.update")).await.unwrap());
    assert_eq!(s.sign_in_gates(app, user).await.unwrap().verify_mode, VerifyMode::Required);
    assert!(!s.sign_in_gates(Uuid::now_v7(), user).await.unwrap().second_factor, "no such application");
    // A confirmed factor is not replaced by a new enrolment.
    assert!(!s.put_pending_totp(app, user, b"secret-3", &audit("mfa.totp_enrolled")).await.unwrap());
    assert_eq!(s.totp_factor(app, user).await.unwrap().unwrap().secret_ct, b"secret-2");

    // A key rotation's pages and compare-and-set: pending and confirmed
    // secrets, in the order of user ids, of this application only.
    let bea = new_user(&f, "bea");
    s.create_user(bea.clone(), None, &[]).await.unwrap();
    assert!(s.put_pending_totp(app, bea.id, b"secret-bea", &audit("mfa.totp_enrolled")).await.unwrap());
    let mut both = vec![
        SealedField { id: user, ct: b"secret-2".to_vec() },
        SealedField { id: bea.id, ct: b"secret-bea".to_vec() },
    ];
    both.sort_by_key(|f| f.id);
    assert_eq!(s.sealed_page(ApartSeal::TotpSecret, app, None, 10).await.unwrap(), both);
    assert_eq!(s.sealed_page(ApartSeal::TotpSecret, app, None, 1).await.unwrap(), both[..1]);
    assert_eq!(s.sealed_page(ApartSeal::TotpSecret, app, Some(both[0].id), 10).await.unwrap(), both[1..]);
    assert!(s.sealed_page(ApartSeal::TotpSecret, other.app.id, None, 10).await.unwrap().is_empty());
    let stale = SealedField { id: user, ct: b"secret-1".to_vec() };
    assert!(!s.reseal_field(ApartSeal::TotpSecret, app, &stale, b"resealed").await.unwrap(), "changed meanwhile");
    let current = SealedField { id: user, ct: b"secret-2".to_vec() };
    assert!(!s.reseal_field(ApartSeal::TotpSecret, other.app.id, &current, b"resealed").await.unwrap());
    assert!(s.reseal_field(ApartSeal::TotpSecret, app, &current, b"secret-2b").await.unwrap());
    let factor = s.totp_factor(app, user).await.unwrap().unwrap();
    assert_eq!((factor.secret_ct.as_slice(), factor.confirmed), (b"secret-2b".as_slice(), true), "still confirmed");
    assert!(
        s.reseal_field(ApartSeal::TotpSecret, app, &SealedField { id: user, ct: b"secret-2b".to_vec() }, b"secret-2")
            .await
            .unwrap()
    );

    // Each step once, and only forward.
    assert!(!s.accept_totp_step(app, user, 100).await.unwrap(), "the confirmation's step");
    assert!(s.accept_totp_step(app, user, 101).await.unwrap());
    assert!(!s.accept_totp_step(app, user, 101).await.unwrap());
    assert!(!s.accept_totp_step(app, user, 99).await.unwrap());
    assert!(s.accept_totp_step(app, user, 103).await.unwrap());

    // Recovery codes, each once.
    assert_eq!(s.recovery_codes_left(app, user).await.unwrap(), 10);
    assert!(s.use_recovery_code(app, user, &hashes[3]).await.unwrap());
    assert!(!s.use_recovery_code(app, user, &hashes[3]).await.unwrap());
    assert!(!s.use_recovery_code(other.app.id, user, &hashes[4]).await.unwrap());
    assert_eq!(s.recovery_codes_left(app, user).await.unwrap(), 9);

    // mfaTokens: live, scoped, used once, expiring; an outdated hash the
    // password step checked is replaced with the token's row, if unchanged.
    let rehash = Rehash { old: "hash-1", new: "hash-new" };
    let lifetime = Duration::from_secs(300);
    s.create_mfa_challenge(app, user, b"tok-1", lifetime, Some(rehash), &audit("session.sign_in")).await.unwrap();
    assert_eq!(s.credentials(app, b"ada").await.unwrap().unwrap().password_hash, "hash-new");
    let stale = Rehash { old: "hash-1", new: "hash-other" };
    s.create_mfa_challenge(app, user, b"tok-0", lifetime, Some(stale), &audit("session.sign_in")).await.unwrap();
    assert_eq!(s.credentials(app, b"ada").await.unwrap().unwrap().password_hash, "hash-new", "changed meanwhile");
    assert_eq!(s.mfa_challenge(app, b"tok-1").await.unwrap(), ChallengeCheck::Live(user));
    assert_eq!(s.mfa_challenge(other.app.id, b"tok-1").await.unwrap(), ChallengeCheck::Gone);
    assert!(!s.consume_mfa_challenge(other.app.id, b"tok-1").await.unwrap());
    assert!(s.consume_mfa_challenge(app, b"tok-1").await.unwrap());
    assert!(!s.consume_mfa_challenge(app, b"tok-1").await.unwrap());
    assert_eq!(s.mfa_challenge(app, b"tok-1").await.unwrap(), ChallengeCheck::Gone);
    s.create_mfa_challenge(app, user, b"tok-2", Duration::ZERO, None, &audit("session.sign_in")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(s.mfa_challenge(app, b"tok-2").await.unwrap(), ChallengeCheck::Gone, "expired");
    assert!(s.sweep().await.unwrap() >= 1, "the sweep takes expired tokens");
    s.create_mfa_challenge(app, user, b"tok-3", Duration::from_secs(300), None, &audit("session.sign_in"))
        .await
        .unwrap();

    // Removal: the factor, its codes and open tokens go, the notice is queued.
    let notice = QueuedMail { id: Uuid::now_v7(), kind: MFA_REMOVED, payload_ct: b"to".to_vec() };
    assert!(s.remove_totp(app, user, Some(&notice), &audit("mfa.totp_removed")).await.unwrap());
    assert!(!s.remove_totp(app, user, Some(&notice), &audit("mfa.totp_removed")).await.unwrap());
    assert!(!s.has_second_factor(app, user).await.unwrap());
    assert_eq!(s.recovery_codes_left(app, user).await.unwrap(), 0);
    assert_eq!(s.mfa_challenge(app, b"tok-3").await.unwrap(), ChallengeCheck::Gone);
    assert_eq!(u.db.count(&format!("SELECT count(*) FROM outbox WHERE kind = '{MFA_REMOVED}'")).await, 1);
    // Enrolled again after removal: from pending, as new.
    assert!(s.put_pending_totp(app, user, b"secret-4", &audit("mfa.totp_enrolled")).await.unwrap());
    assert!(s.confirm_totp(app, user, 50, &[], &audit("mfa.totp_confirmed")).await.unwrap());
    assert!(s.accept_totp_step(app, user, 51).await.unwrap(), "the old factor's steps are gone with it");

    // The policy.
    assert_eq!(s.mfa_policy(app).await.unwrap(), MfaPolicy::Optional);
    assert!(s.set_mfa_policy(app, MfaPolicy::RequiredForSupervisors, &audit("app.update")).await.unwrap());
    assert_eq!(s.mfa_policy(app).await.unwrap(), MfaPolicy::RequiredForSupervisors);
    assert_eq!(s.mfa_policy(other.app.id).await.unwrap(), MfaPolicy::Optional);
    assert!(!s.set_mfa_policy(Uuid::now_v7(), MfaPolicy::Optional, &audit("app.update")).await.unwrap());

    // Deleting the user takes everything of theirs.
    s.create_mfa_challenge(app, user, b"tok-4", Duration::from_secs(300), None, &audit("session.sign_in"))
        .await
        .unwrap();
    assert!(s.delete_user(app, user, &audit("user.delete")).await.unwrap());
    assert!(s.totp_factor(app, user).await.unwrap().is_none());
    assert_eq!(s.mfa_challenge(app, b"tok-4").await.unwrap(), ChallengeCheck::Gone);
}
