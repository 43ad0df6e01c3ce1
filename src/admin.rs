//! The operator's commands: applications, supervisors, service tokens, keys
//! and the trail.
//! Each action an operator takes is itself recorded in the trail (actor
//! "cli").

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::audit::{
    AuditRecord,
    check::{self, Report},
    checkpoint::{CheckpointKey, Exported, TrustedKeys},
    sealer,
};
use crate::auth::{caller::SERVICE_ROLES, secret};
use crate::crypto::fields::{PASSKEY_FIELD, TOTP_SECRET_FIELD};
use crate::crypto::{Keyring, MasterKey, keyring};
use crate::service::{export::Exporter, profile};
use crate::store::{
    ApartSeal, App, AuditFilter, MfaPolicy, NewServiceToken, SealedUser, Store, TokenRevocation, UserListFilter,
    VerifyMode,
};

pub struct Admin {
    pub store: Arc<dyn Store>,
    pub keyring: Keyring,
}

fn cli_record(action: &str, app_id: Option<Uuid>) -> AuditRecord {
    let mut r = AuditRecord::new(action, app_id);
    r.actor = "cli".into();
    r
}

/// Users read per round trip by an export.
const EXPORT_PAGE: i64 = 200;

/// Users re-encrypted per batch during an application key rotation.
const RESEAL_BATCH: i64 = 200;

/// The longest service token name, in characters.
const MAX_TOKEN_NAME_CHARS: usize = 100;

/// What a key rotation re-encrypted under the new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    pub users: u64,
    pub totp_secrets: u64,
    pub passkeys: u64,
}

/// The field name each such value is sealed under.
fn field_of(kind: ApartSeal) -> &'static str {
    match kind {
        ApartSeal::TotpSecret => TOTP_SECRET_FIELD,
        ApartSeal::Passkey => PASSKEY_FIELD,
    }
}

/// A service token as issued: the token is shown this once and never again.
pub struct IssuedToken {
    pub id: Uuid,
    pub app_id: Uuid,
    pub name: String,
    pub role: String,
    pub token: SecretString,
}

/// A name is a label for the operator; its value is never echoed in errors,
/// logs or the trail.
fn check_token_name(name: &str) -> anyhow::Result<&str> {
    let name = name.trim();
    anyhow::ensure!(!name.is_empty(), "a service token needs a name (--name)");
    anyhow::ensure!(!name.chars().any(char::is_control), "the name must not contain control characters");
    anyhow::ensure!(
        name.chars().count() <= MAX_TOKEN_NAME_CHARS,
        "the name must be at most {MAX_TOKEN_NAME_CHARS} characters"
    );
    Ok(name)
}

impl Admin {
    pub fn new(store: Arc<dyn Store>, master: MasterKey) -> Self {
        let keyring = Keyring::new(master, store.clone());
        Self { store, keyring }
    }

    /// Creates an application with its keys; returns it and its API key.
    pub async fn create_app(&self, name: &str) -> anyhow::Result<(App, SecretString)> {
        let app = App { id: Uuid::now_v7(), name: name.to_owned() };
        let key = secret::generate();
        let keys = [self.keyring.new_key(app.id, keyring::DATA), self.keyring.new_key(app.id, keyring::INDEX)];
        let record = cli_record("app.create", Some(app.id));
        self.store.create_app(&app, &secret::digest(key.expose_secret()), &keys, &record).await?;
        Ok((app, key))
    }

