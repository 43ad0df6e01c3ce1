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
use crate::store::trail::record::{Checkpoint, CheckpointSigner};

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
        let id = Sha256::digest(pair.public_key().as_ref())[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { pair, id })
    }

    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// Whether `signature` is this key's over the checkpoint's content.
    pub fn verifies(&self, tree_size: i64, root: &[u8], at: DateTime<Utc>, signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.public_key())
            .verify(Checkpoint::signed_text(tree_size, root, at).as_bytes(), signature)
            .is_ok()
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
    pub fn of(c: &Checkpoint, key: &CheckpointKey) -> Self {
        Self {
            log: LOG_NAME.into(),
            tree_size: c.tree_size,
            root_hash: STANDARD.encode(&c.root),
            timestamp: c.at,
            key_id: c.key_id.clone(),
            public_key: STANDARD.encode(key.public_key()),
            signature: STANDARD.encode(&c.signature),
        }
    }

    /// The tree size and root it vouches for, once its signature checks
    /// under `key`; otherwise why not.
    pub fn open(&self, key: &CheckpointKey) -> Result<(u64, [u8; 32]), String> {
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
        if !key.verifies(self.tree_size, &root, self.timestamp, &signature) {
            return Err("its signature does not verify under this deployment's checkpoint key \
                        (made with another master key, or forged or altered)"
                .into());
        }
        Ok((size, root))
    }
}
