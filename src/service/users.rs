//! `usersvc.v1.UserService`.

use std::sync::Arc;

use pbjson_types::Empty;
use secrecy::{ExposeSecret, SecretString};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::error::{ServiceError, ServiceResult};
use super::{Core, field_mask, profile, validate};
use crate::auth::SessionUser;
use crate::pb::{self, user_service_server::UserService};
use crate::schema;
use crate::store::{NewUser, UserChange};

/// How often an update re-reads and retries when another update of the same
/// user committed first.
const UPDATE_ATTEMPTS: usize = 8;

#[derive(Clone)]
pub struct UserSvc {
    core: Arc<Core>,
}

impl UserSvc {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

/// A user acts on their own record; a supervisor on any of the application.
/// Decided before the record is read, so the answer reveals nothing about
/// whether another user exists.
fn authorise(me: &SessionUser, target: Uuid) -> ServiceResult<()> {
    if me.user_id == target || me.supervisor {
        Ok(())
    } else {
        Err(ServiceError::Forbidden(
            "a user may only act on their own record",
        ))
    }
}

impl UserSvc {
    async fn create(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: pb::CreateUserRequest,
    ) -> ServiceResult<pb::User> {
        let core = &self.core;
        let caller = core.auth.maybe_signed_in(md).await?;
        let mut user = req.user.unwrap_or_default();
        let username_key = validate::username(&user.username)?;
        validate::password(&user.password, core.min_password_chars)?;
        validate::profile(&user)?;
        let active = if caller.is_supervisor() {
            user.active.unwrap_or(true)
        } else {
            true
        };
        let password = SecretString::from(std::mem::take(&mut user.password));
        let password_hash = core.hasher.hash(password).await?;
        // Self sign-up signs the new user in; a supervisor creating a user
        // stays themselves.
        let session = (!caller.is_supervisor()).then(|| core.auth.new_session());
        let new = NewUser {
            id: Uuid::now_v7(),
            app_id: caller.app_id,
            username: user.username.clone(),
            username_key,
            password_hash,
            email_key: profile::email_key(&user),
            profile: profile::to_profile(&user)?,
            active,
        };
        let (token, session) = session.unzip();
        let rec = core.store.create_user(new, session).await?;
        tracing::info!(app_id = %rec.app_id, users_id = %rec.id, "user created");
        let mut out = profile::to_user(&rec)?;
        if let Some(token) = token {
            out.session_token = token.expose_secret().to_owned();
        }
        Ok(out)
    }

    async fn get(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: pb::GetUserRequest,
    ) -> ServiceResult<pb::User> {
        let (caller, me) = self.core.auth.signed_in(md).await?;
        let id = validate::id(&req.users_id, "users_id")?;
        authorise(&me, id)?;
        let rec = self
            .core
            .store
            .get_user(caller.app_id, id)
            .await?
            .ok_or(ServiceError::NotFound("user"))?;
        profile::to_user(&rec)
    }

