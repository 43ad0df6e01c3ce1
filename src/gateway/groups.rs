//! `/v2/groups` and `/v2/app/{appId}/groups`.

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, Uri},
};
use pbjson_types::FieldMask;

use super::json::{self, Mode};
use super::paging::{Page, array_reply};
use super::{ApiResult, CallMeta, Gateway, reply};
use crate::{pb, schema};

pub async fn create(State(gw): State<Gateway>, meta: CallMeta, headers: HeaderMap, body: Bytes) -> ApiResult {
    let group: pb::Group = json::parse(&headers, &body, "Group", schema::GROUP_OUTPUT_ONLY, Mode::Whole)?.message;
    let out = gw.groups.create_group(meta.request(pb::CreateGroupRequest { group: Some(group) })).await?;
    Ok(reply(out.get_ref()))
}

pub async fn get(State(gw): State<Gateway>, meta: CallMeta, Path(groups_id): Path<String>) -> ApiResult {
    let out = gw.groups.get_group(meta.request(pb::GetGroupRequest { groups_id })).await?;
    Ok(reply(out.get_ref()))
}

pub async fn update(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path(groups_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let parsed = json::parse::<pb::Group>(&headers, &body, "Group", schema::GROUP_OUTPUT_ONLY, Mode::MergePatch)?;
    let req = pb::UpdateGroupRequest {
        groups_id,
        group: Some(parsed.message),
        update_mask: Some(FieldMask { paths: parsed.paths }),
    };
    let out = gw.groups.update_group(meta.request(req)).await?;
    Ok(reply(out.get_ref()))
}

pub async fn delete(State(gw): State<Gateway>, meta: CallMeta, Path(groups_id): Path<String>) -> ApiResult {
    let out = gw.groups.delete_group(meta.request(pb::DeleteGroupRequest { groups_id })).await?;
    Ok(reply(out.get_ref()))
}

pub async fn add_member(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path((groups_id, users_id)): Path<(String, String)>,
) -> ApiResult {
    let out = gw.groups.add_member(meta.request(pb::AddMemberRequest { groups_id, users_id })).await?;
    Ok(reply(out.get_ref()))
}

pub async fn remove_member(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path((groups_id, users_id)): Path<(String, String)>,
) -> ApiResult {
    let out = gw.groups.remove_member(meta.request(pb::RemoveMemberRequest { groups_id, users_id })).await?;
    Ok(reply(out.get_ref()))
}

/// The documented reply is a bare array of user ids; a page of it, with a
/// `Link` to the next.
pub async fn members(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path(groups_id): Path<String>,
    Query(page): Query<Page>,
    uri: Uri,
) -> ApiResult {
    let (page_size, page_token) = page.for_array()?;
    let out = gw.groups.list_members(meta.request(pb::ListMembersRequest { groups_id, page_size, page_token })).await?;
    let out = out.into_inner();
    Ok(array_reply(&out.users_ids, &uri, page_size, &out.next_page_token))
}

pub async fn list_all(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path(app_id): Path<String>,
    Query(page): Query<Page>,
    uri: Uri,
) -> ApiResult {
    list_groups(gw, meta, app_id, false, page, uri).await
}

pub async fn list_default(
    State(gw): State<Gateway>,
    meta: CallMeta,
    Path(app_id): Path<String>,
    Query(page): Query<Page>,
    uri: Uri,
) -> ApiResult {
    list_groups(gw, meta, app_id, true, page, uri).await
}

/// A bare array of groups; a page of it, with a `Link` to the next.
async fn list_groups(
    gw: Gateway,
    meta: CallMeta,
    app_id: String,
    default_only: bool,
    page: Page,
    uri: Uri,
) -> ApiResult {
    let (page_size, page_token) = page.for_array()?;
    let req = pb::ListGroupsRequest { app_id, default_only, page_size, page_token };
    let out = gw.groups.list_groups(meta.request(req)).await?.into_inner();
    Ok(array_reply(&out.groups, &uri, page_size, &out.next_page_token))
}
