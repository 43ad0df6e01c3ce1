//! Field masks (AIP-134, AIP-161) applied to the JSON form of a message:
//! each path is resolved against the descriptor, then the value at that path
//! in the request replaces the one in the stored record (or clears it).

use prost_reflect::{Kind, MessageDescriptor};
use serde_json::{Map, Value};

use crate::schema;

/// A path resolved against a message: its top-level proto field and the
/// JSON member names to walk.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedPath {
    pub top: String,
    pub json: Vec<String>,
    /// The index in `json` of a `google.protobuf.Value` field the path goes
    /// through: below it are free JSON keys, merged as RFC 7396 does.
    pub value_at: Option<usize>,
    /// The path ended in `.*`: the object there is merged into, not replaced.
    pub merge: bool,
}

/// Resolves `path` against `message`: proto names (or their JSON forms) down
/// through singular message fields; past a `google.protobuf.Value` field the
/// segments are free JSON keys. A last segment `*` (unquoted) names every
/// member of the object before it: a singular message, or an object at or
/// inside a `google.protobuf.Value`.
pub fn resolve(message: &MessageDescriptor, path: &str) -> Result<ResolvedPath, String> {
    // A path that ends in a quoted segment ends in a backtick, so a final
    // `.*` is always the unquoted wildcard.
    let (named, merge) = match path.strip_suffix(".*") {
        Some(named) => (named, true),
        None => (path, false),
    };
    let segments = schema::split_path(named)?;
    let mut json = Vec::with_capacity(segments.len());
    let mut current = Some(message.clone());
    let mut top = None;
    let mut value_at = None;
    for (i, seg) in segments.iter().enumerate() {
        let Some(msg) = current.take() else {
            // Inside a JSON value: keys are kept as they are.
            json.push(seg.clone());
            continue;
        };
        let field = msg
            .get_field_by_name(seg)
            .or_else(|| msg.get_field_by_json_name(seg))
            .ok_or_else(|| format!("unknown field {seg:?} in path {path:?}"))?;
        top.get_or_insert_with(|| field.name().to_owned());
        json.push(field.json_name().to_owned());
        let last = i + 1 == segments.len();
        current = match field.kind() {
            Kind::Message(m) if schema::is_json_value(&m) => {
                value_at = Some(json.len() - 1);
                None
            }
            Kind::Message(m) if !field.is_list() && !field.is_map() => Some(m),
            _ if last => None,
            _ => {
                return Err(format!("path {path:?} reaches into {:?}, which has no fields to name", field.name()));
            }
        };
    }
    let top = top.ok_or_else(|| format!("empty path {path:?}"))?;
    if merge && current.is_none() && value_at.is_none() {
        return Err(format!("path {path:?} ends in `*` after a field that is not a message"));
    }
    Ok(ResolvedPath { top, json, value_at, merge })
}

/// Copies the value at `path` in `patch` into `target`, or removes it from
/// `target` when `patch` has none there. Objects on the way are created;
/// a non-object on the way is replaced by one, as RFC 7396 does. Removing
/// from a message that is not there changes nothing; inside a JSON value,
/// as in RFC 7396, the objects on the way are made all the same.
///
/// A merge path (`name.*`, `extras.key.*`) makes the object at the path
/// exist (replacing a non-object, as RFC 7396 does) and sets in it each
/// member `patch` has there, keeping the others: how a merge patch's empty
/// object `{}` is applied.
pub fn apply(target: &mut Value, patch: &Value, path: &ResolvedPath) {
    let new = lookup(patch, &path.json).cloned();
    if path.merge {
        let mut node = target;
        for key in &path.json {
            node = object_mut(node).entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
        }
        let obj = object_mut(node);
        if let Some(Value::Object(members)) = new {
            obj.extend(members);
        }
        return;
    }
    let Some((last, parents)) = path.json.split_last() else {
        return;
    };
    let mut node = target;
    for (i, key) in parents.iter().enumerate() {
        let in_value = path.value_at.is_some_and(|v| i >= v);
        if new.is_none() && node.get(key).is_none() && !in_value {
            return;
        }
        let obj = object_mut(node);
        node = obj.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
    }
    match new {
        Some(v) => {
            object_mut(node).insert(last.clone(), v);
        }
        None if path.value_at.is_some_and(|v| parents.len() > v) => {
            object_mut(node).remove(last);
        }
        None => {
            if let Value::Object(obj) = node {
                obj.remove(last);
            }
        }
    }
}

