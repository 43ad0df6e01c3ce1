//! Application keys in memory: unwrapped on first use and kept by id.
//! Writes seal under the data key that was current a moment ago (read from
//! the database at most every few seconds), and the database takes a user
//! row only if that key is still current: after a rotation a write is sealed
//! again under the new key, so no replica keeps writing under the old one.
//! Reads find the key a ciphertext names.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::RwLock;
use uuid::Uuid;

use super::{CryptoError, Key, MasterKey, blind_index, field_aad, key_id_of, open, seal};
use crate::store::{Store, StoredKey};

pub const DATA: &str = "data";
pub const INDEX: &str = "index";

pub struct Keyring {
    master: MasterKey,
    /// Keys the hashes of values of no application (client addresses).
    global_index_key: Key,
    store: Arc<dyn Store>,
    keys: RwLock<HashMap<Uuid, Arc<Key>>>,
    index_keys: RwLock<HashMap<Uuid, Arc<Key>>>,
    /// The current data key of each application as last seen, for sealing
    /// what may use a key a moment old: trail records (every key stays
    /// readable) and the first try of a guarded user write.
    recent: RwLock<HashMap<Uuid, (Uuid, Instant)>>,
}

/// How long a remembered current key is used.
const RECENT_FOR: Duration = Duration::from_secs(10);

/// The current data key of an application, ready to seal with.
pub struct Sealer {
    pub key_id: Uuid,
    pub app_id: Uuid,
    key: Arc<Key>,
}

impl Sealer {
    pub fn seal(&self, row: Uuid, field: &str, plaintext: &[u8]) -> Vec<u8> {
        seal(self.key_id, &self.key, &field_aad(self.app_id, row, field), plaintext)
    }
}

impl Keyring {
    pub fn new(master: MasterKey, store: Arc<dyn Store>) -> Self {
        let derived = blind_index(&master.key, "derive", "global index key");
        let global_index_key = Key::from_slice(&derived).unwrap_or_else(Key::random);
        Self {
            master,
            global_index_key,
            store,
            keys: RwLock::default(),
            index_keys: RwLock::default(),
            recent: RwLock::default(),
        }
    }

    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// A fresh key of an application, wrapped for storage.
    pub fn new_key(&self, app_id: Uuid, purpose: &str) -> StoredKey {
        let id = Uuid::now_v7();
        let key = Key::random();
        StoredKey {
            id,
            app_id,
            purpose: purpose.to_owned(),
            wrapped: self.master.wrap(id, app_id, &key),
            master_key_id: self.master.id().to_owned(),
            current: true,
        }
    }

    fn unwrap(&self, stored: &StoredKey) -> Result<Key, CryptoError> {
        if stored.master_key_id != self.master.id() {
            return Err(CryptoError::WrongMaster {
                key: stored.id,
                wrapped_by: stored.master_key_id.clone(),
                configured: self.master.id().to_owned(),
            });
        }
        self.master.unwrap(stored.id, stored.app_id, &stored.wrapped)
    }

    /// The key with this id, of this application.
    async fn key(&self, app_id: Uuid, key_id: Uuid) -> Result<Arc<Key>, CryptoError> {
        if let Some(k) = self.keys.read().await.get(&key_id) {
            return Ok(k.clone());
        }
        let stored = self.store.app_key(key_id).await?.ok_or(CryptoError::UnknownKey(key_id))?;
        if stored.app_id != app_id {
            // A ciphertext naming another application's key was moved here.
            return Err(CryptoError::Decrypt);
        }
        let key = Arc::new(self.unwrap(&stored)?);
        self.keys.write().await.insert(key_id, key.clone());
        Ok(key)
    }

    /// The application's current data key, read now.
    pub async fn sealer(&self, app_id: Uuid) -> Result<Sealer, CryptoError> {
        let current = self.store.current_app_key(app_id, DATA).await?.ok_or(CryptoError::NoAppKey(app_id))?;
        let key = self.key(app_id, current.id).await?;
        self.recent.write().await.insert(app_id, (current.id, Instant::now()));
        Ok(Sealer { key_id: current.id, app_id, key })
    }

    /// A data key of the application that was current a moment ago.
    pub async fn recent_sealer(&self, app_id: Uuid) -> Result<Sealer, CryptoError> {
        let seen = self.recent.read().await.get(&app_id).copied();
        match seen {
            Some((key_id, at)) if at.elapsed() < RECENT_FOR => {
                let key = self.key(app_id, key_id).await?;
                Ok(Sealer { key_id, app_id, key })
            }
            _ => self.sealer(app_id).await,
        }
    }

    /// The key for try `attempt` (from 0) of a write the database takes only
    /// under a current key: first the one current a moment ago (no round
    /// trip), then, after a refusal, the one current now (a rotation landed
    /// in between).
    pub async fn guarded_sealer(&self, app_id: Uuid, attempt: u32) -> Result<Sealer, CryptoError> {
        if attempt == 0 { self.recent_sealer(app_id).await } else { self.sealer(app_id).await }
    }

    /// Opens a field's ciphertext of a row.
    pub async fn open(&self, app_id: Uuid, row: Uuid, field: &str, blob: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = self.key(app_id, key_id_of(blob)?).await?;
        open(&key, &field_aad(app_id, row, field), blob)
    }

    /// The blind index of a normalised value of some kind ("username", "email").
    pub async fn blind(&self, app_id: Uuid, kind: &str, normalised: &str) -> Result<Vec<u8>, CryptoError> {
        if let Some(k) = self.index_keys.read().await.get(&app_id) {
            return Ok(blind_index(k, kind, normalised));
        }
        let stored = self.store.current_app_key(app_id, INDEX).await?.ok_or(CryptoError::NoAppKey(app_id))?;
        let key = Arc::new(self.unwrap(&stored)?);
        self.index_keys.write().await.insert(app_id, key.clone());
        Ok(blind_index(&key, kind, normalised))
    }

    /// A keyed hash of a value that belongs to no application (a client
    /// address, for throttling): low-entropy values are not stored plain.
    pub fn global_index(&self, kind: &str, value: &str) -> Vec<u8> {
        blind_index(&self.global_index_key, kind, value)
    }
}
