//! Every error of the JSON API has one shape:
//! `{"errors": [{"code": 404, "reason": "not_found", "message": "...", "field"?: "..."}]}`.
//! `code` is the HTTP status as an integer, because deployed Catalyze clients
//! pass `errors[0].code` on as a status; the machine word is `reason` (the
//! gRPC `ErrorInfo` reason, lower-cased). A `tonic::Status` maps to it once,
//! here.

use axum::{
    Json,
    extract::Request,
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tonic::Code;
use tonic_types::StatusExt;

use crate::schema;

#[derive(Debug, Clone, Serialize)]
pub struct ErrorItem {
    /// The reply's status.
    pub code: u16,
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    errors: Vec<ErrorItem>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub item: ErrorItem,
    /// Seconds to wait before trying again (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            item: ErrorItem { code: status.as_u16(), reason: reason.to_owned(), message: message.into(), field: None },
            retry_after: None,
        }
    }

    pub fn field(status: StatusCode, reason: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(status, reason, message);
        e.item.field = Some(field.into());
        e
    }
}

pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn code_word(code: Code) -> String {
    format!("{code:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
            sep.into_iter().chain(std::iter::once(c.to_ascii_lowercase()))
        })
        .collect()
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let details = status.get_error_details();
        let reason = details
            .error_info()
            .map(|i| i.reason.to_ascii_lowercase())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| code_word(status.code()));
        let field = details
            .bad_request()
            .and_then(|b| b.field_violations.first())
            .map(|v| schema::field_path_to_json(&v.field));
        let message = match (status.code(), &field) {
            // The service names the field by its proto path; say it the way
            // the JSON does.
            (Code::InvalidArgument, Some(f)) => {
                let desc = details
                    .bad_request()
                    .and_then(|b| b.field_violations.first())
                    .map(|v| v.description.clone())
                    .unwrap_or_default();
                format!("{f}: {desc}")
            }
            (Code::Internal | Code::Unknown, _) => "internal error".to_owned(),
            _ => status.message().to_owned(),
        };
        let retry_after = details.retry_info().and_then(|r| r.retry_delay).map(|d| d.as_secs().max(1));
        let http = http_status(status.code());
        Self { status: http, item: ErrorItem { code: http.as_u16(), reason, message, field }, retry_after }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(ErrorBody { errors: vec![self.item] })).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        res
    }
}

/// Gives the errors that axum and tower produce themselves (no route, wrong
/// method, body too large, bad path) the same JSON shape as the API's own.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    // Our own replies are JSON (or the reset page's HTML); what is plain
    // text or has no type came from axum or tower.
    let ours = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/json") || v.starts_with(b"text/html")
    });
    if !(status.is_client_error() || status.is_server_error()) || ours {
        return res;
    }
    let (reason, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this route does not take that method"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is larger than 1 MiB"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "this route does not take a body of that content type")
        }
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", "the request took too long"),
        s if s.is_client_error() => ("bad_request", "the request is malformed"),
        _ => ("internal", "internal error"),
    };
    let mut out = ApiError::new(status, reason, message).into_response();
    if let Some(allow) = res.headers().get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    for (name, value) in res.headers() {
        if name.as_str().starts_with("access-control-") || name == "x-request-id" {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_words() {
        assert_eq!(code_word(Code::InvalidArgument), "invalid_argument");
        assert_eq!(code_word(Code::NotFound), "not_found");
    }
}
