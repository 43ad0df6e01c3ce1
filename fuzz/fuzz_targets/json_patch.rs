//! Arbitrary bytes as the body of `PUT /v2/users/{id}`: the gateway's strict
//! JSON parse and its merge patch -> field mask, then the service's
//! resolution and application of that mask, exactly as an update runs.
//!
//! Invariants: nothing panics; a refusal is a client error (4xx); every path
//! the gateway makes resolves against the `User` descriptor and never names
//! an output-only field; the stored result is what RFC 7396 gives when the
//! body is applied to the JSON directly (over three stored profiles).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use usersvc::{pb, service::profile};

#[path = "../../tests/api/rfc7396.rs"]
#[allow(dead_code)]
mod rfc7396;

/// Stored profiles to patch: the documented full user, nothing at all, and
/// one whose `extras` and `name` are not what a patch expects.
fn stored() -> &'static [Vec<u8>] {
    static STORED: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    STORED.get_or_init(|| {
        let full: pb::User = serde_json::from_str(include_str!("../../tests/fixtures/create_full.json"))
            .expect("the documented user parses");
        let odd = pb::User {
            extras: Some(serde_json::from_str(r#""a string""#).expect("a JSON value")),
            name: Some(pb::Name { last_name: "Last".into(), ..Default::default() }),
            ..Default::default()
        };
        [full, pb::User::default(), odd].iter().map(|u| profile::to_profile(u).expect("a profile serialises")).collect()
    })
}

fuzz_target!(|body: &[u8]| {
    for profile in stored() {
        if let Err(e) = rfc7396::check(profile, body) {
            panic!("body {:?}: {e}", String::from_utf8_lossy(body));
        }
    }
});
