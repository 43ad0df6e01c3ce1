//! Email verification (`--verify-email`): the link mailed on sign-up, on a
//! change of the primary address and on request (`SendVerification`), its
//! use (`VerifyEmail`), the `email.primary_verified` a reply shows, and the
//! sign-in an application that requires it refuses to the unverified.

use secrecy::ExposeSecret;
use uuid::Uuid;

use super::context::Ctx;
use super::error::{ServiceError, ServiceResult};
use super::users::UserSvc;
use super::{Core, validate};
use crate::auth::{Caller, SessionUser};
use crate::crypto::{fields::VERIFY_MAIL_FIELD, keyring::Sealer};
use crate::pb;
use crate::store::{
    AuditRecord, QueuedMail, Resend, VERIFY_EMAIL, VerificationStatus, VerifyCheck, VerifyMailPayload, VerifyMode,
};

/// The trail actions.
const SENT: &str = "email.verification_sent";
const VERIFIED: &str = "email.verified";

/// Resends that lost to a change of address before giving up.
const RESEND_ATTEMPTS: u32 = 3;

/// A verification mail for `to` (whose blind index is `email_bidx`), with a
/// new token, sealed to its outbox row. The token's digest is stored when
/// the mail is sent (`Mailer`), bound to that address.
pub(super) fn verification_mail(sealer: &Sealer, to: &str, email_bidx: &[u8]) -> ServiceResult<QueuedMail> {
    let id = Uuid::now_v7();
    let payload = VerifyMailPayload {
        to: to.trim().to_owned(),
        token: crate::auth::secret::generate().expose_secret().to_owned(),
        email_bidx: email_bidx.to_vec(),
    };
    let mut plain = serde_json::to_vec(&payload).map_err(|e| ServiceError::Internal(e.to_string()))?;
    let payload_ct = sealer.seal(id, VERIFY_MAIL_FIELD, &plain);
    zeroize::Zeroize::zeroize(&mut plain);
    Ok(QueuedMail { id, kind: VERIFY_EMAIL, payload_ct })
}

impl Core {
    /// The application's `--verify-email`.
    pub(super) async fn verify_mode(&self, app_id: Uuid) -> ServiceResult<VerifyMode> {
        Ok(self.store.verify_email_mode(app_id).await?.unwrap_or_default())
    }

    /// The verification mail (and its trail record) of a new primary
    /// address `to`, when the application mails one; none otherwise.
    pub(super) async fn verification_on_change(
        &self,
        ctx: &Ctx,
        caller: &Caller,
        mode: VerifyMode,
        sealer: &Sealer,
        user_id: Uuid,
        to: Option<(&str, &[u8])>,
    ) -> ServiceResult<Option<(QueuedMail, AuditRecord)>> {
        let Some((to, bidx)) = to.filter(|_| mode.mails()) else {
            return Ok(None);
        };
        let mail = verification_mail(sealer, to, bidx)?;
        let mut r = self.record(ctx, SENT, Some(caller), caller.app_id).await;
        r.subject_id = Some(user_id);
        r.fields = vec!["email".into()];
        Ok(Some((mail, r)))
    }

    /// Fills in `email.primary_verified` of a reply from the store (what a
    /// request or a stored profile said of it counts for nothing).
    pub(super) async fn show_verified(&self, app_id: Uuid, user: &mut pb::User) -> ServiceResult<()> {
        let id = validate::id(&user.users_id, "users_id")?;
        let status = self.store.verification_status(app_id, id).await?;
        set_verified(user, status);
        Ok(())
    }

    /// The same for a page of users, in one statement.
    pub(super) async fn show_verified_all(&self, app_id: Uuid, users: &mut [pb::User]) -> ServiceResult<()> {
        let mode = self.verify_mode(app_id).await?;
        let ids: Vec<Uuid> = users.iter().filter_map(|u| Uuid::try_parse(&u.users_id).ok()).collect();
        let verified = if mode.on() { self.store.verified_users(app_id, &ids).await? } else { Vec::new() };
        for u in users {
            let yes = Uuid::try_parse(&u.users_id).is_ok_and(|id| verified.contains(&id));
            set_verified(u, VerificationStatus { mode, verified: yes });
        }
        Ok(())
    }
}

/// `email.primary_verified` as the status says: never where verification
/// is off, never without an address.
pub(super) fn set_verified(user: &mut pb::User, status: VerificationStatus) {
    if let Some(e) = user.email.as_mut() {
        e.primary_verified = status.mode.on() && status.verified && !e.primary.trim().is_empty();
    }
}

