//! Arbitrary `X-Api-Key` and `Authorization` values, through both doors: as
//! HTTP headers the gateway turns into gRPC metadata, and as gRPC metadata
//! straight from the wire; then the authenticator's reading of them before
//! any database lookup.
//!
//! Input: the two values separated by the first 0xFF byte (0xFF is never
//! valid in a header, so it cannot be wanted inside one).
//!
//! Invariants: nothing panics; a key or token read is non-empty visible
//! ASCII (no white space or control characters), and is a part of the value it was read from; the
//! authenticator reads from metadata exactly what the parsers read from the
//! string; a value that is not visible ASCII is read as invalid, never as
//! absent or as a key; the gateway passes a value on unchanged (or as one
//! that matches nothing); and `Bearer {t}` / `{platform} {id} {t}` give `t` back.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tonic::metadata::MetadataMap;
use usersvc::auth::{caller, secret};

/// What a key or token read from a header must be: visible ASCII.
fn no_space(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

fn check_strings(value: &str) {
    if let Some(key) = secret::api_key_from_header(value) {
        assert!(no_space(key), "api key {key:?} from {value:?}");
        assert!(value.contains(key));
        let words = value.split_ascii_whitespace().count();
        assert!(words == 1 || words == 3, "{words} words gave a key");
    }
    if let Some(token) = secret::bearer_token(value) {
        assert!(no_space(token), "token {token:?} from {value:?}");
        assert!(value.contains(token));
        assert!(value.trim_start().get(..6).is_some_and(|s| s.eq_ignore_ascii_case("bearer")));
    }
    // What a client would send with this value as its secret.
    if no_space(value) {
        assert_eq!(secret::bearer_token(&format!("Bearer {value}")), Some(value));
        assert_eq!(secret::api_key_from_header(value), Some(value));
        assert_eq!(secret::api_key_from_header(&format!("browser api.example.com {value}")), Some(value));
    }
}

/// The authenticator's reading of metadata agrees with the string parsers.
fn check_metadata(md: &MetadataMap) {
    match md.get("x-api-key") {
        None => assert!(matches!(caller::api_key(md), Err(caller::AuthError::MissingApiKey))),
        Some(v) => match v.to_str() {
            Ok(s) => match caller::api_key(md) {
                Ok(key) => assert_eq!(Some(key), secret::api_key_from_header(s)),
                Err(e) => {
                    assert!(matches!(e, caller::AuthError::InvalidApiKey));
                    assert_eq!(secret::api_key_from_header(s), None);
                }
            },
            Err(_) => assert!(matches!(caller::api_key(md), Err(caller::AuthError::InvalidApiKey))),
        },
    }
    match (md.get("authorization"), caller::bearer(md)) {
        (None, None) => {}
        (Some(v), Some(read)) => match (v.to_str(), read) {
            (Ok(s), Ok(token)) => assert_eq!(Some(token), secret::bearer_token(s)),
            (Ok(s), Err(caller::AuthError::InvalidToken)) => assert_eq!(secret::bearer_token(s), None),
            (Err(_), Err(caller::AuthError::InvalidToken)) => {}
            (_, other) => panic!("authorization read as {other:?}"),
        },
        (v, read) => panic!("authorization {v:?} read as {read:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (key, auth) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    for v in [Some(key), auth].into_iter().flatten() {
        if let Ok(s) = std::str::from_utf8(v) {
            check_strings(s);
        }
    }

    let mut headers = HeaderMap::new();
    for (name, v) in [("x-api-key", Some(key)), ("authorization", auth)] {
        if let Some(value) = v.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.insert(name, value);
        }
    }
    // The gRPC door: metadata as tonic builds it from the HTTP/2 headers.
    let md = MetadataMap::from_headers(headers.clone());
    check_metadata(&md);
    // The JSON door: the gateway's forwarding into metadata.
    let md = usersvc::gateway::call_metadata(&headers, Some([192, 0, 2, 1].into()));
    check_metadata(&md);
    for name in ["x-api-key", "authorization"] {
        match (headers.get(name), md.get(name)) {
            (None, None) => {}
            // Passed on as it is, or as a value that can match nothing.
            (Some(h), Some(m)) => {
                assert!(m.as_bytes() == h.as_bytes() || m.as_bytes() == b"invalid", "{name} changed on the way")
            }
            (h, m) => panic!("{name}: header {h:?} became metadata {m:?}"),
        }
    }
    assert!(md.get("x-client-addr").is_some());
});
