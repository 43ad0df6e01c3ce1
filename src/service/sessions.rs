//! The session calls of `usersvc.v1.UserService`: sign-out, a user's
//! sessions listed and ended, and whose a bearer token is. (Sign-in, which
//! starts one, is with the users in `users.rs`.)

use super::context::Ctx;
use super::error::{ServiceError, ServiceResult};
use super::paging::{self, Tokens};
use super::users::UserSvc;
use super::{profile, validate};
use crate::pb;
use uuid::Uuid;

impl UserSvc {
    pub(super) async fn sign_out(&self, ctx: &Ctx) -> ServiceResult<()> {
        let (caller, me) = self.core.auth.signed_in(&ctx.md).await?;
        if me.is_service() {
            return Err(ServiceError::Forbidden("service tokens are revoked with usersvc token revoke"));
        }
        let mut r = self.core.record(ctx, "session.sign_out", Some(&caller), caller.app_id).await;
        r.subject_id = Some(me.user_id);
        self.core.store.delete_sessions(caller.app_id, me.user_id, Some(me.session_id), Some(&r)).await?;
        tracing::info!(app_id = %caller.app_id, users_id = %me.user_id, "signed out");
        Ok(())
    }

    pub(super) async fn list_sessions(
        &self,
        ctx: &Ctx,
        req: pb::ListSessionsRequest,
    ) -> ServiceResult<pb::ListSessionsResponse> {
        let (caller, me) = self.core.auth.signed_in(&ctx.md).await?;
        let id = if req.users_id.is_empty() { me.user_id } else { validate::id(&req.users_id, "users_id")? };
        self.authorise(caller.app_id, &me, id).await?;
        let size = paging::page_size(req.page_size)?;
        let tokens =
            Tokens { keyring: &self.core.keyring, kind: "session-page", scope: format!("{}:{id}", caller.app_id) };
        let after = tokens.after_id(&req.page_token)?;
        let idle = self.core.auth.policy().idle_timeout;
        let mut rows = self.core.store.list_sessions(caller.app_id, id, idle, after, paging::fetch(size)).await?;
        let more = paging::cut(&mut rows, size);
        let mut r = self.core.record(ctx, "session.list", Some(&caller), caller.app_id).await;
        r.subject_id = Some(id);
        r.fields = vec!["sessions".into()];
        self.core.trail.record(r).await?;
        let next_page_token = tokens.next_id(rows.last().map(|s| s.id), more);
        Ok(pb::ListSessionsResponse {
            next_page_token,
            sessions: rows
                .into_iter()
                .map(|s| pb::Session {
                    session_id: s.id.to_string(),
                    created_at: profile::format_time(s.created_at),
                    last_seen_at: profile::format_time(s.last_seen_at),
                    expires_at: profile::format_time(s.expires_at),
                    current: s.id == me.session_id,
                })
                .collect(),
        })
    }

    /// Who the bearer token is: ids and expiry, nothing of the profile.
    pub(super) async fn verify_session(&self, ctx: &Ctx) -> ServiceResult<pb::VerifySessionResponse> {
        let (caller, me) = self.core.auth.signed_in(&ctx.md).await?;
        if me.is_service() {
            return Ok(pb::VerifySessionResponse {
                session_id: me.session_id.to_string(),
                supervisor: me.supervisor,
                principal: "service".into(),
                ..Default::default()
            });
        }
        let idle = self.core.auth.policy().idle_timeout;
        // The one session, not the user's every one: the page of one that
        // starts just before its id (ids compare as big-endian integers, in
        // the stores as here).
        let just_before = Uuid::from_u128(me.session_id.as_u128().wrapping_sub(1));
        let sessions = self.core.store.list_sessions(caller.app_id, me.user_id, idle, Some(just_before), 1).await?;
        // Ended between the lookup and now: as good as never there.
        let session = sessions
            .into_iter()
            .find(|s| s.id == me.session_id)
            .ok_or(ServiceError::Auth(crate::auth::caller::AuthError::InvalidToken))?;
        let idle_end = chrono::Duration::from_std(idle).map(|d| session.last_seen_at + d).unwrap_or(session.expires_at);
        Ok(pb::VerifySessionResponse {
            user_id: me.user_id.to_string(),
            users_id: me.user_id.to_string(),
            session_id: me.session_id.to_string(),
            expires_at: profile::format_time(idle_end.min(session.expires_at)),
            max_expires_at: profile::format_time(session.expires_at),
            supervisor: me.supervisor,
            principal: "user".into(),
        })
    }

    pub(super) async fn revoke_session(&self, ctx: &Ctx, req: pb::RevokeSessionRequest) -> ServiceResult<()> {
        let core = &self.core;
        let (caller, me) = core.auth.signed_in(&ctx.md).await?;
        let (owner, session) = if req.session_id.is_empty() {
            let id = if req.users_id.is_empty() { me.user_id } else { validate::id(&req.users_id, "users_id")? };
            // A service token has no sessions of its own to end.
            if me.is_service() && id == me.user_id {
                return Err(ServiceError::NotFound("session"));
            }
            (id, None)
        } else {
            let sid = validate::id(&req.session_id, "session_id")?;
            // Another user's session is as good as absent to a non-supervisor.
            let owner = core.store.session_owner(caller.app_id, sid).await?.ok_or(ServiceError::NotFound("session"))?;
            if owner != me.user_id && !me.supervisor {
                return Err(if me.mfa_pending { ServiceError::MfaRequired } else { ServiceError::NotFound("session") });
            }
            (owner, Some(sid))
        };
        self.authorise(caller.app_id, &me, owner).await?;
        let mut r = core.record(ctx, "session.revoke", Some(&caller), caller.app_id).await;
        r.subject_id = Some(owner);
        let n = core.store.delete_sessions(caller.app_id, owner, session, Some(&r)).await?;
        if session.is_some() && n == 0 {
            return Err(ServiceError::NotFound("session"));
        }
        Ok(())
    }
}
