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
    /// The string member taken out beside the message (see [`parse_taking`]).
    pub taken: Option<String>,
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
    parse_taking(headers, body, message_name, output_only, mode, None)
}

/// [`parse`], with one top-level string member that belongs to the request
/// rather than to the message (`currentPassword` beside a user's members)
/// taken out first, so that it is neither refused as unknown nor put in the
/// message.
pub fn parse_taking<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    message_name: &str,
    output_only: &[&str],
    mode: Mode,
    take: Option<&str>,
) -> Result<Parsed<T>, ApiError> {
    let declared = headers.get(header::CONTENT_TYPE).map(|ct| ct.to_str().unwrap_or("").to_ascii_lowercase());
    if let Some(ct) = &declared
        && !body.is_empty()
        && !may_carry_json(ct)
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be a JSON object (Content-Type: application/json)",
        ));
    }
    let mut value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| {
            let sent_as = match declared.as_deref().map(essence) {
                Some(t) if t != "application/json" && !t.ends_with("+json") => format!(" (sent as {t})"),
                _ => String::new(),
            };
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not valid JSON{sent_as}: {e}"))
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
    for name in schema::ECHOED_MEMBERS {
        obj.remove(*name);
        obj.remove(&schema::camel_to_snake(name));
    }
    let taken = match take.map(|name| (name, obj.remove(name))) {
        None | Some((_, None | Some(Value::Null))) => None,
        Some((_, Some(Value::String(s)))) => Some(s),
        Some((name, Some(_))) => return Err(bad(name, format!("{name}: must be a string"))),
    };
    let mut paths = Vec::new();
    check_message(obj, &desc, "", (mode == Mode::MergePatch).then_some(("", &mut paths)))?;
    let message = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        bad(&path, format!("{path}: {}", e.inner()))
    })?;
    Ok(Parsed { message, paths, taken })
}

/// The media type of a `Content-Type` value, without its parameters.
fn essence(ct: &str) -> &str {
    ct.split(';').next().unwrap_or_default().trim()
}

/// Whether a declared content type may hold the JSON body. Browser
/// libraries send JSON as `application/x-www-form-urlencoded` or
/// `text/plain` by default (jQuery's `$.ajax`, a `fetch` of a string), so any
/// type is parsed as JSON except those that can never be it.
fn may_carry_json(ct: &str) -> bool {
    let ct = essence(ct);
    let top = ct.split('/').next().unwrap_or_default();
    !matches!(top, "multipart" | "image" | "audio" | "video" | "font" | "model")
}

/// Checks the members of an object against a message, dropping nulls (an
/// absent value) and naming the first member that the message does not
/// have or that has the wrong type. With
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
            // The proto3 mapping may ignore unknown members; a client that
            // sent one believes it stored, so it is refused instead.
            let path = join(json_prefix, &key);
            let whose = if json_prefix.is_empty() { "the body".to_owned() } else { json_prefix.to_owned() };
            let hint = if desc.get_field_by_name("extras").is_some() { "; custom data belongs in extras" } else { "" };
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "unknown_field",
                &path,
                format!("{path}: {whose} has no member {key:?}{hint}"),
            ));
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
        assert_eq!(patch("[1]").err().unwrap().item.reason, "invalid_body");
        assert_eq!(patch("{\"a\":").err().unwrap().item.reason, "invalid_json");
        assert_eq!(patch("{\"a\":").err().unwrap().item.code, 400);
        assert!(patch("").is_ok());
    }

    #[test]
    fn unknown_members_are_refused_at_any_depth() {
        let refused = |body: &str| patch(body).err().map(|e| (e.item.reason, e.item.field.unwrap_or_default()));
        let unknown = |f: &str| Some(("unknown_field".to_owned(), f.to_owned()));
        assert_eq!(refused(r#"{"favouriteColour": "blue"}"#), unknown("favouriteColour"));
        assert_eq!(refused(r#"{"name": {"nickname": "Al"}}"#), unknown("name.nickname"));
        assert_eq!(refused(r#"{"name": {"nickname": null}}"#), unknown("name.nickname"));
        assert_eq!(refused(r#"{"addresses": [{"city": "X"}, {"planet": "Mars"}]}"#), unknown("addresses[1].planet"));
        // Free JSON, the members clients echo, and proto names are fine.
        assert_eq!(refused(r#"{"extras": {"favouriteColour": {"any": ["thing"]}}}"#), None);
        assert_eq!(
            refused(
                r#"{"usersId": "x", "userId": "x", "appId": "a", "inviteCode": "", "createdAt": "t", "updatedAt": "t", "sessionToken": "s", "session_token": "s"}"#
            ),
            None
        );
        assert_eq!(refused(r#"{"first_name": "x"}"#), unknown("first_name"));
        assert_eq!(refused(r#"{"name": {"first_name": "x"}, "phone_number": {}}"#), None);
    }

    #[test]
    fn json_is_read_whatever_the_declared_type() {
        let with = |ct: &str, body: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            parse::<pb::User>(&h, body.as_bytes(), "User", schema::USER_OUTPUT_ONLY, Mode::Whole)
                .map(|p| p.message.dob)
                .map_err(|e| (e.item.code, e.item.reason))
        };
        let body = r#"{"dob":"2000-01-01"}"#;
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "application/x-www-form-urlencoded; charset=UTF-8",
            "text/plain;charset=UTF-8",
            "application/merge-patch+json",
            "APPLICATION/JSON",
        ] {
            assert_eq!(with(ct, body), Ok("2000-01-01".to_owned()), "{ct}");
        }
        let form = with("application/x-www-form-urlencoded", "username=a&password=b");
        assert_eq!(form, Err((400, "invalid_json".to_owned())));
        for ct in ["multipart/form-data; boundary=x", "image/png"] {
            assert_eq!(with(ct, body), Err((415, "unsupported_media_type".to_owned())), "{ct}");
        }
    }
}
