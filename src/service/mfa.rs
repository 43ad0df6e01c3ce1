//! Second factors, in `usersvc.v1.UserService`: a TOTP factor (RFC 6238)
//! enrolled, confirmed and removed, its recovery codes, and the second step
//! of a sign-in (`SignInMfa`). Sign-in itself (`users.rs`) hands over here
//! once the password is right and the user has a second factor.
//!
//! - The secret (160 random bits) is sealed as every PII field is: under
//!   the application's data key, bound to the user's row and the field
//!   `totp_secret`.
//! - A code is good for its time step, the one before and the one after;
//!   each step is taken once per user (the store keeps the last one taken
//!   and takes only a later one, in one statement).
//! - Recovery codes carry 80 random bits each; what is stored is their
//!   keyed digest (HMAC-SHA256 under the application's index key, as the
//!   blind indexes are): no slow hash is needed for a value that cannot be
//!   guessed, and a copy of the database alone cannot even be tested against
//!   guesses.
//! - An mfaToken is a session-like bearer secret (32 random bytes): only its
//!   SHA-256 is stored, for 5 minutes, bound to the application and the
//!   user, and used up by the sign-in it finishes.
//! - Wrong codes count against throttles as wrong passwords do (per user
//!   and per client address, the same rules).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::STANDARD};
use rand::{Rng, RngCore};
use secrecy::{ExposeSecret, SecretString};
use totp_rs::{Algorithm, Builder, Totp};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::context::Ctx;
use super::error::{ServiceError, ServiceResult};
use super::users::{ADDRESS_RULE, USERNAME_RULE, UserSvc};
use super::{profile, validate};
use crate::auth::{SessionUser, caller, secret};
use crate::crypto::fields::{NOTICE_TO_FIELD, TOTP_SECRET_FIELD};
use crate::pb;
use crate::store::{ChallengeCheck, MFA_REMOVED, QueuedMail, Relief, ThrottleRule};

/// How long the second step of a sign-in may take.
pub const MFA_TOKEN_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// Recovery codes issued at confirmation.
const RECOVERY_CODES: usize = 10;
/// Characters of a recovery code (5 bits each: 80 bits), shown in groups of 4.
const RECOVERY_CHARS: usize = 16;
/// Lower-case letters and digits without the look-alikes 0, 1, l, o.
const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
/// RFC 4226's recommended secret length (and RFC 6238's for SHA-1).
const SECRET_BYTES: usize = 20;
const STEP_SECONDS: u64 = 30;
const DIGITS: u8 = 6;
/// The longest code or token looked at; anything longer is refused unread.
pub(super) const MAX_CODE_CHARS: usize = 64;

/// What a second factor turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Factor {
    Totp,
    RecoveryCode,
    /// A passkey's assertion (`mfa_passkey.rs`).
    Passkey,
}

impl Factor {
    /// As the trail names it.
    fn name(self) -> &'static str {
        match self {
            Factor::Totp => "totp",
            Factor::RecoveryCode => "recovery_code",
            Factor::Passkey => "passkey",
        }
    }
}

/// The RFC 6238 parameters every authenticator app defaults to.
fn totp(secret: &[u8], issuer: &str, account: &str) -> ServiceResult<Totp> {
    // A ':' separates issuer and account in the otpauth label.
    let clean = |s: &str| s.replace(':', " ");
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS)
        .with_skew(1)
        .with_step_duration(STEP_SECONDS)
        .with_secret(secret.to_vec())
        .with_issuer(Some(clean(issuer)))
        .with_account_name(clean(account))
        .build()
        .map_err(|e| ServiceError::Internal(format!("TOTP parameters refused: {e}")))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A code as typed: spaces and dashes aside, letters in lower case.
fn normalise(code: &str) -> Zeroizing<String> {
    Zeroizing::new(code.chars().filter(|c| !c.is_whitespace() && *c != '-').flat_map(char::to_lowercase).collect())
}

fn is_totp_code(code: &str) -> bool {
    code.len() == usize::from(DIGITS) && code.bytes().all(|b| b.is_ascii_digit())
}

/// A new recovery code, "abcd-efgh-jkmn-pqrs".
fn recovery_code() -> Zeroizing<String> {
    let mut rng = rand::rngs::OsRng;
    let mut out = Zeroizing::new(String::with_capacity(RECOVERY_CHARS + 3));
    for i in 0..RECOVERY_CHARS {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        out.push(char::from(RECOVERY_ALPHABET[rng.gen_range(0..RECOVERY_ALPHABET.len())]));
    }
    out
}

