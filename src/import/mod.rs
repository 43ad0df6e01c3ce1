//! `usersvc import`: users brought in from a file, in batches. Each batch
//! is sealed and indexed here while the one before it is written, and
//! written in one statement with its memberships and one `user.import`
//! trail record per user. A username the application already has is
//! skipped, so a second run of the same file adds nothing; a bad entry is
//! named and the good ones still go in.

pub mod formats;

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::auth::password::PasswordHasher;
use crate::crypto::Keyring;
use crate::service::{mrns, profile, validate};
use crate::store::{GroupRecord, ImportedUser, NewUser, Store};
use formats::{Entry, Format, Position, Secret};

/// Users per batch: one statement each on PostgreSQL.
const BATCH: usize = 1000;
/// Batches prepared ahead of the one being written.
const AHEAD: usize = 2;

/// What an import did, printed as one JSON line at its end.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub read: u64,
    pub imported: u64,
    /// Already in the application (matched on username), or repeated in
    /// the file.
    pub skipped: u64,
    pub failed: u64,
}

/// One entry that could not be imported, and why.
#[derive(Debug, Clone)]
pub struct Failure {
    pub at: Position,
    pub reason: String,
}

pub struct Importer<'k> {
    store: Arc<dyn Store>,
    keyring: &'k Keyring,
    hasher: PasswordHasher,
    app_id: Uuid,
    min_password_chars: usize,
    /// Whether a group named but missing is made (non-default).
    create_groups: bool,
    /// Group names already looked up: their id, or why they cannot be used.
    groups: HashMap<String, Result<Uuid, String>>,
}

/// A batch ready to write.
struct Prepared {
    key_id: Uuid,
    users: Vec<ImportedUser>,
    records: Vec<AuditRecord>,
}

