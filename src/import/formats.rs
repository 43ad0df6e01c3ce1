//! The files `usersvc import` reads, each turned into the same entries: a
//! user in the `/v2` JSON form, a password or a stored hash, group names,
//! the supervisor flag and a creation time.
//!
//! - `jsonl`: one object per line, the `/v2` user plus `password` or
//!   `passwordHash`, `groups`, `supervisor` (and what `usersvc export`
//!   adds: `usersId`, `createdAt`, `updatedAt`, `sessions`, `disclosures`,
//!   `secondFactors`, which are read or ignored). Strict: an unknown member fails its line.
//! - `parse`: a Parse Server `_User` export (a JSON array, `{"results":
//!   [...]}` or one object per line, as `mongoexport` writes). Parse's own
//!   columns are mapped, its internal ones (`_rperm`, `ACL`, ...) dropped,
//!   and the app's custom columns kept in `extras`.
//! - `keycloak`: a realm export (`{"users": [...]}`, or a bare array): the
//!   password credential becomes a PHC hash, attributes go to `extras`.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value, json};

use crate::auth::schemes;
use crate::pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Parse,
    Keycloak,
}

/// Where an entry came from, for its error: `line 7` or `user 7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub n: usize,
    pub unit: &'static str,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.unit, self.n)
    }
}

/// How an imported user signs in.
#[derive(Debug, Clone)]
pub enum Secret {
    /// Hashed on import.
    Password(secrecy::SecretString),
    /// Kept, in a scheme `schemes` checks; replaced at the first sign-in.
    Hash(String),
}

/// One user read from a file.
#[derive(Debug, Clone)]
pub struct Entry {
    pub user: pb::User,
    pub secret: Secret,
    pub groups: Vec<String>,
    pub supervisor: bool,
    pub created_at: Option<DateTime<Utc>>,
}

/// Members an export adds, read (createdAt) or dropped on import. Second
/// factors stay behind: TOTP secrets and passkeys are sealed under the old
/// application's keys (and bound to its relying party), so the users enrol
/// again.
const EXPORT_MEMBERS: &[&str] = &["usersId", "createdAt", "updatedAt", "sessions", "disclosures", "secondFactors"];

/// An entry of the jsonl form, from one object.
pub fn from_jsonl(value: Value) -> Result<Entry, String> {
    let Value::Object(mut obj) = value else { return Err("not a JSON object".into()) };
    let hash = match obj.remove("passwordHash") {
        None | Some(Value::Null) => None,
        Some(Value::String(h)) => Some(h),
        Some(_) => return Err("passwordHash: must be a string".into()),
    };
    let groups = match obj.remove("groups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|g| match g {
                Value::String(s) => Ok(s),
                // An export's groups carry their id too; the name is what
                // matches in another application.
                Value::Object(o) => o.get("name").and_then(Value::as_str).map(str::to_owned).ok_or(()),
                _ => Err(()),
            })
            .collect::<Result<_, _>>()
            .map_err(|_| "groups: must be a list of group names".to_owned())?,
        Some(_) => return Err("groups: must be a list of group names".into()),
    };
    let supervisor = match obj.remove("supervisor") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err("supervisor: must be true or false".into()),
    };
    let created_at = match obj.remove("createdAt") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(time(&t).ok_or("createdAt: must be an RFC 3339 time")?),
        Some(_) => return Err("createdAt: must be an RFC 3339 time".into()),
    };
    for name in EXPORT_MEMBERS {
        obj.remove(*name);
    }
    let body = serde_json::to_vec(&Value::Object(obj)).map_err(|e| e.to_string())?;
    let user: pb::User = crate::gateway::json::parse(
        &Default::default(),
        &body,
        "User",
        crate::schema::USER_OUTPUT_ONLY,
        crate::gateway::json::Mode::Whole,
    )
    .map(|p| p.message)
    .map_err(|e| e.item.message)?;
    entry(user, hash, groups, supervisor, created_at)
}

