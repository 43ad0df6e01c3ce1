//! The tonic services: every rule of who may do what, and every check of
//! what is sent, lives here once, behind gRPC.

pub mod context;
mod disclosures;
pub mod error;
pub mod export;
pub mod field_mask;
mod groups;
mod listing;
mod mfa;
mod mfa_passkey;
pub mod mrns;
mod paging;
pub mod passkeys;
mod present_fields;
pub mod profile;
mod sessions;
pub mod usernames;
mod users;
pub mod validate;
mod verification;

use std::sync::Arc;

pub use groups::GroupSvc;
pub use users::UserSvc;

use uuid::Uuid;

use crate::audit::{AuditRecord, AuditSink};
use crate::auth::{Authenticator, Caller, PasswordHasher};
use crate::crypto::Keyring;
use crate::pb;
use crate::store::{Store, UserRecord};
use context::Ctx;
use error::{ServiceError, ServiceResult};

/// What both services share.
pub struct Core {
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
    pub hasher: PasswordHasher,
    pub keyring: Arc<Keyring>,
    /// Where read records go (written in batches).
    pub trail: AuditSink,
    pub min_password_chars: usize,
    /// How long a mailed reset link works.
    pub reset_lifetime: std::time::Duration,
    /// Anonymous sign-ups per hour per client address and application (0:
    /// no limit).
    pub signup_per_hour: u32,
    /// Mails to one address, at most (`--mail-per-recipient`): resent
    /// verification links count with reminders and reset links.
    pub mail_per_recipient: crate::store::RecipientLimit,
}

impl Core {
    /// A trail record of this call, with the client address sealed.
    pub async fn record(&self, ctx: &Ctx, action: &str, caller: Option<&Caller>, app_id: Uuid) -> AuditRecord {
        let mut r = ctx.record(action, caller, app_id);
        if let Some(ip) = self.client_ip(ctx) {
            match self.keyring.recent_sealer(app_id).await {
                Ok(sealer) => r.client_addr = Some(sealer.seal(r.id, "client_addr", ip.to_string().as_bytes())),
                Err(e) => tracing::warn!(error = %e, "client address left out of a trail record"),
            }
        }
        r
    }

    pub fn client_ip(&self, ctx: &Ctx) -> Option<std::net::IpAddr> {
        ctx.client_ip()
    }

    /// Opens a stored user into the message a reply carries.
    pub async fn open_user(&self, rec: &UserRecord) -> ServiceResult<pb::User> {
        let plain = self
            .keyring
            .open(rec.app_id, rec.id, profile::PROFILE_FIELD, &rec.profile_ct)
            .await
            .map_err(ServiceError::Crypto)?;
        profile::to_user(rec, &plain)
    }

    /// The blind index of a username.
    pub async fn username_index(&self, app_id: Uuid, username: &str) -> ServiceResult<Vec<u8>> {
        self.keyring.blind(app_id, "username", &profile::username_key(username)).await.map_err(ServiceError::Crypto)
    }

    /// The blind index of an email address.
    pub async fn email_index(&self, app_id: Uuid, email: &str) -> ServiceResult<Vec<u8>> {
        self.keyring.blind(app_id, "email", &profile::fold(email)).await.map_err(ServiceError::Crypto)
    }

    /// The blind indexes of a user's MRNs (see [`mrns`]).
    pub async fn mrn_indexes(&self, app_id: Uuid, user: &pb::User) -> ServiceResult<Vec<Vec<u8>>> {
        mrns::indexes(&self.keyring, app_id, user).await.map_err(ServiceError::Crypto)
    }
}
