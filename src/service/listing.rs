//! `UserService.ListUsers`: a supervisor's (or service token's) listing of
//! the application's users, a page at a time, searched through the blind
//! indexes, each page recorded as the disclosure it is.

use uuid::Uuid;

use super::context::Ctx;
use super::error::{ServiceError, ServiceResult};
use super::paging::{self, Tokens};
use super::profile;
use super::users::UserSvc;
use crate::pb;
use crate::store::UserListFilter;

impl UserSvc {
    pub(super) async fn list_users(
        &self,
        ctx: &Ctx,
        req: pb::ListUsersRequest,
    ) -> ServiceResult<pb::ListUsersResponse> {
        let core = &self.core;
        let (caller, me) = core.auth.signed_in(&ctx.md).await?;
        if me.mfa_pending {
            return Err(ServiceError::MfaRequired);
        }
        if !me.supervisor {
            return Err(ServiceError::Forbidden("only a supervisor may list users"));
        }
        let app_id = caller.app_id;
        let size = paging::page_size(req.page_size)?;
        let mut filter = UserListFilter { active: req.active, ..Default::default() };
        if !req.email.is_empty() {
            filter.email_bidx = Some(core.email_index(app_id, &req.email).await?);
        }
        if !req.username.is_empty() {
            filter.username_bidx = Some(core.username_index(app_id, &req.username).await?);
        }
        if !req.mrn.is_empty() {
            filter.mrn_bidx =
                Some(super::mrns::index(&core.keyring, app_id, &req.mrn).await.map_err(ServiceError::Crypto)?);
        }
        if !req.groups_id.is_empty() {
            let gid =
                Uuid::parse_str(&req.groups_id).map_err(|_| ServiceError::invalid("groups_id", "is not a group id"))?;
            core.store.get_group(app_id, gid).await?.ok_or(ServiceError::NotFound("group"))?;
            filter.group_id = Some(gid);
        }
        // The token is bound to the application and to these filters.
        let mut scope =
            format!("{app_id}:{:?}:{:?}:{}:{:?}", filter.email_bidx, filter.username_bidx, req.groups_id, req.active);
        // Appended only when given, so that tokens handed out before the
        // filter existed still continue their listings.
        if let Some(mrn) = &filter.mrn_bidx {
            scope += &format!(":mrn:{mrn:?}");
        }
        let tokens = Tokens { keyring: &core.keyring, kind: "user-page", scope };
        let after = tokens.after_id(&req.page_token)?;
        let mut rows = core.store.list_users(app_id, &filter, after, paging::fetch(size)).await?;
        let more = paging::cut(&mut rows, size);
        let mut users = Vec::with_capacity(rows.len());
        let mut records = Vec::with_capacity(rows.len());
        for rec in &rows {
            let user = core.open_user(rec).await?;
            let mut r = core.record(ctx, "user.list", Some(&caller), app_id).await;
            r.subject_id = Some(rec.id);
            r.fields = profile::field_names(&user);
            records.push(r);
            users.push(user);
        }
        // Every user on the page is disclosed: recorded before it leaves.
        core.trail.record_all(records).await?;
        let next_page_token = tokens.next_id(rows.last().map(|r| r.id), more);
        Ok(pb::ListUsersResponse { users, next_page_token })
    }
}
