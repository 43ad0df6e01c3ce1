//! `usersvc.v1.GroupService`: supervisors only.

use std::sync::Arc;

use pbjson_types::Empty;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::context::Ctx;
use super::error::{ServiceError, ServiceResult};
use super::paging::{self, Tokens};
use super::{Core, field_mask, validate};
use crate::audit::AuditRecord;
use crate::auth::Caller;
use crate::pb::{self, group_service_server::GroupService};
use crate::schema;
use crate::store::GroupRecord;

#[derive(Clone)]
pub struct GroupSvc {
    core: Arc<Core>,
}

impl GroupSvc {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// A supervisor's call.
    async fn supervisor(&self, ctx: &Ctx) -> ServiceResult<Caller> {
        let (caller, me) = self.core.auth.signed_in(&ctx.md).await?;
        if me.mfa_pending {
            return Err(ServiceError::MfaRequired);
        }
        if !me.supervisor {
            return Err(ServiceError::Forbidden("only a supervisor may manage groups"));
        }
        Ok(caller)
    }

    async fn record(
        &self,
        ctx: &Ctx,
        action: &str,
        caller: &Caller,
        subject: Option<Uuid>,
        group: Option<Uuid>,
        fields: &[&str],
    ) -> AuditRecord {
        let mut r = self.core.record(ctx, action, Some(caller), caller.app_id).await;
        r.subject_id = subject;
        r.object_id = group;
        r.fields = fields.iter().map(|f| (*f).to_owned()).collect();
        r
    }

    async fn group(&self, app_id: Uuid, raw_id: &str) -> ServiceResult<GroupRecord> {
        let id = validate::id(raw_id, "groups_id")?;
        self.core.store.get_group(app_id, id).await?.ok_or(ServiceError::NotFound("group"))
    }
}

fn to_pb(g: GroupRecord) -> pb::Group {
    pb::Group { groups_id: g.id.to_string(), name: g.name, default: Some(g.is_default) }
}

#[tonic::async_trait]
impl GroupService for GroupSvc {
    async fn create_group(&self, request: Request<pb::CreateGroupRequest>) -> Result<Response<pb::Group>, Status> {
        let (ctx, req) = Ctx::split(request);
        let caller = self.supervisor(&ctx).await?;
        let app_id = caller.app_id;
        let g = req.group.unwrap_or_default();
        validate::group_name(&g.name)?;
        let rec = GroupRecord { id: Uuid::now_v7(), name: g.name, is_default: g.default.unwrap_or(false) };
        let r = self.record(&ctx, "group.create", &caller, None, Some(rec.id), &["name", "default"]).await;
        self.core.store.create_group(app_id, &rec, &r).await.map_err(ServiceError::from)?;
        Ok(Response::new(to_pb(rec)))
    }

    async fn get_group(&self, request: Request<pb::GetGroupRequest>) -> Result<Response<pb::Group>, Status> {
        let (ctx, req) = Ctx::split(request);
        let caller = self.supervisor(&ctx).await?;
        let app_id = caller.app_id;
        Ok(Response::new(to_pb(self.group(app_id, &req.groups_id).await?)))
    }

    async fn update_group(&self, request: Request<pb::UpdateGroupRequest>) -> Result<Response<pb::Group>, Status> {
        let (ctx, req) = Ctx::split(request);
        let caller = self.supervisor(&ctx).await?;
        let app_id = caller.app_id;
        let patch = req.group.unwrap_or_default();
        let raw_id = if req.groups_id.is_empty() { &patch.groups_id } else { &req.groups_id };
        let id = validate::id(raw_id, "groups_id")?;
        let desc = schema::message("Group").ok_or(ServiceError::NotFound("schema"))?;
        let paths = match &req.update_mask {
            Some(mask) => mask.paths.clone(),
            None => {
                let mut p = Vec::new();
                if !patch.name.is_empty() {
                    p.push("name".to_owned());
                }
                if patch.default.is_some() {
                    p.push("default".to_owned());
                }
                p
            }
        };
        let (mut name, mut is_default) = (None, None);
        for path in &paths {
            let resolved = field_mask::resolve(&desc, path).map_err(|m| ServiceError::invalid("update_mask", m))?;
            match resolved.top.as_str() {
                "name" => {
                    validate::group_name(&patch.name)?;
                    name = Some(patch.name.as_str());
                }
                "default" => is_default = Some(patch.default.unwrap_or(false)),
                _ => {}
            }
        }
        let fields: Vec<&str> = paths.iter().map(String::as_str).collect();
        let r = self.record(&ctx, "group.update", &caller, None, Some(id), &fields).await;
        let rec = self
            .core
            .store
            .update_group(app_id, id, name, is_default, &r)
            .await
            .map_err(ServiceError::from)?
            .ok_or(ServiceError::NotFound("group"))?;
        Ok(Response::new(to_pb(rec)))
    }