impl<'k> Importer<'k> {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: &'k Keyring,
        hasher: PasswordHasher,
        app_id: Uuid,
        min_password_chars: usize,
    ) -> Self {
        Self { store, keyring, hasher, app_id, min_password_chars, create_groups: false, groups: HashMap::new() }
    }

    /// Makes the groups an entry names that the application lacks, as an
    /// export of another application needs.
    pub fn creating_groups(mut self, on: bool) -> Self {
        self.create_groups = on;
        self
    }

    /// Imports every entry of `input`; `failed` hears of each bad one as
    /// it is found and `progress` of each entry read.
    pub async fn run(
        mut self,
        format: Format,
        input: impl BufRead + 'static,
        mut failed: impl FnMut(&Failure),
        progress: impl Fn(u64),
    ) -> anyhow::Result<Summary> {
        if self.store.current_app_key(self.app_id, crate::crypto::keyring::DATA).await?.is_none() {
            anyhow::bail!("no application {}", self.app_id);
        }
        let started = Instant::now();
        let mut summary = Summary::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Prepared>(AHEAD);
        let store = self.store.clone();
        let app_id = self.app_id;
        let writer = tokio::spawn(async move {
            let (mut imported, mut skipped) = (0u64, 0u64);
            while let Some(batch) = rx.recv().await {
                let ids = store.import_users(app_id, batch.key_id, &batch.users, &batch.records).await?;
                let ids = ids.ok_or_else(|| {
                    anyhow::anyhow!(
                        "the application's data key was rotated during the import; run it again (users already imported are skipped)"
                    )
                })?;
                imported += ids.len() as u64;
                skipped += (batch.users.len() - ids.len()) as u64;
            }
            anyhow::Ok((imported, skipped))
        });
        let mut batch = Vec::with_capacity(BATCH);
        let mut fail = |summary: &mut Summary, f: Failure| {
            summary.failed += 1;
            failed(&f);
        };
        let mut send_error = None;
        for item in entries(format, input) {
            summary.read += 1;
            progress(summary.read);
            match item {
                Ok(e) => batch.push(e),
                Err(f) => fail(&mut summary, f),
            }
            if batch.len() == BATCH {
                let (prepared, failures) = self.prepare(std::mem::take(&mut batch)).await?;
                failures.into_iter().for_each(|f| fail(&mut summary, f));
                if tx.send(prepared).await.is_err() {
                    send_error = Some(());
                    break;
                }
            }
        }
        if send_error.is_none() && !batch.is_empty() {
            let (prepared, failures) = self.prepare(batch).await?;
            failures.into_iter().for_each(|f| fail(&mut summary, f));
            let _ = tx.send(prepared).await;
        }
        drop(tx);
        let (imported, skipped) = writer.await??;
        if imported > 0
            && let Err(e) = self.store.analyze_users().await
        {
            // Autovacuum does it within a minute or so; until then
            // listings may be planned for the table as it was.
            tracing::warn!(error = %e, "could not refresh the planner's statistics after the import");
        }
        summary.imported = imported;
        summary.skipped = skipped;
        tracing::info!(app_id = %self.app_id, imported, skipped, failed = summary.failed,
            seconds = started.elapsed().as_secs_f64(), "import finished");
        Ok(summary)
    }

    /// Checks, hashes, indexes and seals a batch.
    async fn prepare(&mut self, batch: Vec<(Position, Entry)>) -> anyhow::Result<(Prepared, Vec<Failure>)> {
        let sealer = self.keyring.sealer(self.app_id).await?;
        let mut failures = Vec::new();
        // Passwords given in the clear are hashed on the hashing threads,
        // all of the batch's at once.
        let mut hashing = tokio::task::JoinSet::new();
        let mut checked = Vec::with_capacity(batch.len());
        for (at, entry) in batch {
            match self.check(&entry).await {
                Ok(groups) => {
                    if let Secret::Password(p) = &entry.secret {
                        let (hasher, p, i) = (self.hasher.clone(), p.clone(), checked.len());
                        hashing.spawn(async move { (i, hasher.hash(p).await) });
                    }
                    checked.push((at, entry, groups, None::<String>));
                }
                Err(reason) => failures.push(Failure { at, reason }),
            }
        }
        while let Some(done) = hashing.join_next().await {
            let (i, hash) = done?;
            checked[i].3 = Some(hash?);
        }
        let mut users = Vec::with_capacity(checked.len());
        let mut records = Vec::with_capacity(checked.len());
        for (at, entry, groups, hashed) in checked {
            let password_hash = match (&entry.secret, hashed) {
                (_, Some(h)) => h,
                (Secret::Hash(h), None) => h.clone(),
                (Secret::Password(_), None) => {
                    failures.push(Failure { at, reason: "password: could not be hashed".into() });
                    continue;
                }
            };
            let created_at = entry.created_at.unwrap_or_else(Utc::now).trunc_subsecs(0);
            let id = id_at(created_at);
            let user = &entry.user;
            let email_bidx = match profile::email_key(user) {
                Some(e) => Some(self.keyring.blind(self.app_id, "email", &e).await?),
                None => None,
            };
            let username_bidx =
                self.keyring.blind(self.app_id, "username", &profile::username_key(&user.username)).await?;
            let mrn_bidx = mrns::indexes(self.keyring, self.app_id, user).await?;
            let profile_pt = match profile::to_profile(user) {
                Ok(p) => p,
                Err(e) => {
                    failures.push(Failure { at, reason: e.to_string() });
                    continue;
                }
            };
            let mut r = AuditRecord::new("user.import", Some(self.app_id));
            r.actor = "cli".into();
            r.subject_id = Some(id);
            r.fields = profile::field_names(user);
            r.fields.extend(["username".to_owned(), "password".to_owned()]);
            records.push(r);
            users.push(ImportedUser {
                user: NewUser {
                    id,
                    app_id: self.app_id,
                    key_id: sealer.key_id,
                    username_ct: sealer.seal(id, profile::USERNAME_FIELD, user.username.as_bytes()),
                    username_bidx,
                    password_hash,
                    email_bidx,
                    profile_ct: sealer.seal(id, profile::PROFILE_FIELD, &profile_pt),
                    active: user.active.unwrap_or(true),
                    mrn_bidx,
                },
                supervisor: entry.supervisor,
                created_at,
                groups,
            });
        }
        Ok((Prepared { key_id: sealer.key_id, users, records }, failures))
    }

    /// What sign-up would check, and the entry's groups.
    async fn check(&mut self, entry: &Entry) -> Result<Vec<Uuid>, String> {
        validate::username(&entry.user.username).map_err(|e| e.to_string())?;
        validate::profile(&entry.user).map_err(|e| e.to_string())?;
        if let Secret::Password(p) = &entry.secret {
            validate::password(p.expose_secret(), self.min_password_chars).map_err(|e| e.to_string())?;
        }
        let mut ids = Vec::with_capacity(entry.groups.len());
        for name in &entry.groups {
            if !self.groups.contains_key(name) {
                let found = match self.store.groups_named(self.app_id, name).await {
                    Ok(found) => found,
                    Err(e) => return Err(format!("groups: could not look up {name:?}: {e}")),
                };
                let id = match found.as_slice() {
                    [one] => Ok(one.id),
                    [] if self.create_groups => self.create_group(name).await,
                    [] => {
                        Err(format!("groups: the application has no group named {name:?} (--create-groups makes it)"))
                    }
                    _ => Err(format!("groups: the application has several groups named {name:?}")),
                };
                self.groups.insert(name.clone(), id);
            }
            ids.push(self.groups.get(name).cloned().unwrap_or_else(|| Err("groups: lookup failed".into()))?);
        }
        Ok(ids)
    }
}

