//! Passkeys (WebAuthn): an application's relying party, its users'
//! registered credentials (sealed) and the server's half of a ceremony
//! between its two calls. The trait, and its PostgreSQL and SQLite
//! implementations beside it.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::Result;
use crate::store::trail::record::AuditRecord;

/// An application's relying party (`usersvc app update --webauthn-rp-id
/// ... --webauthn-origin ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebauthnConfig {
    /// A domain: `example.org`.
    pub rp_id: String,
    /// Where the application's pages are: `https://app.example.org`.
    pub origins: Vec<String>,
}

/// A passkey to store.
#[derive(Debug, Clone)]
pub struct NewPasskey {
    pub id: Uuid,
    pub app_id: Uuid,
    pub user_id: Uuid,
    /// The blind index of the credential id.
    pub cred_key: Vec<u8>,
    /// The credential and its name, sealed to `id`.
    pub sealed: Vec<u8>,
}

/// A passkey as stored.
#[derive(Debug, Clone)]
pub struct StoredPasskey {
    pub id: Uuid,
    pub user_id: Uuid,
    pub sealed: Vec<u8>,
    /// Writes so far; a counter update names the one it read.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The kinds of ceremony.
pub const REGISTER: &str = "register";
pub const AUTHENTICATE: &str = "authenticate";

/// A ceremony's server state, between its start and its finish.
#[derive(Debug, Clone)]
pub struct NewCeremony {
    pub id: Uuid,
    pub app_id: Uuid,
    /// The user it is bound to (a registration, or a sign-in limited to one
    /// user's credentials); None for a discoverable sign-in.
    pub user_id: Option<Uuid>,
    pub kind: &'static str,
    /// The webauthn-rs state, sealed to `id`.
    pub state_ct: Vec<u8>,
    pub lifetime: std::time::Duration,
}

/// A ceremony taken (and so used up).
#[derive(Debug, Clone, PartialEq)]
pub enum CeremonyTake {
    Live {
        user_id: Option<Uuid>,
        kind: String,
        state_ct: Vec<u8>,
    },
    /// Known, but past its lifetime.
    Expired,
    /// Never started in this application, or used already.
    Unknown,
}

#[async_trait]
pub trait PasskeyStore: Send + Sync {
    /// The application's relying party; None when it has none (or there
    /// is no such application).
    async fn webauthn_config(&self, app_id: Uuid) -> Result<Option<WebauthnConfig>>;

    /// Sets (or with None clears) the relying party; false when there is
    /// no such application.
    async fn set_webauthn_config(
        &self,
        app_id: Uuid,
        config: Option<&WebauthnConfig>,
        audit: &AuditRecord,
    ) -> Result<bool>;

    /// Stores a ceremony's state; the application's ceremonies past their
    /// lifetime go at the same time.
    async fn create_ceremony(&self, ceremony: &NewCeremony) -> Result<()>;

    /// Takes a ceremony of the application: it is deleted whether live or
    /// expired, so it can be finished once only.
    async fn take_ceremony(&self, app_id: Uuid, id: Uuid) -> Result<CeremonyTake>;

    /// Stores a passkey with its trail record, unless the user has `max`
    /// already (false then). A credential id the application has already
    /// is a `Conflict`.
    async fn add_passkey(&self, passkey: &NewPasskey, max: i64, audit: &AuditRecord) -> Result<bool>;

    /// A user's passkeys, oldest first.
    async fn list_passkeys(&self, app_id: Uuid, user_id: Uuid) -> Result<Vec<StoredPasskey>>;

    /// The passkey of a credential id's blind index.
    async fn passkey_by_cred(&self, app_id: Uuid, cred_key: &[u8]) -> Result<Option<StoredPasskey>>;

    /// Stores a passkey's new sealed credential (its counter moved on) and
    /// the time of its use, if it is still at `version`; false when another
    /// write came first (or it is gone).
    async fn use_passkey(&self, app_id: Uuid, id: Uuid, version: i64, sealed: &[u8]) -> Result<bool>;

    /// Removes one of the user's passkeys with its trail record; false when
    /// the user has no such passkey.
    async fn remove_passkey(&self, app_id: Uuid, user_id: Uuid, id: Uuid, audit: &AuditRecord) -> Result<bool>;
}

/// The origins as stored: a JSON array of strings.
pub(in crate::store) fn origins_to_text(origins: &[String]) -> String {
    serde_json::Value::from(origins.to_vec()).to_string()
}

pub(in crate::store) fn origins_from_text(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}
