//! Password resets: single-use reset tokens (their digests) and the mail that carries them. The trait, and its PostgreSQL and SQLite
//! implementations beside it.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use uuid::Uuid;

use crate::store::Result;
use crate::store::trail::record::AuditRecord;

/// A new reset token and the mail that carries it.
#[derive(Debug, Clone)]
pub struct NewReset {
    pub token_hash: Vec<u8>,
    pub outbox_id: Uuid,
    /// The token, sealed to the outbox row.
    pub payload_ct: Vec<u8>,
    pub lifetime: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResetCheck {
    /// The token is live; the user it resets.
    Live {
        app_id: Uuid,
        user_id: Uuid,
    },
    Expired,
    Unknown,
}

#[async_trait]
pub trait ResetStore: Send + Sync {
    /// Issues a reset token for the active user with this username, voiding
    /// their earlier ones, and queues its mail. The same statements run
    /// whether or not the user exists. Returns the user, if any.
    async fn request_password_reset(
        &self,
        app_id: Uuid,
        username_bidx: &[u8],
        reset: &NewReset,
        audit: &AuditRecord,
    ) -> Result<Option<Uuid>>;

    /// Checks a reset token; with a new password hash (and its trail
    /// record), uses it up: sets the password, voids every token and ends
    /// every session of the user.
    async fn reset_password(&self, token_hash: &[u8], new_password: Option<(&str, &AuditRecord)>)
    -> Result<ResetCheck>;
}