fn object_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |node, key| node.as_object()?.get(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> MessageDescriptor {
        schema::message("User").unwrap()
    }

    #[test]
    fn resolves_nested_and_extras_paths() {
        let p = resolve(&user(), "name.last_name").unwrap();
        assert_eq!(p.top, "name");
        assert_eq!(p.json, vec!["name", "lastName"]);
        let p = resolve(&user(), "phoneNumber.mobile").unwrap();
        assert_eq!(p.json, vec!["phoneNumber", "mobile"]);
        let p = resolve(&user(), "extras.some_key.`a.b`").unwrap();
        assert_eq!(p.json, vec!["extras", "some_key", "a.b"]);
        assert_eq!(p.value_at, Some(0));
        assert!(resolve(&user(), "nope").is_err());
        assert!(resolve(&user(), "age.x").is_err());
        assert!(resolve(&user(), "addresses.city").is_err());
        assert!(resolve(&user(), "name.nope").is_err());
    }

    #[test]
    fn applies_replace_clear_and_create() {
        let mut target = json!({"name": {"firstName": "A", "lastName": "B"}, "extras": "s"});
        let patch = json!({"name": {"lastName": "C"}, "extras": {"k": {"x": 1}}});
        for p in ["name.last_name", "name.first_name", "extras.k.x", "dob", "phone_number.home"] {
            apply(&mut target, &patch, &resolve(&user(), p).unwrap());
        }
        assert_eq!(target, json!({"name": {"lastName": "C"}, "extras": {"k": {"x": 1}}}));
        // RFC 7396: removing a key of a non-object makes it an object.
        let mut target = json!({"extras": "s"});
        apply(&mut target, &json!({}), &resolve(&user(), "extras.a").unwrap());
        assert_eq!(target, json!({"extras": {}}));
    }

    #[test]
    fn merge_paths_create_and_keep() {
        let p = resolve(&user(), "extras.k.*").unwrap();
        assert!(p.merge);
        assert_eq!(p.json, vec!["extras", "k"]);
        assert!(resolve(&user(), "name.*").unwrap().merge);
        assert!(resolve(&user(), "extras.*").unwrap().merge);
        // A quoted star is a key; a star after a scalar or a list is no path.
        let p = resolve(&user(), "extras.`*`").unwrap();
        assert!(!p.merge);
        assert_eq!(p.json, vec!["extras", "*"]);
        for bad in ["*", ".*", "age.*", "addresses.*", "name.first_name.*", "extras.`open.*"] {
            assert!(resolve(&user(), bad).is_err(), "{bad}");
        }

        let patch = json!({"name": {"lastName": "C"}, "extras": {"k": {}}});
        // RFC 7396: `{}` onto a non-object (or nothing) makes an object...
        for (before, after) in [
            (json!({"extras": {"k": "s"}}), json!({"extras": {"k": {}}})),
            (json!({"extras": 5}), json!({"extras": {"k": {}}})),
            (json!({}), json!({"extras": {"k": {}}})),
            // ...and onto an object changes nothing.
            (json!({"extras": {"k": {"x": 1}}}), json!({"extras": {"k": {"x": 1}}})),
        ] {
            let mut target = before.clone();
            apply(&mut target, &patch, &resolve(&user(), "extras.k.*").unwrap());
            assert_eq!(target, after, "from {before}");
        }
        // A message is created when missing; its members in the request are
        // set, the others kept.
        let mut target = json!({"name": {"firstName": "A"}});
        apply(&mut target, &patch, &resolve(&user(), "name.*").unwrap());
        assert_eq!(target, json!({"name": {"firstName": "A", "lastName": "C"}}));
        let mut target = json!({});
        apply(&mut target, &json!({"name": {}}), &resolve(&user(), "name.*").unwrap());
        assert_eq!(target, json!({"name": {}}));
    }
}
