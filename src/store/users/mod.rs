//! Users: the sealed user rows: create (with memberships and a first session), read, change under a version check, delete; sign-in's credentials. The trait, and its PostgreSQL and SQLite
//! implementations beside it.

mod postgres;
pub(in crate::store) mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::trail::record::AuditRecord;
use crate::store::{NewSession, QueuedMail, Result, ThrottleRule};

/// A user row as the services see it: the profile is still sealed.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: Uuid,
    pub app_id: Uuid,
    pub profile_ct: Vec<u8>,
    pub active: bool,
    pub supervisor: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The primary address is the one the user proved by a mailed link
    /// (see `store::verifications`): false again once it changes.
    pub email_verified: bool,
}

/// What sign-in needs of a user.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Credentials {
    #[sqlx(rename = "id")]
    pub user_id: Uuid,
    pub password_hash: String,
    pub active: bool,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: Uuid,
    pub app_id: Uuid,
    pub key_id: Uuid,
    pub username_ct: Vec<u8>,
    pub username_bidx: Vec<u8>,
    pub password_hash: String,
    pub email_bidx: Option<Vec<u8>>,
    pub profile_ct: Vec<u8>,
    pub active: bool,
    /// The blind indexes of the user's MRNs, distinct (see
    /// `service::mrns`): written to `user_mrns` with the row.
    pub mrn_bidx: Vec<Vec<u8>>,
}

/// A user brought in by `usersvc import`: a new row, with what sign-up
/// does not set (supervisor, an earlier creation time, named groups).
#[derive(Debug, Clone)]
pub struct ImportedUser {
    pub user: NewUser,
    pub supervisor: bool,
    pub created_at: DateTime<Utc>,
    /// Groups beyond the default ones.
    pub groups: Vec<Uuid>,
}

/// What an export carries that a [`UserRecord`] does not.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserSecrets {
    pub id: Uuid,
    pub username_ct: Vec<u8>,
    pub password_hash: String,
}

/// A user's username as stored, for its index to be computed anew.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredUsername {
    pub app_id: Uuid,
    pub id: Uuid,
    pub username_ct: Vec<u8>,
    pub username_bidx: Vec<u8>,
}

/// What [`UserStore::rekey_username`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rekeyed {
    Done,
    /// Gone, or renamed since it was read.
    Skipped,
    /// Another user holds that name as RFC 8265 compares it: left as it was.
    Taken,
}

/// A change to a user, applied only if the row is still at `expected_version`.
#[derive(Debug, Clone)]
pub struct UserChange {
    pub expected_version: i64,
    /// The data key the ciphertexts below are sealed with.
    pub key_id: Uuid,
    /// New username: (ciphertext, blind index).
    pub username: Option<(Vec<u8>, Vec<u8>)>,
    pub password_hash: Option<String>,
    pub email_bidx: Option<Vec<u8>>,
    pub profile_ct: Vec<u8>,
    pub active: bool,
    /// The blind indexes of the user's MRNs after the change, distinct: the
    /// whole set, replacing the one stored. Every update writes it (not only
    /// one that touches `mrns`), so an update also indexes a user the
    /// start-up backfill has not reached yet.
    pub mrn_bidx: Vec<Vec<u8>>,
    /// Which of the user's sessions end with the change, in its transaction
    /// (the service decides: a new password or a deactivation ends them).
    pub end_sessions: Option<EndSessions>,
    /// The user's outstanding reset links are voided with the change, in its
    /// transaction, and their mail not yet sent is dropped (it would carry a
    /// dead link) (the service decides: a deactivation voids them).
    pub void_resets: bool,
    /// Mail queued with the change, in its transaction (the notices of a
    /// new password or address): none is sent for a change not made.
    pub mail: Vec<QueuedMail>,
}

/// Every session of a user but `keep` ends.
#[derive(Debug, Clone, Copy)]
pub struct EndSessions {
    pub keep: Option<Uuid>,
}

/// Filters of a user listing; each given one must hold.
#[derive(Debug, Clone, Default)]
pub struct UserListFilter {
    pub email_bidx: Option<Vec<u8>>,
    pub username_bidx: Option<Vec<u8>>,
    pub group_id: Option<Uuid>,
    pub active: Option<bool>,
    /// Users with an MRN of this blind index (`user_mrns`).
    pub mrn_bidx: Option<Vec<u8>>,
}

impl UserListFilter {
    /// A listing's statement with only the filters given (so that each
    /// plan uses the index it can), through (app_id, id) in id order; its
    /// parameters are numbered 1 to 8 with `p` (`$` or `?`), in the order
    /// `list_users` binds them: app, after, email, username, active, group,
    /// mrn, limit; each store binds all eight, whichever the statement uses.
    pub(in crate::store) fn statement(&self, columns: &str, after: bool, p: char) -> String {
        let mut sql = format!("SELECT {columns} FROM users WHERE app_id = {p}1");
        if after {
            sql += &format!(" AND id > {p}2");
        }
        if self.email_bidx.is_some() {
            sql += &format!(" AND email_bidx = {p}3");
        }
        if self.username_bidx.is_some() {
            sql += &format!(" AND username_bidx = {p}4");
        }
        if self.active.is_some() {
            sql += &format!(" AND active = {p}5");
        }
        if self.group_id.is_some() {
            sql +=
                &format!(" AND EXISTS (SELECT 1 FROM memberships m WHERE m.group_id = {p}6 AND m.user_id = users.id)");
        }
        if self.mrn_bidx.is_some() {
            // Through user_mrns_app_bidx: the few users with the MRN.
            sql += &format!(
                " AND EXISTS (SELECT 1 FROM user_mrns r WHERE r.app_id = {p}1 AND r.mrn_bidx = {p}7 AND r.user_id = users.id)"
            );
        }
        sql + &format!(" ORDER BY id LIMIT {p}8")
    }
}

