//! Password hashes made elsewhere: what an imported user's stored hash may
//! be (argon2 in PHC form, bcrypt, PBKDF2, scrypt), how each is checked,
//! and whether it must be replaced by one at the service's own argon2id
//! parameters at the next sign-in. Each scheme is its RustCrypto crate's
//! (or the `bcrypt` crate's); only the dispatch is ours.

use argon2::{Algorithm, Params, PasswordHash, Version};
use password_hash::PasswordVerifier;

use super::password::{ITERATIONS, MEMORY_KIB, PARALLELISM};

/// The families of hashes the service can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Argon2,
    Bcrypt,
    Pbkdf2,
    Scrypt,
}

/// PBKDF2 rounds above this are refused: a stored hash asking for more is
/// a way to stall the hashing threads, not a real one (OWASP asks for
/// 600,000 of SHA-256).
const MAX_PBKDF2_ROUNDS: u32 = 10_000_000;
/// scrypt's memory (128 · r · N bytes) above this is refused: 256 MiB, as
/// for argon2.
const MAX_SCRYPT_BYTES: u64 = 256 << 20;

/// Why a stored hash is not one the service can check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemeError {
    #[error(
        "unknown password hash scheme{0} (accepted: argon2id/argon2i PHC, bcrypt $2a$/$2b$/$2y$, PBKDF2-SHA256/SHA512 PHC, scrypt PHC)"
    )]
    Unknown(String),
    #[error("malformed {0} hash: {1}")]
    Malformed(&'static str, String),
    #[error("{0} hash parameters too costly: {1}")]
    TooCostly(&'static str, String),
}

/// The scheme of a stored hash, checked for form and for a cost the
/// service will pay.
pub fn scheme_of(hash: &str) -> Result<Scheme, SchemeError> {
    if hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$") || hash.starts_with("$2x$") {
        return bcrypt_parts(hash).map(|_| Scheme::Bcrypt);
    }
    let parsed = PasswordHash::new(hash).map_err(|e| {
        let named = hash.strip_prefix('$').and_then(|h| h.split('$').next()).filter(|n| n.len() <= 32);
        match named {
            Some(n) if is_known_ident(n) => SchemeError::Malformed("PHC", e.to_string()),
            Some(n) => SchemeError::Unknown(format!(" '{n}'")),
            None => SchemeError::Unknown(String::new()),
        }
    })?;
    let ident = parsed.algorithm.as_str();
    let (Some(_), Some(_)) = (parsed.salt, parsed.hash) else {
        return Err(SchemeError::Malformed("PHC", "no salt or no hash".into()));
    };
    match ident {
        "argon2id" | "argon2i" | "argon2d" => {
            let params = Params::try_from(&parsed).map_err(|e| SchemeError::Malformed("argon2", e.to_string()))?;
            if params.block_count() > super::password::MAX_BLOCKS {
                return Err(SchemeError::TooCostly("argon2", format!("m={}", params.m_cost())));
            }
            parsed
                .version
                .map_or(Ok(Version::V0x13), Version::try_from)
                .map_err(|e| SchemeError::Malformed("argon2", e.to_string()))?;
            Ok(Scheme::Argon2)
        }
        "pbkdf2-sha256" | "pbkdf2-sha512" => {
            let params =
                pbkdf2::Params::try_from(&parsed).map_err(|e| SchemeError::Malformed("PBKDF2", e.to_string()))?;
            if params.rounds > MAX_PBKDF2_ROUNDS {
                return Err(SchemeError::TooCostly("PBKDF2", format!("i={}", params.rounds)));
            }
            Ok(Scheme::Pbkdf2)
        }
        "scrypt" => {
            let params =
                scrypt::Params::try_from(&parsed).map_err(|e| SchemeError::Malformed("scrypt", e.to_string()))?;
            let bytes = 128u64.saturating_mul(u64::from(params.r())).saturating_mul(1u64 << params.log_n().min(63));
            if bytes > MAX_SCRYPT_BYTES {
                return Err(SchemeError::TooCostly("scrypt", format!("ln={} r={}", params.log_n(), params.r())));
            }
            Ok(Scheme::Scrypt)
        }
        other => Err(SchemeError::Unknown(format!(" '{other}'"))),
    }
}

fn is_known_ident(name: &str) -> bool {
    matches!(name, "argon2id" | "argon2i" | "argon2d" | "pbkdf2-sha256" | "pbkdf2-sha512" | "scrypt")
}

