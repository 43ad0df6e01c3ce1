//! `UserService.ListDisclosures`: a user's accounting of disclosures, read
//! from the trail a page at a time.

use super::context::Ctx;
use super::error::{ServiceError, ServiceResult};
use super::paging::{self, Tokens};
use super::users::UserSvc;
use super::validate;
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::crypto::Keyring;
use crate::pb;
use crate::store::AuditFilter;

impl UserSvc {
    pub(super) async fn list_disclosures(
        &self,
        ctx: &Ctx,
        req: pb::ListDisclosuresRequest,
    ) -> ServiceResult<pb::ListDisclosuresResponse> {
        let core = &self.core;
        let (caller, me) = core.auth.signed_in(&ctx.md).await?;
        let id = validate::id(&req.users_id, "users_id")?;
        self.authorise(caller.app_id, &me, id).await?;
        if core.store.get_user(caller.app_id, id).await?.is_none() {
            return Err(ServiceError::NotFound("user"));
        }
        let size = paging::page_size(req.page_size)?;
        let tokens =
            Tokens { keyring: &core.keyring, kind: "disclosure-page", scope: format!("{}:{id}", caller.app_id) };
        let after = match req.page_token.as_str() {
            "" => 0,
            token => i64::from_be_bytes(tokens.cursor(token, 8)?.try_into().unwrap_or_default()),
        };
        // The listing discloses who saw the record and from where.
        let mut r = core.record(ctx, "user.disclosures_read", Some(&caller), caller.app_id).await;
        r.subject_id = Some(id);
        r.fields = vec!["trail".into(), "client_addr".into()];
        core.trail.record(r).await?;

        let filter = AuditFilter {
            app_id: Some(caller.app_id),
            subject_id: Some(id),
            since: None,
            after_seq: after,
            limit: i64::from(size) + 1,
        };
        let mut rows = core.store.audit_records(&filter).await?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => tokens.issue(&last.seq.to_be_bytes()),
            _ => String::new(),
        };
        let mut disclosures = Vec::with_capacity(rows.len());
        for s in rows {
            disclosures.push(disclosure(&core.keyring, caller.app_id, s.record).await);
        }
        Ok(pb::ListDisclosuresResponse { disclosures, next_page_token })
    }
}

/// A trail record as its subject sees it, the client address opened.
pub(crate) async fn disclosure(keyring: &Keyring, app_id: Uuid, r: AuditRecord) -> pb::Disclosure {
    let client_addr = match &r.client_addr {
        Some(ct) => keyring
            .open(app_id, r.id, "client_addr", ct)
            .await
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .unwrap_or_default(),
        None => String::new(),
    };
    pb::Disclosure {
        at: r.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        action: r.action,
        actor: r.actor,
        actor_id: r.actor_id.map(|a| a.to_string()).unwrap_or_default(),
        fields: r.fields,
        outcome: r.outcome,
        client_addr,
        request_id: r.request_id.unwrap_or_default(),
        object_id: r.object_id.map(|o| o.to_string()).unwrap_or_default(),
    }
}
