//! The contract of [`PasskeyStore`]: relying party, ceremonies (single
//! use, expiry, bound to their application), passkeys (limit, uniqueness of
//! a credential, compare-and-set of a use, removal scoped to the user).

use std::time::Duration;

use uuid::Uuid;

use super::{Under, chain_is_whole, new_app, new_user};
use crate::store::trail::record::AuditRecord;
use crate::store::*;

fn ceremony(app_id: Uuid, user_id: Option<Uuid>, lifetime: Duration) -> NewCeremony {
    NewCeremony { id: Uuid::now_v7(), app_id, user_id, kind: AUTHENTICATE, state_ct: b"state".to_vec(), lifetime }
}

fn passkey(app_id: Uuid, user_id: Uuid, cred: &str) -> NewPasskey {
    NewPasskey { id: Uuid::now_v7(), app_id, user_id, cred_key: cred.as_bytes().to_vec(), sealed: b"sealed-1".to_vec() }
}

pub async fn passkeys_ceremonies_and_counters(u: &Under) {
    let s = u.store.as_ref();
    let f = new_app(s, "passkeys").await;
    let other = new_app(s, "other").await;
    let app = f.app.id;
    let record = |action: &str| AuditRecord::new(action, Some(app));

    // The relying party: none, set, read back, cleared.
    assert_eq!(s.webauthn_config(app).await.unwrap(), None);
    let config = WebauthnConfig { rp_id: "example.org".into(), origins: vec!["https://a.example.org".into()] };
    assert!(s.set_webauthn_config(app, Some(&config), &record("app.update")).await.unwrap());
    assert_eq!(s.webauthn_config(app).await.unwrap(), Some(config.clone()));
    assert_eq!(s.webauthn_config(other.app.id).await.unwrap(), None, "per application");
    assert!(!s.set_webauthn_config(Uuid::now_v7(), Some(&config), &record("app.update")).await.unwrap());

    // Ceremonies: taken once, only in their application, expired apart.
    let nu = new_user(&f, "pk");
    s.create_user(nu.clone(), None, &[]).await.unwrap();
    let c = ceremony(app, Some(nu.id), Duration::from_secs(300));
    s.create_ceremony(&c).await.unwrap();
    assert_eq!(s.take_ceremony(other.app.id, c.id).await.unwrap(), CeremonyTake::Unknown);
    assert_eq!(
        s.take_ceremony(app, c.id).await.unwrap(),
        CeremonyTake::Live { user_id: Some(nu.id), kind: AUTHENTICATE.into(), state_ct: b"state".to_vec() }
    );
    assert_eq!(s.take_ceremony(app, c.id).await.unwrap(), CeremonyTake::Unknown, "used once");
    let gone = ceremony(app, None, Duration::ZERO);
    s.create_ceremony(&gone).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(s.take_ceremony(app, gone.id).await.unwrap(), CeremonyTake::Expired);
    // One begun and never finished is the sweep's; a live one stays.
    let live = ceremony(app, None, Duration::from_secs(300));
    s.create_ceremony(&live).await.unwrap();
    s.create_ceremony(&ceremony(other.app.id, None, Duration::ZERO)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(s.sweep().await.unwrap() >= 1);
    assert_eq!(u.db.count("SELECT count(*) FROM passkey_ceremonies").await, 1, "the live one");
    assert!(matches!(s.take_ceremony(app, live.id).await.unwrap(), CeremonyTake::Live { .. }));

    // Passkeys: stored with their record, at most `max`, one credential once.
    let first = passkey(app, nu.id, "cred-1");
    assert!(!s.has_second_factor(app, nu.id).await.unwrap());
    assert!(s.add_passkey(&first, 2, &record("passkey.registered")).await.unwrap());
    // A passkey is a second factor while the application has a relying party.
    assert!(s.has_second_factor(app, nu.id).await.unwrap());
    assert!(!s.has_second_factor(other.app.id, nu.id).await.unwrap());
    assert!(s.set_webauthn_config(app, None, &record("app.update")).await.unwrap());
    assert!(!s.has_second_factor(app, nu.id).await.unwrap(), "no relying party: the passkey cannot be used");
    assert!(s.set_webauthn_config(app, Some(&config), &record("app.update")).await.unwrap());
    match s.add_passkey(&passkey(app, nu.id, "cred-1"), 2, &record("passkey.registered")).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(s.add_passkey(&passkey(app, nu.id, "cred-2"), 2, &record("passkey.registered")).await.unwrap());
    assert!(!s.add_passkey(&passkey(app, nu.id, "cred-3"), 2, &record("passkey.registered")).await.unwrap());
    let listed = s.list_passkeys(app, nu.id).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!((listed[0].id, listed[0].version, listed[0].last_used_at), (first.id, 1, None));
    assert_eq!(listed[0].created_at.timestamp_subsec_nanos(), 0, "whole seconds");
    assert!(s.passkey_by_cred(other.app.id, b"cred-1").await.unwrap().is_none(), "scoped to the application");

    // A use is a compare-and-set on the version: the second of two that
    // read the same version loses.
    let found = s.passkey_by_cred(app, b"cred-1").await.unwrap().unwrap();
    assert_eq!(found.user_id, nu.id);
    assert!(s.use_passkey(app, found.id, found.version, b"sealed-2").await.unwrap());
    assert!(!s.use_passkey(app, found.id, found.version, b"sealed-3").await.unwrap());
    let used = s.passkey_by_cred(app, b"cred-1").await.unwrap().unwrap();
    assert_eq!((used.version, used.sealed.as_slice()), (2, b"sealed-2".as_slice()));
    assert!(used.last_used_at.is_some());

    // A key rotation's page and compare-and-set: the version (a sign-in's
    // compare-and-set) and the time of the last use stay as they were.
    let page = s.sealed_page(ApartSeal::Passkey, app, None, 10).await.unwrap();
    assert_eq!(page.iter().map(|f| f.id).collect::<Vec<_>>(), listed.iter().map(|p| p.id).collect::<Vec<_>>());
    assert_eq!(s.sealed_page(ApartSeal::Passkey, app, Some(page[0].id), 10).await.unwrap(), page[1..]);
    assert!(s.sealed_page(ApartSeal::Passkey, other.app.id, None, 10).await.unwrap().is_empty());
    let mine = page.iter().find(|f| f.id == found.id).unwrap();
    assert_eq!(mine.ct, b"sealed-2");
    assert!(!s.reseal_field(ApartSeal::Passkey, other.app.id, mine, b"sealed-x").await.unwrap());
    assert!(s.reseal_field(ApartSeal::Passkey, app, mine, b"sealed-2b").await.unwrap());
    assert!(!s.reseal_field(ApartSeal::Passkey, app, mine, b"sealed-x").await.unwrap(), "changed meanwhile");
    let resealed = s.passkey_by_cred(app, b"cred-1").await.unwrap().unwrap();
    assert_eq!((resealed.version, resealed.sealed.as_slice()), (2, b"sealed-2b".as_slice()));
    assert_eq!(resealed.last_used_at, used.last_used_at);

    // Removal: only the owner's id matches; the trail keeps every record.
    assert!(!s.remove_passkey(app, Uuid::now_v7(), first.id, &record("passkey.removed")).await.unwrap());
    assert!(s.remove_passkey(app, nu.id, first.id, &record("passkey.removed")).await.unwrap());
    assert!(!s.remove_passkey(app, nu.id, first.id, &record("passkey.removed")).await.unwrap());
    assert_eq!(s.list_passkeys(app, nu.id).await.unwrap().len(), 1);
    let trail = chain_is_whole(s).await;
    assert_eq!(trail.iter().filter(|r| r.record.action == "passkey.registered").count(), 2);
    assert_eq!(trail.iter().filter(|r| r.record.action == "passkey.removed").count(), 1);

    // A user's deletion takes their passkeys.
    assert!(s.delete_user(app, nu.id, &record("user.delete")).await.unwrap());
    assert!(s.passkey_by_cred(app, b"cred-2").await.unwrap().is_none());
}