    /// Makes a user a supervisor; false when the application has no such user.
    pub async fn add_supervisor(&self, app_id: Uuid, username: &str) -> anyhow::Result<bool> {
        let bidx = match self.keyring.blind(app_id, "username", &profile::username_key(username)).await {
            Ok(b) => b,
            Err(crate::crypto::CryptoError::NoAppKey(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let mut record = cli_record("user.supervisor_add", Some(app_id));
        record.fields = vec!["supervisor".into()];
        Ok(self.store.set_supervisor(app_id, &bidx, true, &record).await?)
    }

    /// Sets an application's WebAuthn relying party (`usersvc app update
    /// --webauthn-rp-id ... --webauthn-origin ...`); an empty rp id removes
    /// it. Recorded as `app.update`.
    pub async fn set_webauthn(&self, app_id: Uuid, rp_id: &str, origins: &[String]) -> anyhow::Result<()> {
        let rp_id = rp_id.trim();
        let config = (!rp_id.is_empty()).then(|| crate::store::WebauthnConfig {
            rp_id: rp_id.to_owned(),
            origins: origins.iter().map(|o| o.trim().trim_end_matches('/').to_owned()).collect(),
        });
        if let Some(c) = &config {
            crate::service::passkeys::check_config(c).map_err(anyhow::Error::msg)?;
        }
        let mut record = cli_record("app.update", Some(app_id));
        record.fields = vec!["webauthn_rp_id".into(), "webauthn_origins".into()];
        if !self.store.set_webauthn_config(app_id, config.as_ref(), &record).await? {
            anyhow::bail!("no application {app_id}");
        }
        Ok(())
    }

    /// Sets an application's `--verify-email`; recorded as `app.update`.
    /// Fails when there is no such application.
    pub async fn set_verify_email(&self, app_id: Uuid, mode: VerifyMode) -> anyhow::Result<()> {
        let mut record = cli_record("app.update", Some(app_id));
        record.fields = vec!["verify_email".into()];
        if !self.store.set_verify_email_mode(app_id, mode, &record).await? {
            anyhow::bail!("no application {app_id}");
        }
        Ok(())
    }

    /// Sets whether the application's supervisors must have a second factor
    /// (recorded as `app.update`, field `mfa`); fails when there is no such
    /// application.
    pub async fn set_mfa_policy(&self, app_id: Uuid, policy: MfaPolicy) -> anyhow::Result<()> {
        let mut record = cli_record("app.update", Some(app_id));
        record.fields = vec!["mfa".into()];
        if !self.store.set_mfa_policy(app_id, policy, &record).await? {
            anyhow::bail!("no application {app_id}");
        }
        Ok(())
    }

    /// Fails unless the application exists.
    async fn known_app(&self, app_id: Uuid) -> anyhow::Result<()> {
        if self.store.current_app_key(app_id, keyring::DATA).await?.is_none() {
            anyhow::bail!("no application {app_id}");
        }
        Ok(())
    }

    /// Issues a service token: a long-lived bearer credential that internal
    /// callers send with the application's API key, acting with `role`'s
    /// rights in that application until revoked. Only its digest is stored.
    pub async fn create_token(&self, app_id: Uuid, role: &str, name: &str) -> anyhow::Result<IssuedToken> {
        if !SERVICE_ROLES.contains(&role) {
            anyhow::bail!("unknown role {role:?}: a service token's role must be one of: {}", SERVICE_ROLES.join(", "));
        }
        let name = check_token_name(name)?;
        self.known_app(app_id).await?;
        let token = secret::generate();
        let new = NewServiceToken {
            id: Uuid::now_v7(),
            app_id,
            name: name.to_owned(),
            role: role.to_owned(),
            token_hash: secret::digest(token.expose_secret()),
        };
        let mut record = cli_record("token.create", Some(app_id));
        record.object_id = Some(new.id);
        record.fields = vec![format!("role:{role}")];
        self.store.create_service_token(&new, &record).await?;
        Ok(IssuedToken { id: new.id, app_id, name: new.name, role: new.role, token })
    }

    /// Revokes a service token of the application: every replica refuses it
    /// from the next call on.
    pub async fn revoke_token(&self, app_id: Uuid, token_id: Uuid) -> anyhow::Result<TokenRevocation> {
        self.known_app(app_id).await?;
        let mut record = cli_record("token.revoke", Some(app_id));
        record.object_id = Some(token_id);
        Ok(self.store.revoke_service_token(app_id, token_id, &record).await?)
    }

    /// The application's service tokens as JSON lines: never the token.
    pub async fn list_tokens(&self, app_id: Uuid, out: &mut impl std::io::Write) -> anyhow::Result<u64> {
        self.known_app(app_id).await?;
        let tokens = self.store.list_service_tokens(app_id).await?;
        for t in &tokens {
            let line = serde_json::json!({
                "tokenId": t.id,
                "name": t.name,
                "role": t.role,
                "createdAt": profile::format_time(t.created_at),
                "lastUsedAt": t.last_used_at.map(profile::format_time),
                "revoked": t.revoked_at.is_some(),
                "revokedAt": t.revoked_at.map(profile::format_time),
            });
            writeln!(out, "{line}")?;
        }
        Ok(tokens.len() as u64)
    }

    /// Re-wraps every application key under a new master key, in one
    /// transaction. Returns how many keys were re-wrapped.
    pub async fn rotate_master(&self, new: &MasterKey) -> anyhow::Result<usize> {
        let mut keys = self.store.all_app_keys().await?;
        for k in &mut keys {
            if k.master_key_id != self.keyring.master().id() {
                anyhow::bail!(
                    "key {} is wrapped by master key {}, not by the current one ({})",
                    k.id,
                    k.master_key_id,
                    self.keyring.master().id()
                );
            }
            let plain = self.keyring.master().unwrap(k.id, k.app_id, &k.wrapped)?;
            k.wrapped = new.wrap(k.id, k.app_id, &plain);
            k.master_key_id = new.id().to_owned();
        }
        // The new master key's checkpoint key vouches for the old one's, so
        // checkpoints signed until now still verify after the switch.
        let (old_key, new_key) = (CheckpointKey::from_master(self.keyring.master())?, CheckpointKey::from_master(new)?);
        self.store.endorse_checkpoint_key(&new_key.endorse(&old_key)).await?;
        let mut record = cli_record("key.rotate_master", None);
        record.fields = vec![format!("keys:{}", keys.len())];
        self.store.rewrap_app_keys(&keys, &record).await?;
        Ok(keys.len())
    }

    /// Gives an application a new data key and re-encrypts its users, then
    /// their TOTP secrets and passkeys, under it in batches, while the
    /// service keeps serving: writers seal under the new key from the moment
    /// it is current, and every older key stays readable (the trail's
    /// records keep theirs). Returns what was re-encrypted.
    pub async fn rotate_app(&self, app_id: Uuid) -> anyhow::Result<Resealed> {
        if self.store.current_app_key(app_id, keyring::DATA).await?.is_none() {
            anyhow::bail!("no application {app_id}");
        }
        let new = self.keyring.new_key(app_id, keyring::DATA);
        let mut record = cli_record("key.rotate_app", Some(app_id));
        record.fields = vec![format!("key:{}", new.id)];
        self.store.add_current_app_key(&new, &record).await?;
        let sealer = self.keyring.sealer(app_id).await?;
        anyhow::ensure!(sealer.key_id == new.id, "another rotation of {app_id} started meanwhile");
        // Passes over the users in order of id, each batch from where the
        // last ended, until a pass finds nobody left: a write that checked
        // the old key just before it stopped being current may still commit
        // under it behind the pass (creations, or an update racing the
        // reseal), and the next pass takes it. Usually the second pass finds
        // nothing; a rotation cut short is made whole by running it again.
        let mut resealed = 0;
        loop {
            let mut after = None;
            let mut found = false;
            loop {
                let batch = self.store.users_not_under_key(app_id, new.id, after, RESEAL_BATCH).await?;
                let Some(last) = batch.last() else { break };
                after = Some(last.id);
                found = true;
                resealed += self.reseal(app_id, &sealer, batch).await?;
            }
            if !found {
                break;
            }
        }
        Ok(Resealed {
            users: resealed,
            totp_secrets: self.reseal_fields(app_id, &sealer, ApartSeal::TotpSecret).await?,
            passkeys: self.reseal_fields(app_id, &sealer, ApartSeal::Passkey).await?,
        })
    }

    /// Re-encrypts one kind of value kept apart from the user row under the
    /// sealer's key, in passes as the users are: a row that a writer sealed
    /// under the old key behind a pass is found by the next one, and the
    /// rotation ends when a pass finds none. A row written meanwhile under
    /// the new key is passed over. Returns how many rows took the new key.
    async fn reseal_fields(&self, app_id: Uuid, sealer: &keyring::Sealer, kind: ApartSeal) -> anyhow::Result<u64> {
        let mut resealed = 0;
        loop {
            let (mut after, mut found) = (None, false);
            loop {
                let page = self.store.sealed_page(kind, app_id, after, RESEAL_BATCH).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id);
                for old in page.iter().filter(|f| crate::crypto::key_id_of(&f.ct).ok() != Some(sealer.key_id)) {
                    found = true;
                    let field = field_of(kind);
                    let plain = Zeroizing::new(self.keyring.open(app_id, old.id, field, &old.ct).await?);
                    let new_ct = sealer.seal(old.id, field, &plain);
                    if self.store.reseal_field(kind, app_id, old, &new_ct).await? {
                        resealed += 1;
                    }
                }
            }
            if !found {
                return Ok(resealed);
            }
        }
    }

    /// Re-encrypts a batch under the sealer's key; how many rows took it.
    async fn reseal(&self, app_id: Uuid, sealer: &keyring::Sealer, batch: Vec<SealedUser>) -> anyhow::Result<u64> {
        let mut resealed = 0;
        for mut user in batch {
            let username = self.keyring.open(app_id, user.id, profile::USERNAME_FIELD, &user.username_ct).await?;
            let profile_pt = self.keyring.open(app_id, user.id, profile::PROFILE_FIELD, &user.profile_ct).await?;
            user.username_ct = sealer.seal(user.id, profile::USERNAME_FIELD, &username);
            user.profile_ct = sealer.seal(user.id, profile::PROFILE_FIELD, &profile_pt);
            // A row changed meanwhile was written under the new key by its
            // writer, or comes back in the next pass.
            if self.store.reseal_user(app_id, &user, sealer.key_id).await? {
                resealed += 1;
            }
        }
        Ok(resealed)
    }

    /// Writes the application's users (or one of them) as JSON lines in
    /// the form `usersvc import` reads, password hashes included; one
    /// `user.export` record per user. Returns how many were written.
    pub async fn export(
        &self,
        app_id: Uuid,
        user: Option<Uuid>,
        idle_timeout: std::time::Duration,
        out: &mut impl std::io::Write,
    ) -> anyhow::Result<u64> {
        self.known_app(app_id).await?;
        let exporter = Exporter { store: &*self.store, keyring: &self.keyring, idle_timeout };
        let mut written = 0;
        let mut after = None;
        loop {
            let page = match user {
                Some(id) => {
                    let one = self.store.get_user(app_id, id).await?;
                    anyhow::ensure!(one.is_some(), "no user {id} in application {app_id}");
                    one.into_iter().collect()
                }
                None => self.store.list_users(app_id, &UserListFilter::default(), after, EXPORT_PAGE).await?,
            };
            let ids: Vec<Uuid> = page.iter().map(|u| u.id).collect();
            let secrets: std::collections::HashMap<Uuid, _> =
                self.store.user_secrets(app_id, &ids).await?.into_iter().map(|s| (s.id, s)).collect();
            let mut records = Vec::with_capacity(page.len());
            let mut lines = Vec::with_capacity(page.len());
            for rec in &page {
                // A user deleted since the page was read is left out.
                let Some(secret) = secrets.get(&rec.id) else { continue };
                let doc = exporter.document(rec, secret, true).await?;
                let mut r = cli_record("user.export", Some(app_id));
                r.subject_id = Some(rec.id);
                r.fields = crate::service::export::export_fields(&doc);
                records.push(r);
                lines.push(serde_json::to_string(&doc)?);
            }
            // Recorded before it leaves, as every disclosure.
            self.store.append_audit(&records).await?;
            for line in lines {
                writeln!(out, "{line}")?;
            }
            written += records.len() as u64;
            after = page.last().map(|u| u.id);
            if user.is_some() || (page.len() as i64) < EXPORT_PAGE {
                break;
            }
        }
        out.flush()?;
        Ok(written)
    }

    /// Seals what is waiting, then checks every record against the tree,
    /// every checkpoint's signature and root, and `exported` (a checkpoint
    /// kept elsewhere) if given. The error says what is wrong.
    pub async fn verify_trail(&self, exported: Option<&Exported>) -> anyhow::Result<Result<Report, String>> {
        let key = CheckpointKey::from_master(self.keyring.master())?;
        // A database restored read-only can still be checked.
        if let Err(e) = sealer::seal_waiting(&*self.store, &key, std::time::Duration::from_secs(10)).await {
            eprintln!("usersvc: the newest records could not be sealed first ({e}); checking what is sealed");
        }
        check::check(&*self.store, &key, exported).await
    }

    /// The latest signed checkpoint, made first if records are waiting.
    pub async fn checkpoint(&self) -> anyhow::Result<Exported> {
        let key = CheckpointKey::from_master(self.keyring.master())?;
        sealer::seal_waiting(&*self.store, &key, std::time::Duration::from_secs(30)).await?;
        let latest = self
            .store
            .latest_checkpoint()
            .await?
            .ok_or_else(|| anyhow::anyhow!("the trail is empty: there is nothing to vouch for yet"))?;
        // Only what this deployment's keys vouch for goes out under its name.
        let keys = TrustedKeys::load(&*self.store, &key).await?;
        let public = keys.public_key(&latest.key_id).ok_or_else(|| {
            anyhow::anyhow!(
                "the latest checkpoint is signed by key {}, which this master key does not vouch for",
                latest.key_id
            )
        })?;
        Ok(Exported::of(&latest, public))
    }

    /// The trail as JSON lines, client addresses opened.
    pub async fn list_trail(&self, mut filter: AuditFilter, out: &mut impl std::io::Write) -> anyhow::Result<u64> {
        // The listing discloses who accessed whom and from where (client
        // addresses opened): it is itself recorded, before anything is shown.
        let mut r = cli_record("audit.list", filter.app_id);
        r.subject_id = filter.subject_id;
        r.fields = vec!["trail".into(), "client_addr".into()];
        self.store.append_audit(&[r]).await?;
        filter.limit = 5000;
        let mut n = 0;
        loop {
            let page = self.store.audit_records(&filter).await?;
            let Some(last) = page.last() else {
                return Ok(n);
            };
            filter.after_seq = last.seq;
            for s in &page {
                let r = &s.record;
                let addr = match (&r.client_addr, r.app_id) {
                    (Some(ct), Some(app)) => self
                        .keyring
                        .open(app, r.id, "client_addr", ct)
                        .await
                        .ok()
                        .map(|p| String::from_utf8_lossy(&p).into_owned()),
                    _ => None,
                };
                let line = serde_json::json!({
                    "seq": s.seq,
                    "id": r.id,
                    "at": r.at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                    "appId": r.app_id,
                    "actor": r.actor,
                    "actorId": r.actor_id,
                    "subjectId": r.subject_id,
                    "objectId": r.object_id,
                    "action": r.action,
                    "fields": r.fields,
                    "outcome": r.outcome,
                    "requestId": r.request_id,
                    "serverRequestId": r.server_request_id,
                    "clientAddr": addr,
                });
                writeln!(out, "{line}")?;
                n += 1;
            }
        }
    }
}
