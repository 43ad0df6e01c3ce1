//! JSON bodies in: the proto3 JSON mapping, made strict about types (a
//! number is not a string), with output-only members dropped, and for PUT
//! the RFC 7396 merge patch turned into the field mask it means.

use axum::http::{HeaderMap, StatusCode, header};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::schema;

/// Whether the body is a whole message or a merge patch of one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Whole,
    MergePatch,
}

/// A parsed body: the message, and for a merge patch the paths it names.
pub struct Parsed<T> {
    pub message: T,
    pub paths: Vec<String>,
}

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::field(StatusCode::BAD_REQUEST, "invalid_field", field, message)
}

/// Parses a request body as the JSON of `message_name`. An empty body is
/// `{}`. `output_only` names the proto fields to drop.
pub fn parse<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    message_name: &str,
    output_only: &[&str],
    mode: Mode,
) -> Result<Parsed<T>, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        let json = essence == "application/json" || essence.ends_with("+json");
        if !body.is_empty() && !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be application/json",
            ));
        }
    }
    let mut value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not valid JSON: {e}"))
        })?
    };
    let desc = schema::message(message_name)
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"))?;
    let Value::Object(obj) = &mut value else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", "the body must be a JSON object"));
    };
    for name in output_only {
        if let Some(f) = desc.get_field_by_name(name) {
            obj.remove(f.json_name());
            obj.remove(f.name());
        }
    }
    let mut paths = Vec::new();
    check_message(obj, &desc, "", (mode == Mode::MergePatch).then_some(("", &mut paths)))?;
    let message = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        bad(&path, format!("{path}: {}", e.inner()))
    })?;
    Ok(Parsed { message, paths })
}

/// Checks the members of an object against a message, dropping nulls (an
/// absent value) and naming the first member of the wrong type. With
/// `mask`, collects the field-mask paths of a merge patch under its prefix.
fn check_message(
    obj: &mut Map<String, Value>,
    desc: &MessageDescriptor,
    json_prefix: &str,
    mut mask: Option<(&str, &mut Vec<String>)>,
) -> Result<(), ApiError> {
    let keys: Vec<String> = obj.keys().cloned().collect();
    for key in keys {
        let Some(field) = desc.get_field_by_json_name(&key).or_else(|| desc.get_field_by_name(&key)) else {
            // Unknown members are ignored, as the proto3 mapping allows.
            obj.remove(&key);
            continue;
        };
        let json_path = join(json_prefix, field.json_name());
        let proto_path = mask.as_ref().map(|(p, _)| join(p, field.name()));
        let is_null = obj.get(&key).is_some_and(Value::is_null);
        if is_null {
            obj.remove(&key);
            if let (Some((_, paths)), Some(p)) = (mask.as_mut(), proto_path) {
                paths.push(p);
            }
            continue;
        }
        let Some(v) = obj.get_mut(&key) else { continue };
        match (&field.kind(), v, mask.as_mut(), proto_path) {
            // A nested message in a patch merges member by member.
            // The object itself is named too (`name.*`): RFC 7396 makes it
            // exist even when none of its members does.
            (Kind::Message(m), Value::Object(inner), Some((_, paths)), Some(p))
                if !field.is_list() && !schema::is_json_value(m) =>
            {
                paths.push(format!("{p}.*"));
                check_message(inner, m, &json_path, Some((&p, paths)))?;
            }
            (Kind::Message(m), Value::Object(inner), Some((_, paths)), Some(p)) if schema::is_json_value(m) => {
                if crate::service::validate::json_depth(&Value::Object(inner.clone()))
                    > crate::service::validate::MAX_EXTRAS_DEPTH
                {
                    let max = crate::service::validate::MAX_EXTRAS_DEPTH;
                    return Err(bad(&json_path, format!("{json_path}: must nest at most {max} levels deep")));
                }
                merge_json_paths(inner, &p, paths);
            }
            (_, v, mask, proto_path) => {
                check_value(v, &field, &json_path)?;
                if let (Some((_, paths)), Some(p)) = (mask, proto_path) {
                    paths.push(p);
                }
            }
        }
    }
    Ok(())
}

/// The paths of a merge patch inside a free JSON object (`extras`): nested
/// objects merge, `null` removes a key, anything else replaces it. An empty
/// object is a merge path (`prefix.*`): it changes nothing in an object and
/// makes anything else one, as RFC 7396 does.
fn merge_json_paths(obj: &mut Map<String, Value>, prefix: &str, paths: &mut Vec<String>) {
    if obj.is_empty() {
        paths.push(format!("{prefix}.*"));
        return;
    }
    let keys: Vec<String> = obj.keys().cloned().collect();
    for key in keys {
        let path = format!("{prefix}.{}", schema::quote_segment(&key));
        match obj.get_mut(&key) {
            Some(Value::Null) => {
                obj.remove(&key);
                paths.push(path);
            }
            Some(Value::Object(inner)) => merge_json_paths(inner, &path, paths),
            _ => paths.push(path),
        }
    }
}

