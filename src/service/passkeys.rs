//! Passkeys (WebAuthn) of `usersvc.v1.UserService`, with `webauthn-rs`:
//! registration by a signed-in user, listing and removal, and sign-in with
//! a passkey alone.
//!
//! Each ceremony is two calls; replicas keep no state, so the server's half
//! of it (webauthn-rs's registration or authentication state) is sealed to
//! a `passkey_ceremonies` row between them, bound to the application (and
//! the user), used once and short-lived. Credentials are stored sealed
//! under the application's data key, bound to their row and field, with
//! the name the user gave them; the blind index of the credential id finds
//! the row an assertion names.
//!
//! [`UserSvc::start_user_authentication`] and
//! [`UserSvc::finish_user_authentication`] are the two halves of an
//! authentication limited to one user's passkeys, for a passkey to serve as
//! a second factor.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;
use webauthn_rs::prelude::{
    CreationChallengeResponse, DiscoverableAuthentication, DiscoverableKey, Passkey, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse, Url, Webauthn, WebauthnBuilder,
    WebauthnError,
};
use zeroize::Zeroizing;

use super::context::Ctx;
use super::error::{ServiceError, ServiceResult};
use super::users::{ADDRESS_RULE, USERNAME_RULE, UserSvc};
use super::{profile, validate};
use crate::auth::{Caller, SessionUser};
use crate::crypto::{Keyring, fields::PASSKEY_FIELD};
use crate::pb;
use crate::store::{
    AUTHENTICATE, CeremonyTake, NewCeremony, NewPasskey, REGISTER, Relief, Store, StoreError, StoredPasskey,
    ThrottleRule, VerifyMode, WebauthnConfig,
};

/// How long the second call of a ceremony may come after the first.
pub const CEREMONY_LIFETIME: std::time::Duration = std::time::Duration::from_secs(5 * 60);
/// Passkeys one user may have.
pub const MAX_PASSKEYS: i64 = 10;
/// The longest name of a passkey, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// The longest credential JSON taken (a browser's is a few KiB).
const MAX_CREDENTIAL_BYTES: usize = 64 * 1024;

/// The field a ceremony's state is sealed under.
const CEREMONY_FIELD: &str = "passkey_ceremony";
/// The blind index kind of credential ids.
const CREDENTIAL_INDEX: &str = "passkey-credential";

/// What a passkey row seals.
#[derive(Serialize, Deserialize)]
struct SealedPasskey {
    name: String,
    passkey: Passkey,
}

/// What an authentication ceremony's row seals: the state, and (for a
/// sign-in started with a username that matched nobody) nothing to find.
#[derive(Serialize, Deserialize)]
struct AuthState {
    state: DiscoverableAuthentication,
}

/// A passkey sign-in's verdict, before the session.
enum Verdict {
    /// The user the credential belongs to.
    Ok(Uuid),
    /// Anything that is not a good assertion; the user when known.
    Refused(Option<Uuid>),
}

fn invalid_ceremony() -> ServiceError {
    ServiceError::invalid(
        "ceremony_id",
        "this ceremony is not known: it was used already, or never started; start again",
    )
}

fn bad_credential(detail: &str) -> ServiceError {
    ServiceError::invalid("credential_json", format!("is not a usable credential: {detail}"))
}

/// The relying party of an application's configuration.
fn relying_party(config: &WebauthnConfig) -> ServiceResult<Webauthn> {
    let broken = |what: &str| {
        tracing::error!(what, "the application's WebAuthn configuration is unusable");
        ServiceError::PasskeysNotConfigured
    };
    let mut origins = config.origins.iter().map(|o| Url::parse(o));
    let first = origins.next().ok_or_else(|| broken("no origin"))?.map_err(|_| broken("an origin"))?;
    let mut builder = WebauthnBuilder::new(&config.rp_id, &first).map_err(|_| broken("the rp id"))?;
    for origin in origins {
        builder = builder.append_allowed_origin(&origin.map_err(|_| broken("an origin"))?);
    }
    builder.rp_name(&config.rp_id).build().map_err(|_| broken("the builder"))
}