fn entry(
    mut user: pb::User,
    hash: Option<String>,
    groups: Vec<String>,
    supervisor: bool,
    created_at: Option<DateTime<Utc>>,
) -> Result<Entry, String> {
    let password = std::mem::take(&mut user.password);
    let secret = match (password.is_empty(), hash) {
        (false, None) => Secret::Password(password.into()),
        (true, Some(h)) => {
            schemes::scheme_of(&h).map_err(|e| format!("passwordHash: {e}"))?;
            Secret::Hash(h)
        }
        (false, Some(_)) => return Err("give either password or passwordHash, not both".into()),
        (true, None) => return Err("password or passwordHash is required".into()),
    };
    if created_at.is_some_and(|t| t > Utc::now()) {
        return Err("createdAt: is in the future".into());
    }
    Ok(Entry { user, secret, groups, supervisor, created_at })
}

fn time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

/// Parse's columns that are its own bookkeeping, never the app's data.
const PARSE_INTERNAL: &[&str] =
    &["objectId", "ACL", "authData", "emailVerified", "sessionToken", "updatedAt", "createdAt", "password"];

/// An entry of a Parse Server `_User` object.
pub fn from_parse(value: Value) -> Result<Entry, String> {
    let Value::Object(obj) = value else { return Err("not a JSON object".into()) };
    let text = |name: &str| obj.get(name).and_then(Value::as_str).map(str::to_owned);
    let username = text("username").ok_or("username: is required")?;
    let hash = text("_hashed_password").ok_or("_hashed_password: is required (a user without a password)")?;
    let created_at = match obj.get("_created_at").or_else(|| obj.get("createdAt")) {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(time(t).ok_or("createdAt: must be an ISO 8601 time")?),
        // mongoexport's extended JSON.
        Some(Value::Object(d)) => match d.get("$date") {
            Some(Value::String(t)) => Some(time(t).ok_or("_created_at: must be an ISO 8601 time")?),
            Some(Value::Number(ms)) => ms.as_i64().and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            _ => return Err("_created_at: must be a date".into()),
        },
        Some(_) => return Err("createdAt: must be a time".into()),
    };
    let extras: Map<String, Value> = obj
        .iter()
        .filter(|(k, v)| {
            !k.starts_with('_')
                && !PARSE_INTERNAL.contains(&k.as_str())
                && !matches!(k.as_str(), "username" | "email")
                && !v.is_null()
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut user = json!({ "username": username });
    if let Some(email) = text("email") {
        user["email"] = json!({ "primary": email });
    }
    if !extras.is_empty() {
        user["extras"] = Value::Object(extras);
    }
    let user: pb::User = serde_json::from_value(user).map_err(|e| e.to_string())?;
    entry(user, Some(hash), Vec::new(), false, created_at)
}

/// An entry of a Keycloak realm export's user.
pub fn from_keycloak(value: Value) -> Result<Entry, String> {
    let Value::Object(obj) = value else { return Err("not a JSON object".into()) };
    let text = |name: &str| obj.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let username = text("username").ok_or("username: is required")?;
    let credential = obj
        .get("credentials")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("password"))
        .ok_or("no password credential (a federated or passwordless user)")?;
    let field = |name: &str| match credential.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        // Older exports hold these as objects rather than JSON text.
        Some(v @ Value::Object(_)) => Ok(v.to_string()),
        _ => Err(format!("credentials: the password's {name} is missing")),
    };
    let hash = schemes::from_keycloak(&field("secretData")?, &field("credentialData")?)
        .map_err(|e| format!("credentials: {e}"))?;
    let mut user = json!({ "username": username });
    if let Some(email) = text("email") {
        user["email"] = json!({ "primary": email });
    }
    let mut name = Map::new();
    if let Some(first) = text("firstName") {
        name.insert("firstName".into(), first.into());
    }
    if let Some(last) = text("lastName") {
        name.insert("lastName".into(), last.into());
    }
    if !name.is_empty() {
        user["name"] = Value::Object(name);
    }
    if let Some(attributes) = obj.get("attributes").filter(|a| a.as_object().is_some_and(|a| !a.is_empty())) {
        user["extras"] = json!({ "attributes": attributes });
    }
    if let Some(enabled) = obj.get("enabled").and_then(Value::as_bool) {
        user["active"] = enabled.into();
    }
    let user: pb::User = serde_json::from_value(user).map_err(|e| e.to_string())?;
    // Group paths ("/clinic/nurses"): the group is the last segment.
    let groups = obj
        .get("groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|p| p.rsplit('/').find(|s| !s.is_empty()).map(str::to_owned))
        .collect();
    let created_at =
        obj.get("createdTimestamp").and_then(Value::as_i64).and_then(|ms| Utc.timestamp_millis_opt(ms).single());
    entry(user, Some(hash), groups, false, created_at)
}

/// The objects of a whole document that holds a list: a bare array, or
/// the list under one of `keys`.
pub fn listed(doc: Value, keys: &[&str]) -> Result<Vec<Value>, String> {
    match doc {
        Value::Array(items) => Ok(items),
        Value::Object(mut obj) => keys
            .iter()
            .find_map(|k| match obj.remove(*k) {
                Some(Value::Array(items)) => Some(items),
                _ => None,
            })
            .ok_or_else(|| format!("expected a JSON array or an object with {}", keys.join(" or "))),
        _ => Err("expected a JSON array or object".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_lines_are_strict() {
        let ok = from_jsonl(json!({"username": "ada", "password": "correct horse", "email": {"primary": "a@x.org"},
            "groups": ["nurses"], "supervisor": true, "createdAt": "2020-01-02T03:04:05Z", "usersId": "x"}))
        .unwrap();
        assert_eq!(ok.user.username, "ada");
        assert!(ok.user.password.is_empty(), "the password is taken out of the message");
        assert!(matches!(ok.secret, Secret::Password(_)));
        assert_eq!(ok.groups, ["nurses"]);
        assert!(ok.supervisor);
        let err = |v: Value| from_jsonl(v).unwrap_err();
        assert!(err(json!({"username": "a", "password": "x", "shoeSize": 9})).contains("shoeSize"));
        assert!(err(json!({"username": "a"})).contains("password or passwordHash"));
        assert!(err(json!({"username": "a", "passwordHash": "$md5$x$y"})).contains("unknown password hash scheme"));
        assert!(err(json!({"username": "a", "password": "p", "passwordHash": "$2b$04$x"})).contains("not both"));
        assert!(err(json!({"username": "a", "password": "p", "age": "old"})).contains("age"));
        assert!(err(json!(["a"])).contains("object"));
    }

    #[test]
    fn parse_and_keycloak_users_map() {
        let p = from_parse(json!({"_id": "x1", "username": "ada", "email": "a@x.org",
            "_hashed_password": "$2b$10$abcdefghijklmnopqrstuvabcdefghijklmnopqrstuvwxyz01234",
            "_created_at": {"$date": "2019-05-01T00:00:00.000Z"}, "_rperm": ["*"], "clinic": "north"}))
        .unwrap();
        assert!(matches!(p.secret, Secret::Hash(ref h) if h.starts_with("$2b$")));
        assert_eq!(p.user.email.unwrap().primary, "a@x.org");
        assert!(p.created_at.is_some());
        assert!(p.user.extras.is_some(), "custom columns kept");
        let k = from_keycloak(json!({"username": "bob", "enabled": false, "firstName": "Bob",
            "createdTimestamp": 1_600_000_000_000i64, "groups": ["/clinic/nurses"],
            "credentials": [{"type": "password",
                "secretData": "{\"value\":\"aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g=\",\"salt\":\"c2FsdHNhbHRzYWx0c2FsdA==\"}",
                "credentialData": "{\"hashIterations\":27500,\"algorithm\":\"pbkdf2-sha256\"}"}]}))
        .unwrap();
        assert_eq!(k.groups, ["nurses"]);
        assert_eq!(k.user.active, Some(false));
        assert!(matches!(k.secret, Secret::Hash(ref h) if h.starts_with("$pbkdf2-sha256$i=27500")));
        assert!(from_keycloak(json!({"username": "c", "credentials": []})).unwrap_err().contains("no password"));
    }
}
