//! The rules a user's fields must meet, each failure naming its field by
//! proto path.

use chrono::NaiveDate;
use serde_json::Value;

use super::error::{ServiceError, ServiceResult};
use crate::pb;
use crate::schema;

pub const MAX_STRING_CHARS: usize = 1024;
pub const MAX_LIST_ITEMS: usize = 100;
pub const MAX_EXTRAS_BYTES: usize = 64 * 1024;
/// How deep `extras` may nest (objects and arrays).
pub const MAX_EXTRAS_DEPTH: usize = 24;
/// The whole profile as JSON: every string and list is bounded, but their
/// sum must be too (a record has to fit in one gRPC message).
pub const MAX_PROFILE_BYTES: usize = 256 * 1024;
pub const MAX_USERNAME_CHARS: usize = 128;
pub const MAX_PASSWORD_CHARS: usize = 1024;
pub const MAX_AGE: i32 = 150;

/// A username: 1-128 characters, no control characters, not blank. Returns
/// the folded key its uniqueness is checked on.
pub fn username(name: &str) -> ServiceResult<String> {
    let n = name.chars().count();
    if name.trim().is_empty() {
        return Err(ServiceError::invalid("username", "is required"));
    }
    if n > MAX_USERNAME_CHARS {
        return Err(ServiceError::invalid("username", format!("must be at most {MAX_USERNAME_CHARS} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(ServiceError::invalid("username", "must not contain control characters"));
    }
    if name.trim() != name {
        return Err(ServiceError::invalid("username", "must not begin or end with white space"));
    }
    Ok(super::profile::username_key(name))
}

pub fn password(pw: &str, min_chars: usize) -> ServiceResult<()> {
    let n = pw.chars().count();
    if n == 0 {
        return Err(ServiceError::invalid("password", "is required"));
    }
    if n < min_chars {
        return Err(ServiceError::invalid("password", format!("must be at least {min_chars} characters")));
    }
    if n > MAX_PASSWORD_CHARS {
        return Err(ServiceError::invalid("password", format!("must be at most {MAX_PASSWORD_CHARS} characters")));
    }
    Ok(())
}

/// Whether a string looks like an email address: one `@`, a local part of
/// at most 64 octets, a dotted domain of letters, digits and hyphens, no
/// white space, 254 octets in all.
pub fn looks_like_email(s: &str) -> bool {
    if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    if local.is_empty() || local.len() > 64 || local.contains('@') {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

/// Checks every profile field of a user.
pub fn profile(user: &pb::User) -> ServiceResult<()> {
    let json = serde_json::to_value(user).map_err(|e| ServiceError::invalid("user", e.to_string()))?;
    sizes(&json, "")?;
    if let Some(email) = &user.email {
        for (field, value) in [
            ("primary", &email.primary),
            ("secondary", &email.secondary),
            ("work", &email.work),
            ("other", &email.other),
        ] {
            if !value.is_empty() && !looks_like_email(value) {
                return Err(ServiceError::invalid(format!("email.{field}"), "is not an email address"));
            }
        }
    }
    if !user.dob.is_empty() {
        let ok = user.dob.len() == 10 && NaiveDate::parse_from_str(&user.dob, "%Y-%m-%d").is_ok();
        if !ok {
            return Err(ServiceError::invalid("dob", "must be a real date as YYYY-MM-DD"));
        }
        let today = chrono::Utc::now().date_naive();
        if NaiveDate::parse_from_str(&user.dob, "%Y-%m-%d").is_ok_and(|d| d > today) {
            return Err(ServiceError::invalid("dob", "must not be in the future"));
        }
    }
    if let Some(age) = user.age
        && !(0..=MAX_AGE).contains(&age)
    {
        return Err(ServiceError::invalid("age", format!("must be between 0 and {MAX_AGE}")));
    }
    for (i, a) in user.addresses.iter().enumerate() {
        if let Some(g) = &a.geocode {
            if g.latitude.is_some_and(|v| !(-90.0..=90.0).contains(&v)) {
                return Err(ServiceError::invalid(
                    format!("addresses[{i}].geocode.latitude"),
                    "must be between -90 and 90",
                ));
            }
            if g.longitude.is_some_and(|v| !(-180.0..=180.0).contains(&v)) {
                return Err(ServiceError::invalid(
                    format!("addresses[{i}].geocode.longitude"),
                    "must be between -180 and 180",
                ));
            }
        }
    }
    if let Some(extras) = &user.extras {
        if !super::profile::representable(extras) {
            return Err(ServiceError::invalid("extras", "every number must be finite"));
        }
        let value = serde_json::to_value(extras).unwrap_or_default();
        if json_depth(&value) > MAX_EXTRAS_DEPTH {
            return Err(ServiceError::invalid("extras", format!("must nest at most {MAX_EXTRAS_DEPTH} levels deep")));
        }
        let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_EXTRAS_BYTES {
            return Err(ServiceError::invalid("extras", format!("must be at most {MAX_EXTRAS_BYTES} bytes as JSON")));
        }
    }
    if serde_json::to_vec(&json).map(|v| v.len()).unwrap_or(usize::MAX) > MAX_PROFILE_BYTES {
        return Err(ServiceError::invalid("user", format!("must be at most {MAX_PROFILE_BYTES} bytes as JSON in all")));
    }
    Ok(())
}

/// How many objects and arrays are nested in a value.
pub fn json_depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// String lengths and list sizes everywhere but inside `extras` (which has
/// its own limit). `path` is the proto path so far.
fn sizes(v: &Value, path: &str) -> ServiceResult<()> {
    match v {
        Value::String(s) if s.chars().count() > MAX_STRING_CHARS => {
            Err(ServiceError::invalid(path, format!("must be at most {MAX_STRING_CHARS} characters")))
        }
        Value::Array(items) => {
            if items.len() > MAX_LIST_ITEMS {
                return Err(ServiceError::invalid(path, format!("must have at most {MAX_LIST_ITEMS} items")));
            }
            items.iter().enumerate().try_for_each(|(i, item)| sizes(item, &format!("{path}[{i}]")))
        }
        Value::Object(members) => members.iter().try_for_each(|(k, item)| {
            if path.is_empty() && k == "extras" {
                return Ok(());
            }
            let name = schema::camel_to_snake(k);
            let child = if path.is_empty() { name } else { format!("{path}.{name}") };
            sizes(item, &child)
        }),
        _ => Ok(()),
    }
}

/// A group's name: 1-1024 characters, not blank, no control characters.
pub fn group_name(name: &str) -> ServiceResult<()> {
    if name.trim().is_empty() {
        return Err(ServiceError::invalid("name", "is required"));
    }
    if name.chars().any(char::is_control) {
        return Err(ServiceError::invalid("name", "must not contain control characters"));
    }
    if name.chars().count() > MAX_STRING_CHARS {
        return Err(ServiceError::invalid("name", format!("must be at most {MAX_STRING_CHARS} characters")));
    }
    Ok(())
}

/// An id in a request: a UUID, else InvalidArgument naming the field.
pub fn id(value: &str, field: &str) -> ServiceResult<uuid::Uuid> {
    if value.is_empty() {
        return Err(ServiceError::invalid(field, "is required"));
    }
    uuid::Uuid::try_parse(value).map_err(|_| ServiceError::invalid(field, "is not a valid id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in ["primary@email.com", "a.b+c@sub.example.org", "x@xn--bcher-kva.ch"] {
            assert!(looks_like_email(ok), "{ok}");
        }
        for bad in ["", "plain", "@x.com", "a@", "a@b", "a b@c.com", "a@b..com", "a@-b.com", "a@@b.com"] {
            assert!(!looks_like_email(bad), "{bad}");
        }
    }

    #[test]
    fn usernames() {
        assert_eq!(username("Bob").unwrap(), "bob");
        assert!(username("").is_err());
        assert!(username("   ").is_err());
        assert!(username(" bob").is_err());
        assert!(username("a\nb").is_err());
        assert!(username(&"x".repeat(129)).is_err());
        assert!(username(&"é".repeat(128)).is_ok());
    }

    #[test]
    fn profile_rules_name_their_field() {
        let field = |u: pb::User| match profile(&u) {
            Err(ServiceError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        };
        let mut u = pb::User { dob: "2001-02-30".into(), ..Default::default() };
        assert_eq!(field(u.clone()), "dob");
        u.dob = "2000-01-01".into();
        assert!(profile(&u).is_ok());
        u.age = Some(151);
        assert_eq!(field(u.clone()), "age");
        u.age = Some(0);
        u.addresses = vec![pb::Address { zip_code: "z".repeat(1025), ..Default::default() }];
        assert_eq!(field(u.clone()), "addresses[0].zip_code");
        u.addresses = vec![pb::Address::default(); 101];
        assert_eq!(field(u.clone()), "addresses");
        u.addresses.clear();
        u.email = Some(pb::Email { work: "nope".into(), ..Default::default() });
        assert_eq!(field(u), "email.work");
    }
}
