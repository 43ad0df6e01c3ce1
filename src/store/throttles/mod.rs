//! Throttles: counted failures per key (a username, a client address) with
//! exponentially growing waits, and quotas (so many attempts per window,
//! such as sign-ups per address per hour). The trait, and its PostgreSQL and
//! SQLite implementations beside it.

pub(in crate::store) mod postgres;
mod sqlite;

use async_trait::async_trait;

use crate::store::Result;

/// How failures of one kind are throttled.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleRule {
    /// Failures before the first wait.
    pub free: i32,
    /// Longest wait.
    pub max_wait: std::time::Duration,
    /// Failures older than this are forgotten.
    pub window: std::time::Duration,
}

/// So many attempts per window, for what is fine in moderation but not in
/// bulk (anonymous sign-ups from one address). A window begins with the
/// first attempt after the last one ended; windows of up to a day (the
/// sweep forgets a count a day after its window began).
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub per_window: u32,
    pub window: std::time::Duration,
}

/// What a successful sign-in takes off the throttles: `clear`'s count is
/// forgotten (the username's), and this attempt is taken off `forgive`'s (the
/// address's: many may sign in from one address). And the password hash it
/// checked, if outdated, is replaced in the same transaction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Relief<'a> {
    pub clear: Option<&'a [u8]>,
    pub forgive: Option<&'a [u8]>,
    pub rehash: Option<Rehash<'a>>,
}

/// A stored password hash replaced by one at the service's parameters,
/// only if it is still the one checked (a password changed meanwhile
/// stays).
#[derive(Debug, Clone, Copy)]
pub struct Rehash<'a> {
    pub old: &'a str,
    pub new: &'a str,
}

#[async_trait]
pub trait ThrottleStore: Send + Sync {
    /// Counts an attempt against each key, in one transaction, unless one
    /// of them is under a wait: then the longest wait is returned and
    /// nothing is counted (but for a wait that begins while the attempt is
    /// counted: it is refused all the same).
    async fn throttle_attempt(&self, keys: &[(Vec<u8>, ThrottleRule)]) -> Result<Option<std::time::Duration>>;

    /// After a failure: a key at or past its free attempts waits from now
    /// (the wait counts from the refusal the caller saw, not from the start
    /// of the attempt, however long the password check took).
    async fn throttle_failed(&self, keys: &[(Vec<u8>, ThrottleRule)]) -> Result<()>;

    /// After a success that starts no session (a current password proved
    /// with a change): what a sign-in's [`Relief`] does, alone.
    async fn throttle_relieved(&self, clear: &[u8], forgive: Option<&[u8]>) -> Result<()>;

    /// Counts an attempt against `key`'s quota if its window has room (a
    /// window over, a new one begins with this attempt); else returns how
    /// long until the window ends, counting nothing: refused attempts do
    /// not push the end back.
    async fn quota_attempt(&self, key: &[u8], quota: Quota) -> Result<Option<std::time::Duration>>;
}
