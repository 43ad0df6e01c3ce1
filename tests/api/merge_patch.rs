//! Property: a PUT merge patch stores what RFC 7396 gives when the patch is
//! applied to the user's JSON directly. Random users (random subsets of the
//! model's fields, nested `name`/`email`/`phoneNumber`, addresses, free-form
//! `extras`) under random patches (members set, emptied, nulled, nested
//! objects, empty objects, unknown members, proto-named members).
//!
//! The pure path (gateway parse -> field mask -> the service's mask
//! application) runs many cases; one end-to-end property runs a few through
//! the real HTTP gateway and compares the GET after the PUT.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};
use usersvc::{pb, service::profile};

use crate::rfc7396;

/// Strings that mean something to the paths: dots, backticks, a star,
/// spaces, the empty string.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{1,6}",
        Just("a.b".to_owned()),
        Just("x`y".to_owned()),
        Just("*".to_owned()),
        Just("Zoë Ω".to_owned()),
    ]
    .boxed()
}

/// Keys of `extras`: few, so patches meet what is stored.
fn key() -> BoxedStrategy<String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("c".to_owned()),
        Just("a.b".to_owned()),
        Just("x`y".to_owned()),
        Just("*".to_owned()),
        Just(String::new()),
    ]
    .boxed()
}

fn number() -> BoxedStrategy<Value> {
    prop_oneof![(-1000i64..1000).prop_map(Value::from), (-1000i32..1000).prop_map(|n| json!(f64::from(n) / 4.0)),]
        .boxed()
}

/// Any JSON value for `extras`, nulls included (as stored, as patched).
fn any_json() -> BoxedStrategy<Value> {
    let leaf =
        prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), number(), text().prop_map(Value::from)];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A subset of `fields`, each with a value from `value`.
fn object_of(fields: &'static [&'static str], value: BoxedStrategy<Value>) -> BoxedStrategy<Map<String, Value>> {
    prop::collection::vec(prop::option::of(value), fields.len())
        .prop_map(move |values| fields.iter().zip(values).filter_map(|(f, v)| Some(((*f).to_owned(), v?))).collect())
        .boxed()
}

const NAME: &[&str] = &["prefix", "firstName", "middleName", "lastName", "maidenName", "suffix"];
const EMAIL: &[&str] = &["primary", "secondary", "work", "other"];
const PHONE: &[&str] = &["home", "mobile", "work", "other", "preferred"];
const STRINGS: &[&str] = &["gender", "maritalStatus", "religion", "race", "ethnicity", "ssn", "avatar", "confCode"];

/// Values the service accepts for each field (it validates the merged
/// user), so a stored user and a patched one are both valid.
fn email_address() -> BoxedStrategy<Value> {
    prop_oneof![Just(json!("a@example.com")), Just(json!("b.c@example.org")), Just(json!(""))].boxed()
}

fn string_value() -> BoxedStrategy<Value> {
    text().prop_map(Value::from).boxed()
}

fn geocode() -> BoxedStrategy<Value> {
    (prop::option::of(-90i32..=90), prop::option::of(-180i32..=180))
        .prop_map(|(lat, lon)| {
            let mut m = Map::new();
            if let Some(lat) = lat {
                m.insert("latitude".into(), json!(f64::from(lat) / 2.0));
            }
            if let Some(lon) = lon {
                m.insert("longitude".into(), json!(lon));
            }
            Value::Object(m)
        })
        .boxed()
}

fn address() -> BoxedStrategy<Value> {
    (object_of(&["type", "addressLine1", "city", "zipCode"], string_value()), prop::option::of(geocode()))
        .prop_map(|(mut m, g)| {
            if let Some(g) = g {
                m.insert("geocode".into(), g);
            }
            Value::Object(m)
        })
        .boxed()
}