    async fn update(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: pb::UpdateUserRequest,
    ) -> ServiceResult<pb::User> {
        let core = &self.core;
        let (caller, me) = core.auth.signed_in(md).await?;
        let patch = req.user.unwrap_or_default();
        let raw_id = if req.users_id.is_empty() {
            &patch.users_id
        } else {
            &req.users_id
        };
        let id = validate::id(raw_id, "users_id")?;
        authorise(&me, id)?;

        let user_desc = schema::message("User").ok_or(ServiceError::NotFound("schema"))?;
        let patch_json = serde_json::to_value(&patch)
            .map_err(|e| ServiceError::invalid("user", e.to_string()))?;
        let paths: Vec<String> = match &req.update_mask {
            Some(mask) => mask.paths.clone(),
            // No mask: every field the request fills (AIP-134).
            None => {
                let mut p: Vec<String> = patch_json
                    .as_object()
                    .map(|o| o.keys().map(|k| schema::camel_to_snake(k)).collect())
                    .unwrap_or_default();
                p.extend(
                    ["username", "password"]
                        .iter()
                        .filter(|f| {
                            (**f == "username" && !patch.username.is_empty())
                                || (**f == "password" && !patch.password.is_empty())
                        })
                        .map(|f| (*f).to_owned()),
                );
                p
            }
        };

        let mut profile_paths = Vec::new();
        let (mut set_username, mut set_password, mut set_active) = (false, false, false);
        for path in &paths {
            let resolved = field_mask::resolve(&user_desc, path)
                .map_err(|m| ServiceError::invalid("update_mask", m))?;
            match resolved.top.as_str() {
                t if schema::USER_OUTPUT_ONLY.contains(&t) => {}
                "username" => set_username = true,
                "password" => set_password = true,
                // Only a supervisor may (de)activate; from anyone else it is
                // treated as server-managed, as old clients send it back.
                "active" => set_active = caller.is_supervisor(),
                _ => profile_paths.push(resolved.json),
            }
        }

        let username = if set_username {
            let key = validate::username(&patch.username)?;
            Some((patch.username.clone(), key))
        } else {
            None
        };
        let password_hash = if set_password {
            validate::password(&patch.password, core.min_password_chars)?;
            Some(
                core.hasher
                    .hash(SecretString::from(patch.password.clone()))
                    .await?,
            )
        } else {
            None
        };

        for _ in 0..UPDATE_ATTEMPTS {
            let rec = core
                .store
                .get_user(caller.app_id, id)
                .await?
                .ok_or(ServiceError::NotFound("user"))?;
            let mut merged_json = rec.profile.clone();
            for path in &profile_paths {
                field_mask::apply(&mut merged_json, &patch_json, path);
            }
            let merged: pb::User = serde_json::from_value(merged_json)
                .map_err(|e| ServiceError::invalid("user", e.to_string()))?;
            validate::profile(&merged)?;
            let active = if set_active {
                patch.active.unwrap_or(true)
            } else {
                rec.active
            };
            let change = UserChange {
                expected_version: rec.version,
                username: username.clone(),
                password_hash: password_hash.clone(),
                email_key: profile::email_key(&merged),
                profile: profile::to_profile(&merged)?,
                active,
                keep_session: (me.user_id == id).then_some(me.session_id),
            };
            if let Some(updated) = core.store.update_user(caller.app_id, id, change).await? {
                tracing::info!(app_id = %caller.app_id, users_id = %id, paths = paths.len(), "user updated");
                return profile::to_user(&updated);
            }
        }
        Err(ServiceError::Contention)
    }

    async fn delete(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: pb::DeleteUserRequest,
    ) -> ServiceResult<()> {
        let (caller, me) = self.core.auth.signed_in(md).await?;
        let id = validate::id(&req.users_id, "users_id")?;
        authorise(&me, id)?;
        if !self.core.store.delete_user(caller.app_id, id).await? {
            return Err(ServiceError::NotFound("user"));
        }
        tracing::info!(app_id = %caller.app_id, users_id = %id, "user deleted");
        Ok(())
    }

    async fn forgot_username(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: pb::ForgotUsernameRequest,
    ) -> ServiceResult<()> {
        let app_id = self.core.auth.app(md).await?;
        if req.email.trim().is_empty() {
            return Err(ServiceError::invalid("email", "is required"));
        }
        if !validate::looks_like_email(req.email.trim()) {
            return Err(ServiceError::invalid("email", "is not an email address"));
        }
        let queued = self
            .core
            .store
            .queue_username_reminders(app_id, &profile::fold(&req.email))
            .await?;
        tracing::debug!(%app_id, queued, "username reminders queued");
        Ok(())
    }

