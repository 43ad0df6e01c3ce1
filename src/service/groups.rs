//! `usersvc.v1.GroupService`: supervisors only.

use std::sync::Arc;

use pbjson_types::Empty;
use tonic::{Request, Response, Status, metadata::MetadataMap};
use uuid::Uuid;

use super::error::{ServiceError, ServiceResult};
use super::{Core, field_mask, validate};
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

    /// The application of a supervisor's call.
    async fn supervisor(&self, md: &MetadataMap) -> ServiceResult<Uuid> {
        let (caller, me) = self.core.auth.signed_in(md).await?;
        if !me.supervisor {
            return Err(ServiceError::Forbidden(
                "only a supervisor may manage groups",
            ));
        }
        Ok(caller.app_id)
    }

    async fn group(&self, app_id: Uuid, raw_id: &str) -> ServiceResult<GroupRecord> {
        let id = validate::id(raw_id, "groups_id")?;
        self.core
            .store
            .get_group(app_id, id)
            .await?
            .ok_or(ServiceError::NotFound("group"))
    }
}

fn to_pb(g: GroupRecord) -> pb::Group {
    pb::Group {
        groups_id: g.id.to_string(),
        name: g.name,
        default: Some(g.is_default),
    }
}

#[tonic::async_trait]
impl GroupService for GroupSvc {
    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::Group>, Status> {
        let (md, _, req) = request.into_parts();
        let app_id = self.supervisor(&md).await?;
        let g = req.group.unwrap_or_default();
        validate::group_name(&g.name)?;
        let rec = self
            .core
            .store
            .create_group(app_id, Uuid::now_v7(), &g.name, g.default.unwrap_or(false))
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(to_pb(rec)))
    }

    async fn get_group(
        &self,
        request: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::Group>, Status> {
        let (md, _, req) = request.into_parts();
        let app_id = self.supervisor(&md).await?;
        Ok(Response::new(to_pb(
            self.group(app_id, &req.groups_id).await?,
        )))
    }

    async fn update_group(
        &self,
        request: Request<pb::UpdateGroupRequest>,
    ) -> Result<Response<pb::Group>, Status> {
        let (md, _, req) = request.into_parts();
        let app_id = self.supervisor(&md).await?;
        let patch = req.group.unwrap_or_default();
        let raw_id = if req.groups_id.is_empty() {
            &patch.groups_id
        } else {
            &req.groups_id
        };
        let mut rec = self.group(app_id, raw_id).await?;
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
        for path in &paths {
            let resolved = field_mask::resolve(&desc, path)
                .map_err(|m| ServiceError::invalid("update_mask", m))?;
            match resolved.top.as_str() {
                "name" => {
                    validate::group_name(&patch.name)?;
                    rec.name = patch.name.clone();
                }
                "default" => rec.is_default = patch.default.unwrap_or(false),
                _ => {}
            }
        }
        if !self
            .core
            .store
            .update_group(app_id, &rec)
            .await
            .map_err(ServiceError::from)?
        {
            return Err(ServiceError::NotFound("group").into());
        }
        Ok(Response::new(to_pb(rec)))
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<Empty>, Status> {
        let (md, _, req) = request.into_parts();
        let app_id = self.supervisor(&md).await?;
        let id = validate::id(&req.groups_id, "groups_id")?;
        if !self
            .core
            .store
            .delete_group(app_id, id)
            .await
            .map_err(ServiceError::from)?
        {
            return Err(ServiceError::NotFound("group").into());
        }
        Ok(Response::new(Empty {}))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<Empty>, Status> {
        let (md, _, req) = request.into_parts();
        let app_id = self.supervisor(&md).await?;
        let group_id = validate::id(&req.groups_id, "groups_id")?;
        let user_id = validate::id(&req.users_id, "users_id")?;
        if !self
            .core
            .store
            .add_member(app_id, group_id, user_id)
            .await
            .map_err(ServiceError::from)?
        {
            return Err(ServiceError::NotFound("group or user").into());
        }
        Ok(Response::new(Empty {}))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<Empty>, Status> {
        let (md, _, req) = request.into_parts();
        let app_id = self.supervisor(&md).await?;
        let group_id = validate::id(&req.groups_id, "groups_id")?;
        let user_id = validate::id(&req.users_id, "users_id")?;
        if !self
            .core
            .store
            .remove_member(app_id, group_id, user_id)
            .await
            .map_err(ServiceError::from)?
        {
            return Err(ServiceError::NotFound("membership").into());
        }
        Ok(Response::new(Empty {}))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let (md, _, req) = request.into_parts();
        let app_id = self.supervisor(&md).await?;
        let group = self.group(app_id, &req.groups_id).await?;
        let members = self
            .core
            .store
            .list_members(app_id, group.id)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListMembersResponse {
            users_ids: members.iter().map(Uuid::to_string).collect(),
        }))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let (md, _, req) = request.into_parts();
        let app_id = self.supervisor(&md).await?;
        // Another application's id, or anything that is no id, names nothing
        // this caller can see.
        if !req.app_id.is_empty() && Uuid::try_parse(&req.app_id).ok() != Some(app_id) {
            return Err(ServiceError::NotFound("application").into());
        }
        let groups = self
            .core
            .store
            .list_groups(app_id, req.default_only)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: groups.into_iter().map(to_pb).collect(),
        }))
    }
}