/// A stored user: a random subset of the model's profile fields.
fn user_doc() -> BoxedStrategy<Value> {
    (
        object_of(STRINGS, string_value()),
        prop::option::of(object_of(NAME, string_value())),
        prop::option::of(object_of(EMAIL, email_address())),
        prop::option::of(object_of(PHONE, string_value())),
        prop::option::of(prop::collection::vec(address(), 0..3)),
        prop::option::of(prop_oneof![Just(json!("1990-05-06")), Just(json!("2001-12-31"))]),
        prop::option::of(0i32..=150),
        prop::option::of(any_json()),
    )
        .prop_map(|(mut m, name, email, phone, addresses, dob, age, extras)| {
            for (k, v) in [("name", name), ("email", email), ("phoneNumber", phone)] {
                if let Some(v) = v {
                    m.insert(k.into(), Value::Object(v));
                }
            }
            if let Some(a) = addresses {
                m.insert("addresses".into(), Value::Array(a));
            }
            if let Some(d) = dob {
                m.insert("dob".into(), d);
            }
            if let Some(a) = age {
                m.insert("age".into(), json!(a));
            }
            if let Some(e) = extras.filter(|e| !e.is_null()) {
                m.insert("extras".into(), e);
            }
            Value::Object(m)
        })
        .boxed()
}

/// A member of a patch: set, emptied or nulled.
fn patch_value(value: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![4 => value, 1 => Just(Value::Null)].boxed()
}

/// A nested message in a patch: null, or an object of some of its members
/// (possibly none, possibly one the model does not have, which refuses the
/// whole patch, possibly by proto name).
fn message_patch(fields: &'static [&'static str], value: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(Value::Null),
        4 => (object_of(fields, patch_value(value)), any::<bool>(), any::<bool>()).prop_map(|(mut m, unknown, proto)| {
            if unknown {
                m.insert("bogus".into(), json!(1));
            }
            let m: Map<String, Value> = if proto {
                m.into_iter().map(|(k, v)| (usersvc::schema::camel_to_snake(&k), v)).collect()
            } else {
                m
            };
            Value::Object(m)
        }),
    ]
    .boxed()
}

/// A merge patch of a user: any subset of members, `extras` any JSON.
fn patch_doc() -> BoxedStrategy<Value> {
    (
        object_of(STRINGS, patch_value(string_value())),
        prop::option::of(message_patch(NAME, string_value())),
        prop::option::of(message_patch(EMAIL, email_address())),
        prop::option::of(message_patch(PHONE, string_value())),
        prop::option::of(patch_value(prop::collection::vec(address(), 0..2).prop_map(Value::Array).boxed())),
        prop::option::of(patch_value(Just(json!("1985-01-02")).boxed())),
        prop::option::of(patch_value((0i32..=150).prop_map(Value::from).boxed())),
        prop::option::of(any_json()),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(|(mut m, name, email, phone, addresses, dob, age, extras, (proto, server))| {
            let phone_key = if proto { "phone_number" } else { "phoneNumber" };
            for (k, v) in [("name", name), ("email", email), (phone_key, phone), ("addresses", addresses)] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            for (k, v) in [("dob", dob), ("age", age), ("extras", extras)] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            if server {
                m.insert("usersId".into(), json!("someone-else"));
                m.insert("createdAt".into(), json!("not a time"));
            }
            Value::Object(m)
        })
        .boxed()
}

/// Whether a generated patch names a member the model does not have (the
/// `bogus` that [`message_patch`] may add to a nested message).
fn names_unknown(patch: &Value) -> bool {
    ["name", "email", "phoneNumber", "phone_number"].iter().any(|k| patch[*k].get("bogus").is_some())
}

fn stored(doc: &Value) -> Vec<u8> {
    let user: pb::User = serde_json::from_value(doc.clone()).expect("a generated user parses");
    profile::to_profile(&user).expect("a generated user serialises")
}

/// The pure path: the gateway's parse and field mask, the service's
/// application of it, against RFC 7396 on the JSON.
#[test]
fn merge_patch_matches_rfc7396() {
    let mut runner = TestRunner::new(Config { cases: 2000, failure_persistence: None, ..Config::default() });
    runner
        .run(&(user_doc(), patch_doc()), |(doc, patch)| {
            let stored = stored(&doc);
            let body = patch.to_string();
            if names_unknown(&patch) {
                // Refused whole, never applied without the member.
                let refused = rfc7396::through_gateway(&stored, body.as_bytes()).err();
                prop_assert_eq!(refused, Some((400, "unknown_field".to_owned())), "{}", body);
                return Ok(());
            }
            prop_assert!(
                rfc7396::through_gateway(&stored, body.as_bytes()).is_ok(),
                "the gateway refused a valid patch {body}"
            );
            if let Err(e) = rfc7396::check(&stored, body.as_bytes()) {
                return Err(TestCaseError::fail(format!("doc {doc}\npatch {body}\n{e}")));
            }
            Ok(())
        })
        .unwrap();
}

/// The cases the properties and the fuzzer found, kept as plain tests.
#[test]
fn merge_patch_regressions() {
    let cases = [
        // An empty object in `extras` makes a non-object an object (RFC 7396
        // section 2): it used to change nothing.
        (json!({"extras": "s"}), json!({"extras": {}})),
        (json!({"extras": {"a": 1}}), json!({"extras": {"a": {}}})),
        (json!({}), json!({"extras": {}})),
        (json!({"extras": {"a": {"b": 1}}}), json!({"extras": {"a": {}}})),
        // An empty nested message creates it, and keeps one that is there.
        (json!({}), json!({"name": {}})),
        (json!({"name": {"lastName": "X"}}), json!({"name": {}})),
        (json!({}), json!({"name": {"firstName": null}})),
        (json!({}), json!({"name": {"bogus": 1}})),
        (json!({}), json!({"name": {"firstName": ""}})),
        // A key that is a star is a key, not the wildcard.
        (json!({"extras": {"*": 1, "a": 2}}), json!({"extras": {"*": null}})),
        (json!({"extras": {"a": 2}}), json!({"extras": {"*": {}}})),
    ];
    for (doc, patch) in cases {
        let stored = stored(&doc);
        if let Err(e) = rfc7396::check(&stored, patch.to_string().as_bytes()) {
            panic!("doc {doc}\npatch {patch}\n{e}");
        }
    }
}

/// A reply's `extras` numbers as the gateway writes them: whole numbers
/// without a fraction.
fn whole_numbers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0) {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        Value::Object(members) => members.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

/// What a GET shows of the profile: no server-managed members.
fn shown(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        for k in rfc7396::NOT_PROFILE {
            m.remove(*k);
        }
        if let Some(e) = m.get_mut("extras") {
            whole_numbers(e);
        }
    }
    v
}