    async fn list_groups(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: pb::ListUserGroupsRequest,
    ) -> ServiceResult<pb::ListUserGroupsResponse> {
        let (caller, me) = self.core.auth.signed_in(md).await?;
        let id = validate::id(&req.users_id, "users_id")?;
        authorise(&me, id)?;
        if me.user_id != id && self.core.store.get_user(caller.app_id, id).await?.is_none() {
            return Err(ServiceError::NotFound("user"));
        }
        let groups = self.core.store.list_user_groups(caller.app_id, id).await?;
        Ok(pb::ListUserGroupsResponse {
            groups: groups
                .into_iter()
                .map(|g| pb::GroupRef {
                    groups_id: g.id.to_string(),
                    name: g.name,
                })
                .collect(),
        })
    }

    async fn sign_in(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: pb::SignInRequest,
    ) -> ServiceResult<pb::User> {
        let core = &self.core;
        let app_id = core.auth.app(md).await?;
        if req.username.is_empty() {
            return Err(ServiceError::invalid("username", "is required"));
        }
        if req.password.is_empty() {
            return Err(ServiceError::invalid("password", "is required"));
        }
        let key = profile::fold(&req.username);
        let creds = if req.username.chars().count() <= validate::MAX_USERNAME_CHARS {
            core.store.credentials(app_id, &key).await?
        } else {
            None
        };
        // Unknown, wrong and inactive all verify once and answer alike.
        let (user_id, active, phc) = match creds {
            Some(c) => (Some(c.user_id), c.active, Some(c.password_hash)),
            None => (None, false, None),
        };
        let ok = core
            .hasher
            .verify(SecretString::from(req.password), phc)
            .await?;
        let user_id = match user_id {
            Some(id) if ok && active => id,
            _ => {
                tracing::info!(%app_id, "sign-in refused");
                return Err(ServiceError::BadCredentials);
            }
        };
        let (token, session) = core.auth.new_session();
        core.store.create_session(app_id, user_id, session).await?;
        let rec = core
            .store
            .get_user(app_id, user_id)
            .await?
            .ok_or(ServiceError::BadCredentials)?;
        tracing::info!(%app_id, users_id = %user_id, "signed in");
        let mut out = profile::to_user(&rec)?;
        out.session_token = token.expose_secret().to_owned();
        Ok(out)
    }

    async fn sign_out(&self, md: &tonic::metadata::MetadataMap) -> ServiceResult<()> {
        let (caller, me) = self.core.auth.signed_in(md).await?;
        self.core
            .store
            .delete_session(caller.app_id, me.session_id)
            .await?;
        tracing::info!(app_id = %caller.app_id, users_id = %me.user_id, "signed out");
        Ok(())
    }
}

#[tonic::async_trait]
impl UserService for UserSvc {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let (md, _, req) = request.into_parts();
        Ok(Response::new(self.create(&md, req).await?))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let (md, _, req) = request.into_parts();
        Ok(Response::new(self.get(&md, req).await?))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let (md, _, req) = request.into_parts();
        Ok(Response::new(self.update(&md, req).await?))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<Empty>, Status> {
        let (md, _, req) = request.into_parts();
        self.delete(&md, req).await?;
        Ok(Response::new(Empty {}))
    }

    async fn forgot_username(
        &self,
        request: Request<pb::ForgotUsernameRequest>,
    ) -> Result<Response<Empty>, Status> {
        let (md, _, req) = request.into_parts();
        self.forgot_username(&md, req).await?;
        Ok(Response::new(Empty {}))
    }

    async fn list_user_groups(
        &self,
        request: Request<pb::ListUserGroupsRequest>,
    ) -> Result<Response<pb::ListUserGroupsResponse>, Status> {
        let (md, _, req) = request.into_parts();
        Ok(Response::new(self.list_groups(&md, req).await?))
    }

    async fn sign_in(
        &self,
        request: Request<pb::SignInRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let (md, _, req) = request.into_parts();
        Ok(Response::new(self.sign_in(&md, req).await?))
    }

    async fn sign_out(
        &self,
        request: Request<pb::SignOutRequest>,
    ) -> Result<Response<Empty>, Status> {
        let (md, _, _) = request.into_parts();
        self.sign_out(&md).await?;
        Ok(Response::new(Empty {}))
    }
}
