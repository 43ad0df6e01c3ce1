//! Resolves a call's metadata into the calling application and, when a
//! bearer token is sent, the signed-in user or the internal service. Every
//! RPC starts here, so the gRPC port and the in-process gateway share one
//! path.
//!
//! A bearer token is a user's session token or an application's service
//! token (`usersvc token create`): both are looked up by their SHA-256 within
//! the application of the call's API key, on every call (no cache), so an
//! ended session or a revoked token stops working at once on every replica.

use std::{sync::Arc, time::Duration};

use secrecy::SecretString;
use tonic::metadata::MetadataMap;
use uuid::Uuid;

use super::secret;
use crate::store::{MfaPolicy, NewSession, SessionLookup, Store, StoreError};

pub const API_KEY_HEADER: &str = "x-api-key";
pub const AUTHORIZATION_HEADER: &str = "authorization";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the x-api-key header is missing")]
    MissingApiKey,
    #[error("the API key is not valid")]
    InvalidApiKey,
    #[error("a session token is required (authorization: Bearer ...)")]
    MissingToken,
    #[error("the session token is not valid")]
    InvalidToken,
    #[error("the session has expired; sign in again")]
    ExpiredToken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The roles a service token may act with: "supervisor" only, for now.
pub const SERVICE_ROLES: &[&str] = &["supervisor"];

/// How often a service token's last use is written at most.
const SERVICE_TOUCH_AFTER: Duration = Duration::from_secs(60);

/// What kind of credential a call's bearer token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// A user's session.
    User,
    /// An internal service's token: no user stands behind it.
    Service,
}

/// The signed-in user behind a call, or the service acting in their stead.
/// For a service, `user_id` and `session_id` are both the token's id, which
/// is no user's id: "the caller's own" record or sessions are none.
#[derive(Debug, Clone, Copy)]
pub struct SessionUser {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub supervisor: bool,
    pub kind: Principal,
    /// When a user's session signed in (proved the password); none for a
    /// service.
    pub signed_in_at: Option<chrono::DateTime<chrono::Utc>>,
    /// A supervisor whose application requires supervisors to have a
    /// second factor, and who has none: `supervisor` is false meanwhile,
    /// and what only a supervisor may do is refused as `mfa_required`.
    pub mfa_pending: bool,
}

impl SessionUser {
    /// A call made with a service token.
    pub fn is_service(&self) -> bool {
        self.kind == Principal::Service
    }

    /// Whether the session proved its password recently enough to change
    /// what takes over an account (password, username, primary email): a
    /// token stolen later is not enough.
    pub fn privileged(&self, max_age: Duration) -> bool {
        let Some(at) = self.signed_in_at else { return false };
        let age = chrono::Utc::now().signed_duration_since(at);
        // A sign-in time a little ahead (clocks of replicas) is fresh.
        age.to_std().map_or(true, |age| age <= max_age)
    }
}

/// The application a call belongs to, and its user when signed in.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub app_id: Uuid,
    pub user: Option<SessionUser>,
}

impl Caller {
    pub fn is_supervisor(&self) -> bool {
        self.user.is_some_and(|u| u.supervisor)
    }
}

/// Session lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    pub idle_timeout: Duration,
    pub max_age: Duration,
    /// How long after sign-in a session may change the owner's password,
    /// username or primary email without the current password.
    pub privileged_max_age: Duration,
}

impl SessionPolicy {
    /// A session's last use is written at most this often: often enough that
    /// idle expiry stays accurate, seldom enough that reads do not all write.
    fn touch_after(&self) -> Duration {
        (self.idle_timeout / 20).min(Duration::from_secs(30))
    }
}

#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    policy: SessionPolicy,
}

fn header<'a>(md: &'a MetadataMap, name: &str) -> Option<Result<&'a str, ()>> {
    md.get(name).map(|v| v.to_str().map_err(|_| ()))
}

/// The API key of a call's `x-api-key`, as read before any lookup.
pub fn api_key(md: &MetadataMap) -> Result<&str, AuthError> {
    let value = header(md, API_KEY_HEADER).ok_or(AuthError::MissingApiKey)?;
    value.ok().and_then(secret::api_key_from_header).ok_or(AuthError::InvalidApiKey)
}

