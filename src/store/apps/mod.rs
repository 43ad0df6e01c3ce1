//! Applications and their keys: an application, its API key digest, and its data and index keys (wrapped by the master key); re-sealing users under a new key. The trait, and its PostgreSQL and SQLite
//! implementations beside it.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use uuid::Uuid;

use crate::store::Result;
use crate::store::trail::record::AuditRecord;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct App {
    pub id: Uuid,
    pub name: String,
}

/// An application key as stored: wrapped by the master key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredKey {
    pub id: Uuid,
    pub app_id: Uuid,
    /// "data" or "index".
    pub purpose: String,
    pub wrapped: Vec<u8>,
    pub master_key_id: String,
    pub current: bool,
}

/// A user's ciphertexts, for re-encryption under a new key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedUser {
    pub id: Uuid,
    pub version: i64,
    pub username_ct: Vec<u8>,
    pub profile_ct: Vec<u8>,
}

/// The sealed values kept in rows of their own, which a key rotation
/// re-seals after the users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApartSeal {
    /// A user's TOTP secret (pending or confirmed), sealed to the user.
    TotpSecret,
    /// A passkey's credential and name, sealed to the passkey.
    Passkey,
}

impl ApartSeal {
    /// Its table, the column of the id it is sealed to, and its column.
    pub(in crate::store) fn columns(self) -> (&'static str, &'static str, &'static str) {
        match self {
            ApartSeal::TotpSecret => ("totp_factors", "user_id", "secret_ct"),
            ApartSeal::Passkey => ("passkeys", "id", "sealed"),
        }
    }
}

/// One such value as read: the id of the row it is sealed to, and its
/// ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedField {
    pub id: Uuid,
    pub ct: Vec<u8>,
}

#[async_trait]
pub trait AppStore: Send + Sync {
    /// Creates an application with its first keys.
    async fn create_app(&self, app: &App, api_key_hash: &[u8], keys: &[StoredKey], audit: &AuditRecord) -> Result<()>;

    async fn app_by_key_hash(&self, api_key_hash: &[u8]) -> Result<Option<App>>;

    async fn app_key(&self, key_id: Uuid) -> Result<Option<StoredKey>>;

    async fn current_app_key(&self, app_id: Uuid, purpose: &str) -> Result<Option<StoredKey>>;

    async fn all_app_keys(&self) -> Result<Vec<StoredKey>>;

    /// Replaces the wrapping of these keys (master key rotation), at once.
    async fn rewrap_app_keys(&self, keys: &[StoredKey], audit: &AuditRecord) -> Result<()>;

    /// Adds a key and makes it the current one of its purpose.
    async fn add_current_app_key(&self, key: &StoredKey, audit: &AuditRecord) -> Result<()>;

    /// Users of the application whose ciphertexts are under another key,
    /// in order of id, from the first after `after` (from the start with
    /// None): each batch continues where the last ended, along the
    /// (app_id, id) index, instead of reading again past all those done.
    async fn users_not_under_key(
        &self,
        app_id: Uuid,
        key_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SealedUser>>;

    /// Stores a user's re-encrypted ciphertexts if the row is unchanged.
    async fn reseal_user(&self, app_id: Uuid, user: &SealedUser, key_id: Uuid) -> Result<bool>;

    /// The application's values of one kind, by the id they are sealed to,
    /// after `after`, at most `limit`.
    async fn sealed_page(
        &self,
        kind: ApartSeal,
        app_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SealedField>>;

    /// Replaces a value's ciphertext with `new_ct` if it is still `old`
    /// (nothing else of its row changes: a passkey's version, a sign-in's
    /// compare-and-set, stays); false when it was written or removed
    /// meanwhile.
    async fn reseal_field(&self, kind: ApartSeal, app_id: Uuid, old: &SealedField, new_ct: &[u8]) -> Result<bool>;
}
