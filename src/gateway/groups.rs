//! `/v2/groups` and `/v2/app/{appId}/groups`.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::HeaderMap,
};
use pbjson_types::FieldMask;

use super::json::{self, Mode};
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

/// The documented reply is a bare array of user ids.
pub async fn members(State(gw): State<Gateway>, meta: CallMeta, Path(groups_id): Path<String>) -> ApiResult {
    let out = gw.groups.list_members(meta.request(pb::ListMembersRequest { groups_id })).await?;
    Ok(reply(&out.get_ref().users_ids))
}

pub async fn list_all(State(gw): State<Gateway>, meta: CallMeta, Path(app_id): Path<String>) -> ApiResult {
    let out = gw.groups.list_groups(meta.request(pb::ListGroupsRequest { app_id, default_only: false })).await?;
    Ok(reply(&out.get_ref().groups))
}

pub async fn list_default(State(gw): State<Gateway>, meta: CallMeta, Path(app_id): Path<String>) -> ApiResult {
    let out = gw.groups.list_groups(meta.request(pb::ListGroupsRequest { app_id, default_only: true })).await?;
    Ok(reply(&out.get_ref().groups))
}