/// Checks an operator's relying party as `usersvc app update` sets it.
pub fn check_config(config: &WebauthnConfig) -> Result<(), String> {
    if config.origins.is_empty() {
        return Err("give at least one --webauthn-origin".into());
    }
    for origin in &config.origins {
        Url::parse(origin).map_err(|e| format!("--webauthn-origin {origin:?} is not a URL: {e}"))?;
    }
    relying_party(config).map(|_| ()).map_err(|_| {
        "the origins must be on the rp id's domain (or a subdomain of it), over https (or http://localhost)".into()
    })
}

fn to_json<T: Serialize>(value: &T) -> ServiceResult<Value> {
    serde_json::to_value(value).map_err(|e| ServiceError::Internal(format!("WebAuthn options: {e}")))
}

fn parse_credential<T: for<'de> Deserialize<'de>>(json: &str) -> ServiceResult<T> {
    if json.trim().is_empty() {
        return Err(ServiceError::invalid("credential_json", "is required"));
    }
    if json.len() > MAX_CREDENTIAL_BYTES {
        return Err(ServiceError::invalid("credential_json", "is too long"));
    }
    serde_json::from_str(json).map_err(|e| bad_credential(&e.to_string()))
}

/// Checks, before anything is counted or used up, that a finish names a
/// ceremony and carries an assertion as [`UserSvc::finish_user_authentication`]
/// reads them: INVALID_ARGUMENT naming the field otherwise.
pub fn check_assertion_form(ceremony_id: &str, credential_json: &str) -> ServiceResult<()> {
    validate::id(ceremony_id, "ceremony_id")?;
    parse_credential::<PublicKeyCredential>(credential_json).map(drop)
}

impl UserSvc {
    /// The application's relying party, or PASSKEYS_NOT_CONFIGURED. Read
    /// from the store on every call, so that every replica sees a change.
    async fn webauthn(&self, app_id: Uuid) -> ServiceResult<Webauthn> {
        let config = self.core.store.webauthn_config(app_id).await?.ok_or(ServiceError::PasskeysNotConfigured)?;
        relying_party(&config)
    }

