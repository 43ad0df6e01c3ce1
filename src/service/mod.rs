//! The tonic services: every rule of who may do what, and every check of
//! what is sent, lives here once, behind gRPC.

pub mod error;
pub mod field_mask;
mod groups;
pub mod profile;
mod users;
pub mod validate;

use std::sync::Arc;

pub use groups::GroupSvc;
pub use users::UserSvc;

use crate::auth::{Authenticator, PasswordHasher};
use crate::store::Store;

/// What both services share.
pub struct Core {
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
    pub hasher: PasswordHasher,
    pub min_password_chars: usize,
}
