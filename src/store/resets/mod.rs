//! Password resets: single-use reset tokens (their digests); issued when
//! the mail sender resolves a request (see the outbox). The trait, and its PostgreSQL and SQLite
//! implementations beside it.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use uuid::Uuid;

use crate::store::Result;
use crate::store::trail::record::AuditRecord;

/// A new reset token, as its request carries it until resolved.
#[derive(Debug, Clone)]
pub struct NewReset {
    pub token_hash: Vec<u8>,
    /// The token, sealed to the request's id (its mail's).
    pub payload_ct: Vec<u8>,
    /// Counted from the request.
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
    /// Checks a reset token; with a new password hash (and its trail
    /// record), uses it up: sets the password, voids every token and ends
    /// every session of the user.
    async fn reset_password(&self, token_hash: &[u8], new_password: Option<(&str, &AuditRecord)>)
    -> Result<ResetCheck>;
}
