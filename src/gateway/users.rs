//! `/v2/users` and `/v2/auth`.

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, Uri},
};
use pbjson_types::FieldMask;

use super::error::ApiError;
use super::json::{self, Mode};
use super::paging::{Page, array_reply, page_size};
use super::{ApiResult, CallMeta, Gateway, reply};
use crate::{pb, schema};
use axum::response::IntoResponse;
use serde_json::Value;

pub async fn create(State(gw): State<Gateway>, meta: CallMeta, headers: HeaderMap, body: Bytes) -> ApiResult {
    let user: pb::User = json::parse(&headers, &body, "User", schema::USER_OUTPUT_ONLY, Mode::Whole)?.message;
    let out = gw.users.create_user(meta.request(pb::CreateUserRequest { user: Some(user) })).await?;
    Ok(reply_user(out.get_ref()))
}

pub async fn get(State(gw): State<Gateway>, meta: CallMeta, Path(users_id): Path<String>) -> ApiResult {
    let out = gw.users.get_user(meta.request(pb::GetUserRequest { users_id })).await?;
    Ok(reply_user(out.get_ref()))
}

/// The body member of an update that proves an old session (see
/// `UpdateUserRequest.current_password`); not a member of the user.
pub const CURRENT_PASSWORD: &str = "currentPassword";

/// PUT is a JSON merge patch: the members present become the field mask.
pub async fn update(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path(users_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let parsed = json::parse_taking::<pb::User>(
        &headers,
        &body,
        "User",
        schema::USER_OUTPUT_ONLY,
        Mode::MergePatch,
        Some(CURRENT_PASSWORD),
    )?;
    let req = pb::UpdateUserRequest {
        users_id,
        user: Some(parsed.message),
        update_mask: Some(FieldMask { paths: parsed.paths }),
        current_password: parsed.taken.unwrap_or_default(),
    };
    let out = gw.users.update_user(meta.request(req)).await?;
    Ok(reply_user(out.get_ref()))
}

pub async fn delete(State(gw): State<Gateway>, meta: CallMeta, Path(users_id): Path<String>) -> ApiResult {
    let out = gw.users.delete_user(meta.request(pb::DeleteUserRequest { users_id })).await?;
    Ok(reply(out.get_ref()))
}

pub async fn forgot_username(State(gw): State<Gateway>, meta: CallMeta, headers: HeaderMap, body: Bytes) -> ApiResult {
    let req: pb::ForgotUsernameRequest =
        json::parse(&headers, &body, "ForgotUsernameRequest", &[], Mode::Whole)?.message;
    let out = gw.users.forgot_username(meta.request(req)).await?;
    Ok(reply(out.get_ref()))
}

/// The documented reply is a bare array of `{"groupsId", "name"}`; a page of
/// it, with a `Link` to the next.
pub async fn groups(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path(users_id): Path<String>,
    Query(page): Query<Page>,
    uri: Uri,
) -> ApiResult {
    let (page_size, page_token) = page.for_array()?;
    let req = pb::ListUserGroupsRequest { users_id, page_size, page_token };
    let out = gw.users.list_user_groups(meta.request(req)).await?.into_inner();
    Ok(array_reply(&out.groups, &uri, page_size, &out.next_page_token))
}

pub async fn sign_in(State(gw): State<Gateway>, meta: CallMeta, headers: HeaderMap, body: Bytes) -> ApiResult {
    let req: pb::SignInRequest = json::parse(&headers, &body, "SignInRequest", &[], Mode::Whole)?.message;
    let out = gw.users.sign_in(meta.request(req)).await?;
    Ok(reply_user(out.get_ref()))
}

pub async fn sign_out(State(gw): State<Gateway>, meta: CallMeta) -> ApiResult {
    let out = gw.users.sign_out(meta.request(pb::SignOutRequest {})).await?;
    Ok(reply(out.get_ref()))
}

/// A user as JSON. `extras` travels as a `google.protobuf.Value`, whose
/// numbers are doubles; a whole number is written without a fraction, as
/// the client sent it (`3`, not `3.0`), so typed clients read it back as an
/// integer. Only a user whose extras hold one goes through a
/// `serde_json::Value` to be rewritten.
pub(super) fn reply_user(user: &pb::User) -> axum::response::Response {
    if !user.extras.as_ref().is_some_and(holds_whole_number) {
        return reply(user);
    }
    let mut json = match serde_json::to_value(user) {
        Ok(v) => v,
        Err(_) => return reply(user),
    };
    if let Some(extras) = json.get_mut("extras") {
        whole_numbers(extras);
    }
    axum::Json(json).into_response()
}

fn holds_whole_number(v: &pbjson_types::Value) -> bool {
    use pbjson_types::value::Kind;
    match &v.kind {
        Some(Kind::NumberValue(f)) => f.fract() == 0.0,
        Some(Kind::StructValue(s)) => s.fields.values().any(holds_whole_number),
        Some(Kind::ListValue(l)) => l.values.iter().any(holds_whole_number),
        _ => false,
    }
}

fn whole_numbers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9_007_199_254_740_992.0
            {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        Value::Object(members) => members.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

/// `GET /v2/auth/verify`: whose the bearer token is (the JS SDK reads
/// `userId`).
pub async fn verify(State(gw): State<Gateway>, meta: CallMeta) -> ApiResult {
    let out = gw.users.verify_session(meta.request(pb::VerifySessionRequest {})).await?;
    Ok(reply(out.get_ref()))
}

/// `?pageSize&pageToken&email&username&groupsId&active&mrn` of the user listing.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserQuery {
    page_size: Option<String>,
    page_token: Option<String>,
    email: Option<String>,
    username: Option<String>,
    groups_id: Option<String>,
    active: Option<String>,
    mrn: Option<String>,
}

/// `GET /v2/users`: a supervisor's listing and search of the application's
/// users, `{"users": [...], "nextPageToken": "..."}`.
pub async fn list(State(gw): State<Gateway>, meta: CallMeta, Query(q): Query<UserQuery>) -> ApiResult {
    let active = match q.active.as_deref() {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "active",
                "active: must be true or false",
            ));
        }
    };
    let req = pb::ListUsersRequest {
        page_size: page_size(q.page_size.as_deref())?,
        page_token: q.page_token.unwrap_or_default(),
        email: q.email.unwrap_or_default(),
        username: q.username.unwrap_or_default(),
        groups_id: q.groups_id.unwrap_or_default(),
        active,
        mrn: q.mrn.unwrap_or_default(),
    };
    let out = gw.users.list_users(meta.request(req)).await?;
    Ok(reply(out.get_ref()))
}

