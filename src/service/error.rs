//! The services' error, and its one mapping to `tonic::Status`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::{caller::AuthError, password::HashError};
use crate::store::StoreError;

pub const ERROR_DOMAIN: &str = "usersvc";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("invalid username or password")]
    BadCredentials,
    #[error("{0}")]
    Forbidden(&'static str),
    /// A change that would take the account over (the caller's own
    /// password, username or primary email) from a session that signed in
    /// too long ago, without the current password.
    #[error(
        "changing your password, username or email needs a recent sign-in: sign in again, or send your current password with the change"
    )]
    ReauthenticationRequired,
    /// Sign-in of a user whose primary address is not verified, where the
    /// application requires it (`--verify-email required`); said only after
    /// the password checked out.
    #[error(
        "this account's email address is not verified yet: use the link mailed to it (a new one is mailed at each \
         refused sign-in, a few an hour at most)"
    )]
    EmailUnverified,
    /// A verification link asked for an address that is verified already.
    #[error("the email address is verified already")]
    AlreadyVerified,
    /// The current password sent to prove an old session is not right.
    #[error("the current password is not right")]
    WrongCurrentPassword,
    /// A supervisor of an application whose supervisors must have a second
    /// factor, without one: only their own record until they enrol.
    #[error("supervisors of this application need a second factor: enrol one (POST /v2/users/{{usersId}}/mfa/totp)")]
    MfaRequired,
    /// A wrong, malformed or already used second-factor code.
    #[error("the code is not right")]
    InvalidCode,
    /// An mfaToken that is unknown, used or past its 5 minutes.
    #[error("the sign-in has expired or was finished; sign in again")]
    InvalidMfaToken,
    /// A TOTP enrolment while a confirmed factor is there.
    #[error("a second factor is already active: remove it first")]
    MfaAlreadyEnrolled,
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Another user's record, or no record: a plain user is told the same
    /// (not found) either way; `exists` is for the trail only.
    #[error("user not found")]
    Hidden { exists: bool },
    /// A field's value is not acceptable; `field` is its proto path.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("that username is already taken in this application")]
    UsernameTaken,
    #[error("the user was changed concurrently too often; try again")]
    Contention,
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Crypto(crate::crypto::CryptoError),
    /// Too many failures: try again after the wait.
    #[error("too many attempts; try again in {} s", .0.as_secs().max(1))]
    Throttled(std::time::Duration),
    #[error(transparent)]
    Store(StoreError),
    /// A disclosure whose record could not be kept is not made.
    #[error(transparent)]
    Trail(#[from] crate::audit::TrailError),
    /// A reply that could not be put together (a bug, not the caller's).
    #[error("internal error: {0}")]
    Internal(String),
    /// Cut off by the server's own limit (`--request-timeout`): most often
    /// a database that stopped answering, as one does while it fails over.
    #[error("the request was not finished in time; try again")]
    TimedOut,
    /// A passkey call in an application without a relying party (`usersvc
    /// app update --webauthn-rp-id`).
    #[error("passkeys are not configured for this application")]
    PasskeysNotConfigured,
    /// A credential registered already (by this user or another).
    #[error("this passkey is registered already")]
    PasskeyTaken,
}

pub type ServiceResult<T> = Result<T, ServiceError>;

