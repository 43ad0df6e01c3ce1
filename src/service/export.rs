//! A user's whole record as one JSON document, in the form `usersvc
//! import` reads: for the right of access (the user's own copy, over
//! `ExportUser`) and for moving an application elsewhere (the operator's
//! `usersvc export`, which alone adds the password hash).

use std::time::Duration;

use serde_json::{Value, json};

use super::context::Ctx;
use super::disclosures::disclosure;
use super::error::{ServiceError, ServiceResult};
use super::passkeys::shown_passkeys;
use super::users::UserSvc;
use super::{profile, validate};
use crate::crypto::Keyring;
use crate::pb;
use uuid::Uuid;

use crate::store::{AuditFilter, Store, UserRecord, UserSecrets};

/// Items read per round trip while a document is put together.
const CHUNK: i64 = 500;

pub struct Exporter<'a> {
    pub store: &'a dyn Store,
    pub keyring: &'a Keyring,
    /// Sessions unused for this long are over, and not listed.
    pub idle_timeout: Duration,
}

impl Exporter<'_> {
    /// The document of one user, from its row and its secrets (read by the
    /// caller, a page at a time for an application); the password hash
    /// only when `with_hash`.
    pub async fn document(&self, rec: &UserRecord, secrets: &UserSecrets, with_hash: bool) -> ServiceResult<Value> {
        let app_id = rec.app_id;
        let plain = self
            .keyring
            .open(app_id, rec.id, profile::PROFILE_FIELD, &rec.profile_ct)
            .await
            .map_err(ServiceError::Crypto)?;
        // Carries `active` and the times too.
        let user = profile::to_user(rec, &plain)?;
        let mut doc = serde_json::to_value(&user).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let username = self
            .keyring
            .open(app_id, rec.id, profile::USERNAME_FIELD, &secrets.username_ct)
            .await
            .map_err(ServiceError::Crypto)?;
        doc["username"] = String::from_utf8_lossy(&username).into_owned().into();
        if with_hash {
            doc["passwordHash"] = secrets.password_hash.clone().into();
        }
        doc["supervisor"] = rec.supervisor.into();

        let groups = every_page(|after| self.store.list_user_groups(app_id, rec.id, after, CHUNK), |g| g.id).await?;
        doc["groups"] = groups
            .into_iter()
            .map(|g| json!({"groupsId": g.id.to_string(), "name": g.name}))
            .collect::<Vec<_>>()
            .into();

        let sessions =
            every_page(|after| self.store.list_sessions(app_id, rec.id, self.idle_timeout, after, CHUNK), |s| s.id)
                .await?;
        doc["sessions"] = sessions
            .into_iter()
            .map(|s| {
                json!({
                    "sessionId": s.id.to_string(),
                    "createdAt": profile::format_time(s.created_at),
                    "lastSeenAt": profile::format_time(s.last_seen_at),
                    "expiresAt": profile::format_time(s.expires_at),
                })
            })
            .collect::<Vec<_>>()
            .into();

        doc["secondFactors"] = self.second_factors(app_id, rec.id).await?;

        let mut disclosures = Vec::new();
        let mut filter =
            AuditFilter { app_id: Some(app_id), subject_id: Some(rec.id), since: None, after_seq: 0, limit: CHUNK };
        loop {
            let page = self.store.audit_records(&filter).await?;
            let short = (page.len() as i64) < CHUNK;
            if let Some(last) = page.last() {
                filter.after_seq = last.seq;
            }
            for stored in page {
                let d = disclosure(self.keyring, app_id, stored.record).await;
                disclosures.push(serde_json::to_value(&d).map_err(|e| ServiceError::Internal(e.to_string()))?);
            }
            if short {
                break;
            }
        }
        doc["disclosures"] = disclosures.into();
        Ok(doc)
    }

    /// What the user has of second factors, as they may see it: TOTP set
    /// up or pending (and how many recovery codes are left), their passkeys'
    /// names and times. Never a secret, a code or a credential.
    async fn second_factors(&self, app_id: Uuid, user_id: Uuid) -> ServiceResult<Value> {
        let passkeys = shown_passkeys(self.keyring, self.store, app_id, user_id).await?;
        let mut out = json!({
            "passkeys": serde_json::to_value(passkeys).map_err(|e| ServiceError::Internal(e.to_string()))?,
        });
        if let Some(totp) = self.store.totp_factor(app_id, user_id).await? {
            let left = self.store.recovery_codes_left(app_id, user_id).await?;
            out["totp"] = json!({ "confirmed": totp.confirmed, "recoveryCodesLeft": left });
        }
        Ok(out)
    }
}

/// Every item of an id-keyed paged listing, read `CHUNK` at a time.
async fn every_page<T, F, Fut>(mut page: F, id: fn(&T) -> Uuid) -> ServiceResult<Vec<T>>
where
    F: FnMut(Option<Uuid>) -> Fut,
    Fut: std::future::Future<Output = crate::store::Result<Vec<T>>>,
{
    let (mut all, mut after) = (Vec::new(), None);
    loop {
        let items = page(after).await?;
        let short = (items.len() as i64) < CHUNK;
        after = items.last().map(id);
        all.extend(items);
        if short {
            return Ok(all);
        }
    }
}

impl UserSvc {
    pub(super) async fn export(&self, ctx: &Ctx, req: pb::ExportUserRequest) -> ServiceResult<pbjson_types::Struct> {
        let core = &self.core;
        let (caller, me) = core.auth.signed_in(&ctx.md).await?;
        let id = validate::id(&req.users_id, "users_id")?;
        self.authorise(caller.app_id, &me, id).await?;
        let rec = core.store.get_user(caller.app_id, id).await?.ok_or(ServiceError::NotFound("user"))?;
        let exporter =
            Exporter { store: &*core.store, keyring: &core.keyring, idle_timeout: core.auth.policy().idle_timeout };
        let secrets = core.store.user_secrets(caller.app_id, &[id]).await?;
        let secrets = secrets.first().ok_or(ServiceError::NotFound("user"))?;
        let doc = exporter.document(&rec, secrets, false).await?;
        // Leaves only once recorded, like every disclosure.
        let mut r = core.record(ctx, "user.export", Some(&caller), caller.app_id).await;
        r.subject_id = Some(id);
        r.fields = export_fields(&doc);
        core.trail.record(r).await?;
        serde_json::from_value(doc).map_err(|e| ServiceError::Internal(e.to_string()))
    }
}

/// The members of a document, as a record's field names.
pub fn export_fields(doc: &Value) -> Vec<String> {
    let mut names: Vec<String> =
        doc.as_object().map(|o| o.keys().map(|k| crate::schema::camel_to_snake(k)).collect()).unwrap_or_default();
    names.sort_unstable();
    names
}