/// `GET /v2/users/{usersId}/disclosures`: who accessed the user's record.
pub async fn disclosures(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path(users_id): Path<String>,
    Query(page): Query<Page>,
) -> ApiResult {
    let page_size = page_size(page.page_size.as_deref())?;
    let req = pb::ListDisclosuresRequest { users_id, page_size, page_token: page.page_token.unwrap_or_default() };
    let out = gw.users.list_disclosures(meta.request(req)).await?;
    Ok(reply(out.get_ref()))
}

/// `GET /v2/users/{usersId}/export`: the user's whole record.
pub async fn export(State(gw): State<Gateway>, meta: CallMeta, Path(users_id): Path<String>) -> ApiResult {
    let out = gw.users.export_user(meta.request(pb::ExportUserRequest { users_id })).await?;
    Ok(reply(out.get_ref()))
}

/// The caller's own live sessions, as a bare array; a page of them, with a
/// `Link` to the next.
pub async fn sessions(State(gw): State<Gateway>, meta: CallMeta, Query(page): Query<Page>, uri: Uri) -> ApiResult {
    let (page_size, page_token) = page.for_array()?;
    let req = pb::ListSessionsRequest { users_id: String::new(), page_size, page_token };
    let out = gw.users.list_sessions(meta.request(req)).await?.into_inner();
    Ok(array_reply(&out.sessions, &uri, page_size, &out.next_page_token))
}

pub async fn revoke_session(State(gw): State<Gateway>, meta: CallMeta, Path(session_id): Path<String>) -> ApiResult {
    let req = pb::RevokeSessionRequest { session_id, users_id: String::new() };
    let out = gw.users.revoke_session(meta.request(req)).await?;
    Ok(reply(out.get_ref()))
}