/// The QR code of an otpauth URI, as an SVG data URI.
fn qr_svg(uri: &str) -> ServiceResult<String> {
    let code =
        qrcode::QrCode::new(uri.as_bytes()).map_err(|e| ServiceError::Internal(format!("QR code not made: {e}")))?;
    let svg = code.render::<qrcode::render::svg::Color>().min_dimensions(200, 200).build();
    Ok(format!("data:image/svg+xml;base64,{}", STANDARD.encode(svg)))
}

impl UserSvc {
    /// The throttle keys of second-factor codes: the user's, and the client
    /// address's, under the rules of passwords.
    fn code_keys(&self, ctx: &Ctx, app_id: Uuid, user_id: Uuid) -> Vec<(Vec<u8>, ThrottleRule)> {
        let user_key = [b"mfa-user:".as_slice(), app_id.as_bytes(), user_id.as_bytes()].concat();
        let mut keys = vec![(user_key, USERNAME_RULE)];
        keys.extend(self.address_key("mfa-addr", app_id, self.core.client_ip(ctx)).map(|k| (k, ADDRESS_RULE)));
        keys
    }

    /// Only the user themselves enrols or confirms a factor: to a plain
    /// user another id is not there (404), a supervisor is told no (403).
    async fn own_factor_record(&self, app_id: Uuid, me: &SessionUser, id: Uuid) -> ServiceResult<()> {
        if me.is_service() {
            return Err(ServiceError::Forbidden("a service token has no second factor"));
        }
        if me.user_id == id {
            return Ok(());
        }
        self.authorise(app_id, me, id).await?;
        Err(ServiceError::Forbidden("only the user themselves may enrol a second factor"))
    }

    /// The user's TOTP secret, opened.
    async fn totp_secret(&self, app_id: Uuid, user_id: Uuid, sealed: &[u8]) -> ServiceResult<Zeroizing<Vec<u8>>> {
        let plain = self.core.keyring.open(app_id, user_id, TOTP_SECRET_FIELD, sealed).await;
        plain.map(Zeroizing::new).map_err(ServiceError::Crypto)
    }

    pub(super) async fn enrol_totp(
        &self,
        ctx: &Ctx,
        req: pb::EnrolTotpRequest,
    ) -> ServiceResult<pb::EnrolTotpResponse> {
        let core = &self.core;
        let (caller, me) = core.auth.signed_in(&ctx.md).await?;
        let app_id = caller.app_id;
        let id = validate::id(&req.users_id, "users_id")?;
        let proved = async {
            self.own_factor_record(app_id, &me, id).await?;
            self.reauthenticate(ctx, app_id, &me, &SecretString::from(req.current_password)).await
        };
        if let Err(e) = proved.await {
            self.refused(ctx, "mfa.totp_enrolled", &caller, id, &e).await;
            return Err(e);
        }
        // The label the authenticator app shows: the application's name and
        // the user's username.
        let app = core.store.app_by_key_hash(&secret::digest(caller::api_key(&ctx.md)?)).await?;
        let issuer = app.map_or_else(|| "usersvc".to_owned(), |a| a.name);
        let secrets = core.store.user_secrets(app_id, &[id]).await?;
        let secrets = secrets.into_iter().next().ok_or(ServiceError::NotFound("user"))?;
        let username = core
            .keyring
            .open(app_id, id, profile::USERNAME_FIELD, &secrets.username_ct)
            .await
            .map_err(ServiceError::Crypto)?;
        let username = Zeroizing::new(String::from_utf8_lossy(&username).into_owned());

        let mut raw = Zeroizing::new([0u8; SECRET_BYTES]);
        rand::rngs::OsRng.fill_bytes(raw.as_mut());
        let uri = Zeroizing::new(
            totp(raw.as_ref(), &issuer, &username)?
                .to_url()
                .map_err(|e| ServiceError::Internal(format!("otpauth URI not made: {e}")))?,
        );
        let qr_code = qr_svg(&uri)?;
        let sealer = core.keyring.sealer(app_id).await.map_err(ServiceError::Crypto)?;
        let sealed = sealer.seal(id, TOTP_SECRET_FIELD, raw.as_ref());
        let mut r = core.record(ctx, "mfa.totp_enrolled", Some(&caller), app_id).await;
        r.subject_id = Some(id);
        r.fields = vec![Factor::Totp.name().into()];
        if !core.store.put_pending_totp(app_id, id, &sealed, &r).await? {
            return Err(ServiceError::MfaAlreadyEnrolled);
        }
        tracing::info!(%app_id, users_id = %id, "TOTP enrolment started");
        Ok(pb::EnrolTotpResponse { otpauth_uri: uri.as_str().to_owned(), qr_code })
    }