/// A bcrypt hash's cost, once its form is checked: `$2b$NN$` and 53
/// characters of salt and hash.
fn bcrypt_parts(hash: &str) -> Result<u32, SchemeError> {
    let malformed = |why: &str| SchemeError::Malformed("bcrypt", why.to_owned());
    let rest = hash.get(4..).ok_or_else(|| malformed("too short"))?;
    let (cost, tail) = rest.split_once('$').ok_or_else(|| malformed("no cost"))?;
    let cost: u32 = cost.parse().map_err(|_| malformed("cost is not a number"))?;
    if !(4..=31).contains(&cost) {
        return Err(malformed("cost is not from 4 to 31"));
    }
    if cost > 16 {
        return Err(SchemeError::TooCostly("bcrypt", format!("cost {cost}")));
    }
    if tail.len() != 53 || !tail.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/') {
        return Err(malformed("salt and hash must be 53 characters of bcrypt's base64"));
    }
    Ok(cost)
}

/// Whether a password matches a hash of any scheme but argon2 (which the
/// hashing threads check with their own reused memory). Constant-time in
/// each crate.
pub fn verify_other(hash: &str, password: &str) -> bool {
    match scheme_of(hash) {
        Ok(Scheme::Bcrypt) => bcrypt::verify(password, hash).unwrap_or(false),
        Ok(Scheme::Pbkdf2) => {
            PasswordHash::new(hash).is_ok_and(|h| pbkdf2::Pbkdf2.verify_password(password.as_bytes(), &h).is_ok())
        }
        Ok(Scheme::Scrypt) => {
            PasswordHash::new(hash).is_ok_and(|h| scrypt::Scrypt.verify_password(password.as_bytes(), &h).is_ok())
        }
        Ok(Scheme::Argon2) | Err(_) => false,
    }
}

/// Whether a stored hash is anything but argon2id at the service's
/// parameters: such a hash is replaced at the next successful sign-in.
pub fn outdated(hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else { return true };
    if Algorithm::try_from(parsed.algorithm) != Ok(Algorithm::Argon2id) || parsed.version != Some(0x13) {
        return true;
    }
    let Ok(params) = Params::try_from(&parsed) else { return true };
    params.m_cost() != MEMORY_KIB || params.t_cost() != ITERATIONS || params.p_cost() != PARALLELISM
}