impl UserSvc {
    /// After the password checked out: under `--verify-email required`, an
    /// unverified user is refused (recorded as a sign-in, outcome
    /// `unverified`), and told nothing else. Returns the status for the
    /// reply.
    pub(super) async fn check_verified_sign_in(
        &self,
        ctx: &Ctx,
        app_id: Uuid,
        user_id: Uuid,
    ) -> ServiceResult<VerificationStatus> {
        let core = &self.core;
        let status = core.store.verification_status(app_id, user_id).await?;
        if status.mode == VerifyMode::Required && !status.verified {
            let mut r = core.record(ctx, "session.sign_in", None, app_id).await;
            r.subject_id = Some(user_id);
            r.outcome = "unverified".into();
            core.store.append_audit(&[r]).await?;
            tracing::info!(%app_id, users_id = %user_id, "sign-in refused: email not verified");
            return Err(ServiceError::EmailUnverified);
        }
        Ok(status)
    }

    pub(super) async fn send_verification(&self, ctx: &Ctx, req: pb::SendVerificationRequest) -> ServiceResult<()> {
        let (caller, me) = self.core.auth.signed_in(&ctx.md).await?;
        let id = validate::id(&req.users_id, "users_id")?;
        let out = self.resend(ctx, &caller, &me, id).await;
        if let Err(e) = &out {
            // Refusals (not the caller's, verification off) are recorded.
            self.refused(ctx, SENT, &caller, id, e).await;
        }
        out
    }

    async fn resend(&self, ctx: &Ctx, caller: &Caller, me: &SessionUser, id: Uuid) -> ServiceResult<()> {
        let core = &self.core;
        self.authorise(caller.app_id, me, id).await?;
        if !core.verify_mode(caller.app_id).await?.on() {
            return Err(ServiceError::Forbidden("email verification is off for this application"));
        }
        for _ in 0..RESEND_ATTEMPTS {
            let rec = core.store.get_user(caller.app_id, id).await?.ok_or(ServiceError::NotFound("user"))?;
            let user = core.open_user(&rec).await?;
            let to = user.email.as_ref().map(|e| e.primary.trim().to_owned()).filter(|e| !e.is_empty());
            let Some(to) = to else {
                return Err(ServiceError::invalid("email.primary", "the user has no email address to verify"));
            };
            let bidx = core.email_index(caller.app_id, &to).await?;
            let sealer = core.keyring.sealer(caller.app_id).await.map_err(ServiceError::Crypto)?;
            let mail = verification_mail(&sealer, &to, &bidx)?;
            let mut r = core.record(ctx, SENT, Some(caller), caller.app_id).await;
            r.subject_id = Some(id);
            r.fields = vec!["email".into()];
            let limit = core.mail_per_recipient;
            match core.store.queue_verification(caller.app_id, id, &bidx, &mail, limit, &r).await? {
                Resend::Queued => {
                    tracing::info!(app_id = %caller.app_id, users_id = %id, "verification mail queued");
                    return Ok(());
                }
                // The same answer: the caller learns nothing of the count.
                Resend::Limited => {
                    metrics::counter!("usersvc_mail_recipient_limited_total").increment(1);
                    return Ok(());
                }
                Resend::AlreadyVerified => return Err(ServiceError::AlreadyVerified),
                Resend::Gone => return Err(ServiceError::NotFound("user")),
                // The address changed since it was read: read it again.
                Resend::Changed => continue,
            }
        }
        Err(ServiceError::Contention)
    }

    pub(super) async fn verify_email(&self, ctx: &Ctx, req: pb::VerifyEmailRequest) -> ServiceResult<()> {
        let core = &self.core;
        let token = req.token.trim();
        let invalid = || {
            ServiceError::invalid("token", "this verification link is not valid: it was used, replaced or never issued")
        };
        if token.is_empty() || token.len() > 128 {
            return Err(invalid());
        }
        let hash = crate::auth::secret::digest(token);
        // The application and the user are the link's: filled in by the
        // store (the client address, sealed under the application's key,
        // cannot be before it is known).
        let mut record = ctx.record(VERIFIED, None, Uuid::nil());
        record.fields = vec!["email".into()];
        match core.store.verify_email(&hash, &record).await? {
            VerifyCheck::Verified { app_id, user_id } => {
                tracing::info!(%app_id, users_id = %user_id, "email verified");
                Ok(())
            }
            VerifyCheck::Expired { .. } => {
                Err(ServiceError::invalid("token", "this verification link has expired; ask for a new one"))
            }
            VerifyCheck::Stale { .. } => Err(ServiceError::invalid(
                "token",
                "this verification link is for an email address the account no longer has",
            )),
            VerifyCheck::Unknown => Err(invalid()),
        }
    }
}
