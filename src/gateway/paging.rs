//! Pages on the wire: `?pageSize=N&pageToken=T`, and, for the documented
//! Catalyze routes whose reply is a bare array, an RFC 8288
//! `Link: <...>; rel="next"` header in place of a `nextPageToken` member
//! (the array has nowhere to hold one, and deployed clients parse it).

use axum::{
    http::{HeaderValue, StatusCode, Uri, header},
    response::Response,
};
use serde::Serialize;

use super::error::ApiError;
use super::reply;

/// Items of a bare-array page when the client asks for no size: as many as
/// the service gives in one page, so that a client that knows nothing of
/// pages still gets whole lists up to this size, and a `Link` to the rest.
pub const ARRAY_PAGE: i32 = 1000;

/// `?pageSize=N&pageToken=T` of a paged listing.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub page_size: Option<String>,
    pub page_token: Option<String>,
}

/// The page size asked for (0: none, the service's default). Anything but
/// a whole number from 1 up is refused here; the service refuses one over
/// its maximum, naming the same parameter.
pub fn page_size(raw: Option<&str>) -> Result<i32, ApiError> {
    match raw {
        None | Some("") => Ok(0),
        Some(n) => n.parse::<i32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            ApiError::field(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "pageSize",
                "pageSize: must be a whole number from 1 to 1000",
            )
        }),
    }
}

impl Page {
    /// The page size and token to ask the service for on a bare-array
    /// route: without `pageSize`, [`ARRAY_PAGE`].
    pub fn for_array(&self) -> Result<(i32, String), ApiError> {
        let size = match page_size(self.page_size.as_deref())? {
            0 => ARRAY_PAGE,
            n => n,
        };
        Ok((size, self.page_token.clone().unwrap_or_default()))
    }
}

/// A bare-array reply of a page of `size`, with
/// `Link: <path?pageSize=size&pageToken=next>; rel="next"` (a relative
/// reference to the same route) unless `next` is empty.
pub fn array_reply<T: Serialize>(items: &T, uri: &Uri, size: i32, next: &str) -> Response {
    let mut res = reply(items);
    if !next.is_empty() {
        let link = format!(
            "<{}?pageSize={size}&pageToken={}>; rel=\"next\"",
            encode(uri.path(), PATH_KEPT),
            encode(next, b"")
        );
        // Always a valid value: every byte outside visible ASCII is escaped.
        if let Ok(v) = HeaderValue::try_from(link) {
            res.headers_mut().insert(header::LINK, v);
        }
    }
    res
}

/// What a path keeps besides the unreserved characters (RFC 3986): its
/// slashes, the other characters of a segment, and `%` of the escapes it
/// arrived with. `<`, `>`, quotes, spaces and the like are escaped.
const PATH_KEPT: &[u8] = b"/:@!$&'()*+,;=%";

/// Percent-encodes every byte but the unreserved ones and `kept`.
fn encode(text: &str, kept: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || kept.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_percent_encoded() {
        let uri: Uri = "/v2/groups/a%20b/members?pageSize=2".parse().unwrap();
        let res = array_reply(&Vec::<String>::new(), &uri, 2, "ab+/=c");
        let link = res.headers().get(header::LINK).unwrap().to_str().unwrap();
        assert_eq!(link, "</v2/groups/a%20b/members?pageSize=2&pageToken=ab%2B%2F%3Dc>; rel=\"next\"");
        assert_eq!(encode("a\"<>{}| é", PATH_KEPT), "a%22%3C%3E%7B%7D%7C%20%C3%A9");
    }

    #[test]
    fn no_link_on_the_last_page() {
        let uri: Uri = "/v2/auth/sessions".parse().unwrap();
        assert!(array_reply(&Vec::<String>::new(), &uri, 1000, "").headers().get(header::LINK).is_none());
    }

    #[test]
    fn sizes() {
        let page = |s: Option<&str>| Page { page_size: s.map(str::to_owned), page_token: None }.for_array();
        assert_eq!(page(None).unwrap().0, ARRAY_PAGE);
        assert_eq!(page(Some("")).unwrap().0, ARRAY_PAGE);
        assert_eq!(page(Some("7")).unwrap().0, 7);
        // Over the maximum: the service refuses it, naming pageSize.
        assert_eq!(page(Some("5000")).unwrap().0, 5000);
        for bad in ["0", "-1", "abc", "1.5"] {
            assert_eq!(page(Some(bad)).unwrap_err().item.field.as_deref(), Some("pageSize"), "{bad}");
        }
    }
}
