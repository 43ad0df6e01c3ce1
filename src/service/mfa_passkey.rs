//! A passkey as the second factor of a sign-in, in place of a TOTP code:
//! `StartMfaPasskey` gives WebAuthn request options limited to the passkeys
//! of the user an mfaToken was issued to (the token is not used up), and
//! `SignInMfa` with `ceremony_id` and `credential_json` instead of `code`
//! checks the assertion for that user (see `mfa.rs`, which throttles,
//! records and gives the session as for a code).

use uuid::Uuid;

use super::context::Ctx;
use super::error::{ServiceError, ServiceResult};
use super::mfa::{Factor, MAX_CODE_CHARS};
use super::users::UserSvc;
use crate::auth::secret;
use crate::pb;
use crate::store::ChallengeCheck;

impl UserSvc {
    /// The user a live mfaToken was issued to; INVALID_MFA_TOKEN otherwise.
    pub(super) async fn mfa_token_user(&self, app_id: Uuid, token: &str) -> ServiceResult<Uuid> {
        let token = token.trim();
        if token.is_empty() {
            return Err(ServiceError::invalid("mfa_token", "is required"));
        }
        if token.len() > MAX_CODE_CHARS {
            return Err(ServiceError::InvalidMfaToken);
        }
        match self.core.store.mfa_challenge(app_id, &secret::digest(token)).await? {
            ChallengeCheck::Live(user_id) => Ok(user_id),
            _ => Err(ServiceError::InvalidMfaToken),
        }
    }

    pub(super) async fn start_mfa_passkey(
        &self,
        ctx: &Ctx,
        req: pb::StartMfaPasskeyRequest,
    ) -> ServiceResult<pb::PasskeyCeremony> {
        let app_id = self.core.auth.app(&ctx.md).await?;
        let user_id = self.mfa_token_user(app_id, &req.mfa_token).await?;
        let ceremony = self.start_user_authentication(app_id, user_id).await?;
        tracing::info!(%app_id, users_id = %user_id, "passkey asked for as the second factor");
        Ok(ceremony)
    }

    /// Checks a passkey assertion as the second factor of `user_id`: None
    /// when it does not verify (another user's credential, a wrong
    /// signature, a counter gone backwards), to be throttled and recorded
    /// as a wrong code is. A malformed credential or a bad ceremony is the
    /// caller's mistake (INVALID_ARGUMENT).
    pub(super) async fn check_mfa_passkey(
        &self,
        ctx: &Ctx,
        app_id: Uuid,
        user_id: Uuid,
        req: &pb::SignInMfaRequest,
    ) -> ServiceResult<Option<Factor>> {
        match self.finish_user_authentication(ctx, app_id, user_id, &req.ceremony_id, &req.credential_json).await {
            Ok(_) => Ok(Some(Factor::Passkey)),
            Err(ServiceError::BadCredentials) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
