//! Second factors: a user's TOTP factor (pending until confirmed, its last
//! accepted time step), their single-use recovery codes (digests), the
//! second step of a sign-in (mfaToken digests, 5 minutes), and each
//! application's MFA policy. The trait, and its PostgreSQL and SQLite
//! implementations beside it.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use uuid::Uuid;

use crate::store::trail::record::AuditRecord;
use crate::store::{QueuedMail, Rehash, Result, VerifyMode};

/// The outbox kind (and template name) of the notice of a removed factor.
pub const MFA_REMOVED: &str = "mfa_removed";

/// Whether an application's supervisors must have a second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MfaPolicy {
    /// Anyone may add one; nobody must.
    #[default]
    Optional,
    /// A supervisor without a second factor acts as a plain user on their
    /// own record only, until they enrol.
    RequiredForSupervisors,
}

impl MfaPolicy {
    /// As stored, and as `usersvc app update --mfa` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            MfaPolicy::Optional => "optional",
            MfaPolicy::RequiredForSupervisors => "required-for-supervisors",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "optional" => Some(MfaPolicy::Optional),
            "required-for-supervisors" => Some(MfaPolicy::RequiredForSupervisors),
            _ => None,
        }
    }
}

/// A user's TOTP factor as stored.
#[derive(Debug, Clone)]
pub struct TotpFactor {
    /// The secret, sealed to the user's row and [`crate::crypto::fields::TOTP_SECRET_FIELD`].
    pub secret_ct: Vec<u8>,
    /// False while the enrolment waits for its first code.
    pub confirmed: bool,
}

/// See [`FactorStore::sign_in_gates`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignInGates {
    pub verify_mode: VerifyMode,
    pub second_factor: bool,
}

/// Whether the user `$2` of the application `a` (`$1`) has a second factor:
/// a confirmed TOTP factor, or a passkey while the application has a
/// relying party. A literal, so that the queries below are built once, at
/// compile time.
macro_rules! second_factor {
    () => {
        "(EXISTS (SELECT 1 FROM totp_factors WHERE app_id = a.id AND user_id = $2 AND confirmed_at IS NOT NULL)
          OR (a.webauthn_rp_id IS NOT NULL AND EXISTS (SELECT 1 FROM passkeys WHERE app_id = a.id AND user_id = $2)))"
    };
}

/// [`FactorStore::has_second_factor`] (the same SQL on both stores).
pub(in crate::store) const HAS_SECOND_FACTOR: &str =
    concat!("SELECT ", second_factor!(), " FROM applications a WHERE a.id = $1");

/// [`FactorStore::sign_in_gates`] (the same SQL on both stores).
pub(in crate::store) const SIGN_IN_GATES: &str =
    concat!("SELECT a.verify_email, ", second_factor!(), " FROM applications a WHERE a.id = $1");

impl SignInGates {
    /// From [`SIGN_IN_GATES`]'s row; none for an application that is gone.
    pub(in crate::store) fn of_row(row: Option<(Option<String>, bool)>) -> Result<Self> {
        let Some((mode, second_factor)) = row else {
            return Ok(SignInGates { verify_mode: VerifyMode::default(), second_factor: false });
        };
        let verify_mode = VerifyMode::parse(mode.as_deref())
            .ok_or_else(|| crate::store::StoreError::Corrupt("an unknown verify_email".into()))?;
        Ok(SignInGates { verify_mode, second_factor })
    }
}

/// What an mfaToken is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeCheck {
    /// Live: the user it is for.
    Live(Uuid),
    /// Unknown, used or past its 5 minutes: alike to the caller.
    Gone,
}

#[async_trait]
pub trait FactorStore: Send + Sync {
    /// The one answer to "does this user have a second factor": a confirmed
    /// TOTP factor (a pending one is not), or a registered passkey while the
    /// application has a relying party (without one a passkey cannot be
    /// used, and must not lock its user out). Sign-in and the supervisors'
    /// rule both ask here.
    async fn has_second_factor(&self, app_id: Uuid, user_id: Uuid) -> Result<bool>;

    /// What a sign-in whose password checked out has still to pass, in one
    /// round trip: the application's `--verify-email`, and
    /// [`has_second_factor`](Self::has_second_factor)'s answer.
    async fn sign_in_gates(&self, app_id: Uuid, user_id: Uuid) -> Result<SignInGates>;

    /// Stores a new pending TOTP factor, replacing a pending one; false (and
    /// nothing stored) when a confirmed one is there.
    async fn put_pending_totp(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        secret_ct: &[u8],
        audit: &AuditRecord,
    ) -> Result<bool>;

    async fn totp_factor(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<TotpFactor>>;

    /// Confirms the pending factor with the step its first code was of, and
    /// replaces the user's recovery codes with these digests, at once; false
    /// when there is no pending factor (none, or confirmed meanwhile).
    async fn confirm_totp(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        step: i64,
        recovery_hashes: &[Vec<u8>],
        audit: &AuditRecord,
    ) -> Result<bool>;

    /// Takes a time step of the confirmed factor if it is later than the
    /// last one taken (in one statement: of two sign-ins with one code, one
    /// wins); false for a replay, an earlier step or no confirmed factor.
    async fn accept_totp_step(&self, app_id: Uuid, user_id: Uuid, step: i64) -> Result<bool>;

    /// Uses up a recovery code by its digest; false when it is not one of
    /// the user's (or was used).
    async fn use_recovery_code(&self, app_id: Uuid, user_id: Uuid, code_hash: &[u8]) -> Result<bool>;

    /// Recovery codes the user has left.
    async fn recovery_codes_left(&self, app_id: Uuid, user_id: Uuid) -> Result<i64>;

    /// Removes the user's TOTP factor (pending or confirmed), recovery codes
    /// and open sign-in challenges, queues the notice, and records it, in
    /// one transaction; false when there was no factor (nothing queued).
    async fn remove_totp(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        notice: Option<&QueuedMail>,
        audit: &AuditRecord,
    ) -> Result<bool>;

    /// Stores an mfaToken's digest for `lifetime`, with the sign-in's record;
    /// and replaces the password hash the sign-in checked, if outdated (as
    /// starting a session does, see [`Rehash`]), in the same transaction.
    async fn create_mfa_challenge(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        token_hash: &[u8],
        lifetime: std::time::Duration,
        rehash: Option<Rehash<'_>>,
        audit: &AuditRecord,
    ) -> Result<()>;

    /// Whom a live mfaToken of the application is for.
    async fn mfa_challenge(&self, app_id: Uuid, token_hash: &[u8]) -> Result<ChallengeCheck>;

    /// Uses an mfaToken up; false when it was gone already (used by a
    /// concurrent call, or expired).
    async fn consume_mfa_challenge(&self, app_id: Uuid, token_hash: &[u8]) -> Result<bool>;

    /// The application's policy (optional for an unknown one).
    async fn mfa_policy(&self, app_id: Uuid) -> Result<MfaPolicy>;

    /// Sets it; false when there is no such application.
    async fn set_mfa_policy(&self, app_id: Uuid, policy: MfaPolicy, audit: &AuditRecord) -> Result<bool>;
}
