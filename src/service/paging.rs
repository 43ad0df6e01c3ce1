//! What every paged listing shares (AIP-158): the page size asked for, and
//! opaque page tokens that carry a cursor and a keyed hash binding it to
//! the listing it was issued for (a forged token, or one carried to another
//! user, application or set of filters, is refused).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

use super::error::{ServiceError, ServiceResult};
use crate::crypto::Keyring;

/// Items a page holds unless the caller asks for fewer.
const DEFAULT_PAGE: i32 = 100;
/// Items a page holds at most.
const MAX_PAGE: i32 = 1000;
/// Bytes of the keyed hash that makes a page token tamper-proof.
const TAG_BYTES: usize = 16;

/// The page size of a request (0: the default).
pub fn page_size(asked: i32) -> ServiceResult<i32> {
    match asked {
        0 => Ok(DEFAULT_PAGE),
        n if (1..=MAX_PAGE).contains(&n) => Ok(n),
        _ => Err(ServiceError::invalid("page_size", format!("must be from 1 to {MAX_PAGE}"))),
    }
}

/// Rows to fetch for a page of `size`: one more, which says whether there
/// is a page after it without counting the rest.
pub fn fetch(size: i32) -> i64 {
    i64::from(size) + 1
}

/// Cuts rows fetched for a page of `size` (see [`fetch`]) to the page;
/// whether there were more.
pub fn cut<T>(rows: &mut Vec<T>, size: i32) -> bool {
    let size = usize::try_from(size).unwrap_or_default();
    let more = rows.len() > size;
    rows.truncate(size);
    more
}

/// Page tokens of one kind of listing, for one scope (what the listing is
/// of: its application, user, filters).
pub struct Tokens<'a> {
    pub keyring: &'a Keyring,
    pub kind: &'static str,
    pub scope: String,
}

impl Tokens<'_> {
    /// The token of the page after `cursor`.
    pub fn issue(&self, cursor: &[u8]) -> String {
        let mut raw = cursor.to_vec();
        raw.extend_from_slice(&self.tag(cursor));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The cursor of a token issued for this listing (`len` bytes).
    pub fn cursor(&self, token: &str, len: usize) -> ServiceResult<Vec<u8>> {
        let invalid = || ServiceError::invalid("page_token", "is not a token of this listing");
        let raw = URL_SAFE_NO_PAD.decode(token.as_bytes()).map_err(|_| invalid())?;
        let (cursor, tag) = raw.split_at_checked(len).ok_or_else(invalid)?;
        // Not a secret compared: a forged tag only earns a refusal.
        if tag != self.tag(cursor).as_slice() {
            return Err(invalid());
        }
        Ok(cursor.to_vec())
    }

    /// The id a page of an id-ordered listing starts after: none for the
    /// first page (no token).
    pub fn after_id(&self, token: &str) -> ServiceResult<Option<Uuid>> {
        if token.is_empty() {
            return Ok(None);
        }
        let cursor = self.cursor(token, 16)?;
        Uuid::from_slice(&cursor)
            .map(Some)
            .map_err(|_| ServiceError::invalid("page_token", "is not a token of this listing"))
    }

    /// The `next_page_token` of a page of an id-ordered listing whose last
    /// item is `last`: empty when there is no more.
    pub fn next_id(&self, last: Option<Uuid>, more: bool) -> String {
        match last {
            Some(id) if more => self.issue(id.as_bytes()),
            _ => String::new(),
        }
    }

    fn tag(&self, cursor: &[u8]) -> Vec<u8> {
        let text = format!("{}:{}", self.scope, URL_SAFE_NO_PAD.encode(cursor));
        let mut tag = self.keyring.global_index(self.kind, &text);
        tag.truncate(TAG_BYTES);
        tag
    }
}