/// A Keycloak password credential (`secretData` and `credentialData`, each
/// itself a JSON string in a realm export) in PHC form: PBKDF2 and argon2,
/// the algorithms Keycloak ships.
pub fn from_keycloak(secret_data: &str, credential_data: &str) -> Result<String, SchemeError> {
    use base64::{Engine, engine::general_purpose::STANDARD, engine::general_purpose::STANDARD_NO_PAD};
    #[derive(serde::Deserialize)]
    struct Secret {
        value: String,
        salt: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Credential {
        hash_iterations: u32,
        algorithm: String,
        #[serde(default)]
        additional_parameters: std::collections::HashMap<String, Vec<String>>,
    }
    let malformed = |what: &str, e: &dyn std::fmt::Display| SchemeError::Malformed("Keycloak", format!("{what}: {e}"));
    let secret: Secret = serde_json::from_str(secret_data).map_err(|e| malformed("secretData", &e))?;
    let cred: Credential = serde_json::from_str(credential_data).map_err(|e| malformed("credentialData", &e))?;
    let value = STANDARD.decode(secret.value.trim()).map_err(|e| malformed("secretData.value", &e))?;
    let salt = STANDARD.decode(secret.salt.trim()).map_err(|e| malformed("secretData.salt", &e))?;
    let (value, salt) = (STANDARD_NO_PAD.encode(value), STANDARD_NO_PAD.encode(&salt));
    let extra = |name: &str, default: &str| {
        cred.additional_parameters.get(name).and_then(|v| v.first()).cloned().unwrap_or_else(|| default.to_owned())
    };
    let phc = match cred.algorithm.as_str() {
        "pbkdf2-sha256" | "pbkdf2-sha512" => {
            let len = base64_len(&value);
            format!("${}$i={},l={len}${salt}${value}", cred.algorithm, cred.hash_iterations)
        }
        "argon2" => {
            let kind = match extra("type", "id").as_str() {
                "id" => "argon2id",
                "i" => "argon2i",
                "d" => "argon2d",
                other => return Err(SchemeError::Unknown(format!(" 'argon2 type {other}'"))),
            };
            let version = if extra("version", "1.3") == "1.0" { 16 } else { 19 };
            format!(
                "${kind}$v={version}$m={},t={},p={}${salt}${value}",
                extra("memory", "7168"),
                cred.hash_iterations,
                extra("parallelism", "1")
            )
        }
        other => return Err(SchemeError::Unknown(format!(" '{other}'"))),
    };
    scheme_of(&phc)?;
    Ok(phc)
}

/// Bytes that unpadded base64 text of this length holds.
fn base64_len(b64: &str) -> usize {
    b64.len() * 3 / 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use password_hash::{PasswordHasher as _, SaltString};

    fn salt() -> SaltString {
        SaltString::generate(&mut rand::rngs::OsRng)
    }

    #[test]
    fn every_scheme_verifies_and_is_outdated() {
        let bcrypt = bcrypt::hash("correct horse", 4).unwrap();
        let pbkdf2 = pbkdf2::Pbkdf2
            .hash_password_customized(
                b"correct horse",
                Some(pbkdf2::Algorithm::Pbkdf2Sha512.ident()),
                None,
                pbkdf2::Params { rounds: 1000, output_length: 64 },
                &salt(),
            )
            .unwrap()
            .to_string();
        let scrypt = scrypt::Scrypt
            .hash_password_customized(b"correct horse", None, None, scrypt::Params::new(10, 8, 1, 32).unwrap(), &salt())
            .unwrap()
            .to_string();
        for hash in [&bcrypt, &pbkdf2, &scrypt] {
            assert!(scheme_of(hash).is_ok(), "{hash}");
            assert!(verify_other(hash, "correct horse"), "{hash}");
            assert!(!verify_other(hash, "correct horsf"), "{hash}");
            assert!(outdated(hash));
        }
        for prefix in ["$2a$", "$2y$"] {
            let h = format!("{prefix}{}", &bcrypt[4..]);
            assert!(verify_other(&h, "correct horse"), "{h}");
        }
    }

    #[test]
    fn unknown_malformed_and_costly_hashes_are_named() {
        assert!(matches!(scheme_of("plaintext"), Err(SchemeError::Unknown(_))));
        assert!(matches!(scheme_of("$md5$abc$def"), Err(SchemeError::Unknown(n)) if n.contains("md5")));
        assert!(matches!(scheme_of("$2b$10$short"), Err(SchemeError::Malformed("bcrypt", _))));
        assert!(matches!(
            scheme_of("$2b$20$abcdefghijklmnopqrstuvabcdefghijklmnopqrstuvwxyz01234"),
            Err(SchemeError::TooCostly(..))
        ));
        assert!(matches!(
            scheme_of("$pbkdf2-sha256$i=99999999,l=32$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"),
            Err(SchemeError::TooCostly(..))
        ));
        assert!(scheme_of("$argon2id$v=19$m=999999999,t=2,p=1$c2FsdHNhbHQ$aGFzaA").is_err());
        assert!(!verify_other("$md5$abc$def", "x"));
    }

    #[test]
    fn keycloak_credentials_become_phc() {
        use base64::{Engine, engine::general_purpose::STANDARD};
        use pbkdf2::pbkdf2_hmac;
        let salt = b"0123456789abcdef";
        let mut out = [0u8; 64];
        pbkdf2_hmac::<sha2::Sha256>(b"correct horse", salt, 27500, &mut out);
        let secret = serde_json::json!({"value": STANDARD.encode(out), "salt": STANDARD.encode(salt)}).to_string();
        let cred = r#"{"hashIterations":27500,"algorithm":"pbkdf2-sha256","additionalParameters":{}}"#;
        let phc = from_keycloak(&secret, cred).unwrap();
        assert!(phc.starts_with("$pbkdf2-sha256$i=27500,l=64$"), "{phc}");
        assert!(verify_other(&phc, "correct horse"));
        assert!(!verify_other(&phc, "wrong horse"));
        assert!(from_keycloak(&secret, r#"{"hashIterations":1,"algorithm":"md5"}"#).is_err());
        assert!(from_keycloak("{}", cred).is_err());
    }

    #[test]
    fn only_the_services_own_argon2id_is_current() {
        let ours = super::super::password::hash_here("correct horse").unwrap();
        assert!(!outdated(&ours));
        let argon2i = ours.replacen("$argon2id$", "$argon2i$", 1);
        assert!(outdated(&argon2i));
        assert!(outdated(&ours.replacen("t=2", "t=3", 1)));
    }
}
