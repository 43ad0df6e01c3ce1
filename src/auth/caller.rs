//! Resolves a call's metadata into the calling application and, when a
//! bearer token is sent, the signed-in user. Every RPC starts here, so the
//! gRPC port and the in-process gateway share one path.

use std::{sync::Arc, time::Duration};

use secrecy::SecretString;
use tonic::metadata::MetadataMap;
use uuid::Uuid;

use super::secret;
use crate::store::{NewSession, SessionLookup, Store, StoreError};

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

/// The signed-in user behind a call.
#[derive(Debug, Clone, Copy)]
pub struct SessionUser {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub supervisor: bool,
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

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, policy: SessionPolicy) -> Self {
        Self { store, policy }
    }

    /// The application of the call's `x-api-key`.
    pub async fn app(&self, md: &MetadataMap) -> Result<Uuid, AuthError> {
        let value = header(md, API_KEY_HEADER).ok_or(AuthError::MissingApiKey)?;
        let key = value.ok().and_then(secret::api_key_from_header).ok_or(AuthError::InvalidApiKey)?;
        let app = self.store.app_by_key_hash(&secret::digest(key)).await?;
        app.map(|a| a.id).ok_or(AuthError::InvalidApiKey)
    }

    /// A caller who must be signed in.
    pub async fn signed_in(&self, md: &MetadataMap) -> Result<(Caller, SessionUser), AuthError> {
        let app_id = self.app(md).await?;
        let value = header(md, AUTHORIZATION_HEADER).ok_or(AuthError::MissingToken)?;
        let token = value.ok().and_then(secret::bearer_token).ok_or(AuthError::InvalidToken)?;
        let user = self.session(app_id, token).await?;
        Ok((Caller { app_id, user: Some(user) }, user))
    }

    /// A caller who may be signed in. A token that does not resolve counts as
    /// none: the calls that use this are open to anyone with the key.
    pub async fn maybe_signed_in(&self, md: &MetadataMap) -> Result<Caller, AuthError> {
        let app_id = self.app(md).await?;
        let token = header(md, AUTHORIZATION_HEADER).and_then(Result::ok).and_then(secret::bearer_token);
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

    async fn session(&self, app_id: Uuid, token: &str) -> Result<SessionUser, AuthError> {
        let found = self
            .store
            .lookup_session(app_id, &secret::digest(token), self.policy.idle_timeout, self.policy.touch_after())
            .await?;
        match found {
            SessionLookup::Live(s) => {
                Ok(SessionUser { user_id: s.user_id, session_id: s.session_id, supervisor: s.supervisor })
            }
            SessionLookup::Expired => Err(AuthError::ExpiredToken),
            SessionLookup::Unknown => Err(AuthError::InvalidToken),
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
