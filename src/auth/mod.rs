//! Who is calling: application keys, session tokens, password hashing, and
//! the resolution of a call's metadata into a [`Caller`].

pub mod caller;
mod hash_memory;
pub mod password;
pub mod schemes;
pub mod secret;

pub use caller::{Authenticator, Caller, SessionUser};
pub use password::PasswordHasher;
