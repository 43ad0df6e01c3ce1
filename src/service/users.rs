//! `usersvc.v1.UserService`.

use std::{net::IpAddr, sync::Arc, time::Duration};

use pbjson_types::Empty;
use secrecy::{ExposeSecret, SecretString};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::context::Ctx;
use super::error::{ServiceError, ServiceResult};
use super::paging::{self, Tokens};
use super::{Core, field_mask, profile, validate};
use crate::auth::{Caller, SessionUser, password::HashError};
use crate::crypto::{fields::NOTICE_TO_FIELD, keyring::Sealer};
use crate::mail;
use crate::pb::{self, user_service_server::UserService};
use crate::schema;
use crate::store::{
    EMAIL_CHANGED, EndSessions, NewMailRequest, NewReset, NewUser, PASSWORD_CHANGED, QueuedMail, Quota, Rehash, Relief,
    ResetCheck, SignInAttempt, ThrottleRule, UserChange, VerifyMode,
};

/// How often an update re-reads and retries when another update of the same
/// user (or a key rotation) committed first.
const UPDATE_ATTEMPTS: u32 = 16;
/// Writes of a new user before giving up: one under the key current a
/// moment ago, then under the current one (twice: a second rotation may
/// land between the read and the write).
const KEY_ATTEMPTS: u32 = 3;

/// The pause before retry `attempt` of a compare-and-set that lost: random
/// (so that the writers who lost together do not meet again), growing from
/// 10 ms to at most 320 ms.
fn update_backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let ceiling = 10u64 << attempt.min(5);
    Duration::from_millis(rand::thread_rng().gen_range(0..=ceiling))
}

/// Sign-in failures per username: 5 free, then 1 s, 2 s, 4 s ... 15 min.
pub const USERNAME_RULE: ThrottleRule =
    ThrottleRule { free: 5, max_wait: Duration::from_secs(15 * 60), window: Duration::from_secs(60 * 60) };
/// Per client address: looser, as many users may share one.
pub const ADDRESS_RULE: ThrottleRule =
    ThrottleRule { free: 50, max_wait: Duration::from_secs(15 * 60), window: Duration::from_secs(60 * 60) };
/// Username reminders and reset requests per client address and
/// application (a clinic behind one address has many users), and reset
/// requests per username.
pub const REMINDER_RULE: ThrottleRule =
    ThrottleRule { free: 20, max_wait: Duration::from_secs(15 * 60), window: Duration::from_secs(15 * 60) };

/// The window of the sign-up quota (`--signup-per-address` per hour).
const SIGN_UP_WINDOW: Duration = Duration::from_secs(60 * 60);

#[derive(Clone)]
pub struct UserSvc {
    pub(super) core: Arc<Core>,
}

impl UserSvc {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

impl UserSvc {
    /// A user acts on their own record; a supervisor on any of the
    /// application. To a plain user every other id is simply not there
    /// (404), whether or not it is another user's: a 403 for the ids that
    /// exist would tell them which do. The trail still tells the two apart.
    pub(super) async fn authorise(&self, app_id: Uuid, me: &SessionUser, target: Uuid) -> ServiceResult<()> {
        if me.user_id == target || me.supervisor {
            return Ok(());
        }
        if me.mfa_pending {
            return Err(ServiceError::MfaRequired);
        }
        let exists = self.core.store.get_user(app_id, target).await?.is_some();
        Err(ServiceError::Hidden { exists })
    }

    /// The throttle key of a client address within an application: an
    /// IPv6 client counts by its /64 (see [`crate::edge::throttle_scope`]).
    pub(super) fn address_key(&self, kind: &str, app_id: Uuid, ip: Option<IpAddr>) -> Option<Vec<u8>> {
        ip.map(|ip| {
            let scope = crate::edge::throttle_scope(ip);
            [app_id.as_bytes().as_slice(), &self.core.keyring.global_index(kind, &scope)].concat()
        })
    }

    /// Counts an anonymous sign-up against its address's hourly quota in
    /// the application (in the database, so replicas share the count).
    /// Bots that sign up by the thousand are why: each sign-up costs a hash
    /// and leaves a user behind.
    async fn count_sign_up(&self, ctx: &Ctx, app_id: Uuid) -> ServiceResult<()> {
        let per_window = self.core.signup_per_hour;
        if per_window == 0 {
            return Ok(());
        }
        let Some(key) = self.address_key("signup-addr", app_id, self.core.client_ip(ctx)) else { return Ok(()) };
        let quota = Quota { per_window, window: SIGN_UP_WINDOW };
        if let Some(wait) = self.core.store.quota_attempt(&key, quota).await? {
            metrics::counter!("usersvc_throttled_total", "kind" => "sign_up").increment(1);
            tracing::info!(%app_id, "sign-up refused: the address's hourly quota is used up");
            return Err(ServiceError::Throttled(wait));
        }
        Ok(())
    }