    async fn credential_index(&self, app_id: Uuid, cred_id: &[u8]) -> ServiceResult<Vec<u8>> {
        use base64::Engine;
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cred_id);
        self.core.keyring.blind(app_id, CREDENTIAL_INDEX, &id).await.map_err(ServiceError::Crypto)
    }

    async fn open_passkey(&self, app_id: Uuid, row: &StoredPasskey) -> ServiceResult<SealedPasskey> {
        open_passkey(&self.core.keyring, app_id, row).await
    }

    async fn seal_passkey(&self, app_id: Uuid, row: Uuid, sealed: &SealedPasskey) -> ServiceResult<Vec<u8>> {
        let plain =
            Zeroizing::new(serde_json::to_vec(sealed).map_err(|e| ServiceError::Internal(format!("a passkey: {e}")))?);
        let sealer = self.core.keyring.sealer(app_id).await.map_err(ServiceError::Crypto)?;
        Ok(sealer.seal(row, PASSKEY_FIELD, &plain))
    }

    /// Stores a ceremony's state; returns its id.
    async fn keep_ceremony(
        &self,
        app_id: Uuid,
        user_id: Option<Uuid>,
        kind: &'static str,
        state: &impl Serialize,
    ) -> ServiceResult<Uuid> {
        let id = Uuid::now_v7();
        let plain =
            Zeroizing::new(serde_json::to_vec(state).map_err(|e| ServiceError::Internal(format!("a ceremony: {e}")))?);
        let sealer = self.core.keyring.sealer(app_id).await.map_err(ServiceError::Crypto)?;
        let ceremony = NewCeremony {
            id,
            app_id,
            user_id,
            kind,
            state_ct: sealer.seal(id, CEREMONY_FIELD, &plain),
            lifetime: CEREMONY_LIFETIME,
        };
        self.core.store.create_ceremony(&ceremony).await?;
        Ok(id)
    }

    /// Takes a ceremony of this kind (used up whatever follows); returns
    /// the user it is bound to and its state.
    async fn take_ceremony<T: for<'de> Deserialize<'de>>(
        &self,
        app_id: Uuid,
        raw_id: &str,
        kind: &str,
    ) -> ServiceResult<(Option<Uuid>, T)> {
        let id = validate::id(raw_id, "ceremony_id")?;
        let (user_id, state_ct) = match self.core.store.take_ceremony(app_id, id).await? {
            CeremonyTake::Live { user_id, kind: k, state_ct } if k == kind => (user_id, state_ct),
            CeremonyTake::Expired => {
                return Err(ServiceError::invalid("ceremony_id", "this ceremony has expired; start again"));
            }
            _ => return Err(invalid_ceremony()),
        };
        let plain = Zeroizing::new(
            self.core.keyring.open(app_id, id, CEREMONY_FIELD, &state_ct).await.map_err(ServiceError::Crypto)?,
        );
        let state = serde_json::from_slice(&plain)
            .map_err(|_| ServiceError::Store(StoreError::Corrupt("a stored ceremony".into())))?;
        Ok((user_id, state))
    }

    /// The caller's own record, for a registration: a user's session (not
    /// a service token), on their own id, signed in recently (adding a way
    /// in is as sensitive as changing the password).
    async fn own_passkey_record(&self, ctx: &Ctx, users_id: &str) -> ServiceResult<(Caller, SessionUser)> {
        let (caller, me) = self.core.auth.signed_in(&ctx.md).await?;
        let id = validate::id(users_id, "users_id")?;
        if me.is_service() || id != me.user_id {
            let e = ServiceError::Hidden { exists: self.core.store.get_user(caller.app_id, id).await?.is_some() };
            self.refused(ctx, "passkey.register", &caller, id, &e).await;
            return Err(e);
        }
        if !me.privileged(self.core.auth.policy().privileged_max_age) {
            return Err(ServiceError::ReauthenticationRequired);
        }
        Ok((caller, me))
    }

    async fn username_of(&self, app_id: Uuid, user_id: Uuid) -> ServiceResult<String> {
        let secrets = self.core.store.user_secrets(app_id, &[user_id]).await?;
        let secrets = secrets.into_iter().next().ok_or(ServiceError::NotFound("user"))?;
        let username = self
            .core
            .keyring
            .open(app_id, user_id, profile::USERNAME_FIELD, &secrets.username_ct)
            .await
            .map_err(ServiceError::Crypto)?;
        String::from_utf8(username).map_err(|_| ServiceError::Internal("a stored username is not UTF-8".into()))
    }

    pub(super) async fn start_passkey_registration(
        &self,
        ctx: &Ctx,
        req: pb::StartPasskeyRegistrationRequest,
    ) -> ServiceResult<pb::PasskeyCeremony> {
        let (caller, me) = self.own_passkey_record(ctx, &req.users_id).await?;
        let app_id = caller.app_id;
        let webauthn = self.webauthn(app_id).await?;
        let username = self.username_of(app_id, me.user_id).await?;
        let mut existing = Vec::new();
        for row in self.core.store.list_passkeys(app_id, me.user_id).await? {
            existing.push(self.open_passkey(app_id, &row).await?.passkey.cred_id().clone());
        }
        let (ccr, state): (CreationChallengeResponse, PasskeyRegistration) = webauthn
            .start_passkey_registration(me.user_id, &username, &username, Some(existing))
            .map_err(|e| ServiceError::Internal(format!("WebAuthn registration: {e}")))?;
        // A discoverable credential: it signs in without a username.
        let mut options = to_json(&ccr)?;
        if let Some(selection) = options.pointer_mut("/publicKey/authenticatorSelection").and_then(Value::as_object_mut)
        {
            selection.insert("residentKey".into(), "required".into());
            selection.insert("requireResidentKey".into(), true.into());
        }
        let ceremony_id = self.keep_ceremony(app_id, Some(me.user_id), REGISTER, &state).await?;
        Ok(pb::PasskeyCeremony { ceremony_id: ceremony_id.to_string(), options_json: options.to_string() })
    }

    pub(super) async fn finish_passkey_registration(
        &self,
        ctx: &Ctx,
        req: pb::FinishPasskeyRegistrationRequest,
    ) -> ServiceResult<pb::Passkey> {
        let (caller, me) = self.own_passkey_record(ctx, &req.users_id).await?;
        let app_id = caller.app_id;
        let webauthn = self.webauthn(app_id).await?;
        let name = req.name.trim();
        let name = if name.is_empty() { "Passkey" } else { name };
        if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(ServiceError::invalid(
                "name",
                format!("must be at most {MAX_NAME_CHARS} characters, without control characters"),
            ));
        }
        let credential: RegisterPublicKeyCredential = parse_credential(&req.credential_json)?;
        let (bound_to, state): (_, PasskeyRegistration) =
            self.take_ceremony(app_id, &req.ceremony_id, REGISTER).await?;
        if bound_to != Some(me.user_id) {
            return Err(invalid_ceremony());
        }
        let passkey = webauthn.finish_passkey_registration(&credential, &state).map_err(|e| {
            tracing::info!(%app_id, users_id = %me.user_id, error = %e, "passkey registration refused");
            bad_credential("it does not verify against this ceremony")
        })?;
        let id = Uuid::now_v7();
        let cred_key = self.credential_index(app_id, passkey.cred_id().as_ref()).await?;
        let sealed = self.seal_passkey(app_id, id, &SealedPasskey { name: name.to_owned(), passkey }).await?;
        let mut r = self.core.record(ctx, "passkey.registered", Some(&caller), app_id).await;
        r.subject_id = Some(me.user_id);
        r.object_id = Some(id);
        let new = NewPasskey { id, app_id, user_id: me.user_id, cred_key, sealed };
        match self.core.store.add_passkey(&new, MAX_PASSKEYS, &r).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(ServiceError::invalid(
                    "credential_json",
                    format!("a user may have at most {MAX_PASSKEYS} passkeys: remove one first"),
                ));
            }
            Err(StoreError::Conflict(_)) => return Err(ServiceError::PasskeyTaken),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(%app_id, users_id = %me.user_id, passkey_id = %id, "passkey registered");
        let rows = self.core.store.list_passkeys(app_id, me.user_id).await?;
        let row = rows.into_iter().find(|p| p.id == id).ok_or(ServiceError::NotFound("passkey"))?;
        Ok(passkey_message(&row, name.to_owned()))
    }

    pub(super) async fn list_passkeys(
        &self,
        ctx: &Ctx,
        req: pb::ListPasskeysRequest,
    ) -> ServiceResult<pb::ListPasskeysResponse> {
        let (caller, me) = self.core.auth.signed_in(&ctx.md).await?;
        let id = validate::id(&req.users_id, "users_id")?;
        if let Err(e) = self.authorise(caller.app_id, &me, id).await {
            self.refused(ctx, "passkey.list", &caller, id, &e).await;
            return Err(e);
        }
        self.webauthn(caller.app_id).await?;
        let passkeys = shown_passkeys(&self.core.keyring, self.core.store.as_ref(), caller.app_id, id).await?;
        Ok(pb::ListPasskeysResponse { passkeys })
    }

    pub(super) async fn remove_passkey(&self, ctx: &Ctx, req: pb::RemovePasskeyRequest) -> ServiceResult<()> {
        let (caller, me) = self.core.auth.signed_in(&ctx.md).await?;
        let id = validate::id(&req.users_id, "users_id")?;
        if let Err(e) = self.authorise(caller.app_id, &me, id).await {
            self.refused(ctx, "passkey.removed", &caller, id, &e).await;
            return Err(e);
        }
        let passkey_id = validate::id(&req.passkey_id, "passkey_id")?;
        self.webauthn(caller.app_id).await?;
        let mut r = self.core.record(ctx, "passkey.removed", Some(&caller), caller.app_id).await;
        r.subject_id = Some(id);
        r.object_id = Some(passkey_id);
        if !self.core.store.remove_passkey(caller.app_id, id, passkey_id, &r).await? {
            return Err(ServiceError::NotFound("passkey"));
        }
        tracing::info!(app_id = %caller.app_id, users_id = %id, %passkey_id, "passkey removed");
        Ok(())
    }

    /// Options for a sign-in with the passkeys of `user` (None: any
    /// discoverable credential of the application), and the ceremony's id.
    /// With a `decoy` (the username asked for), a user without passkeys,
    /// or no user, is offered a credential id made from it, the same at
    /// every ask: the options do not tell who is registered.
    async fn start_authentication(
        &self,
        app_id: Uuid,
        user: Option<Uuid>,
        decoy: Option<&str>,
    ) -> ServiceResult<pb::PasskeyCeremony> {
        let webauthn = self.webauthn(app_id).await?;
        let (rcr, state): (RequestChallengeResponse, DiscoverableAuthentication) = webauthn
            .start_discoverable_authentication()
            .map_err(|e| ServiceError::Internal(format!("WebAuthn authentication: {e}")))?;
        let mut options = to_json(&rcr)?;
        // Conditional mediation (autofill) is for the page to choose.
        if let Some(o) = options.as_object_mut() {
            o.remove("mediation");
        }
        if let Some(user_id) = user {
            let mut allow = Vec::new();
            for row in self.core.store.list_passkeys(app_id, user_id).await? {
                let passkey = self.open_passkey(app_id, &row).await?.passkey;
                allow.push(serde_json::json!({ "type": "public-key", "id": to_json(passkey.cred_id())? }));
            }
            if let (true, Some(seed)) = (allow.is_empty(), decoy) {
                use base64::Engine;
                let id = self.core.keyring.blind(app_id, "passkey-decoy", seed).await.map_err(ServiceError::Crypto)?;
                let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
                allow.push(serde_json::json!({ "type": "public-key", "id": id }));
            }
            if let Some(o) = options.pointer_mut("/publicKey").and_then(Value::as_object_mut) {
                o.insert("allowCredentials".into(), Value::Array(allow));
            }
        }
        let ceremony_id = self.keep_ceremony(app_id, user, AUTHENTICATE, &AuthState { state }).await?;
        Ok(pb::PasskeyCeremony { ceremony_id: ceremony_id.to_string(), options_json: options.to_string() })
    }

    /// The first half of an authentication limited to one user's passkeys
    /// (as a second factor): options whose `allowCredentials` are theirs.
    pub async fn start_user_authentication(&self, app_id: Uuid, user_id: Uuid) -> ServiceResult<pb::PasskeyCeremony> {
        self.start_authentication(app_id, Some(user_id), None).await
    }

    /// The second half: checks the assertion against the ceremony (which
    /// must have been started for `user_id`) and that user's passkeys, and
    /// stores the credential's new counter. Returns the user's id; every
    /// refusal is BadCredentials (a counter gone backwards is recorded as
    /// `passkey.counter_regressed` too). Throttling and the session are the
    /// caller's.
    pub async fn finish_user_authentication(
        &self,
        ctx: &Ctx,
        app_id: Uuid,
        user_id: Uuid,
        ceremony_id: &str,
        credential_json: &str,
    ) -> ServiceResult<Uuid> {
        let credential: PublicKeyCredential = parse_credential(credential_json)?;
        let (bound_to, state): (_, AuthState) = self.take_ceremony(app_id, ceremony_id, AUTHENTICATE).await?;
        if bound_to != Some(user_id) {
            return Err(invalid_ceremony());
        }
        match self.verify_assertion(ctx, app_id, bound_to, &credential, state).await? {
            Verdict::Ok(id) if id == user_id => Ok(id),
            _ => Err(ServiceError::BadCredentials),
        }
    }

    /// Verifies an assertion against the credential it names; stores the
    /// credential's new counter and time of use.
    async fn verify_assertion(
        &self,
        ctx: &Ctx,
        app_id: Uuid,
        bound_to: Option<Uuid>,
        credential: &PublicKeyCredential,
        state: AuthState,
    ) -> ServiceResult<Verdict> {
        let webauthn = self.webauthn(app_id).await?;
        let cred_key = self.credential_index(app_id, credential.raw_id.as_ref()).await?;
        let Some(row) = self.core.store.passkey_by_cred(app_id, &cred_key).await? else {
            return Ok(Verdict::Refused(bound_to));
        };
        if bound_to.is_some_and(|u| u != row.user_id) {
            return Ok(Verdict::Refused(bound_to));
        }
        let mut sealed = self.open_passkey(app_id, &row).await?;
        let key = DiscoverableKey::from(&sealed.passkey);
        let result = match webauthn.finish_discoverable_authentication(credential, state.state, &[key]) {
            Ok(result) => result,
            Err(WebauthnError::CredentialPossibleCompromise) => {
                let mut r = self.core.record(ctx, "passkey.counter_regressed", None, app_id).await;
                r.subject_id = Some(row.user_id);
                r.object_id = Some(row.id);
                r.outcome = "denied".into();
                self.core.store.append_audit(&[r]).await?;
                tracing::warn!(%app_id, users_id = %row.user_id, passkey_id = %row.id,
                    "passkey refused: its counter went backwards (a cloned authenticator?)");
                return Ok(Verdict::Refused(Some(row.user_id)));
            }
            Err(e) => {
                tracing::info!(%app_id, users_id = %row.user_id, error = %e, "passkey assertion refused");
                return Ok(Verdict::Refused(Some(row.user_id)));
            }
        };
        sealed.passkey.update_credential(&result);
        let resealed = self.seal_passkey(app_id, row.id, &sealed).await?;
        // Another sign-in with this credential stored its counter first:
        // one of the two assertions is a copy.
        if !self.core.store.use_passkey(app_id, row.id, row.version, &resealed).await? {
            return Err(ServiceError::Contention);
        }
        Ok(Verdict::Ok(row.user_id))
    }

    /// The throttle keys of a sign-in as the user: the username's (the
    /// key a password sign-in counts against) and the address's.
    async fn sign_in_keys(
        &self,
        ctx: &Ctx,
        app_id: Uuid,
        user: Option<Uuid>,
    ) -> ServiceResult<(Option<Vec<u8>>, Option<Vec<u8>>, Vec<(Vec<u8>, ThrottleRule)>)> {
        let user_key = match user {
            Some(id) => match self.username_of(app_id, id).await {
                Ok(name) => Some(
                    [b"signin-user:".as_slice(), app_id.as_bytes(), &self.core.username_index(app_id, &name).await?]
                        .concat(),
                ),
                Err(ServiceError::NotFound(_)) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let addr_key = self.address_key("signin-addr", app_id, self.core.client_ip(ctx));
        let mut keys: Vec<(Vec<u8>, ThrottleRule)> = user_key.iter().map(|k| (k.clone(), USERNAME_RULE)).collect();
        keys.extend(addr_key.clone().map(|k| (k, ADDRESS_RULE)));
        Ok((user_key, addr_key, keys))
    }

    pub(super) async fn start_passkey_sign_in(
        &self,
        ctx: &Ctx,
        req: pb::StartPasskeySignInRequest,
    ) -> ServiceResult<pb::PasskeyCeremony> {
        let app_id = self.core.auth.app(&ctx.md).await?;
        self.webauthn(app_id).await?;
        if req.username.trim().is_empty() {
            return self.start_authentication(app_id, None, None).await;
        }
        // An unknown username gets options all the same, bound to a user
        // that does not exist: nobody can finish them.
        let bidx = self.core.username_index(app_id, &req.username).await?;
        let possible = req.username.chars().count() <= validate::MAX_USERNAME_CHARS;
        let found = if possible { self.core.store.credentials(app_id, &bidx).await? } else { None };
        let user = found.map_or_else(Uuid::now_v7, |c| c.user_id);
        self.start_authentication(app_id, Some(user), Some(&profile::username_key(&req.username))).await
    }

    pub(super) async fn finish_passkey_sign_in(
        &self,
        ctx: &Ctx,
        req: pb::FinishPasskeySignInRequest,
    ) -> ServiceResult<pb::User> {
        let core = &self.core;
        let app_id = core.auth.app(&ctx.md).await?;
        self.webauthn(app_id).await?;
        let credential: PublicKeyCredential = parse_credential(&req.credential_json)?;
        let (bound_to, state): (_, AuthState) = self.take_ceremony(app_id, &req.ceremony_id, AUTHENTICATE).await?;
        // Whose the credential says it is, for the throttle: the ceremony's
        // user, else the stored credential's owner.
        let claimed = match bound_to {
            Some(u) => Some(u),
            None => {
                let cred_key = self.credential_index(app_id, credential.raw_id.as_ref()).await?;
                core.store.passkey_by_cred(app_id, &cred_key).await?.map(|p| p.user_id)
            }
        };
        let (user_key, addr_key, keys) = self.sign_in_keys(ctx, app_id, claimed).await?;
        if let Some(wait) = core.store.throttle_attempt(&keys).await? {
            let mut r = core.record(ctx, "session.sign_in", None, app_id).await;
            r.outcome = "throttled".into();
            r.fields = vec!["method:passkey".into()];
            core.trail.record(r).await?;
            metrics::counter!("usersvc_throttled_total", "kind" => "sign_in").increment(1);
            return Err(ServiceError::Throttled(wait));
        }
        let verdict = self.verify_assertion(ctx, app_id, bound_to, &credential, state).await?;
        let active = match &verdict {
            Verdict::Ok(id) => core.store.get_user(app_id, *id).await?.filter(|u| u.active),
            Verdict::Refused(_) => None,
        };
        let Some(rec) = active else {
            let mut r = core.record(ctx, "session.sign_in", None, app_id).await;
            r.subject_id = match verdict {
                Verdict::Ok(id) => Some(id),
                Verdict::Refused(id) => id,
            };
            r.outcome = "failed".into();
            r.fields = vec!["method:passkey".into()];
            core.store.append_audit(&[r]).await?;
            metrics::counter!("usersvc_signin_failures_total").increment(1);
            core.store.throttle_failed(&keys).await?;
            tracing::info!(%app_id, "passkey sign-in refused");
            return Err(ServiceError::BadCredentials);
        };
        // As a password sign-in: only once the assertion verified (no
        // oracle for a bad one), an unverified address is refused.
        let mode = if rec.email_verified { VerifyMode::default() } else { core.verify_mode(app_id).await? };
        self.check_verified_sign_in(ctx, &rec, mode).await?;
        let mut out = core.open_user(&rec).await?;
        let (token, session) = core.auth.new_session();
        let mut r = core.record(ctx, "session.sign_in", None, app_id).await;
        r.actor = "user".into();
        r.actor_id = Some(rec.id);
        r.subject_id = Some(rec.id);
        r.fields = profile::field_names(&out);
        r.fields.push("method:passkey".into());
        let relief = Relief { clear: user_key.as_deref(), forgive: addr_key.as_deref(), rehash: None };
        core.store.create_session(app_id, rec.id, session, relief, &r).await?;
        tracing::info!(%app_id, users_id = %rec.id, "signed in with a passkey");
        out.session_token = secrecy::ExposeSecret::expose_secret(&token).to_owned();
        Ok(out)
    }
}

/// A passkey row's credential and name.
async fn open_passkey(keyring: &Keyring, app_id: Uuid, row: &StoredPasskey) -> ServiceResult<SealedPasskey> {
    let plain =
        Zeroizing::new(keyring.open(app_id, row.id, PASSKEY_FIELD, &row.sealed).await.map_err(ServiceError::Crypto)?);
    serde_json::from_slice(&plain).map_err(|_| ServiceError::Store(StoreError::Corrupt("a stored passkey".into())))
}

/// A user's passkeys as they are shown to them (`ListPasskeys`, the
/// export): id, name and times, never the credential.
pub(super) async fn shown_passkeys(
    keyring: &Keyring,
    store: &dyn Store,
    app_id: Uuid,
    user_id: Uuid,
) -> ServiceResult<Vec<pb::Passkey>> {
    let mut passkeys = Vec::new();
    for row in store.list_passkeys(app_id, user_id).await? {
        let name = open_passkey(keyring, app_id, &row).await?.name;
        passkeys.push(passkey_message(&row, name));
    }
    Ok(passkeys)
}

fn passkey_message(row: &StoredPasskey, name: String) -> pb::Passkey {
    pb::Passkey {
        passkey_id: row.id.to_string(),
        name,
        created_at: profile::format_time(row.created_at),
        last_used_at: row.last_used_at.map(profile::format_time).unwrap_or_default(),
    }
}
