//! `UserService.ListDisclosures`: a user's accounting of disclosures, read
//! from the trail a page at a time.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

use super::context::Ctx;
use super::error::{ServiceError, ServiceResult};
use super::users::UserSvc;
use super::validate;
use crate::pb;
use crate::store::AuditFilter;

/// Records a page holds unless the caller asks for fewer.
const DEFAULT_PAGE: i32 = 100;
/// Records a page holds at most.
const MAX_PAGE: i32 = 1000;
/// Bytes of the keyed hash that makes a page token tamper-proof.
const TAG_BYTES: usize = 16;

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
        let size = match req.page_size {
            0 => DEFAULT_PAGE,
            n if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(ServiceError::invalid("page_size", format!("must be from 1 to {MAX_PAGE}"))),
        };
        let after = if req.page_token.is_empty() { 0 } else { self.page_after(caller.app_id, id, &req.page_token)? };
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
            Some(last) if more => self.page_token(caller.app_id, id, last.seq),
            _ => String::new(),
        };
        let mut disclosures = Vec::with_capacity(rows.len());
        for s in rows {
            let r = s.record;
            let client_addr = match &r.client_addr {
                Some(ct) => core
                    .keyring
                    .open(caller.app_id, r.id, "client_addr", ct)
                    .await
                    .map(|p| String::from_utf8_lossy(&p).into_owned())
                    .unwrap_or_default(),
                None => String::new(),
            };
            disclosures.push(pb::Disclosure {
                at: r.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                action: r.action,
                actor: r.actor,
                actor_id: r.actor_id.map(|a| a.to_string()).unwrap_or_default(),
                fields: r.fields,
                outcome: r.outcome,
                client_addr,
                request_id: r.request_id.unwrap_or_default(),
                object_id: r.object_id.map(|o| o.to_string()).unwrap_or_default(),
            });
        }
        Ok(pb::ListDisclosuresResponse { disclosures, next_page_token })
    }

    /// The token of the page after `seq`: the sequence number and a keyed
    /// hash binding it to this user of this application.
    fn page_token(&self, app_id: Uuid, user_id: Uuid, seq: i64) -> String {
        let mut raw = seq.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.page_tag(app_id, user_id, seq));
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn page_tag(&self, app_id: Uuid, user_id: Uuid, seq: i64) -> Vec<u8> {
        let mut tag = self.core.keyring.global_index("disclosure-page", &format!("{app_id}:{user_id}:{seq}"));
        tag.truncate(TAG_BYTES);
        tag
    }

    /// The sequence number a page token continues after; a token not issued
    /// for this user of this application is refused.
    fn page_after(&self, app_id: Uuid, user_id: Uuid, token: &str) -> ServiceResult<i64> {
        let invalid = || ServiceError::invalid("page_token", "is not a token of this listing");
        let raw = URL_SAFE_NO_PAD.decode(token.as_bytes()).map_err(|_| invalid())?;
        let (seq, tag) = raw.split_at_checked(8).ok_or_else(invalid)?;
        let seq = i64::from_be_bytes(seq.try_into().map_err(|_| invalid())?);
        let want = self.page_tag(app_id, user_id, seq);
        // Not a secret compared: a forged tag only earns a refusal.
        if tag != want.as_slice() {
            return Err(invalid());
        }
        Ok(seq)
    }
}