impl Importer<'_> {
    async fn create_group(&self, name: &str) -> Result<Uuid, String> {
        validate::group_name(name).map_err(|e| format!("groups: {e}"))?;
        let group = GroupRecord { id: Uuid::now_v7(), name: name.to_owned(), is_default: false };
        let mut r = AuditRecord::new("group.create", Some(self.app_id));
        r.actor = "cli".into();
        r.object_id = Some(group.id);
        r.fields = vec!["name".into()];
        self.store
            .create_group(self.app_id, &group, &r)
            .await
            .map_err(|e| format!("groups: could not make {name:?}: {e}"))?;
        Ok(group.id)
    }
}

/// A UUIDv7 of the user's creation time, so that listings (in id order)
/// keep imported users in the order they joined.
fn id_at(t: DateTime<Utc>) -> Uuid {
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, t.timestamp().max(0) as u64, t.timestamp_subsec_nanos());
    Uuid::new_v7(ts)
}

/// A format's reader of one entry.
type ReadEntry = fn(serde_json::Value) -> Result<Entry, String>;

/// The entries of an input, each with its position or why it is bad.
fn entries(
    format: Format,
    mut input: impl BufRead + 'static,
) -> Box<dyn Iterator<Item = Result<(Position, Entry), Failure>>> {
    let (keys, f): (&[&str], ReadEntry) = match format {
        Format::Jsonl => return by_line(input, formats::from_jsonl),
        Format::Parse => (&["results"], formats::from_parse),
        Format::Keycloak => (&["users"], formats::from_keycloak),
    };
    let mut text = String::new();
    if let Err(e) = input.read_to_string(&mut text) {
        let at = Position { n: 0, unit: "input" };
        return Box::new(std::iter::once(Err(Failure { at, reason: format!("unreadable: {e}") })));
    }
    match serde_json::from_str(&text).ok().map(|doc| formats::listed(doc, keys)) {
        Some(Ok(items)) => Box::new(items.into_iter().enumerate().map(move |(i, v)| {
            let at = Position { n: i + 1, unit: "user" };
            f(v).map(|e| (at, e)).map_err(|reason| Failure { at, reason })
        })),
        // One object per line (mongoexport), or a document that holds no
        // list: read line by line, each named.
        _ => by_line(std::io::Cursor::new(text.into_bytes()), f),
    }
}

/// One entry per non-blank line, read as it comes.
fn by_line(
    input: impl BufRead + 'static,
    f: ReadEntry,
) -> Box<dyn Iterator<Item = Result<(Position, Entry), Failure>>> {
    Box::new(input.lines().enumerate().filter_map(move |(i, line)| {
        let at = Position { n: i + 1, unit: "line" };
        let line = match line {
            Ok(l) if l.trim().is_empty() => return None,
            Ok(l) => l,
            Err(e) => return Some(Err(Failure { at, reason: format!("unreadable: {e}") })),
        };
        let parsed = serde_json::from_str(&line)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(f)
            .map(|e| (at, e))
            .map_err(|reason| Failure { at, reason });
        Some(parsed)
    }))
}