    async fn delete_group(&self, request: Request<pb::DeleteGroupRequest>) -> Result<Response<Empty>, Status> {
        let (ctx, req) = Ctx::split(request);
        let caller = self.supervisor(&ctx).await?;
        let app_id = caller.app_id;
        let id = validate::id(&req.groups_id, "groups_id")?;
        let r = self.record(&ctx, "group.delete", &caller, None, Some(id), &[]).await;
        if !self.core.store.delete_group(app_id, id, &r).await.map_err(ServiceError::from)? {
            return Err(ServiceError::NotFound("group").into());
        }
        Ok(Response::new(Empty {}))
    }

    async fn add_member(&self, request: Request<pb::AddMemberRequest>) -> Result<Response<Empty>, Status> {
        let (ctx, req) = Ctx::split(request);
        let caller = self.supervisor(&ctx).await?;
        let app_id = caller.app_id;
        let group_id = validate::id(&req.groups_id, "groups_id")?;
        let user_id = validate::id(&req.users_id, "users_id")?;
        let r = self.record(&ctx, "group.member_add", &caller, Some(user_id), Some(group_id), &["groups"]).await;
        if !self.core.store.add_member(app_id, group_id, user_id, &r).await.map_err(ServiceError::from)? {
            return Err(ServiceError::NotFound("group or user").into());
        }
        Ok(Response::new(Empty {}))
    }

    async fn remove_member(&self, request: Request<pb::RemoveMemberRequest>) -> Result<Response<Empty>, Status> {
        let (ctx, req) = Ctx::split(request);
        let caller = self.supervisor(&ctx).await?;
        let app_id = caller.app_id;
        let group_id = validate::id(&req.groups_id, "groups_id")?;
        let user_id = validate::id(&req.users_id, "users_id")?;
        let r = self.record(&ctx, "group.member_remove", &caller, Some(user_id), Some(group_id), &["groups"]).await;
        if !self.core.store.remove_member(app_id, group_id, user_id, &r).await.map_err(ServiceError::from)? {
            return Err(ServiceError::NotFound("membership").into());
        }
        Ok(Response::new(Empty {}))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let (ctx, req) = Ctx::split(request);
        let caller = self.supervisor(&ctx).await?;
        let app_id = caller.app_id;
        let group = self.group(app_id, &req.groups_id).await?;
        let size = paging::page_size(req.page_size)?;
        // Bound to the group: a token cannot go on through another's members.
        let tokens =
            Tokens { keyring: &self.core.keyring, kind: "member-page", scope: format!("{app_id}:{}", group.id) };
        let after = tokens.after_id(&req.page_token)?;
        let mut members = self
            .core
            .store
            .list_members(app_id, group.id, after, paging::fetch(size))
            .await
            .map_err(ServiceError::from)?;
        let more = paging::cut(&mut members, size);
        // Each member's membership is disclosed: one record per member on the
        // page, so a user's accounting of disclosures finds it.
        let mut records = Vec::with_capacity(members.len());
        for member in &members {
            let mut r = self.core.record(&ctx, "group.members_read", Some(&caller), app_id).await;
            r.subject_id = Some(*member);
            r.object_id = Some(group.id);
            r.fields = vec!["groups".into()];
            records.push(r);
        }
        self.core.trail.record_all(records).await.map_err(ServiceError::from)?;
        let next_page_token = tokens.next_id(members.last().copied(), more);
        Ok(Response::new(pb::ListMembersResponse {
            users_ids: members.iter().map(Uuid::to_string).collect(),
            next_page_token,
        }))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let (ctx, req) = Ctx::split(request);
        let caller = self.supervisor(&ctx).await?;
        let app_id = caller.app_id;
        // Another application's id, or anything that is no id, names nothing
        // this caller can see.
        if !req.app_id.is_empty() && Uuid::try_parse(&req.app_id).ok() != Some(app_id) {
            return Err(ServiceError::NotFound("application").into());
        }
        let size = paging::page_size(req.page_size)?;
        let tokens =
            Tokens { keyring: &self.core.keyring, kind: "group-page", scope: format!("{app_id}:{}", req.default_only) };
        let after = tokens.after_id(&req.page_token)?;
        let mut groups = self
            .core
            .store
            .list_groups(app_id, req.default_only, after, paging::fetch(size))
            .await
            .map_err(ServiceError::from)?;
        let more = paging::cut(&mut groups, size);
        let next_page_token = tokens.next_id(groups.last().map(|g| g.id), more);
        Ok(Response::new(pb::ListGroupsResponse { groups: groups.into_iter().map(to_pb).collect(), next_page_token }))
    }
}
