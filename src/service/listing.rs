//! `UserService.ListUsers`: a supervisor's (or service token's) listing of
//! the application's users, a page at a time, searched through the blind
//! indexes, each page recorded as the disclosure it is.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

use super::context::Ctx;
use super::error::{ServiceError, ServiceResult};
use super::profile;
use super::users::UserSvc;
use crate::pb;
use crate::store::UserListFilter;

/// Users a page holds unless the caller asks for fewer.
const DEFAULT_PAGE: i32 = 100;
/// Users a page holds at most.
const MAX_PAGE: i32 = 1000;
/// Bytes of the keyed hash that makes a page token tamper-proof.
const TAG_BYTES: usize = 16;

impl UserSvc {
    pub(super) async fn list_users(
        &self,
        ctx: &Ctx,
        req: pb::ListUsersRequest,
    ) -> ServiceResult<pb::ListUsersResponse> {
        let core = &self.core;
        let (caller, me) = core.auth.signed_in(&ctx.md).await?;
        if !me.supervisor {
            return Err(ServiceError::Forbidden("only a supervisor may list users"));
        }
        let app_id = caller.app_id;
        let size = match req.page_size {
            0 => DEFAULT_PAGE,
            n if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(ServiceError::invalid("page_size", format!("must be from 1 to {MAX_PAGE}"))),
        };
        let mut filter = UserListFilter { active: req.active, ..Default::default() };
        if !req.email.is_empty() {
            filter.email_bidx = Some(core.email_index(app_id, &req.email).await?);
        }
        if !req.username.is_empty() {
            filter.username_bidx = Some(core.username_index(app_id, &req.username).await?);
        }
        if !req.groups_id.is_empty() {
            let gid =
                Uuid::parse_str(&req.groups_id).map_err(|_| ServiceError::invalid("groups_id", "is not a group id"))?;
            core.store.get_group(app_id, gid).await?.ok_or(ServiceError::NotFound("group"))?;
            filter.group_id = Some(gid);
        }
        // The token is bound to the application and to these filters.
        let scope = format!(
            "{app_id}:{}:{}:{}:{:?}",
            hex(filter.email_bidx.as_deref()),
            hex(filter.username_bidx.as_deref()),
            req.groups_id,
            req.active
        );
        let after =
            if req.page_token.is_empty() { None } else { Some(self.users_page_after(&scope, &req.page_token)?) };
        let mut rows = core.store.list_users(app_id, &filter, after, i64::from(size) + 1).await?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
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
        let next_page_token = match rows.last() {
            Some(last) if more => self.users_page_token(&scope, last.id),
            _ => String::new(),
        };
        Ok(pb::ListUsersResponse { users, next_page_token })
    }

    fn users_page_token(&self, scope: &str, after: Uuid) -> String {
        let mut raw = after.as_bytes().to_vec();
        raw.extend_from_slice(&self.users_page_tag(scope, after));
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn users_page_tag(&self, scope: &str, after: Uuid) -> Vec<u8> {
        let mut tag = self.core.keyring.global_index("user-page", &format!("{scope}:{after}"));
        tag.truncate(TAG_BYTES);
        tag
    }

    /// The user a page token continues after; a token not issued for this
    /// listing (application and filters) is refused.
    fn users_page_after(&self, scope: &str, token: &str) -> ServiceResult<Uuid> {
        let invalid = || ServiceError::invalid("page_token", "is not a token of this listing");
        let raw = URL_SAFE_NO_PAD.decode(token.as_bytes()).map_err(|_| invalid())?;
        let (id, tag) = raw.split_at_checked(16).ok_or_else(invalid)?;
        let id = Uuid::from_slice(id).map_err(|_| invalid())?;
        // Not a secret compared: a forged tag only earns a refusal.
        if tag != self.users_page_tag(scope, id).as_slice() {
            return Err(invalid());
        }
        Ok(id)
    }
}

fn hex(b: Option<&[u8]>) -> String {
    b.map(|b| b.iter().map(|x| format!("{x:02x}")).collect()).unwrap_or_default()
}