    /// Records a refused read or change, so attempts show in the trail too.
    pub(super) async fn refused(&self, ctx: &Ctx, action: &str, caller: &Caller, subject: Uuid, e: &ServiceError) {
        let outcome = match e {
            ServiceError::Forbidden(_)
            | ServiceError::Hidden { exists: true }
            | ServiceError::ReauthenticationRequired
            | ServiceError::MfaRequired
            | ServiceError::WrongCurrentPassword => "denied",
            ServiceError::NotFound(_) | ServiceError::Hidden { exists: false } => "not_found",
            _ => return,
        };
        let mut r = self.core.record(ctx, action, Some(caller), caller.app_id).await;
        r.subject_id = Some(subject);
        r.outcome = outcome.into();
        let _ = self.core.trail.record(r).await;
    }

    /// Lets the caller change what would take their account over (their own
    /// password, username or primary email): a session that signed in
    /// within the privileged age may; an older one must send the current
    /// password. That is checked as a sign-in's is, counted against the same
    /// throttles (the username's and the address's), so that a stolen token
    /// is no way round them to guess it.
    pub(super) async fn reauthenticate(
        &self,
        ctx: &Ctx,
        app_id: Uuid,
        me: &SessionUser,
        current_password: &SecretString,
    ) -> ServiceResult<()> {
        let core = &self.core;
        if me.privileged(core.auth.policy().privileged_max_age) {
            return Ok(());
        }
        if current_password.expose_secret().is_empty() {
            return Err(ServiceError::ReauthenticationRequired);
        }
        // A place at the hasher first, as sign-in takes it: a check refused
        // for overload is not counted as a guess.
        let place = core.hasher.reserve()?;
        let secrets = core.store.user_secrets(app_id, &[me.user_id]).await?;
        let secrets = secrets.into_iter().next().ok_or(ServiceError::NotFound("user"))?;
        let username = core
            .keyring
            .open(app_id, me.user_id, profile::USERNAME_FIELD, &secrets.username_ct)
            .await
            .map_err(ServiceError::Crypto)?;
        let username =
            String::from_utf8(username).map_err(|_| ServiceError::Internal("a stored username is not UTF-8".into()))?;
        let user_key =
            [b"signin-user:".as_slice(), app_id.as_bytes(), &core.username_index(app_id, &username).await?].concat();
        let addr_key = self.address_key("signin-addr", app_id, core.client_ip(ctx));
        let mut keys = vec![(user_key.clone(), USERNAME_RULE)];
        keys.extend(addr_key.clone().map(|k| (k, ADDRESS_RULE)));
        if let Some(wait) = core.store.throttle_attempt(&keys).await? {
            metrics::counter!("usersvc_throttled_total", "kind" => "reauthentication").increment(1);
            return Err(ServiceError::Throttled(wait));
        }
        if !place.verify(current_password.clone(), Some(secrets.password_hash)).await? {
            metrics::counter!("usersvc_signin_failures_total").increment(1);
            core.store.throttle_failed(&keys).await?;
            tracing::info!(%app_id, users_id = %me.user_id, "current password refused");
            return Err(ServiceError::WrongCurrentPassword);
        }
        core.store.throttle_relieved(&user_key, addr_key.as_deref()).await?;
        Ok(())
    }

