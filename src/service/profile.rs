//! The stored profile of a user and the `User` message built from a record.

use chrono::{DateTime, Utc};

use super::error::{ServiceError, ServiceResult};
use super::field_mask::{self, ResolvedPath};
use crate::pb;
use crate::schema;
use crate::store::{StoreError, UserRecord};

/// The field names of sealed ciphertexts (bound into their associated data).
pub const PROFILE_FIELD: &str = "profile";
pub const USERNAME_FIELD: &str = "username";

/// `2013-11-07T12:00:00Z`, as the documented JSON shows times.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
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
    Ok(user)
}

/// The names (proto paths) of the top-level fields a user has filled: what
/// the trail says was read or written, never the values.
pub fn field_names(user: &pb::User) -> Vec<String> {
    match serde_json::to_value(user) {
        Ok(serde_json::Value::Object(m)) => m
            .keys()
            .map(|k| schema::camel_to_snake(k))
            .filter(|k| !schema::USER_OUTPUT_ONLY.contains(&k.as_str()))
            .collect(),
        _ => Vec::new(),
    }
}

/// The case-folded form of a name or address used for lookups.
pub fn fold(s: &str) -> String {
    s.trim().to_lowercase()
}

/// The folded primary address, for username reminders.
pub fn email_key(user: &pb::User) -> Option<String> {
    user.email.as_ref().map(|e| fold(&e.primary)).filter(|e| !e.is_empty())
}
