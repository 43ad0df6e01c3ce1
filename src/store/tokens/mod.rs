//! Service tokens: long-lived bearer tokens of internal services, revocable. The trait, and its PostgreSQL and SQLite
//! implementations beside it.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::Result;
use crate::store::trail::record::AuditRecord;

/// A service token as issued: its digest and who it acts as. The token
/// itself is shown to the operator once and never stored.
#[derive(Debug, Clone)]
pub struct NewServiceToken {
    pub id: Uuid,
    pub app_id: Uuid,
    /// The operator's label (kept out of logs and the trail).
    pub name: String,
    /// The rights it acts with in its application: "supervisor".
    pub role: String,
    pub token_hash: Vec<u8>,
}

/// A live (unrevoked) service token, as a call presents it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceTokenInfo {
    pub token_id: Uuid,
    pub role: String,
}

/// A service token as listed to the operator: never the token or its digest.
#[derive(Debug, Clone)]
pub struct ServiceTokenRow {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What revoking a service token found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRevocation {
    /// It was live and is now revoked.
    Revoked,
    /// It had been revoked before; nothing changed.
    AlreadyRevoked,
    /// The application has no token with that id.
    Unknown,
}

#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a new service token, with its trail record, in one transaction.
    async fn create_service_token(&self, token: &NewServiceToken, audit: &AuditRecord) -> Result<()>;

    /// The live token of a token hash within the application (a revoked
    /// one, or another application's, is None), refreshing its last use
    /// when older than `touch_after`.
    async fn lookup_service_token(
        &self,
        app_id: Uuid,
        token_hash: &[u8],
        touch_after: std::time::Duration,
    ) -> Result<Option<ServiceTokenInfo>>;

    /// Revokes a token of the application, with its trail record (written
    /// only when the token was live).
    async fn revoke_service_token(&self, app_id: Uuid, token_id: Uuid, audit: &AuditRecord) -> Result<TokenRevocation>;

    /// The application's tokens, revoked ones included, oldest first.
    async fn list_service_tokens(&self, app_id: Uuid) -> Result<Vec<ServiceTokenRow>>;
}
