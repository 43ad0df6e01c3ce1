//! Email verification over HTTP: the resend route, and the small page the
//! mailed link opens (works without JavaScript). Opening the link changes
//! nothing (mail scanners fetch links): the page's button, a form POST,
//! verifies.

use axum::{
    extract::{Path, State},
    http::{StatusCode, header},
    response::Response,
};
use tonic::Code;
use tonic_types::StatusExt;

use super::reset::{capitalise, titled_page};
use super::{ApiResult, CallMeta, Gateway, reply};
use crate::mail::templates::html_escape;
use crate::pb;

const TITLE: &str = "Email verification";

/// `POST /v2/users/{usersId}/verification`: mails a new link; `{}`.
pub async fn send(State(gw): State<Gateway>, meta: CallMeta, Path(users_id): Path<String>) -> ApiResult {
    let out = gw.users.send_verification(meta.request(pb::SendVerificationRequest { users_id })).await?;
    Ok(reply(out.get_ref()))
}

/// The page the link opens: a button, and nothing done yet.
pub async fn form(Path(_token): Path<String>) -> Response {
    titled_page(
        StatusCode::OK,
        TITLE,
        "<h1>Confirm your email address</h1>\
         <p>Press the button to confirm that this email address is yours.</p>\
         <form method=\"post\"><p><button type=\"submit\">Confirm my email address</button></p></form>",
    )
}

/// The button: verifies through the service call.
pub async fn submit(State(gw): State<Gateway>, meta: CallMeta, Path(token): Path<String>) -> Response {
    match gw.users.verify_email(meta.request(pb::VerifyEmailRequest { token })).await {
        Ok(_) => titled_page(
            StatusCode::OK,
            TITLE,
            "<h1>Your email address is confirmed</h1>\
             <p role=\"status\">Thank you. You can close this page and go back to the app.</p>",
        ),
        Err(status) => failure(&status),
    }
}

/// A dead link gets a page that says why; anything else, to try later.
fn failure(status: &tonic::Status) -> Response {
    let details = status.get_error_details();
    let violation = details.bad_request().and_then(|b| b.field_violations.first()).cloned();
    let mut res = match (status.code(), violation) {
        (Code::InvalidArgument, Some(v)) if v.field == "token" => titled_page(
            StatusCode::BAD_REQUEST,
            TITLE,
            &format!(
                "<h1>This link cannot be used</h1><p role=\"alert\">{}.</p>\
                 <p>Ask the app for a new verification email.</p>",
                html_escape(capitalise(&v.description).trim_end_matches('.'))
            ),
        ),
        (Code::ResourceExhausted, _) => titled_page(
            StatusCode::TOO_MANY_REQUESTS,
            TITLE,
            "<h1>Too many attempts</h1><p role=\"alert\">Please wait a little and try again.</p>",
        ),
        _ => titled_page(
            StatusCode::SERVICE_UNAVAILABLE,
            TITLE,
            "<h1>Something went wrong</h1>\
             <p role=\"alert\">Your email address was not confirmed. Please try again later.</p>",
        ),
    };
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        res.headers_mut().insert(header::RETRY_AFTER, delay.as_secs().max(1).into());
    }
    res
}