/// Whether a sign-in may go on to the password check, and with what.
#[derive(Debug)]
pub enum SignInAttempt {
    /// Under a wait: refused without a check.
    Wait(std::time::Duration),
    /// Counted; the username's credentials, if there is such a user.
    Go(Option<Credentials>),
}

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Users of the application in id order (UUIDv7: creation order) after
    /// `after`, those matching every filter given; at most `limit`.
    async fn list_users(
        &self,
        app_id: Uuid,
        filter: &UserListFilter,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<UserRecord>>;

    /// Makes the user with this username (blind index) a supervisor.
    /// False when no such user exists in the application.
    async fn set_supervisor(&self, app_id: Uuid, username_bidx: &[u8], on: bool, audit: &AuditRecord) -> Result<bool>;

    /// Inserts the user, their default-group memberships and, when given, a
    /// first session, with the trail, in one transaction, if `user.key_id`
    /// is still the application's current data key: `Ok(None)` (nothing
    /// written) when it was rotated away (the caller seals again).
    async fn create_user(
        &self,
        user: NewUser,
        session: Option<NewSession>,
        audit: &[AuditRecord],
    ) -> Result<Option<UserRecord>> {
        self.create_user_mailing(user, session, &[], audit).await
    }

    /// [`Self::create_user`], with mail queued in its transaction (the
    /// verification link of a sign-up): none is sent for a user not made.
    async fn create_user_mailing(
        &self,
        user: NewUser,
        session: Option<NewSession>,
        mail: &[QueuedMail],
        audit: &[AuditRecord],
    ) -> Result<Option<UserRecord>>;

    /// Inserts the users whose username (blind index) the application does
    /// not have yet; the others, and repeats within the batch, are skipped.
    /// Each gets the default groups and its own; of `audit`, the records
    /// whose subject was inserted are written. One transaction, if `key_id`
    /// is still the application's current data key: `Ok(None)`, nothing
    /// written, when it was rotated away. Returns the ids inserted.
    async fn import_users(
        &self,
        app_id: Uuid,
        key_id: Uuid,
        users: &[ImportedUser],
        audit: &[AuditRecord],
    ) -> Result<Option<Vec<Uuid>>>;

    /// Refreshes the planner's statistics of the users' tables after a bulk
    /// load, so that the next listings are planned for the rows now there
    /// rather than for the empty tables of a minute ago.
    async fn analyze_users(&self) -> Result<()>;

    /// The username ciphertexts and password hashes of these users of the
    /// application (for an export), in no particular order.
    async fn user_secrets(&self, app_id: Uuid, ids: &[Uuid]) -> Result<Vec<UserSecrets>>;

    async fn get_user(&self, app_id: Uuid, user_id: Uuid) -> Result<Option<UserRecord>>;

    async fn credentials(&self, app_id: Uuid, username_bidx: &[u8]) -> Result<Option<Credentials>>;

    /// Applies the change if the user is still at the expected version and
    /// the key is still current: `Ok(None)` when the row is gone or moved on
    /// (the caller re-reads).
    async fn update_user(
        &self,
        app_id: Uuid,
        user_id: Uuid,
        change: UserChange,
        audit: &[AuditRecord],
    ) -> Result<Option<UserRecord>>;

    /// Users of every application whose MRNs were never indexed (written
    /// before `user_mrns` existed), in id order after `after`; at most
    /// `limit`.
    async fn users_without_mrn_index(&self, after: Option<Uuid>, limit: i64) -> Result<Vec<UserRecord>>;

    /// Users of every application whose username index predates RFC 8265
    /// comparison (written before `username_precis` existed), in id order
    /// after `after`; at most `limit`.
    async fn usernames_to_rekey(&self, after: Option<Uuid>, limit: i64) -> Result<Vec<StoredUsername>>;

    /// Replaces the username index of a user [`Self::usernames_to_rekey`]
    /// returned and flags the row, unless a write since gave it a new name
    /// ([`Rekeyed::Skipped`]). When another user already holds the new
    /// index the row keeps its old one, flagged all the same
    /// ([`Rekeyed::Taken`]).
    async fn rekey_username(&self, user: &StoredUsername, username_bidx: &[u8]) -> Result<Rekeyed>;

    /// Writes the MRN indexes of a user not indexed yet and marks them so.
    /// False, nothing written, when the user is gone or already indexed (a
    /// write since did it, from the profile as it is now).
    async fn index_mrns(&self, app_id: Uuid, user_id: Uuid, mrn_bidx: &[Vec<u8>]) -> Result<bool>;

    /// Deletes the user with their sessions, memberships, MRN indexes and
    /// queued mail.
    async fn delete_user(&self, app_id: Uuid, user_id: Uuid, audit: &AuditRecord) -> Result<bool>;

    /// A sign-in's first step: its attempt counted as
    /// [`ThrottleStore::throttle_attempt`](crate::store::ThrottleStore::throttle_attempt)
    /// does, then, unless it must wait, the credentials of the username's
    /// blind index (`None`: a name that cannot exist). On PostgreSQL one
    /// statement (one round trip per sign-in saved, as the benchmarks asked).
    async fn sign_in_attempt(
        &self,
        keys: &[(Vec<u8>, ThrottleRule)],
        app_id: Uuid,
        username_bidx: Option<&[u8]>,
    ) -> Result<SignInAttempt>;
}
