//! The stored profile of a user and the `User` message built from a record.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::error::{ServiceError, ServiceResult};
use crate::pb;
use crate::store::{StoreError, UserRecord};

/// `2013-11-07T12:00:00Z`, as the documented JSON shows times.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The JSON kept for a user: the message without what lives in columns of
/// its own or never lives anywhere (ids, times, credentials, token, flags).
pub fn to_profile(user: &pb::User) -> ServiceResult<Value> {
    let mut u = user.clone();
    u.users_id.clear();
    u.created_at.clear();
    u.updated_at.clear();
    u.username.clear();
    u.password.clear();
    u.session_token.clear();
    u.active = None;
    serde_json::to_value(&u).map_err(|e| ServiceError::Store(StoreError::Corrupt(e.to_string())))
}

/// The message a reply carries for a stored user.
pub fn to_user(rec: &UserRecord) -> ServiceResult<pb::User> {
    let mut user: pb::User = serde_json::from_value(rec.profile.clone())
        .map_err(|e| ServiceError::Store(StoreError::Corrupt(e.to_string())))?;
    user.users_id = rec.id.to_string();
    user.created_at = format_time(rec.created_at);
    user.updated_at = format_time(rec.updated_at);
    user.active = Some(rec.active);
    Ok(user)
}

/// The case-folded form of a name or address used for lookups.
pub fn fold(s: &str) -> String {
    s.trim().to_lowercase()
}

/// The folded primary address, for username reminders.
pub fn email_key(user: &pb::User) -> Option<String> {
    user.email
        .as_ref()
        .map(|e| fold(&e.primary))
        .filter(|e| !e.is_empty())
}