    pub(super) async fn confirm_totp(
        &self,
        ctx: &Ctx,
        req: pb::ConfirmTotpRequest,
    ) -> ServiceResult<pb::ConfirmTotpResponse> {
        let core = &self.core;
        let (caller, me) = core.auth.signed_in(&ctx.md).await?;
        let app_id = caller.app_id;
        let id = validate::id(&req.users_id, "users_id")?;
        if let Err(e) = self.own_factor_record(app_id, &me, id).await {
            self.refused(ctx, "mfa.totp_confirmed", &caller, id, &e).await;
            return Err(e);
        }
        let code = normalise(&req.code);
        if !is_totp_code(&code) {
            return Err(ServiceError::invalid("code", "must be the six digits the authenticator app shows"));
        }
        let factor = core.store.totp_factor(app_id, id).await?;
        let Some(factor) = factor.filter(|f| !f.confirmed) else {
            return Err(ServiceError::NotFound("pending TOTP enrolment"));
        };
        let keys = self.code_keys(ctx, app_id, id);
        let mut r = core.record(ctx, "mfa.totp_confirmed", Some(&caller), app_id).await;
        r.subject_id = Some(id);
        r.fields = vec![Factor::Totp.name().into()];
        if let Some(wait) = core.store.throttle_attempt(&keys).await? {
            r.outcome = "throttled".into();
            core.trail.record(r).await?;
            metrics::counter!("usersvc_throttled_total", "kind" => "mfa").increment(1);
            return Err(ServiceError::Throttled(wait));
        }
        let secret = self.totp_secret(app_id, id, &factor.secret_ct).await?;
        let step = totp(&secret, "usersvc", "user")?.check(&code, unix_now());
        let Some(step) = step.and_then(|s| i64::try_from(s).ok()) else {
            core.store.throttle_failed(&keys).await?;
            r.outcome = "failed".into();
            core.store.append_audit(&[r]).await?;
            return Err(ServiceError::InvalidCode);
        };
        let mut codes = Vec::with_capacity(RECOVERY_CODES);
        let mut hashes = Vec::with_capacity(RECOVERY_CODES);
        for _ in 0..RECOVERY_CODES {
            let code = recovery_code();
            hashes.push(self.recovery_digest(app_id, &normalise(&code)).await?);
            codes.push(code);
        }
        if !core.store.confirm_totp(app_id, id, step, &hashes, &r).await? {
            return Err(ServiceError::NotFound("pending TOTP enrolment"));
        }
        let (user_key, addr_key) = (&keys[0].0, keys.get(1).map(|k| k.0.as_slice()));
        core.store.throttle_relieved(user_key, addr_key).await?;
        tracing::info!(%app_id, users_id = %id, "TOTP confirmed");
        Ok(pb::ConfirmTotpResponse { recovery_codes: codes.iter().map(|c| c.as_str().to_owned()).collect() })
    }

    /// The stored form of a recovery code (normalised).
    async fn recovery_digest(&self, app_id: Uuid, code: &str) -> ServiceResult<Vec<u8>> {
        self.core.keyring.blind(app_id, "recovery-code", code).await.map_err(ServiceError::Crypto)
    }

    pub(super) async fn remove_totp(&self, ctx: &Ctx, req: pb::RemoveTotpRequest) -> ServiceResult<()> {
        let core = &self.core;
        let (caller, me) = core.auth.signed_in(&ctx.md).await?;
        let app_id = caller.app_id;
        let id = validate::id(&req.users_id, "users_id")?;
        // One's own factor needs a recent sign-in (or the password): a stolen
        // token must not strip the account of it. A supervisor needs neither.
        let allowed = async {
            if me.user_id == id {
                self.reauthenticate(ctx, app_id, &me, &SecretString::from(req.current_password)).await
            } else {
                self.authorise(app_id, &me, id).await
            }
        };
        if let Err(e) = allowed.await {
            self.refused(ctx, "mfa.totp_removed", &caller, id, &e).await;
            return Err(e);
        }
        let rec = core.store.get_user(app_id, id).await?.ok_or(ServiceError::NotFound("user"))?;
        let user = core.open_user(&rec).await?;
        // The owner hears of it at their primary address, whoever removed it.
        let to = user.email.as_ref().map(|e| e.primary.trim().to_owned()).filter(|e| !e.is_empty());
        let notice = match to {
            Some(to) => {
                let sealer = core.keyring.sealer(app_id).await.map_err(ServiceError::Crypto)?;
                let mail_id = Uuid::now_v7();
                Some(QueuedMail {
                    id: mail_id,
                    kind: MFA_REMOVED,
                    payload_ct: sealer.seal(mail_id, NOTICE_TO_FIELD, to.as_bytes()),
                })
            }
            None => None,
        };
        let mut r = core.record(ctx, "mfa.totp_removed", Some(&caller), app_id).await;
        r.subject_id = Some(id);
        r.fields = vec![Factor::Totp.name().into()];
        if !core.store.remove_totp(app_id, id, notice.as_ref(), &r).await? {
            return Err(ServiceError::NotFound("TOTP factor"));
        }
        tracing::info!(%app_id, users_id = %id, "TOTP removed");
        Ok(())
    }

