//! The store's profile (de)serialisation: `to_profile` (what is sealed),
//! `profile_json` (what a field mask is applied to) and `to_user` (what a
//! read returns).
//!
//! Input: one mode byte, then
//! - `0`: protobuf bytes: any `User` a gRPC client can send. When
//!   `to_profile` accepts it, `to_user` gives the same user back (with the
//!   record's id, times and flag, and without what is never stored).
//! - anything else: bytes as a stored profile: `profile_json` and `to_user`
//!   never panic, and a user that `to_user` reads round-trips as above.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use usersvc::{pb, service::profile, store::UserRecord};

fn record() -> UserRecord {
    UserRecord {
        id: uuid::Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001),
        app_id: uuid::Uuid::from_u128(2),
        profile_ct: Vec::new(),
        active: true,
        supervisor: false,
        version: 1,
        created_at: Utc.with_ymd_and_hms(2013, 11, 7, 12, 0, 0).single().expect("a time"),
        updated_at: Utc.with_ymd_and_hms(2014, 1, 2, 3, 4, 5).single().expect("a time"),
        email_verified: false,
    }
}

/// What a read of `user`, once stored under `rec`, must return.
fn expected(user: &pb::User, rec: &UserRecord) -> pb::User {
    pb::User {
        users_id: rec.id.to_string(),
        created_at: profile::format_time(rec.created_at),
        updated_at: profile::format_time(rec.updated_at),
        username: String::new(),
        password: String::new(),
        session_token: String::new(),
        active: Some(rec.active),
        // `extras` of JSON null (or of no kind, which is how null reads) is
        // no extras.
        extras: user.extras.clone().filter(|e| !matches!(e.kind, None | Some(pbjson_types::value::Kind::NullValue(_)))),
        ..user.clone()
    }
}

fn round_trip(user: &pb::User) {
    let rec = record();
    let Ok(bytes) = profile::to_profile(user) else { return };
    let json = profile::profile_json(&bytes).expect("a profile written is JSON");
    assert!(json.is_object(), "a profile is an object");
    let back = profile::to_user(&rec, &bytes).expect("a profile written reads back");
    let want = expected(user, &rec);
    // The same user: equal as JSON (inside `extras`, a null reads back as a
    // value of no kind, pbjson's form of it), and equal field by field
    // elsewhere (compared as Debug text, so that a NaN equals itself).
    let same_json = serde_json::to_value(&back).ok() == serde_json::to_value(&want).ok();
    let (mut b, mut w) = (back.clone(), want.clone());
    (b.extras, w.extras) = (None, None);
    assert!(
        same_json && (b == w || format!("{b:?}") == format!("{w:?}")),
        "profile round trip changed the user:\n  in:  {want:?}\n  out: {back:?}"
    );
    // And it is a fixed point: storing the read user stores the same JSON
    // (as a value: `extras` objects are hash maps, their order varies).
    let again = profile::to_profile(&back).expect("a read user serialises");
    assert_eq!(profile::profile_json(&again).expect("JSON"), json);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode == 0 {
        if let Ok(user) = pb::User::decode(rest) {
            round_trip(&user);
        }
        return;
    }
    let _ = profile::profile_json(rest);
    if let Ok(user) = profile::to_user(&record(), rest) {
        round_trip(&user);
        // The same user as a gRPC client would send it.
        let wire = user.encode_to_vec();
        let decoded = pb::User::decode(wire.as_slice()).expect("an encoded user decodes");
        round_trip(&decoded);
    }
});