    async fn create(&self, ctx: &Ctx, req: pb::CreateUserRequest) -> ServiceResult<pb::User> {
        let core = &self.core;
        let caller = core.auth.maybe_signed_in(&ctx.md).await?;
        if caller.user.is_some_and(|u| u.mfa_pending) {
            return Err(ServiceError::MfaRequired);
        }
        let mut user = req.user.unwrap_or_default();
        validate::username(&user.username)?;
        validate::password(&user.password, core.min_password_chars)?;
        validate::profile(&user)?;
        // The hash's place first: a sign-up shed for want of one has not
        // used up any of the address's quota.
        let place = core.hasher.reserve()?;
        // A supervisor or a service token creates users on purpose, as many
        // as it needs; only sign-up as nobody (or as a plain user) is counted.
        if !caller.is_supervisor() {
            self.count_sign_up(ctx, caller.app_id).await?;
        }
        let active = if caller.is_supervisor() { user.active.unwrap_or(true) } else { true };
        let password = SecretString::from(std::mem::take(&mut user.password));
        let password_hash = place.hash(password).await?;
        // Self sign-up signs the new user in; a supervisor creating a user
        // stays themselves.
        let session = (!caller.is_supervisor()).then(|| core.auth.new_session());
        let id = Uuid::now_v7();
        let email_bidx = match profile::email_key(&user) {
            Some(e) => Some(core.email_index(caller.app_id, &e).await?),
            None => None,
        };
        let username_bidx = core.username_index(caller.app_id, &user.username).await?;
        let mrn_bidx = core.mrn_indexes(caller.app_id, &user).await?;
        let profile_pt = profile::to_profile(&user)?;
        let mut record = core.record(ctx, "user.create", Some(&caller), caller.app_id).await;
        record.subject_id = Some(id);
        // The profile's names may already hold `username` (the message
        // carries it): each name once.
        record.fields = profile::field_names(&user);
        for name in ["username", "password"] {
            if !record.fields.iter().any(|f| f == name) {
                record.fields.push(name.to_owned());
            }
        }
        let mut records = vec![record];
        if session.is_some() {
            let mut r = core.record(ctx, "session.sign_in", Some(&caller), caller.app_id).await;
            r.subject_id = Some(id);
            r.actor_id = Some(id);
            r.actor = "user".into();
            records.push(r);
        }
        let (token, session) = session.unzip();
        // A new address is verified by a mailed link, where the application
        // mails one.
        let mode = if email_bidx.is_some() { core.verify_mode(caller.app_id).await? } else { VerifyMode::Off };
        let to = user.email.as_ref().map(|e| e.primary.clone()).unwrap_or_default();
        // A write under a key rotated away since is refused whole, and the
        // user is sealed again.
        let mut attempt = 0;
        let rec = loop {
            let sealer = core.keyring.guarded_sealer(caller.app_id, attempt).await.map_err(ServiceError::Crypto)?;
            let verification = core
                .verification_on_change(
                    ctx,
                    &caller,
                    mode,
                    &sealer,
                    id,
                    email_bidx.as_deref().map(|b| (to.as_str(), b)),
                )
                .await?;
            let (mail, sent): (Vec<_>, Vec<_>) = verification.into_iter().unzip();
            let new = NewUser {
                id,
                app_id: caller.app_id,
                key_id: sealer.key_id,
                username_ct: sealer.seal(id, profile::USERNAME_FIELD, user.username.as_bytes()),
                username_bidx: username_bidx.clone(),
                password_hash: password_hash.clone(),
                email_bidx: email_bidx.clone(),
                profile_ct: sealer.seal(id, profile::PROFILE_FIELD, &profile_pt),
                active,
                mrn_bidx: mrn_bidx.clone(),
            };
            let records = [records.clone(), sent].concat();
            if let Some(rec) = core.store.create_user_mailing(new, session.clone(), &mail, &records).await? {
                break rec;
            }
            attempt += 1;
            if attempt == KEY_ATTEMPTS {
                return Err(ServiceError::Contention);
            }
        };
        tracing::info!(app_id = %rec.app_id, users_id = %rec.id, "user created");
        let mut out = core.open_user(&rec).await?;
        if let Some(token) = token {
            out.session_token = token.expose_secret().to_owned();
        }
        Ok(out)
    }

    async fn get(&self, ctx: &Ctx, req: pb::GetUserRequest) -> ServiceResult<pb::User> {
        let (caller, me) = self.core.auth.signed_in(&ctx.md).await?;
        let id = validate::id(&req.users_id, "users_id")?;
        let found = async {
            self.authorise(caller.app_id, &me, id).await?;
            self.core.store.get_user(caller.app_id, id).await?.ok_or(ServiceError::NotFound("user"))
        }
        .await;
        let rec = match found {
            Ok(rec) => rec,
            Err(e) => {
                self.refused(ctx, "user.read", &caller, id, &e).await;
                return Err(e);
            }
        };
        let user = self.core.open_user(&rec).await?;
        let mut r = self.core.record(ctx, "user.read", Some(&caller), caller.app_id).await;
        r.subject_id = Some(id);
        r.fields = profile::field_names(&user);
        self.core.trail.record(r).await?;
        Ok(user)
    }

