//! The stored profile of a user and the `User` message built from a record.

use chrono::{DateTime, Utc};

use super::error::{ServiceError, ServiceResult};
use super::field_mask::{self, ResolvedPath};
use crate::pb;
use crate::schema;
use crate::store::{StoreError, UserRecord};

/// The field names of sealed ciphertexts (bound into their associated data).
pub use crate::crypto::fields::PROFILE_FIELD;
pub use crate::crypto::fields::USERNAME_FIELD;

/// `2013-11-07T12:00:00Z`, as the documented JSON shows times.
pub fn format_time(t: DateTime<Utc>) -> String {
    // (Not `format("%Y-…")`: parsing the pattern on every call showed in
    // profiles of reads.)
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The parser's own words may quote the data (PII): only the kind is kept.
fn corrupt(_: impl std::fmt::Display) -> ServiceError {
    ServiceError::Store(StoreError::Corrupt("a stored profile does not parse as a User".into()))
}

/// The profile kept for a user, as JSON bytes: the message without what
/// lives in columns of its own or never lives anywhere (ids, times,
/// credentials, token, flags).
pub fn to_profile(user: &pb::User) -> ServiceResult<Vec<u8>> {
    let mut u = user.clone();
    u.users_id.clear();
    u.created_at.clear();
    u.updated_at.clear();
    u.username.clear();
    u.password.clear();
    u.session_token.clear();
    u.active = None;
    // Output only: the store says whether the address is verified.
    if let Some(e) = u.email.as_mut() {
        e.primary_verified = false;
    }
    // `extras` of JSON null is no extras (which is how it reads back); one
    // with no JSON form is refused rather than stored as something else.
    if u.extras.as_ref().is_some_and(|e| matches!(e.kind, None | Some(pbjson_types::value::Kind::NullValue(_)))) {
        u.extras = None;
    }
    if u.extras.as_ref().is_some_and(|e| !representable(e)) {
        return Err(corrupt("extras without a JSON form"));
    }
    let finite = |v: Option<f64>| v.is_none_or(f64::is_finite);
    if u.addresses.iter().filter_map(|a| a.geocode.as_ref()).any(|g| !finite(g.latitude) || !finite(g.longitude)) {
        return Err(corrupt("a geocode without a JSON form"));
    }
    serde_json::to_vec(&u).map_err(corrupt)
}

/// The profile as a JSON value (for field-mask application).
pub fn profile_json(plaintext: &[u8]) -> ServiceResult<serde_json::Value> {
    serde_json::from_slice(plaintext).map_err(corrupt)
}

/// The user a stored profile becomes under the profile paths of an update:
/// each path of `patch` (the request's user as JSON) applied in turn.
pub fn merge(plaintext: &[u8], patch: &serde_json::Value, paths: &[ResolvedPath]) -> ServiceResult<pb::User> {
    let mut merged = profile_json(plaintext)?;
    for path in paths {
        field_mask::apply(&mut merged, patch, path);
    }
    serde_json::from_value(merged).map_err(|e| ServiceError::invalid("user", e.to_string()))
}

/// The message a reply carries for a stored user, from its opened profile.
pub fn to_user(rec: &UserRecord, profile: &[u8]) -> ServiceResult<pb::User> {
    let mut user: pb::User = serde_json::from_slice(profile).map_err(corrupt)?;
    user.users_id = rec.id.to_string();
    user.created_at = format_time(rec.created_at);
    user.updated_at = format_time(rec.updated_at);
    user.active = Some(rec.active);
    // Output only, from the row: never what a profile was given.
    if let Some(e) = user.email.as_mut() {
        e.primary_verified = rec.email_verified && !e.primary.trim().is_empty();
    }
    Ok(user)
}

/// The names (proto paths) of the top-level fields a user has filled: what
/// the trail says was read or written, never the values.
pub fn field_names(user: &pb::User) -> Vec<String> {
    let mut names = super::present_fields::json_names(user);
    // In the order the JSON object's keys had, as records before had them.
    names.sort_unstable();
    names.into_iter().map(schema::camel_to_snake).filter(|k| !schema::USER_OUTPUT_ONLY.contains(&k.as_str())).collect()
}

/// The case-folded form of a name or address used for lookups.
pub fn fold(s: &str) -> String {
    s.trim().to_lowercase()
}

/// The form of a username its uniqueness and every lookup go by: RFC 8265
/// UsernameCaseMapped (width mapping, case mapping, NFC, then the
/// profile's checks), so that "Ａda", "ADA" and "ada" are one name.
///
/// The API has always taken names the profile does not: "Ada Lovelace"
/// (RFC 8265 §3.1 lets an application allow spaces between userparts:
/// each part is mapped on its own, the spaces kept), and names with
/// symbols, emoji or other spaces the profile disallows. Those are still
/// taken, under the profile's own mappings without its checks: the
/// Halfwidth and Fullwidth Forms block to their decompositions, lowercase,
/// NFC.
///
/// On ASCII this is [`fold`] exactly (every printable ASCII character but
/// the space is valid in a userpart, and the profile's case mapping of
/// ASCII is lowercasing), so only rows with non-ASCII names need the
/// backfill of [`super::usernames`].
pub fn username_key(name: &str) -> String {
    use precis_profiles::{UsernameCaseMapped, precis_core::profile::PrecisFastInvocation};
    use unicode_normalization::UnicodeNormalization;
    let name = name.trim();
    let parts: Result<Vec<_>, _> =
        name.split(' ').map(|p| if p.is_empty() { Ok(p.into()) } else { UsernameCaseMapped::enforce(p) }).collect();
    match parts {
        Ok(parts) => parts.join(" "),
        Err(_) => {
            let mut narrow = String::with_capacity(name.len());
            for c in name.chars() {
                // Their compatibility decompositions are the <wide> and
                // <narrow> mappings the profile's width rule applies.
                if ('\u{FF00}'..='\u{FFEF}').contains(&c) {
                    narrow.extend(std::iter::once(c).nfkc());
                } else {
                    narrow.push(c);
                }
            }
            narrow.to_lowercase().nfc().collect()
        }
    }
}

/// Whether a `google.protobuf.Value` has a JSON form: every number in it is
/// finite. (Over gRPC a client can send a NaN or an infinity; as JSON it
/// would be written as `null`, and the user read back would not be the one
/// stored. A value with no kind is how JSON `null` reads, so it is fine.)
pub fn representable(v: &pbjson_types::Value) -> bool {
    use pbjson_types::value::Kind;
    match &v.kind {
        Some(Kind::NumberValue(n)) => n.is_finite(),
        Some(Kind::StructValue(s)) => s.fields.values().all(representable),
        Some(Kind::ListValue(l)) => l.values.iter().all(representable),
        None | Some(Kind::NullValue(_) | Kind::StringValue(_) | Kind::BoolValue(_)) => true,
    }
}

/// The folded primary address, for username reminders.
pub fn email_key(user: &pb::User) -> Option<String> {
    user.email.as_ref().map(|e| fold(&e.primary)).filter(|e| !e.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn usernames_compare_as_rfc_8265_says() {
        for same in ["Ａda", "ADA", "ada", " Ada ", "\u{FF21}\u{FF24}\u{FF21}"] {
            assert_eq!(username_key(same), "ada", "{same:?}");
        }
        assert_eq!(username_key("Juliet@Example.com"), "juliet@example.com");
        // Not NFC: the same name as the composed one.
        assert_eq!(username_key("Jose\u{301}"), username_key("José"));
        assert_eq!(username_key("ＪＯＳÉ"), "josé");
        // Spaces between userparts, as the API always took them.
        assert_eq!(username_key("Ａda  Lovelace"), "ada  lovelace");
        // Outside the profile (a symbol): still a name, lowercased and NFC.
        assert_eq!(username_key("Bob☃"), "bob☃");
        assert_eq!(username_key("Ａda☃"), username_key("ada☃"));
        assert_eq!(username_key("E\u{301}MILE☃"), "émile☃");
        assert_ne!(username_key("ada"), username_key("adb"));
    }

    proptest::proptest! {
        /// What the backfill relies on: an ASCII name's key is unchanged.
        #[test]
        fn ascii_names_keep_their_old_key(name in "[ -~]{1,40}") {
            proptest::prop_assert_eq!(username_key(&name), fold(&name));
        }
    }

    fn record() -> UserRecord {
        UserRecord {
            id: uuid::Uuid::now_v7(),
            app_id: uuid::Uuid::now_v7(),
            profile_ct: Vec::new(),
            active: true,
            supervisor: false,
            version: 1,
            created_at: Utc.with_ymd_and_hms(2013, 11, 7, 12, 0, 0).unwrap(),
            updated_at: Utc.with_ymd_and_hms(2013, 11, 7, 12, 0, 0).unwrap(),
            email_verified: false,
        }
    }

    /// Found by the `profile` fuzz target: serde_json's default float
    /// parsing is not exact, so a stored double came back one unit in the
    /// last place off (`6.193662128712363e223` read as `...362e223`).
    #[test]
    fn doubles_survive_storage_exactly() {
        let x = 6.193662128712363e223;
        let user = pb::User {
            addresses: vec![pb::Address {
                geocode: Some(pb::Geocode { latitude: Some(43.0), longitude: Some(x) }),
                ..Default::default()
            }],
            extras: Some(serde_json::from_value(serde_json::json!({"n": x, "m": 0.1 + 0.2})).unwrap()),
            ..Default::default()
        };
        let rec = record();
        let back = to_user(&rec, &to_profile(&user).unwrap()).unwrap();
        assert_eq!(back.addresses, user.addresses);
        assert_eq!(back.extras, user.extras);
    }

    /// Found by the `profile` fuzz target: over gRPC, `extras` may be a
    /// value with no kind, which JSON writes as `null`, and reads back as no
    /// extras; a NaN would be written as `null` too. Validation refuses
    /// non-finite numbers and `to_profile` will not store them; an `extras`
    /// that is null (or has no kind) is no extras.
    #[test]
    fn extras_without_a_json_form_are_refused() {
        use pbjson_types::value::Kind;
        let with = |kind: Option<Kind>| pb::User { extras: Some(pbjson_types::Value { kind }), ..Default::default() };
        let nested = |kind: Option<Kind>| {
            let mut s = pbjson_types::Struct::default();
            s.fields.insert("k".into(), pbjson_types::Value { kind });
            Some(Kind::StructValue(s))
        };
        for bad in [with(Some(Kind::NumberValue(f64::NAN))), with(nested(Some(Kind::NumberValue(f64::INFINITY))))] {
            assert!(crate::service::validate::profile(&bad).is_err(), "{bad:?}");
            assert!(to_profile(&bad).is_err(), "{bad:?}");
        }
        for null in [with(None), with(Some(Kind::NullValue(0)))] {
            assert!(crate::service::validate::profile(&null).is_ok());
            assert_eq!(to_user(&record(), &to_profile(&null).unwrap()).unwrap().extras, None);
        }
        // Found by the same target later: a NaN geocode was stored as null
        // and read back as none (validation refuses it; so does storage).
        let nan = pb::User {
            addresses: vec![pb::Address {
                geocode: Some(pb::Geocode { latitude: Some(f64::NAN), longitude: None }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(crate::service::validate::profile(&nan).is_err());
        assert!(to_profile(&nan).is_err());
        // Inside `extras`, a null is kept (read back as a value with no kind).
        let inner = to_user(&record(), &to_profile(&with(nested(Some(Kind::NullValue(0))))).unwrap()).unwrap();
        assert_eq!(inner.extras, with(nested(None)).extras);
    }
}