    /// The answer to a right password of a user with a second factor: an
    /// mfaToken and nothing else (no session, no profile). The password's
    /// throttles are relieved as for a sign-in, and an outdated hash is
    /// replaced as a sign-in's is.
    pub(super) async fn mfa_challenge(
        &self,
        ctx: &Ctx,
        app_id: Uuid,
        user_id: Uuid,
        relief: Relief<'_>,
    ) -> ServiceResult<pb::User> {
        let core = &self.core;
        let token = secret::generate();
        let mut r = core.record(ctx, "session.sign_in", None, app_id).await;
        r.actor = "user".into();
        r.actor_id = Some(user_id);
        r.subject_id = Some(user_id);
        r.outcome = "mfa_required".into();
        if let Some(clear) = relief.clear {
            core.store.throttle_relieved(clear, relief.forgive).await?;
        }
        let hash = secret::digest(token.expose_secret());
        core.store.create_mfa_challenge(app_id, user_id, &hash, MFA_TOKEN_LIFETIME, relief.rehash, &r).await?;
        tracing::info!(%app_id, users_id = %user_id, "password right; second factor asked for");
        Ok(pb::User { mfa_required: true, mfa_token: token.expose_secret().to_owned(), ..Default::default() })
    }

    /// Checks a code against the user's factors: a TOTP code (its step
    /// taken) or a recovery code (used up). None: not right.
    async fn check_code(&self, app_id: Uuid, user_id: Uuid, code: &str) -> ServiceResult<Option<Factor>> {
        let store = &self.core.store;
        if is_totp_code(code) {
            let Some(factor) = store.totp_factor(app_id, user_id).await?.filter(|f| f.confirmed) else {
                return Ok(None);
            };
            let secret = self.totp_secret(app_id, user_id, &factor.secret_ct).await?;
            let step = totp(&secret, "usersvc", "user")?.check(code, unix_now()).and_then(|s| i64::try_from(s).ok());
            return Ok(match step {
                Some(step) if store.accept_totp_step(app_id, user_id, step).await? => Some(Factor::Totp),
                _ => None,
            });
        }
        if code.len() != RECOVERY_CHARS || !code.bytes().all(|b| RECOVERY_ALPHABET.contains(&b)) {
            return Ok(None);
        }
        let digest = self.recovery_digest(app_id, code).await?;
        Ok(store.use_recovery_code(app_id, user_id, &digest).await?.then_some(Factor::RecoveryCode))
    }

