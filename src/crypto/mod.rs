//! Encryption of PII at rest, in the application: XChaCha20-Poly1305 with
//! envelope keys. Each application has a data key (for ciphertexts) and an
//! index key (for blind indexes), both stored wrapped by the master key.
//! Ciphertexts carry the id of their key and are bound by associated data
//! to their application, row and field, so one cannot be moved elsewhere.

pub mod fields;
pub mod keyring;
mod xchacha;

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use keyring::Keyring;

const BLOB_VERSION: u8 = 1;
const NONCE_LEN: usize = xchacha::NONCE_LEN;
/// Where a blob's nonce starts: after its version and key id.
const NONCE_AT: usize = 1 + 16;
/// A blob's version, key id and nonce, before its ciphertext and tag.
const HEADER_LEN: usize = NONCE_AT + NONCE_LEN;
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the master key must be base64 of 32 bytes")]
    BadMasterKey,
    #[error("no master key: set USERSVC_MASTER_KEY or --master-key-file (make one with `usersvc keys generate`)")]
    NoMasterKey,
    #[error("cannot read the master key file: {0}")]
    KeyFile(std::io::Error),
    #[error("a ciphertext failed to decrypt (wrong key, row or field, or altered)")]
    Decrypt,
    #[error("a ciphertext is malformed")]
    Malformed,
    #[error("key {0} is unknown")]
    UnknownKey(Uuid),
    #[error("application {0} has no current key")]
    NoAppKey(Uuid),
    #[error("key {key} is wrapped by master key {wrapped_by}, not by the one configured ({configured})")]
    WrongMaster { key: Uuid, wrapped_by: String, configured: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// 32 secret bytes, wiped from memory when dropped.
pub struct Key(SecretBox<[u8; KEY_LEN]>);

impl Key {
    pub fn random() -> Self {
        let mut bytes = Box::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Self(SecretBox::new(bytes))
    }

    fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(Self(SecretBox::new(Box::new(arr))))
    }

    fn bytes(&self) -> &[u8; KEY_LEN] {
        self.0.expose_secret()
    }
}

/// The key that wraps every application's keys.
pub struct MasterKey {
    key: Key,
    id: String,
}

impl MasterKey {
    /// From base64 of 32 bytes.
    pub fn parse(b64: &str) -> Result<Self, CryptoError> {
        let mut raw = STANDARD.decode(b64.trim()).map_err(|_| CryptoError::BadMasterKey)?;
        let key = Key::from_slice(&raw).ok_or(CryptoError::BadMasterKey);
        zeroize::Zeroize::zeroize(&mut raw);
        let key = key?;
        // The id names the key in stored rows without revealing it.
        let id = hex(&Sha256::digest([b"usersvc master key id".as_slice(), key.bytes()].concat())[..8]);
        Ok(Self { key, id })
    }

    /// From `--master-key-file`, else `USERSVC_MASTER_KEY`.
    pub fn load(file: Option<&std::path::Path>, env: Option<&SecretString>) -> Result<Self, CryptoError> {
        if let Some(path) = file {
            let text = SecretString::from(std::fs::read_to_string(path).map_err(CryptoError::KeyFile)?);
            return Self::parse(text.expose_secret());
        }
        match env {
            Some(v) if !v.expose_secret().trim().is_empty() => Self::parse(v.expose_secret()),
            _ => Err(CryptoError::NoMasterKey),
        }
    }

    /// A new master key as base64, for `usersvc keys generate`.
    pub fn generate() -> SecretString {
        SecretString::from(STANDARD.encode(Key::random().bytes()))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The seed of the key that signs the trail's checkpoints: derived, so
    /// the database never holds it and every replica has the same one.
    pub fn checkpoint_seed(&self) -> zeroize::Zeroizing<[u8; KEY_LEN]> {
        let mut seed = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        if let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(self.key.bytes()) {
            mac.update(b"usersvc/v1/trail-checkpoint-signing");
            seed.copy_from_slice(&mac.finalize().into_bytes());
        }
        seed
    }

    /// Wraps an application key; its id and application are bound in.
    pub fn wrap(&self, key_id: Uuid, app_id: Uuid, key: &Key) -> Vec<u8> {
        seal_with(&self.key, key_id, &wrap_aad(key_id, app_id), key.bytes())
    }

    pub fn unwrap(&self, key_id: Uuid, app_id: Uuid, wrapped: &[u8]) -> Result<Key, CryptoError> {
        let (_, mut raw) = open_with(&self.key, &wrap_aad(key_id, app_id), wrapped)?;
        let key = Key::from_slice(&raw).ok_or(CryptoError::Malformed);
        zeroize::Zeroize::zeroize(&mut raw);
        key
    }
}

fn wrap_aad(key_id: Uuid, app_id: Uuid) -> Vec<u8> {
    [b"usersvc/v1/wrap".as_slice(), app_id.as_bytes(), key_id.as_bytes()].concat()
}

/// Associated data of a field's ciphertext: application, row, field.
pub fn field_aad(app_id: Uuid, row_id: Uuid, field: &str) -> Vec<u8> {
    [b"usersvc/v1/field".as_slice(), app_id.as_bytes(), row_id.as_bytes(), field.as_bytes()].concat()
}

/// `version || key id || nonce || ciphertext and tag`.
fn seal_with(key: &Key, key_id: Uuid, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    // A CSPRNG seeded from the OS (no system call per nonce).
    rand::thread_rng().fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + xchacha::TAG_LEN);
    out.push(BLOB_VERSION);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    match xchacha::seal(key.bytes(), &nonce, aad, &mut out[HEADER_LEN..]) {
        Some(tag) => out.extend_from_slice(&tag),
        // Only inputs beyond 256 GiB fail. The plaintext must not stay in
        // what is stored: the blob is left without a body, and opens as
        // malformed.
        None => out.truncate(HEADER_LEN),
    }
    out
}

