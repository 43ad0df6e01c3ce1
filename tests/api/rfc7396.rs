//! The oracle of the merge-patch properties: RFC 7396 applied to the JSON
//! directly, beside the gateway's path (merge patch -> field mask -> the
//! service's mask application). Shared, by `#[path]`, with the `json_patch`
//! fuzz target, so the fuzzer and the property tests check one claim.

use serde_json::{Map, Value};
use usersvc::{
    gateway::json::{self, Mode},
    pb, schema,
    service::{field_mask, profile},
};

/// Top-level members that are not part of the stored profile: output-only
/// fields (ignored), and the credentials and flag kept in columns of their
/// own.
pub const NOT_PROFILE: &[&str] =
    &["usersId", "createdAt", "updatedAt", "sessionToken", "username", "password", "active"];

/// RFC 7396, section 2: MergePatch(Target, Patch).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { unreachable!() };
    for (name, value) in members {
        if value.is_null() {
            t.remove(name);
        } else {
            merge_patch(t.entry(name.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The proto3 JSON mapping lets a body name a field by its proto name
/// (`first_name`) as well as its JSON name (`firstName`); RFC 7396 compares
/// member names literally, so the patch is first written with JSON names.
/// None when two members name one field (a body the gateway must refuse).
pub fn canonical(obj: &Map<String, Value>, desc: &prost_reflect::MessageDescriptor) -> Option<Map<String, Value>> {
    let mut out = Map::new();
    for (key, value) in obj {
        let Some(field) = desc.get_field_by_json_name(key).or_else(|| desc.get_field_by_name(key)) else {
            // Unknown members are dropped by both sides.
            continue;
        };
        let value = match (field.kind(), value) {
            (prost_reflect::Kind::Message(m), Value::Object(inner))
                if !field.is_list() && !schema::is_json_value(&m) =>
            {
                Value::Object(canonical(inner, &m)?)
            }
            _ => value.clone(),
        };
        if out.insert(field.json_name().to_owned(), value).is_some() {
            return None;
        }
    }
    Some(out)
}

/// A user's JSON as the service keeps and returns it: through `pb::User`.
pub fn normalise(v: Value) -> Result<Value, String> {
    let user: pb::User = serde_json::from_value(v).map_err(|e| format!("not a User: {e}"))?;
    serde_json::to_value(&user).map_err(|e| format!("does not serialise: {e}"))
}

/// What the gateway's PUT/PATCH stores for `body` over the stored profile
/// (`profile::to_profile` bytes): the gateway's parse into the message and
/// field mask, then the service's resolution and application of the mask.
/// Err is the gateway's refusal (status, reason).
pub fn through_gateway(stored: &[u8], body: &[u8]) -> Result<pb::User, (u16, String)> {
    let headers = http::HeaderMap::new();
    let parsed = json::parse::<pb::User>(&headers, body, "User", schema::USER_OUTPUT_ONLY, Mode::MergePatch)
        .map_err(|e| (e.status.as_u16(), e.item.reason))?;
    let desc = schema::message("User").expect("User descriptor");
    let patch = serde_json::to_value(&parsed.message).expect("a parsed User serialises");
    let mut paths = Vec::new();
    for path in &parsed.paths {
        let resolved = field_mask::resolve(&desc, path)
            .unwrap_or_else(|e| panic!("the gateway made a path the service refuses: {path:?}: {e}"));
        if !NOT_PROFILE.contains(&schema::snake_to_camel(&resolved.top).as_str()) {
            paths.push(resolved);
        }
    }
    Ok(profile::merge(stored, &patch, &paths).expect("a merged profile reads as a User"))
}

/// RFC 7396 applied to the stored profile's JSON with the body, as the
/// service shows users. None when the body names a field twice.
pub fn by_rfc7396(stored: &[u8], body: &[u8]) -> Option<Result<Value, String>> {
    let mut doc: Value = serde_json::from_slice(stored).expect("stored profile is JSON");
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body).expect("the gateway accepted it, so it is JSON")
    };
    let Value::Object(obj) = body else { panic!("the gateway accepted a body that is not an object") };
    let mut patch = canonical(&obj, &schema::message("User").expect("User descriptor"))?;
    for name in NOT_PROFILE {
        patch.remove(*name);
    }
    merge_patch(&mut doc, &Value::Object(patch));
    Some(normalise(doc))
}

/// Checks one body against one stored profile: the gateway either refuses
/// it as a client error, or stores exactly what RFC 7396 gives.
pub fn check(stored: &[u8], body: &[u8]) -> Result<(), String> {
    let got = match through_gateway(stored, body) {
        Ok(user) => serde_json::to_value(&user).map_err(|e| e.to_string())?,
        Err((status, code)) => {
            return if (400..500).contains(&status) { Ok(()) } else { Err(format!("refused with {status} {code}")) };
        }
    };
    let want = match by_rfc7396(stored, body) {
        None => return Err("the gateway accepted a body that names one field twice".into()),
        Some(Err(e)) => return Err(format!("RFC 7396 result {e}")),
        Some(Ok(v)) => v,
    };
    if got != want {
        return Err(format!("gateway stored {got}\nRFC 7396 gives {want}"));
    }
    Ok(())
}
