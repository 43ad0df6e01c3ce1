//! Password reset over HTTP: the documented request route, and the small
//! HTML form the mailed link opens (works without JavaScript).

use axum::{
    Form,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use serde::Deserialize;
use tonic::Code;
use tonic_types::StatusExt;

use super::{ApiResult, CallMeta, Gateway, reply};
use crate::mail::templates::html_escape;
use crate::pb;

/// `GET /v2/{appId}/reset/user/{username}`: always `{}` for a well-formed
/// request, whether or not the user exists.
pub async fn request(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path((app_id, username)): Path<(String, String)>,
) -> ApiResult {
    let req = pb::RequestPasswordResetRequest { app_id, username };
    let out = gw.users.request_password_reset(meta.request(req)).await?;
    Ok(reply(out.get_ref()))
}

#[derive(Deserialize)]
pub struct ResetForm {
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

/// The form, when the link is still good.
pub async fn form(State(gw): State<Gateway>, meta: CallMeta, Path(token): Path<String>) -> Response {
    let req = pb::ResetPasswordRequest { token, new_password: String::new(), check_only: true };
    match gw.users.reset_password(meta.request(req)).await {
        Ok(_) => page(StatusCode::OK, form_body(None)),
        Err(status) => failure(&status),
    }
}

/// The form's submission.
pub async fn submit(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path(token): Path<String>,
    Form(f): Form<ResetForm>,
) -> Response {
    if f.password != f.confirm {
        return page(
            StatusCode::BAD_REQUEST,
            form_body(Some("The two passwords are not the same. Please type them again.")),
        );
    }
    let req = pb::ResetPasswordRequest { token, new_password: f.password, check_only: false };
    match gw.users.reset_password(meta.request(req)).await {
        Ok(_) => page(
            StatusCode::OK,
            "<h1>Your password has been changed</h1>\
             <p role=\"status\">You can now sign in with your new password. \
             For your safety, you have been signed out everywhere else.</p>"
                .to_owned(),
        ),
        Err(status) => failure(&status),
    }
}

/// A refused reset: a bad password gets the form again with the reason; a
/// dead link gets a page that says so.
fn failure(status: &tonic::Status) -> Response {
    let details = status.get_error_details();
    let violation = details.bad_request().and_then(|b| b.field_violations.first()).cloned();
    let mut res = match (status.code(), violation) {
        (Code::InvalidArgument, Some(v)) if v.field == "new_password" => {
            page(StatusCode::BAD_REQUEST, form_body(Some(&format!("The new password {}.", v.description))))
        }
        (Code::InvalidArgument, Some(v)) if v.field == "token" => page(
            StatusCode::BAD_REQUEST,
            format!(
                "<h1>This link cannot be used</h1><p role=\"alert\">{}.</p>\
                 <p>Ask the app for a new password reset email.</p>",
                html_escape(capitalise(&v.description).trim_end_matches('.'))
            ),
        ),
        (Code::ResourceExhausted, _) => page(
            StatusCode::TOO_MANY_REQUESTS,
            "<h1>Too many attempts</h1><p role=\"alert\">Please wait a little and try again.</p>".to_owned(),
        ),
        _ => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "<h1>Something went wrong</h1><p role=\"alert\">Your password was not changed. Please try again later.</p>"
                .to_owned(),
        ),
    };
    // A throttled or overloaded form says when to come back, as the JSON
    // routes do.
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        res.headers_mut().insert(header::RETRY_AFTER, delay.as_secs().max(1).into());
    }
    res
}

pub(super) fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn form_body(error: Option<&str>) -> String {
    let (alert, described) = match error {
        Some(e) => (
            format!("<p id=\"error\" role=\"alert\" class=\"error\">{}</p>", html_escape(e)),
            " aria-describedby=\"error\"",
        ),
        None => (String::new(), ""),
    };
    format!(
        "<h1>Choose a new password</h1>{alert}\
         <form method=\"post\">\
         <p><label for=\"password\">New password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"new-password\" required minlength=\"8\" maxlength=\"1024\"{described}></p>\
         <p><label for=\"confirm\">Type it again</label>\
         <input id=\"confirm\" name=\"confirm\" type=\"password\" autocomplete=\"new-password\" required minlength=\"8\" maxlength=\"1024\"></p>\
         <p><button type=\"submit\">Change password</button></p>\
         </form>"
    )
}

fn page(status: StatusCode, body: String) -> Response {
    titled_page(status, "Password reset", &body)
}

/// A page of the mailed links (reset, verification): no script, kept out of
/// caches, referrers and frames.
pub(super) fn titled_page(status: StatusCode, title: &str, body: &str) -> Response {
    let title = html_escape(title);
    let html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;line-height:1.5;color:#1a1a1a}}\
         label{{display:block;font-weight:600}}input{{font-size:1rem;padding:.5rem;width:100%;box-sizing:border-box}}\
         button{{font-size:1rem;padding:.6rem 1.2rem}}.error{{color:#a00000;font-weight:600}}</style>\
         </head><body><main>{body}</main></body></html>"
    );
    let mut res = (status, Html(html)).into_response();
    let h = res.headers_mut();
    // The token is in the address: keep it out of caches and referrers.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}