/// The key id a ciphertext names.
pub fn key_id_of(blob: &[u8]) -> Result<Uuid, CryptoError> {
    if blob.len() < HEADER_LEN + xchacha::TAG_LEN || blob[0] != BLOB_VERSION {
        return Err(CryptoError::Malformed);
    }
    Uuid::from_slice(&blob[1..NONCE_AT]).map_err(|_| CryptoError::Malformed)
}

fn open_with(key: &Key, aad: &[u8], blob: &[u8]) -> Result<(Uuid, Vec<u8>), CryptoError> {
    let key_id = key_id_of(blob)?;
    let nonce: &[u8; NONCE_LEN] = blob[NONCE_AT..HEADER_LEN].try_into().map_err(|_| CryptoError::Malformed)?;
    let plain = xchacha::open(key.bytes(), nonce, aad, &blob[HEADER_LEN..]).ok_or(CryptoError::Decrypt)?;
    Ok((key_id, plain))
}

/// Seals with an application's data key.
pub fn seal(key_id: Uuid, key: &Key, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    seal_with(key, key_id, aad, plaintext)
}

pub fn open(key: &Key, aad: &[u8], blob: &[u8]) -> Result<Vec<u8>, CryptoError> {
    open_with(key, aad, blob).map(|(_, p)| p)
}

/// HMAC-SHA256 of a normalised value under the application's index key:
/// equal values match, and nothing else can be learned from it.
pub fn blind_index(index_key: &Key, kind: &str, normalised: &str) -> Vec<u8> {
    // new_from_slice only fails for invalid key lengths, which HMAC has none of.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(index_key.bytes()) else {
        return Vec::new();
    };
    mac.update(kind.as_bytes());
    mac.update(&[0]);
    mac.update(normalised.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Lower-case hex (ids made of digests).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_fields_open_only_where_they_were_sealed() {
        let key = Key::random();
        let (kid, app, row) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let blob = seal(kid, &key, &field_aad(app, row, "profile"), b"secret");
        assert_eq!(key_id_of(&blob).unwrap(), kid);
        assert_eq!(open(&key, &field_aad(app, row, "profile"), &blob).unwrap(), b"secret");
        assert!(open(&key, &field_aad(app, Uuid::now_v7(), "profile"), &blob).is_err(), "another row");
        assert!(open(&key, &field_aad(app, row, "username"), &blob).is_err(), "another field");
        assert!(open(&Key::random(), &field_aad(app, row, "profile"), &blob).is_err(), "another key");
        let mut tampered = blob.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open(&key, &field_aad(app, row, "profile"), &tampered).is_err());
    }

    #[test]
    fn master_keys_wrap_and_parse() {
        let m = MasterKey::parse(MasterKey::generate().expose_secret()).unwrap();
        let k = Key::random();
        let (kid, app) = (Uuid::now_v7(), Uuid::now_v7());
        let wrapped = m.wrap(kid, app, &k);
        assert_eq!(m.unwrap(kid, app, &wrapped).unwrap().bytes(), k.bytes());
        assert!(m.unwrap(kid, Uuid::now_v7(), &wrapped).is_err());
        assert!(MasterKey::parse("c2hvcnQ=").is_err());
        assert!(MasterKey::parse("not base64!").is_err());
        assert_eq!(m.id().len(), 16);
    }

    #[test]
    fn blind_indexes_are_keyed() {
        let (a, b) = (Key::random(), Key::random());
        assert_eq!(blind_index(&a, "username", "bob"), blind_index(&a, "username", "bob"));
        assert_ne!(blind_index(&a, "username", "bob"), blind_index(&b, "username", "bob"));
        assert_ne!(blind_index(&a, "username", "bob"), blind_index(&a, "email", "bob"));
    }
}
