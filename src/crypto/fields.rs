//! The field names that bind each sealed value to its place (they go into
//! the associated data with the application and row): shared by the
//! services that seal and the mail sender and operator commands that open,
//! so that none of them imports another for a name.

use uuid::Uuid;

use super::keyring::Sealer;

/// A user's profile (every field of the model but the username).
pub const PROFILE_FIELD: &str = "profile";
/// A user's username.
pub const USERNAME_FIELD: &str = "username";
/// A reset link's token, sealed to its outbox row until the mail is sent.
pub const RESET_TOKEN_FIELD: &str = "reset_token";

/// The address a change notice goes to (the one the user had before), sealed
/// to its outbox row.
pub const NOTICE_TO_FIELD: &str = "notice_to";

/// A verification mail's address, token and the address's blind index,
/// sealed to its outbox row until the mail is sent.
pub const VERIFY_MAIL_FIELD: &str = "verify_mail";

/// A reset token sealed to the outbox row of the mail that carries it.
pub fn seal_reset_token(sealer: &Sealer, outbox_id: Uuid, token: &str) -> Vec<u8> {
    sealer.seal(outbox_id, RESET_TOKEN_FIELD, token.as_bytes())
}

/// A user's TOTP secret, sealed to the user's row.
pub const TOTP_SECRET_FIELD: &str = "totp_secret";

/// A passkey's credential and name, sealed to the passkey's row.
pub const PASSKEY_FIELD: &str = "passkey";