    pub(super) async fn sign_in_mfa(&self, ctx: &Ctx, req: pb::SignInMfaRequest) -> ServiceResult<pb::User> {
        let core = &self.core;
        let app_id = core.auth.app(&ctx.md).await?;
        let token = req.mfa_token.trim();
        if token.is_empty() {
            return Err(ServiceError::invalid("mfa_token", "is required"));
        }
        // A code, or a passkey's assertion instead: one of the two.
        let passkey = !req.credential_json.trim().is_empty() || !req.ceremony_id.trim().is_empty();
        match (req.code.trim().is_empty(), passkey) {
            (true, false) => return Err(ServiceError::invalid("code", "is required (or a passkey's credential)")),
            (false, true) => {
                return Err(ServiceError::invalid("code", "give either a code or a passkey's credential, not both"));
            }
            _ => {}
        }
        if passkey {
            // A malformed assertion is the caller's mistake, not a wrong factor.
            super::passkeys::check_assertion_form(&req.ceremony_id, &req.credential_json)?;
        }
        if token.len() > MAX_CODE_CHARS || req.code.chars().count() > MAX_CODE_CHARS {
            return Err(ServiceError::InvalidMfaToken);
        }
        let hash = secret::digest(token);
        let ChallengeCheck::Live(user_id) = core.store.mfa_challenge(app_id, &hash).await? else {
            let mut r = core.record(ctx, "session.sign_in_mfa", None, app_id).await;
            r.outcome = "failed".into();
            core.store.append_audit(&[r]).await?;
            return Err(ServiceError::InvalidMfaToken);
        };
        let code = normalise(&req.code);
        let kind = match (passkey, is_totp_code(&code)) {
            (true, _) => Factor::Passkey,
            (false, true) => Factor::Totp,
            (false, false) => Factor::RecoveryCode,
        };
        let record = |outcome: &'static str| async move {
            let mut r = core.record(ctx, "session.sign_in_mfa", None, app_id).await;
            r.subject_id = Some(user_id);
            r.outcome = outcome.into();
            r.fields = vec![kind.name().into()];
            r
        };
        let keys = self.code_keys(ctx, app_id, user_id);
        if let Some(wait) = core.store.throttle_attempt(&keys).await? {
            core.trail.record(record("throttled").await).await?;
            metrics::counter!("usersvc_throttled_total", "kind" => "mfa").increment(1);
            return Err(ServiceError::Throttled(wait));
        }
        let checked = match kind {
            Factor::Passkey => self.check_mfa_passkey(ctx, app_id, user_id, &req).await?,
            _ => self.check_code(app_id, user_id, &code).await?,
        };
        let Some(kind) = checked else {
            core.store.throttle_failed(&keys).await?;
            core.store.append_audit(&[record("failed").await]).await?;
            metrics::counter!("usersvc_signin_failures_total").increment(1);
            tracing::info!(%app_id, users_id = %user_id, "second factor refused");
            return Err(ServiceError::InvalidCode);
        };
        // Used up by this sign-in: a second one with the same token (even
        // with another good code) is refused.
        if !core.store.consume_mfa_challenge(app_id, &hash).await? {
            return Err(ServiceError::InvalidMfaToken);
        }
        let rec = core.store.get_user(app_id, user_id).await?.filter(|u| u.active);
        let rec = rec.ok_or(ServiceError::InvalidMfaToken)?;
        let mut out = core.open_user(&rec).await?;
        if kind == Factor::RecoveryCode {
            let mut used = core.record(ctx, "mfa.recovery_code_used", None, app_id).await;
            used.actor = "user".into();
            used.actor_id = Some(user_id);
            used.subject_id = Some(user_id);
            used.fields = vec![kind.name().into()];
            core.store.append_audit(&[used]).await?;
        }
        let (token, session) = core.auth.new_session();
        let mut r = record("ok").await;
        r.actor = "user".into();
        r.actor_id = Some(user_id);
        r.fields = std::iter::once(kind.name().to_owned()).chain(profile::field_names(&out)).collect();
        let (user_key, addr_key) = (&keys[0].0, keys.get(1).map(|k| k.0.as_slice()));
        let relief = Relief { clear: Some(user_key), forgive: addr_key, rehash: None };
        core.store.create_session(app_id, user_id, session, relief, &r).await?;
        tracing::info!(%app_id, users_id = %user_id, factor = kind.name(), "signed in with a second factor");
        out.session_token = token.expose_secret().to_owned();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_long_grouped_and_normalise_to_their_alphabet() {
        let a = recovery_code();
        assert_eq!(a.len(), RECOVERY_CHARS + 3);
        assert_eq!(a.split('-').count(), 4);
        let n = normalise(&a.to_uppercase());
        assert_eq!(n.len(), RECOVERY_CHARS);
        assert!(n.bytes().all(|b| RECOVERY_ALPHABET.contains(&b)));
        assert_ne!(*a, *recovery_code());
    }

    #[test]
    fn codes_of_rfc_6238_are_checked_within_one_step() {
        // RFC 6238 appendix B, SHA-1 (the last six digits of its 8-digit codes).
        let t = totp(b"12345678901234567890", "app", "ada").unwrap();
        assert_eq!(t.check("287082", 59), Some(1));
        assert_eq!(t.check("287082", 59 + 30), Some(1), "one step late");
        assert_eq!(t.check("287082", 59 + 60), None, "two steps late");
        assert_eq!(t.check("081804", 1_111_111_109), Some(1_111_111_109 / 30));
        assert!(is_totp_code("123456") && !is_totp_code("12345a") && !is_totp_code("1234567"));
    }

    #[test]
    fn the_uri_names_the_issuer_and_account_and_the_qr_code_is_svg() {
        let uri = totp(&[7u8; 20], "My: App", "ada").unwrap().to_url().unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(uri.contains("secret="), "{uri}");
        let qr = qr_svg(&uri).unwrap();
        let svg = STANDARD.decode(qr.strip_prefix("data:image/svg+xml;base64,").unwrap()).unwrap();
        assert!(String::from_utf8(svg).unwrap().contains("<svg"));
    }
}