/// The bearer token of a call's `authorization`, as read before any lookup:
/// None without the header.
pub fn bearer(md: &MetadataMap) -> Option<Result<&str, AuthError>> {
    header(md, AUTHORIZATION_HEADER).map(|v| v.ok().and_then(secret::bearer_token).ok_or(AuthError::InvalidToken))
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, policy: SessionPolicy) -> Self {
        Self { store, policy }
    }

    /// The application of the call's `x-api-key`.
    pub async fn app(&self, md: &MetadataMap) -> Result<Uuid, AuthError> {
        let key = api_key(md)?;
        let app = self.store.app_by_key_hash(&secret::digest(key)).await?;
        app.map(|a| a.id).ok_or(AuthError::InvalidApiKey)
    }

    /// A caller who must be signed in.
    pub async fn signed_in(&self, md: &MetadataMap) -> Result<(Caller, SessionUser), AuthError> {
        let app_id = self.app(md).await?;
        let token = bearer(md).ok_or(AuthError::MissingToken)??;
        let user = self.session(app_id, token).await?;
        Ok((Caller { app_id, user: Some(user) }, user))
    }

    /// A caller who may be signed in. A token that does not resolve counts as
    /// none: the calls that use this are open to anyone with the key.
    pub async fn maybe_signed_in(&self, md: &MetadataMap) -> Result<Caller, AuthError> {
        let app_id = self.app(md).await?;
        let token = bearer(md).and_then(Result::ok);
        let user = match token {
            Some(token) => match self.session(app_id, token).await {
                Ok(user) => Some(user),
                Err(AuthError::Store(e)) => return Err(e.into()),
                Err(_) => None,
            },
            None => None,
        };
        Ok(Caller { app_id, user })
    }

    /// The session of a token, else the live service token of the same
    /// application. Another application's token of either kind is as good
    /// as none.
    async fn session(&self, app_id: Uuid, token: &str) -> Result<SessionUser, AuthError> {
        let hash = secret::digest(token);
        let found =
            self.store.lookup_session(app_id, &hash, self.policy.idle_timeout, self.policy.touch_after()).await?;
        match found {
            SessionLookup::Live(s) => {
                // The one place supervisor rights are granted to a user.
                let mfa_pending = s.supervisor && self.supervisor_lacks_factor(app_id, s.user_id).await?;
                Ok(SessionUser {
                    user_id: s.user_id,
                    session_id: s.session_id,
                    supervisor: s.supervisor && !mfa_pending,
                    kind: Principal::User,
                    signed_in_at: Some(s.signed_in_at),
                    mfa_pending,
                })
            }
            SessionLookup::Expired => Err(AuthError::ExpiredToken),
            SessionLookup::Unknown => self.service(app_id, &hash).await,
        }
    }

    /// Whether the application requires its supervisors to have a second
    /// factor and this one has none: read from the database on each call
    /// (of a supervisor only), so a policy set or a factor added on one
    /// replica holds on every other at once.
    async fn supervisor_lacks_factor(&self, app_id: Uuid, user_id: Uuid) -> Result<bool, AuthError> {
        if self.store.mfa_policy(app_id).await? != MfaPolicy::RequiredForSupervisors {
            return Ok(false);
        }
        Ok(!self.store.has_second_factor(app_id, user_id).await?)
    }

    async fn service(&self, app_id: Uuid, hash: &[u8]) -> Result<SessionUser, AuthError> {
        let found = self.store.lookup_service_token(app_id, hash, SERVICE_TOUCH_AFTER).await?;
        match found {
            Some(t) if SERVICE_ROLES.contains(&t.role.as_str()) => Ok(SessionUser {
                user_id: t.token_id,
                session_id: t.token_id,
                supervisor: t.role == "supervisor",
                kind: Principal::Service,
                signed_in_at: None,
                mfa_pending: false,
            }),
            _ => Err(AuthError::InvalidToken),
        }
    }

    pub fn policy(&self) -> SessionPolicy {
        self.policy
    }

    /// A fresh token and the session row that stores its digest.
    pub fn new_session(&self) -> (SecretString, NewSession) {
        let token = secret::generate();
        let session = NewSession {
            id: Uuid::now_v7(),
            token_hash: secret::digest(secrecy::ExposeSecret::expose_secret(&token)),
            max_age: self.policy.max_age,
        };
        (token, session)
    }
}
