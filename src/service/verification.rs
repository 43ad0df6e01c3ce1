//! Email verification (`--verify-email`): the link mailed on sign-up, on a
//! change of the primary address and on request (`SendVerification`), its
//! use (`VerifyEmail`), and the sign-in an application that requires it
//! refuses to the unverified. Replies show `email.primary_verified` from the
//! user's row (`profile::to_user`).

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
    AuditRecord, QueuedMail, Resend, UserRecord, VERIFY_EMAIL, VerifyCheck, VerifyMailPayload, VerifyMode,
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

    /// Queues a new link to the user's primary address, counted against
    /// the per-recipient limit: past it nothing goes, and the answer is the
    /// same. `caller` asked for it; None is the user themself at a refused
    /// sign-in (the password checked out).
    pub(super) async fn mail_new_link(
        &self,
        ctx: &Ctx,
        caller: Option<&Caller>,
        app_id: Uuid,
        id: Uuid,
    ) -> ServiceResult<()> {
        for _ in 0..RESEND_ATTEMPTS {
            let rec = self.store.get_user(app_id, id).await?.ok_or(ServiceError::NotFound("user"))?;
            let user = self.open_user(&rec).await?;
            let to = user.email.as_ref().map(|e| e.primary.trim().to_owned()).filter(|e| !e.is_empty());
            let Some(to) = to else {
                return Err(ServiceError::invalid("email.primary", "the user has no email address to verify"));
            };
            let bidx = self.email_index(app_id, &to).await?;
            let sealer = self.keyring.sealer(app_id).await.map_err(ServiceError::Crypto)?;
            let mail = verification_mail(&sealer, &to, &bidx)?;
            let mut r = self.record(ctx, SENT, caller, app_id).await;
            if caller.is_none() {
                r.actor = "user".into();
                r.actor_id = Some(id);
            }
            r.subject_id = Some(id);
            r.fields = vec!["email".into()];
            match self.store.queue_verification(app_id, id, &bidx, &mail, self.mail_per_recipient, &r).await? {
                Resend::Queued => {
                    tracing::info!(%app_id, users_id = %id, "verification mail queued");
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
}

impl UserSvc {
    /// After the password checked out: under `--verify-email required`
    /// (`mode`, the application's), an unverified user is refused (recorded
    /// as a sign-in, outcome `unverified`), and told nothing else.
    pub(super) async fn check_verified_sign_in(
        &self,
        ctx: &Ctx,
        rec: &UserRecord,
        mode: VerifyMode,
    ) -> ServiceResult<()> {
        let core = &self.core;
        if rec.email_verified || mode != VerifyMode::Required {
            return Ok(());
        }
        let mut r = core.record(ctx, "session.sign_in", None, rec.app_id).await;
        r.subject_id = Some(rec.id);
        r.outcome = "unverified".into();
        core.store.append_audit(&[r]).await?;
        tracing::info!(app_id = %rec.app_id, users_id = %rec.id, "sign-in refused: email not verified");
        // Whoever knows the password may have a new link, within the
        // per-recipient limit: a user whose link expired (or never came)
        // could otherwise never sign in again without a supervisor. The
        // reply is the same whether one went.
        if let Err(e) = core.mail_new_link(ctx, None, rec.app_id, rec.id).await {
            tracing::info!(app_id = %rec.app_id, users_id = %rec.id, error = %e, "no new verification link");
        }
        Err(ServiceError::EmailUnverified)
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
        self.authorise(caller.app_id, me, id).await?;
        if !self.core.verify_mode(caller.app_id).await?.on() {
            return Err(ServiceError::Forbidden("email verification is off for this application"));
        }
        self.core.mail_new_link(ctx, Some(caller), caller.app_id, id).await
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