    async fn update(&self, ctx: &Ctx, req: pb::UpdateUserRequest) -> ServiceResult<pb::User> {
        let core = &self.core;
        let (caller, me) = core.auth.signed_in(&ctx.md).await?;
        let patch = req.user.unwrap_or_default();
        let raw_id = if req.users_id.is_empty() { &patch.users_id } else { &req.users_id };
        let id = validate::id(raw_id, "users_id")?;
        if let Err(e) = self.authorise(caller.app_id, &me, id).await {
            self.refused(ctx, "user.update", &caller, id, &e).await;
            return Err(e);
        }

        let user_desc = schema::message("User").ok_or(ServiceError::NotFound("schema"))?;
        let patch_json = serde_json::to_value(&patch).map_err(|e| ServiceError::invalid("user", e.to_string()))?;
        let paths: Vec<String> = match &req.update_mask {
            Some(mask) => mask.paths.clone(),
            // No mask: every field the request fills (AIP-134).
            None => {
                let mut p: Vec<String> = patch_json
                    .as_object()
                    .map(|o| o.keys().map(|k| schema::camel_to_snake(k)).collect())
                    .unwrap_or_default();
                if !patch.username.is_empty() {
                    p.push("username".into());
                }
                if !patch.password.is_empty() {
                    p.push("password".into());
                }
                p
            }
        };

        let mut profile_paths = Vec::new();
        let mut changed = Vec::new();
        let (mut set_username, mut set_password, mut set_active) = (false, false, false);
        for path in &paths {
            let resolved =
                field_mask::resolve(&user_desc, path).map_err(|m| ServiceError::invalid("update_mask", m))?;
            match resolved.top.as_str() {
                t if schema::USER_OUTPUT_ONLY.contains(&t) => continue,
                "username" => set_username = true,
                "password" => set_password = true,
                // Only a supervisor may (de)activate; from anyone else it is
                // treated as server-managed, as old clients send it back.
                "active" if !caller.is_supervisor() => continue,
                "active" => set_active = true,
                _ => profile_paths.push(resolved.clone()),
            }
            if !changed.contains(&resolved.top) {
                changed.push(resolved.top);
            }
        }

        if set_username {
            validate::username(&patch.username)?;
        }
        // A supervisor changing another user (or a service) needs no proof;
        // a user changing what takes their own account over does, before
        // any work is done for the change. An address change is known only
        // once the stored one is read (below): clients send back the
        // address they hold, unchanged.
        let own = me.user_id == id;
        let current_password = SecretString::from(req.current_password);
        let mut proved = false;
        if own && (set_username || set_password) {
            if let Err(e) = self.reauthenticate(ctx, caller.app_id, &me, &current_password).await {
                self.refused(ctx, "user.update", &caller, id, &e).await;
                return Err(e);
            }
            proved = true;
        }
        let username_bidx =
            if set_username { Some(core.username_index(caller.app_id, &patch.username).await?) } else { None };
        let password_hash = if set_password {
            validate::password(&patch.password, core.min_password_chars)?;
            Some(core.hasher.hash(SecretString::from(patch.password.clone())).await?)
        } else {
            None
        };

        for attempt in 0..UPDATE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(update_backoff(attempt)).await;
            }
            let rec = core.store.get_user(caller.app_id, id).await?.ok_or(ServiceError::NotFound("user"))?;
            let plain = core
                .keyring
                .open(caller.app_id, id, profile::PROFILE_FIELD, &rec.profile_ct)
                .await
                .map_err(ServiceError::Crypto)?;
            let merged = profile::merge(&plain, &patch_json, &profile_paths)?;
            validate::profile(&merged)?;
            let before = profile::to_user(&rec, &plain)?;
            let email_changed = profile::email_key(&before) != profile::email_key(&merged);
            if own && email_changed && !proved {
                if let Err(e) = self.reauthenticate(ctx, caller.app_id, &me, &current_password).await {
                    self.refused(ctx, "user.update", &caller, id, &e).await;
                    return Err(e);
                }
                proved = true;
            }
            // A retry may be for a key rotated away.
            let sealer = core.keyring.guarded_sealer(caller.app_id, attempt).await.map_err(ServiceError::Crypto)?;
            let email_bidx = match profile::email_key(&merged) {
                Some(e) => Some(core.email_index(caller.app_id, &e).await?),
                None => None,
            };
            let active = if set_active { patch.active.unwrap_or(true) } else { rec.active };
            // A new primary address is verified by a mailed link, where the
            // application mails one.
            let mode = if email_changed { core.verify_mode(caller.app_id).await? } else { VerifyMode::Off };
            let to = merged.email.as_ref().map(|e| e.primary.as_str()).unwrap_or_default();
            let verification = core
                .verification_on_change(ctx, &caller, mode, &sealer, id, email_bidx.as_deref().map(|b| (to, b)))
                .await?;
            let (verify_mail, sent): (Vec<_>, Vec<_>) = verification.into_iter().unzip();
            // The whole set, whether or not `mrns` changed (see UserChange).
            let mrn_bidx = core.mrn_indexes(caller.app_id, &merged).await?;
            let change = UserChange {
                expected_version: rec.version,
                key_id: sealer.key_id,
                username: username_bidx
                    .clone()
                    .map(|bidx| (sealer.seal(id, profile::USERNAME_FIELD, patch.username.as_bytes()), bidx)),
                password_hash: password_hash.clone(),
                email_bidx,
                profile_ct: sealer.seal(id, profile::PROFILE_FIELD, &profile::to_profile(&merged)?),
                active,
                mrn_bidx,
                // A new password or a deactivation ends the user's other
                // sessions (all of them when deactivated).
                end_sessions: (set_password || !active)
                    .then(|| EndSessions { keep: (me.user_id == id && active).then_some(me.session_id) }),
                // A deactivated user's mailed links must not bring them back.
                void_resets: !active,
                // The owner hears of it at the address they had, whoever made
                // the change: if it was not them, they can act.
                mail: [
                    notices(&sealer, before.email.as_ref().map(|e| e.primary.trim()), set_password, email_changed),
                    verify_mail,
                ]
                .concat(),
            };
            let mut record = core.record(ctx, "user.update", Some(&caller), caller.app_id).await;
            record.subject_id = Some(id);
            record.fields = changed.clone();
            // The reply carries the whole profile, not only what changed.
            let mut read = core.record(ctx, "user.read", Some(&caller), caller.app_id).await;
            read.subject_id = Some(id);
            read.fields = profile::field_names(&merged);
            let mut records = vec![record, read];
            if set_password {
                let mut r = core.record(ctx, "user.password_change", Some(&caller), caller.app_id).await;
                r.subject_id = Some(id);
                r.fields = vec!["password".into()];
                records.push(r);
            }
            records.extend(sent);
            if let Some(updated) = core.store.update_user(caller.app_id, id, change, &records).await? {
                tracing::info!(app_id = %caller.app_id, users_id = %id, paths = paths.len(), "user updated");
                return core.open_user(&updated).await;
            }
        }
        Err(ServiceError::Contention)
    }

    async fn delete(&self, ctx: &Ctx, req: pb::DeleteUserRequest) -> ServiceResult<()> {
        let (caller, me) = self.core.auth.signed_in(&ctx.md).await?;
        let id = validate::id(&req.users_id, "users_id")?;
        if let Err(e) = self.authorise(caller.app_id, &me, id).await {
            self.refused(ctx, "user.delete", &caller, id, &e).await;
            return Err(e);
        }
        let mut r = self.core.record(ctx, "user.delete", Some(&caller), caller.app_id).await;
        r.subject_id = Some(id);
        if !self.core.store.delete_user(caller.app_id, id, &r).await? {
            let e = ServiceError::NotFound("user");
            self.refused(ctx, "user.delete", &caller, id, &e).await;
            return Err(e);
        }
        tracing::info!(app_id = %caller.app_id, users_id = %id, "user deleted");
        Ok(())
    }

    async fn forgot_username(&self, ctx: &Ctx, req: pb::ForgotUsernameRequest) -> ServiceResult<()> {
        let core = &self.core;
        let app_id = core.auth.app(&ctx.md).await?;
        if req.email.trim().is_empty() {
            return Err(ServiceError::invalid("email", "is required"));
        }
        if !validate::looks_like_email(req.email.trim()) {
            return Err(ServiceError::invalid("email", "is not an email address"));
        }
        let addr_key = self.address_key("reminder-addr", app_id, self.core.client_ip(ctx));
        if let Some(key) = addr_key
            && let Some(wait) = core.store.throttle_attempt(&[(key, REMINDER_RULE)]).await?
        {
            return Err(ServiceError::Throttled(wait));
        }
        let bidx = core.email_index(app_id, &req.email).await?;
        let request = NewMailRequest {
            id: Uuid::now_v7(),
            app_id,
            kind: mail::USERNAME_REMINDER.into(),
            lookup_bidx: bidx,
            reset: None,
            request_id: None,
        };
        self.queue_mail(ctx, request).await
    }

    async fn list_groups(
        &self,
        ctx: &Ctx,
        req: pb::ListUserGroupsRequest,
    ) -> ServiceResult<pb::ListUserGroupsResponse> {
        let (caller, me) = self.core.auth.signed_in(&ctx.md).await?;
        let id = validate::id(&req.users_id, "users_id")?;
        self.authorise(caller.app_id, &me, id).await?;
        if me.user_id != id && self.core.store.get_user(caller.app_id, id).await?.is_none() {
            return Err(ServiceError::NotFound("user"));
        }
        let size = paging::page_size(req.page_size)?;
        let tokens =
            Tokens { keyring: &self.core.keyring, kind: "user-group-page", scope: format!("{}:{id}", caller.app_id) };
        let after = tokens.after_id(&req.page_token)?;
        let mut groups = self.core.store.list_user_groups(caller.app_id, id, after, paging::fetch(size)).await?;
        let more = paging::cut(&mut groups, size);
        // Every page discloses memberships: recorded, as the whole list was.
        let mut r = self.core.record(ctx, "user.groups_read", Some(&caller), caller.app_id).await;
        r.subject_id = Some(id);
        r.fields = vec!["groups".into()];
        self.core.trail.record(r).await?;
        let next_page_token = tokens.next_id(groups.last().map(|g| g.id), more);
        Ok(pb::ListUserGroupsResponse {
            groups: groups.into_iter().map(|g| pb::GroupRef { groups_id: g.id.to_string(), name: g.name }).collect(),
            next_page_token,
        })
    }

    async fn sign_in(&self, ctx: &Ctx, req: pb::SignInRequest) -> ServiceResult<pb::User> {
        let core = &self.core;
        let app_id = core.auth.app(&ctx.md).await?;
        if req.username.is_empty() {
            return Err(ServiceError::invalid("username", "is required"));
        }
        if req.password.is_empty() {
            return Err(ServiceError::invalid("password", "is required"));
        }
        let bidx = core.username_index(app_id, &req.username).await?;
        // Throttled by username (whether or not it exists) and by address.
        // Each attempt is counted before the password is looked at, in one
        // transaction, so parallel guesses cannot slip past the count; a
        // waiting caller is refused without a check.
        let user_key = [b"signin-user:".as_slice(), app_id.as_bytes(), &bidx].concat();
        let addr_key = self.address_key("signin-addr", app_id, self.core.client_ip(ctx));
        let mut keys = vec![(user_key.clone(), USERNAME_RULE)];
        keys.extend(addr_key.clone().map(|k| (k, ADDRESS_RULE)));
        let possible = req.username.chars().count() <= validate::MAX_USERNAME_CHARS;
        // The check's place is taken before the attempt is counted: an
        // attempt shed for want of one is neither counted nor checked.
        let place = core.hasher.reserve()?;
        let creds = match core.store.sign_in_attempt(&keys, app_id, possible.then_some(bidx.as_slice())).await? {
            SignInAttempt::Go(creds) => creds,
            SignInAttempt::Wait(wait) => {
                let mut r = core.record(ctx, "session.sign_in", None, app_id).await;
                r.outcome = "throttled".into();
                core.trail.record(r).await?;
                metrics::counter!("usersvc_throttled_total", "kind" => "sign_in").increment(1);
                return Err(ServiceError::Throttled(wait));
            }
        };
        // Unknown, wrong and inactive all verify once and answer alike.
        let (user_id, active, phc) = match creds {
            Some(c) => (Some(c.user_id), c.active, Some(c.password_hash)),
            None => (None, false, None),
        };
        let password = SecretString::from(req.password);
        let ok = place.verify(password.clone(), phc.clone()).await?;
        let user_id = match user_id {
            Some(id) if ok && active => id,
            _ => {
                let mut r = core.record(ctx, "session.sign_in", None, app_id).await;
                r.subject_id = user_id;
                r.outcome = "failed".into();
                core.store.append_audit(&[r]).await?;
                metrics::counter!("usersvc_signin_failures_total").increment(1);
                core.store.throttle_failed(&keys).await?;
                tracing::info!(%app_id, "sign-in refused");
                return Err(ServiceError::BadCredentials);
            }
        };
        let rec = core.store.get_user(app_id, user_id).await?.ok_or(ServiceError::BadCredentials)?;
        // Only now that the password checked out (no oracle for a wrong one),
        // and before a second factor is asked for.
        let gates = core.store.sign_in_gates(app_id, user_id).await?;
        self.check_verified_sign_in(ctx, &rec, gates.verify_mode).await?;
        // An imported hash (bcrypt, PBKDF2...) or one made at older
        // parameters is replaced now, while the password is at hand.
        let old = phc.filter(|h| crate::auth::schemes::outdated(h));
        let new = match &old {
            // Not now when the hasher is overloaded: the next sign-in will.
            Some(_) => match core.hasher.hash(password).await {
                Ok(h) => Some(h),
                Err(HashError::Overloaded { .. }) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let rehash = old.as_deref().zip(new.as_deref()).map(|(old, new)| Rehash { old, new });
        // A user with a second factor gets an mfaToken and nothing else.
        if gates.second_factor {
            let relief = Relief { clear: Some(&user_key), forgive: addr_key.as_deref(), rehash };
            return self.mfa_challenge(ctx, app_id, user_id, relief).await;
        }
        // The reply discloses the profile: it is opened first, so that the
        // session's record names the fields it carries.
        let mut out = core.open_user(&rec).await?;
        let (token, session) = core.auth.new_session();
        let mut r = core.record(ctx, "session.sign_in", None, app_id).await;
        r.actor = "user".into();
        r.actor_id = Some(user_id);
        r.subject_id = Some(user_id);
        r.fields = profile::field_names(&out);
        let relief = Relief { clear: Some(&user_key), forgive: addr_key.as_deref(), rehash };
        core.store.create_session(app_id, user_id, session, relief, &r).await?;
        tracing::info!(%app_id, users_id = %user_id, "signed in");
        out.session_token = token.expose_secret().to_owned();
        Ok(out)
    }

    async fn request_reset(&self, ctx: &Ctx, req: pb::RequestPasswordResetRequest) -> ServiceResult<()> {
        let core = &self.core;
        let app_id = core.auth.app(&ctx.md).await?;
        if !req.app_id.is_empty() && Uuid::try_parse(&req.app_id).ok() != Some(app_id) {
            return Err(ServiceError::NotFound("application"));
        }
        if req.username.trim().is_empty() {
            return Err(ServiceError::invalid("username", "is required"));
        }
        let bidx = core.username_index(app_id, &req.username).await?;
        // Per address and per username, known or not: the same answer and
        // the same work either way.
        let user_key = [b"reset-user:".as_slice(), app_id.as_bytes(), &bidx].concat();
        let mut keys = vec![(user_key, REMINDER_RULE)];
        keys.extend(self.address_key("reset-addr", app_id, self.core.client_ip(ctx)).map(|k| (k, REMINDER_RULE)));
        if let Some(wait) = core.store.throttle_attempt(&keys).await? {
            return Err(ServiceError::Throttled(wait));
        }
        // Minted and sealed for every request, matching or not, so that the
        // reply waits for the same work; the sender keeps it for a match only.
        let token = crate::auth::secret::generate();
        let id = Uuid::now_v7();
        let sealer = core.keyring.sealer(app_id).await.map_err(ServiceError::Crypto)?;
        let request = NewMailRequest {
            id,
            app_id,
            kind: mail::PASSWORD_RESET.into(),
            lookup_bidx: bidx,
            reset: Some(NewReset {
                token_hash: crate::auth::secret::digest(token.expose_secret()),
                payload_ct: crate::crypto::fields::seal_reset_token(&sealer, id, token.expose_secret()),
                lifetime: core.reset_lifetime,
            }),
            request_id: None,
        };
        self.queue_mail(ctx, request).await
    }

    /// Stores a reminder or reset request for the mail sender to resolve,
    /// with its trail record (no subject: who it matches is not known yet),
    /// and nothing else: the same statements, the same time, whether or not
    /// the address or name is anyone's. The sender records whom it went to.
    async fn queue_mail(&self, ctx: &Ctx, mut request: NewMailRequest) -> ServiceResult<()> {
        let record = self.core.record(ctx, mail::request_action(&request.kind), None, request.app_id).await;
        // The resolution's records carry the request's id as this one does.
        request.request_id = record.request_id.clone();
        self.core.store.queue_mail_request(&request, &record).await?;
        Ok(())
    }

    async fn reset_password(&self, ctx: &Ctx, req: pb::ResetPasswordRequest) -> ServiceResult<()> {
        let core = &self.core;
        let token = req.token.trim();
        let invalid =
            || ServiceError::invalid("token", "this reset link is not valid: it was used, replaced or never issued");
        if token.is_empty() || token.len() > 128 {
            return Err(invalid());
        }
        let hash = crate::auth::secret::digest(token);
        let check = core.store.reset_password(&hash, None).await?;
        let app_id = match check {
            ResetCheck::Live { app_id, .. } => app_id,
            ResetCheck::Expired => {
                return Err(ServiceError::invalid("token", "this reset link has expired; ask for a new one"));
            }
            ResetCheck::Unknown => return Err(invalid()),
        };
        if req.check_only {
            return Ok(());
        }
        validate::password(&req.new_password, core.min_password_chars).map_err(|e| match e {
            ServiceError::Invalid { message, .. } => ServiceError::invalid("new_password", message),
            e => e,
        })?;
        let password_hash = core.hasher.hash(SecretString::from(req.new_password)).await?;
        let mut record = core.record(ctx, "user.password_reset", None, app_id).await;
        record.fields = vec!["password".into()];
        match core.store.reset_password(&hash, Some((&password_hash, &record))).await? {
            ResetCheck::Live { user_id, .. } => {
                tracing::info!(%app_id, users_id = %user_id, "password reset");
                Ok(())
            }
            ResetCheck::Expired => {
                Err(ServiceError::invalid("token", "this reset link has expired; ask for a new one"))
            }
            ResetCheck::Unknown => Err(invalid()),
        }
    }
}

/// The notices of a change, to the address the user had (none without
/// one), each sealed to its outbox row.
fn notices(sealer: &Sealer, to: Option<&str>, password: bool, email: bool) -> Vec<QueuedMail> {
    let Some(to) = to.filter(|to| !to.is_empty()) else {
        return Vec::new();
    };
    [(password, PASSWORD_CHANGED), (email, EMAIL_CHANGED)]
        .into_iter()
        .filter(|(changed, _)| *changed)
        .map(|(_, kind)| {
            let id = Uuid::now_v7();
            QueuedMail { id, kind, payload_ct: sealer.seal(id, NOTICE_TO_FIELD, to.as_bytes()) }
        })
        .collect()
}

#[tonic::async_trait]
impl UserService for UserSvc {
    async fn create_user(&self, request: Request<pb::CreateUserRequest>) -> Result<Response<pb::User>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(self.create(&ctx, req).await?))
    }

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(self.get(&ctx, req).await?))
    }

    async fn update_user(&self, request: Request<pb::UpdateUserRequest>) -> Result<Response<pb::User>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(self.update(&ctx, req).await?))
    }

    async fn delete_user(&self, request: Request<pb::DeleteUserRequest>) -> Result<Response<Empty>, Status> {
        let (ctx, req) = Ctx::split(request);
        self.delete(&ctx, req).await?;
        Ok(Response::new(Empty {}))
    }

    async fn forgot_username(&self, request: Request<pb::ForgotUsernameRequest>) -> Result<Response<Empty>, Status> {
        let (ctx, req) = Ctx::split(request);
        self.forgot_username(&ctx, req).await?;
        Ok(Response::new(Empty {}))
    }

    async fn list_user_groups(
        &self,
        request: Request<pb::ListUserGroupsRequest>,
    ) -> Result<Response<pb::ListUserGroupsResponse>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(self.list_groups(&ctx, req).await?))
    }

    async fn sign_in(&self, request: Request<pb::SignInRequest>) -> Result<Response<pb::User>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(self.sign_in(&ctx, req).await?))
    }

    async fn sign_out(&self, request: Request<pb::SignOutRequest>) -> Result<Response<Empty>, Status> {
        let (ctx, _) = Ctx::split(request);
        self.sign_out(&ctx).await?;
        Ok(Response::new(Empty {}))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<Empty>, Status> {
        let (ctx, req) = Ctx::split(request);
        self.request_reset(&ctx, req).await?;
        Ok(Response::new(Empty {}))
    }

    async fn reset_password(&self, request: Request<pb::ResetPasswordRequest>) -> Result<Response<Empty>, Status> {
        let (ctx, req) = Ctx::split(request);
        UserSvc::reset_password(self, &ctx, req).await?;
        Ok(Response::new(Empty {}))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(self.list_sessions(&ctx, req).await?))
    }

    async fn revoke_session(&self, request: Request<pb::RevokeSessionRequest>) -> Result<Response<Empty>, Status> {
        let (ctx, req) = Ctx::split(request);
        self.revoke_session(&ctx, req).await?;
        Ok(Response::new(Empty {}))
    }

    async fn list_disclosures(
        &self,
        request: Request<pb::ListDisclosuresRequest>,
    ) -> Result<Response<pb::ListDisclosuresResponse>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(UserSvc::list_disclosures(self, &ctx, req).await?))
    }

    async fn export_user(
        &self,
        request: Request<pb::ExportUserRequest>,
    ) -> Result<Response<pbjson_types::Struct>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(UserSvc::export(self, &ctx, req).await?))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(UserSvc::list_users(self, &ctx, req).await?))
    }

    async fn verify_session(
        &self,
        request: Request<pb::VerifySessionRequest>,
    ) -> Result<Response<pb::VerifySessionResponse>, Status> {
        let (ctx, _) = Ctx::split(request);
        Ok(Response::new(UserSvc::verify_session(self, &ctx).await?))
    }

    async fn start_passkey_registration(
        &self,
        request: Request<pb::StartPasskeyRegistrationRequest>,
    ) -> Result<Response<pb::PasskeyCeremony>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(UserSvc::start_passkey_registration(self, &ctx, req).await?))
    }

    async fn finish_passkey_registration(
        &self,
        request: Request<pb::FinishPasskeyRegistrationRequest>,
    ) -> Result<Response<pb::Passkey>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(UserSvc::finish_passkey_registration(self, &ctx, req).await?))
    }

    async fn list_passkeys(
        &self,
        request: Request<pb::ListPasskeysRequest>,
    ) -> Result<Response<pb::ListPasskeysResponse>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(UserSvc::list_passkeys(self, &ctx, req).await?))
    }

    async fn remove_passkey(&self, request: Request<pb::RemovePasskeyRequest>) -> Result<Response<Empty>, Status> {
        let (ctx, req) = Ctx::split(request);
        UserSvc::remove_passkey(self, &ctx, req).await?;
        Ok(Response::new(Empty {}))
    }

    async fn start_passkey_sign_in(
        &self,
        request: Request<pb::StartPasskeySignInRequest>,
    ) -> Result<Response<pb::PasskeyCeremony>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(UserSvc::start_passkey_sign_in(self, &ctx, req).await?))
    }

    async fn finish_passkey_sign_in(
        &self,
        request: Request<pb::FinishPasskeySignInRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(UserSvc::finish_passkey_sign_in(self, &ctx, req).await?))
    }

    async fn send_verification(
        &self,
        request: Request<pb::SendVerificationRequest>,
    ) -> Result<Response<Empty>, Status> {
        let (ctx, req) = Ctx::split(request);
        UserSvc::send_verification(self, &ctx, req).await?;
        Ok(Response::new(Empty {}))
    }

    async fn verify_email(&self, request: Request<pb::VerifyEmailRequest>) -> Result<Response<Empty>, Status> {
        let (ctx, req) = Ctx::split(request);
        UserSvc::verify_email(self, &ctx, req).await?;
        Ok(Response::new(Empty {}))
    }

    async fn enrol_totp(
        &self,
        request: Request<pb::EnrolTotpRequest>,
    ) -> Result<Response<pb::EnrolTotpResponse>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(UserSvc::enrol_totp(self, &ctx, req).await?))
    }

    async fn confirm_totp(
        &self,
        request: Request<pb::ConfirmTotpRequest>,
    ) -> Result<Response<pb::ConfirmTotpResponse>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(UserSvc::confirm_totp(self, &ctx, req).await?))
    }

    async fn remove_totp(&self, request: Request<pb::RemoveTotpRequest>) -> Result<Response<Empty>, Status> {
        let (ctx, req) = Ctx::split(request);
        UserSvc::remove_totp(self, &ctx, req).await?;
        Ok(Response::new(Empty {}))
    }

    async fn sign_in_mfa(&self, request: Request<pb::SignInMfaRequest>) -> Result<Response<pb::User>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(UserSvc::sign_in_mfa(self, &ctx, req).await?))
    }

    async fn start_mfa_passkey(
        &self,
        request: Request<pb::StartMfaPasskeyRequest>,
    ) -> Result<Response<pb::PasskeyCeremony>, Status> {
        let (ctx, req) = Ctx::split(request);
        Ok(Response::new(UserSvc::start_mfa_passkey(self, &ctx, req).await?))
    }
}
