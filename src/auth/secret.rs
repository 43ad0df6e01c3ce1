//! Random bearer secrets (API keys, session tokens) and their stored form.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

/// 32 random bytes, base64url without padding (43 characters).
pub fn generate() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let encoded = URL_SAFE_NO_PAD.encode(bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    SecretString::from(encoded)
}

/// What is stored of a secret: its SHA-256. The secrets carry 256 bits of
/// entropy, so a slow hash would add cost and no safety.
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Whether a key or token could be one: visible ASCII only (the secrets are
/// base64url), so control characters never reach a lookup.
fn plausible(secret: &str) -> bool {
    !secret.is_empty() && secret.bytes().all(|b| b.is_ascii_graphic())
}

/// The key of an `X-Api-Key` value: `{platform} {identifier} {key}` or the
/// bare key. None when the header is empty or has another shape.
pub fn api_key_from_header(value: &str) -> Option<&str> {
    let words: Vec<&str> = value.split_ascii_whitespace().collect();
    match words.as_slice() {
        [key] | [_, _, key] => Some(*key).filter(|k| plausible(k)),
        _ => None,
    }
}

/// The token of an `Authorization: Bearer {token}` value (scheme
/// case-insensitive, as RFC 7235 has it).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && plausible(token)).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn api_key_shapes() {
        assert_eq!(api_key_from_header("browser api.catalyze.io abc"), Some("abc"));
        assert_eq!(api_key_from_header("abc"), Some("abc"));
        assert_eq!(api_key_from_header("  abc  "), Some("abc"));
        assert_eq!(api_key_from_header(""), None);
        assert_eq!(api_key_from_header("a b"), None);
        assert_eq!(api_key_from_header("a b c d"), None);
        // Found by the auth_headers fuzz target: a vertical tab is not
        // split on, and a key with control characters came through.
        assert_eq!(api_key_from_header("e\0a\0\u{b}\0\u{b}p "), None);
        assert_eq!(api_key_from_header("browser x k\u{b}ey"), None);
    }

    #[test]
    fn bearer_shapes() {
        assert_eq!(bearer_token("Bearer xyz"), Some("xyz"));
        assert_eq!(bearer_token("bearer   xyz "), Some("xyz"));
        assert_eq!(bearer_token("Basic xyz"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer a b"), None);
        assert_eq!(bearer_token("Bearer a\tb"), None);
        assert_eq!(bearer_token("Bearer a\u{b}b"), None);
    }

    #[test]
    fn generated_secrets_differ_and_are_url_safe() {
        let a = generate();
        let b = generate();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 43);
        assert!(a.expose_secret().bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }
}