/// The end-to-end property: a user created with a random document, PUT a
/// random patch over HTTP, then GET: the same as RFC 7396 on the JSON.
#[test]
fn put_then_get_matches_rfc7396_over_http() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let t = rt.block_on(crate::common::spawn());
    let mut runner = TestRunner::new(Config { cases: 24, failure_persistence: None, ..Config::default() });
    let result = runner.run(&(user_doc(), patch_doc()), |(doc, patch)| {
        let username = format!("prop-{}", uuid::Uuid::new_v4().simple());
        rt.block_on(async {
            let call = |method: reqwest::Method, path: String, token: Option<String>, body: Option<Value>| {
                let mut req = t
                    .http
                    .request(method, t.url(&path))
                    .header("X-Api-Key", format!("browser api.catalyze.io {}", t.api_key));
                if let Some(token) = token {
                    req = req.header("Authorization", format!("Bearer {token}"));
                }
                if let Some(body) = body {
                    req = req.header("Content-Type", "application/json").body(body.to_string());
                }
                async move {
                    let res = req.send().await.unwrap();
                    let status = res.status().as_u16();
                    (status, res.json::<Value>().await.unwrap())
                }
            };
            let mut create = doc.clone();
            create["username"] = json!(username);
            create["password"] = json!("correct horse battery");
            let (status, out) = call(reqwest::Method::POST, "/v2/users".into(), None, Some(create)).await;
            prop_assert_eq!(status, 200, "create {}: {}", doc, out);
            let id = out["usersId"].as_str().unwrap().to_owned();
            let token = out["sessionToken"].as_str().unwrap().to_owned();
            let path = format!("/v2/users/{id}");
            let (status, put) =
                call(reqwest::Method::PUT, path.clone(), Some(token.clone()), Some(patch.clone())).await;
            let unknown = names_unknown(&patch);
            prop_assert_eq!(status, if unknown { 400 } else { 200 }, "PUT {}: {}", patch, put);
            let (status, got) = call(reqwest::Method::GET, path, Some(token), None).await;
            prop_assert_eq!(status, 200);
            let stored = stored(&doc);
            // A refused patch leaves the user as created.
            let applied = if unknown { json!({}) } else { patch.clone() };
            let want = rfc7396::by_rfc7396(&stored, applied.to_string().as_bytes())
                .expect("no field named twice")
                .map_err(TestCaseError::fail)?;
            prop_assert_eq!(shown(got), shown(want), "doc {}\npatch {}", doc, patch);
            Ok(())
        })
    });
    rt.block_on(async { drop(t) });
    result.unwrap();
}