impl ServiceError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(ref c) if c == "users_app_username_key" => ServiceError::UsernameTaken,
            e => ServiceError::Store(e),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let (code, reason) = match &e {
            ServiceError::Auth(a) => match a {
                AuthError::MissingApiKey => (Code::Unauthenticated, "MISSING_API_KEY"),
                AuthError::InvalidApiKey => (Code::Unauthenticated, "INVALID_API_KEY"),
                AuthError::MissingToken => (Code::Unauthenticated, "MISSING_SESSION"),
                AuthError::InvalidToken => (Code::Unauthenticated, "INVALID_SESSION"),
                AuthError::ExpiredToken => (Code::Unauthenticated, "SESSION_EXPIRED"),
                AuthError::Store(s) => store_code(s),
            },
            ServiceError::BadCredentials => (Code::Unauthenticated, "INVALID_CREDENTIALS"),
            ServiceError::Forbidden(_) => (Code::PermissionDenied, "FORBIDDEN"),
            ServiceError::ReauthenticationRequired => (Code::PermissionDenied, "REAUTHENTICATION_REQUIRED"),
            ServiceError::WrongCurrentPassword => (Code::PermissionDenied, "INVALID_CURRENT_PASSWORD"),
            ServiceError::EmailUnverified => (Code::PermissionDenied, "EMAIL_UNVERIFIED"),
            ServiceError::AlreadyVerified => (Code::AlreadyExists, "ALREADY_VERIFIED"),
            ServiceError::MfaRequired => (Code::PermissionDenied, "MFA_REQUIRED"),
            ServiceError::InvalidCode => (Code::Unauthenticated, "INVALID_CODE"),
            ServiceError::InvalidMfaToken => (Code::Unauthenticated, "INVALID_MFA_TOKEN"),
            ServiceError::MfaAlreadyEnrolled => (Code::AlreadyExists, "MFA_ALREADY_ENROLLED"),
            ServiceError::NotFound(_) | ServiceError::Hidden { .. } => (Code::NotFound, "NOT_FOUND"),
            ServiceError::Invalid { .. } => (Code::InvalidArgument, "INVALID_FIELD"),
            ServiceError::UsernameTaken => (Code::AlreadyExists, "USERNAME_TAKEN"),
            ServiceError::Contention => (Code::Aborted, "CONTENTION"),
            ServiceError::Hash(HashError::Overloaded { .. }) => (Code::Unavailable, "OVERLOADED"),
            ServiceError::Hash(_) | ServiceError::Internal(_) => (Code::Internal, "INTERNAL"),
            ServiceError::Crypto(crate::crypto::CryptoError::Store(s)) => store_code(s),
            ServiceError::Crypto(_) => (Code::Internal, "INTERNAL"),
            ServiceError::Throttled(_) => (Code::ResourceExhausted, "THROTTLED"),
            ServiceError::Store(s) => store_code(s),
            ServiceError::Trail(_) => (Code::Unavailable, "TRAIL_UNAVAILABLE"),
            ServiceError::TimedOut => (Code::Unavailable, "TIMEOUT"),
            ServiceError::PasskeysNotConfigured => (Code::FailedPrecondition, "PASSKEYS_NOT_CONFIGURED"),
            ServiceError::PasskeyTaken => (Code::AlreadyExists, "PASSKEY_TAKEN"),
        };
        let message = match (code, &e) {
            // Counted (usersvc_password_hash_shed_total), not logged: a
            // flood would flood the log too.
            (_, ServiceError::Hash(HashError::Overloaded { .. })) => e.to_string(),
            // Internal detail (SQL, driver text) stays in the log.
            (Code::Internal, _) => {
                tracing::error!(error = %e, "request failed");
                "internal error".to_owned()
            }
            (_, ServiceError::TimedOut) => {
                tracing::warn!("request cut off by the server's time limit");
                e.to_string()
            }
            (Code::Unavailable, _) => {
                tracing::warn!(error = %e, "database unavailable");
                "the service is temporarily unavailable; try again".to_owned()
            }
            _ => e.to_string(),
        };
        let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
        if let ServiceError::Invalid { field, message } = &e {
            details.add_bad_request_violation(field.clone(), message.clone());
        }
        if let ServiceError::Throttled(wait) = &e {
            // Whole seconds, rounded up: a client that waits this long is let in.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            details.set_retry_info(Some(std::time::Duration::from_secs(secs.max(1))));
        }
        if let ServiceError::Trail(_) | ServiceError::TimedOut = &e {
            details.set_retry_info(Some(std::time::Duration::from_secs(1)));
        }
        if let ServiceError::Hash(HashError::Overloaded { retry_after }) = &e {
            details.set_retry_info(Some(*retry_after));
        }
        Status::with_error_details(code, message, details)
    }
}

fn store_code(e: &StoreError) -> (Code, &'static str) {
    match e {
        StoreError::Unavailable(_) => (Code::Unavailable, "UNAVAILABLE"),
        StoreError::Conflict(_) => (Code::AlreadyExists, "ALREADY_EXISTS"),
        _ => (Code::Internal, "INTERNAL"),
    }
}
