//! `/v2/users/{usersId}/mfa/totp` and `/v2/auth/signin/mfa`: the second
//! factor, each route one `UserService` call (the rules are the service's).

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::HeaderMap,
};

use super::json::{self, Mode};
use super::passkeys;
use super::users::reply_user;
use super::{ApiResult, CallMeta, Gateway, reply};
use crate::pb;

/// The path names the user; a `usersId` in the body is ignored.
const PATH_ONLY: &[&str] = &["users_id"];

/// `POST /v2/users/{usersId}/mfa/totp` `{"currentPassword"?}`.
pub async fn enrol(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path(users_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let mut req: pb::EnrolTotpRequest =
        json::parse(&headers, &body, "EnrolTotpRequest", PATH_ONLY, Mode::Whole)?.message;
    req.users_id = users_id;
    let out = gw.users.enrol_totp(meta.request(req)).await?;
    Ok(reply(out.get_ref()))
}

/// `POST /v2/users/{usersId}/mfa/totp/confirm` `{"code"}`.
pub async fn confirm(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path(users_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let mut req: pb::ConfirmTotpRequest =
        json::parse(&headers, &body, "ConfirmTotpRequest", PATH_ONLY, Mode::Whole)?.message;
    req.users_id = users_id;
    let out = gw.users.confirm_totp(meta.request(req)).await?;
    Ok(reply(out.get_ref()))
}

/// `DELETE /v2/users/{usersId}/mfa/totp`, with `{"currentPassword"}` or
/// no body.
pub async fn remove(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path(users_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let mut req: pb::RemoveTotpRequest =
        json::parse(&headers, &body, "RemoveTotpRequest", PATH_ONLY, Mode::Whole)?.message;
    req.users_id = users_id;
    let out = gw.users.remove_totp(meta.request(req)).await?;
    Ok(reply(out.get_ref()))
}

/// `POST /v2/auth/signin/mfa` `{"mfaToken", "code"}` or `{"mfaToken",
/// "ceremonyId", "credential"}` (a passkey): the reply of a sign-in.
pub async fn sign_in(State(gw): State<Gateway>, meta: CallMeta, headers: HeaderMap, body: Bytes) -> ApiResult {
    let (mut req, credential): (pb::SignInMfaRequest, _) =
        passkeys::credential_body(&headers, &body, "SignInMfaRequest")?;
    if let Some(c) = credential {
        req.credential_json = c;
    }
    let out = gw.users.sign_in_mfa(meta.request(req)).await.map_err(|s| passkeys::credential_field(s.into()))?;
    Ok(reply_user(out.get_ref()))
}

/// `POST /v2/auth/signin/mfa/passkey/options` `{"mfaToken"}`: the options
/// of a passkey as the second factor, with `ceremonyId`.
pub async fn passkey_options(State(gw): State<Gateway>, meta: CallMeta, headers: HeaderMap, body: Bytes) -> ApiResult {
    let req: pb::StartMfaPasskeyRequest =
        json::parse(&headers, &body, "StartMfaPasskeyRequest", &[], Mode::Whole)?.message;
    let out = gw.users.start_mfa_passkey(meta.request(req)).await?;
    passkeys::options_reply(out.get_ref())
}
