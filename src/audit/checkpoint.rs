//! The key that signs checkpoints (Ed25519, from the master key), and a
//! checkpoint's exported form: one JSON object an operator keeps off the
//! database (object storage, a ticket, another party), later handed to
//! `usersvc audit verify --checkpoint`.

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::MasterKey;
use crate::store::Store;
use crate::store::trail::record::{Checkpoint, CheckpointSigner, EndorsedKey};

pub const LOG_NAME: &str = "usersvc-trail/v1";

pub struct CheckpointKey {
    pair: Ed25519KeyPair,
    id: String,
}

impl CheckpointKey {
    pub fn from_master(master: &MasterKey) -> anyhow::Result<Self> {
        let seed = master.checkpoint_seed();
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_slice())
            .map_err(|_| anyhow::anyhow!("the checkpoint signing key could not be made"))?;
        let id = key_id_of(pair.public_key().as_ref());
        Ok(Self { pair, id })
    }

    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// This key vouching for an earlier one (at a master key rotation).
    pub fn endorse(&self, earlier: &CheckpointKey) -> EndorsedKey {
        let text = EndorsedKey::signed_text(&earlier.id, earlier.public_key());
        EndorsedKey {
            key_id: earlier.id.clone(),
            public_key: earlier.public_key().to_vec(),
            endorsed_by: self.id.clone(),
            endorsement: self.sign(text.as_bytes()),
        }
    }
}

fn key_id_of(public_key: &[u8]) -> String {
    crate::crypto::hex(&Sha256::digest(public_key)[..8])
}

/// The checkpoint keys a verifier trusts: its own master key's, and each
/// earlier one endorsed by a trusted key (a chain of rotations).
pub struct TrustedKeys {
    current: String,
    keys: std::collections::HashMap<String, Vec<u8>>,
}

impl TrustedKeys {
    pub async fn load(store: &dyn Store, current: &CheckpointKey) -> crate::store::Result<Self> {
        let mut keys = std::collections::HashMap::from([(current.id.clone(), current.public_key().to_vec())]);
        let endorsed = store.endorsed_checkpoint_keys().await?;
        // Until nothing new is trusted: a key endorsed by a trusted one.
        loop {
            let before = keys.len();
            for e in &endorsed {
                if keys.contains_key(&e.key_id) || key_id_of(&e.public_key) != e.key_id {
                    continue;
                }
                let Some(by) = keys.get(&e.endorsed_by) else { continue };
                let text = EndorsedKey::signed_text(&e.key_id, &e.public_key);
                if UnparsedPublicKey::new(&ED25519, by).verify(text.as_bytes(), &e.endorsement).is_ok() {
                    keys.insert(e.key_id.clone(), e.public_key.clone());
                }
            }
            if keys.len() == before {
                break;
            }
        }
        Ok(Self { current: current.id.clone(), keys })
    }

    pub fn knows(&self, key_id: &str) -> bool {
        self.keys.contains_key(key_id)
    }

    pub fn public_key(&self, key_id: &str) -> Option<&[u8]> {
        self.keys.get(key_id).map(Vec::as_slice)
    }

    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// Whether `signature`, by the key `key_id`, is over the checkpoint's
    /// content and that key is trusted.
    pub fn verifies(&self, key_id: &str, tree_size: i64, root: &[u8], at: DateTime<Utc>, signature: &[u8]) -> bool {
        self.keys.get(key_id).is_some_and(|public| {
            UnparsedPublicKey::new(&ED25519, public)
                .verify(Checkpoint::signed_text(tree_size, root, at).as_bytes(), signature)
                .is_ok()
        })
    }
}

impl CheckpointSigner for CheckpointKey {
    fn key_id(&self) -> String {
        self.id.clone()
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// A checkpoint as exported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Exported {
    pub log: String,
    pub tree_size: i64,
    /// Base64.
    pub root_hash: String,
    pub timestamp: DateTime<Utc>,
    pub key_id: String,
    /// Base64 of the Ed25519 public key (for witnesses; `verify` trusts
    /// only the key of its own master key).
    pub public_key: String,
    /// Base64 of the Ed25519 signature over the text of
    /// `Checkpoint::signed_text`.
    pub signature: String,
}

impl Exported {
    /// `public_key`: of the key that signed it.
    pub fn of(c: &Checkpoint, public_key: &[u8]) -> Self {
        Self {
            log: LOG_NAME.into(),
            tree_size: c.tree_size,
            root_hash: STANDARD.encode(&c.root),
            timestamp: c.at,
            key_id: c.key_id.clone(),
            public_key: STANDARD.encode(public_key),
            signature: STANDARD.encode(&c.signature),
        }
    }

    /// The tree size and root it vouches for, once its signature checks
    /// under a trusted key; otherwise why not.
    pub fn open(&self, keys: &TrustedKeys) -> Result<(u64, [u8; 32]), String> {
        if self.log != LOG_NAME {
            return Err(format!("not a checkpoint of this log ({:?})", self.log));
        }
        let root: [u8; 32] = STANDARD
            .decode(&self.root_hash)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or("rootHash is not base64 of 32 bytes")?;
        let signature = STANDARD.decode(&self.signature).map_err(|_| "signature is not base64")?;
        let size = u64::try_from(self.tree_size).map_err(|_| "treeSize is negative")?;
        if !keys.verifies(&self.key_id, self.tree_size, &root, self.timestamp, &signature) {
            return Err(format!(
                "its signature does not verify under this deployment's checkpoint keys (current {}): \
                 forged or altered, or made by another deployment",
                keys.current_id()
            ));
        }
        Ok((size, root))
    }
}