/// One field's value: lists must be arrays, messages objects, numbers
/// numbers, strings strings, booleans booleans.
fn check_value(v: &mut Value, field: &FieldDescriptor, path: &str) -> Result<(), ApiError> {
    if field.is_list() {
        let Value::Array(items) = v else {
            return Err(bad(path, format!("{path}: must be an array")));
        };
        for (i, item) in items.iter_mut().enumerate() {
            check_single(item, &field.kind(), &format!("{path}[{i}]"))?;
        }
        return Ok(());
    }
    check_single(v, &field.kind(), path)
}

fn check_single(v: &mut Value, kind: &Kind, path: &str) -> Result<(), ApiError> {
    let ok = match kind {
        // Deeper JSON would nest past what protobuf decodes; say so here.
        Kind::Message(m) if schema::is_json_value(m) => {
            if crate::service::validate::json_depth(v) > crate::service::validate::MAX_EXTRAS_DEPTH {
                return Err(bad(
                    path,
                    format!("{path}: must nest at most {} levels deep", crate::service::validate::MAX_EXTRAS_DEPTH),
                ));
            }
            true
        }
        Kind::Message(m) => {
            let Value::Object(inner) = v else {
                return Err(bad(path, format!("{path}: must be an object")));
            };
            return check_message(inner, m, path, None);
        }
        Kind::String | Kind::Bytes | Kind::Enum(_) => v.is_string(),
        Kind::Bool => v.is_boolean(),
        Kind::Double | Kind::Float => v.is_number(),
        _ => v.is_i64() || v.is_u64(),
    };
    if ok {
        return Ok(());
    }
    let want = match kind {
        Kind::String | Kind::Bytes | Kind::Enum(_) => "a string",
        Kind::Bool => "true or false",
        Kind::Double | Kind::Float => "a number",
        _ => "a whole number",
    };
    Err(bad(path, format!("{path}: must be {want}")))
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn patch(body: &str) -> Result<Parsed<pb::User>, ApiError> {
        parse(&HeaderMap::new(), body.as_bytes(), "User", schema::USER_OUTPUT_ONLY, Mode::MergePatch)
    }

    #[test]
    fn merge_patch_paths() {
        let p = patch(r#"{"name": {"lastName": "X", "firstName": null}, "dob": null, "extras": {"a": {"b": 1}, "c.d": null}, "usersId": 5}"#)
            .unwrap();
        let mut paths = p.paths.clone();
        paths.sort();
        assert_eq!(paths, vec!["dob", "extras.`c.d`", "extras.a.b", "name.*", "name.first_name", "name.last_name"]);
        assert_eq!(p.message.name.unwrap().last_name, "X");
    }

    #[test]
    fn empty_objects_are_merge_paths() {
        let paths = |body: &str| {
            let mut p = patch(body).unwrap().paths;
            p.sort();
            p
        };
        assert_eq!(paths(r#"{"extras": {}}"#), vec!["extras.*"]);
        assert_eq!(paths(r#"{"extras": {"a": {}, "*": {"b": {}}}}"#), vec!["extras.`*`.b.*", "extras.a.*"]);
        assert_eq!(paths(r#"{"name": {}}"#), vec!["name.*"]);
        assert_eq!(paths(r#"{"extras": {"a": {"b": null}}}"#), vec!["extras.a.b"]);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let field = |body: &str| patch(body).err().and_then(|e| e.item.field).unwrap_or_default();
        assert_eq!(field(r#"{"age": "21"}"#), "age");
        assert_eq!(field(r#"{"email": "a@b.c"}"#), "email");
        assert_eq!(field(r#"{"addresses": [{"geocode": {"latitude": "x"}}]}"#), "addresses[0].geocode.latitude");
        assert_eq!(field(r#"{"addresses": {}}"#), "addresses");
        assert_eq!(field(r#"{"age": 21.5}"#), "age");
        assert_eq!(field(r#"{"age": 99999999999}"#), "age");
    }

    #[test]
    fn non_objects_and_bad_json_are_rejected() {
        assert_eq!(patch("[1]").err().unwrap().item.code, "invalid_body");
        assert_eq!(patch("{\"a\":").err().unwrap().item.code, "invalid_json");
        assert!(patch("").is_ok());
    }
}
