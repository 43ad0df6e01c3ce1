//! Email verification: the application's setting, the mailed links (only
//! their digests, each bound to the blind index of the address it was
//! mailed to) and the address each user proved (`users.email_verified_bidx`).
//! A user's primary address is verified while `users.email_bidx` is the one
//! proved: a new primary is not, without anything to reset. Rows read as
//! [`UserRecord`](crate::store::UserRecord)s carry it (`email_verified`). The trait, and its PostgreSQL and SQLite
//! implementations beside it.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::trail::record::AuditRecord;
use crate::store::{QueuedMail, RecipientLimit, Result};

/// The kind of the verification mail: the outbox's `kind` and the name of
/// its templates.
pub const VERIFY_EMAIL: &str = "verify_email";

/// An application's `--verify-email`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyMode {
    /// Never chosen: as `Optional`, except that nothing is mailed by itself
    /// (an application that never chose sees no change).
    #[default]
    Unset,
    /// A link is mailed on sign-up and on a change of the primary address;
    /// nothing is refused to the unverified.
    Optional,
    /// As `Optional`, and the unverified may not sign in, nor get a
    /// password-reset mail.
    Required,
    /// Nothing is mailed, nothing is shown.
    Off,
}

impl VerifyMode {
    /// As the column and the flag hold it (`None`: never chosen).
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            VerifyMode::Unset => None,
            VerifyMode::Optional => Some("optional"),
            VerifyMode::Required => Some("required"),
            VerifyMode::Off => Some("off"),
        }
    }

    /// From the column or the flag; an unknown word is `None`.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s {
            None => Some(VerifyMode::Unset),
            Some("optional") => Some(VerifyMode::Optional),
            Some("required") => Some(VerifyMode::Required),
            Some("off") => Some(VerifyMode::Off),
            Some(_) => None,
        }
    }

    /// Whether sign-up and a change of the primary address mail a link.
    pub fn mails(self) -> bool {
        matches!(self, VerifyMode::Optional | VerifyMode::Required)
    }

    /// Whether verification is in use at all (links, resends, the flag).
    pub fn on(self) -> bool {
        self != VerifyMode::Off
    }
}

/// What a verification link did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyCheck {
    /// The address is verified now; every link of the user is used up.
    Verified {
        app_id: Uuid,
        user_id: Uuid,
    },
    /// Mailed to an address the user no longer has: refused, and voided.
    Stale {
        app_id: Uuid,
        user_id: Uuid,
    },
    Expired {
        app_id: Uuid,
        user_id: Uuid,
    },
    /// Used, or never issued.
    Unknown,
}

/// What a resend did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    Queued,
    /// The address has had enough mail this window: nothing queued.
    Limited,
    AlreadyVerified,
    /// The user's address is not the one the mail was made for any more
    /// (changed meanwhile), or they have none: nothing queued.
    Changed,
    /// No such user.
    Gone,
}

#[async_trait]
pub trait VerificationStore: Send + Sync {
    /// The application's setting; `None` when there is no such application.
    async fn verify_email_mode(&self, app_id: Uuid) -> Result<Option<VerifyMode>>;

    /// Sets the application's setting, with its trail record; false when
    /// there is no such application.
    async fn set_verify_email_mode(&self, app_id: Uuid, mode: VerifyMode, audit: &AuditRecord) -> Result<bool>;

    /// Stores a mailed link's digest, bound to the address it goes to (the
    /// mail sender, as it sends; a retry of the same mail stores nothing
    /// new).
    async fn issue_verification(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        token_hash: &[u8],
        email_bidx: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<()>;

    /// A resend: if the user's primary address is still `email_bidx`, not
    /// verified, and under `limit` (counted in `mail_quotas` with the
    /// reminders and reset links to that address), queues `mail`; records
    /// `audit` (its outcome "throttled" past the limit) either way but
    /// `Gone` and `Changed`. One transaction.
    async fn queue_verification(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        email_bidx: &[u8],
        mail: &QueuedMail,
        limit: RecipientLimit,
        audit: &AuditRecord,
    ) -> Result<Resend>;

    /// Uses a link: a live one for the user's current primary address marks
    /// it verified (on the user's row: a change to it, as far as caches go)
    /// and voids every link of the user. `audit` (filled in with
    /// the application and user) is recorded with the outcome, for every
    /// link but an unknown one.
    async fn verify_email(&self, token_hash: &[u8], audit: &AuditRecord) -> Result<VerifyCheck>;

    /// Deletes expired links. Returns rows deleted.
    async fn sweep_verifications(&self) -> Result<u64>;
}

/// The record of a link used, with its outcome.
fn outcome_record(audit: &AuditRecord, app_id: Uuid, user_id: Uuid, outcome: &str) -> AuditRecord {
    let mut r = audit.clone();
    r.app_id = Some(app_id);
    r.subject_id = Some(user_id);
    r.outcome = outcome.into();
    r
}

/// How long a mailed verification link works, from its request.
pub const VERIFY_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// What a verification mail carries beyond the user's row, sealed to its
/// outbox row (`VERIFY_MAIL_FIELD`): the address it goes to (the one it
/// verifies, whatever the profile says by the time it is sent), the
/// link's token, and the address's blind index, which the link is bound to.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VerifyMailPayload {
    pub to: String,
    pub token: String,
    pub email_bidx: Vec<u8>,
}

impl Drop for VerifyMailPayload {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}
