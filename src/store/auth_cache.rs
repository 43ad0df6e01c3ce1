//! What every call reads before it can do anything: the application of an
//! API key and the session of a bearer token, kept a short while in memory
//! so that a read costs one database round trip instead of three; and the
//! user records reads return, as stored (their profile still sealed), so
//! that a repeated read costs none.
//!
//! Nothing stale may be served: a session that ends must stop working at
//! once, and a read after a write sees the write. Every write that ends a
//! session, changes what a session grants or changes a user evicts here
//! after it commits, and PostgreSQL notifies every replica (see
//! `postgres/notify.rs`). The cache is used only while that notification channel
//! is known to deliver (a heartbeat echoed within the last 4 s); when it
//! drops or goes silent, everything is forgotten and calls go to the
//! database until it is back. An entry read from the database before an
//! eviction is never stored after it (the generation check).
//!
//! Memory is bounded in bytes, not entries: a profile may be 256 KiB, so a
//! count says little. `--cache-bytes` is shared out per kind (see
//! [`Shares`]); each kind is a `moka` cache weighed by an estimate of what
//! an entry costs (key, value, sealed profile, moka's own bookkeeping), with
//! TinyLFU admission, so a burst of one-off reads cannot push out what is
//! read all the time. moka applies its bound in batches (every 64 writes or
//! so), so a kind may briefly exceed its share; entries heavier than a 64th
//! of it are never kept, which holds that excess to about the share itself.

use std::{
    hash::Hash,
    sync::{
        PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use moka::{Expiry, sync::Cache};
use uuid::Uuid;

use super::{App, SessionInfo, UserRecord};

/// The default of `--cache-bytes`.
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// How long an application is remembered (its changes also evict).
const APP_TTL: Duration = Duration::from_secs(60);
/// How long a user record is remembered (its changes also evict).
const USER_TTL: Duration = Duration::from_secs(30);
/// What moka keeps per entry besides key and value: its hash table slot,
/// entry info, order and timer nodes and the key's `Arc` came to 253 bytes
/// measured (moka 0.12.16, 200,000 entries with their own expiry, counting
/// allocator); the rest covers the headers of those nine or so allocations
/// and the frequency sketch.
const ENTRY_OVERHEAD: usize = 384;
/// A kind keeps no entry heavier than this part of its share (see above).
const MAX_ENTRY_PART: u64 = 64;

/// How `--cache-bytes` is shared out. Applications are one per tenant and
/// tiny; sessions are many but small (512 bytes as weighed: 16 MiB of the
/// default holds some 32,000); user records carry their sealed profile, up
/// to 256 KiB, and get the rest (44 MiB: some 50,000 users of a few hundred
/// bytes each, or 170 of the largest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shares {
    pub apps: u64,
    pub sessions: u64,
    pub users: u64,
}

impl Shares {
    pub fn of(total: u64) -> Self {
        let apps = total / 16;
        let sessions = total / 4;
        Self { apps, sessions, users: total - apps - sessions }
    }
}

#[derive(Clone)]
struct Entry<T> {
    value: T,
    /// Past this the entry is not served, whatever moka has done about it.
    until: Instant,
}

/// Each entry lives until its own deadline: sessions get theirs from the
/// caller (no longer than a touch may wait, nor past the session's end).
struct UntilDeadline;

impl<K, T> Expiry<K, Entry<T>> for UntilDeadline {
    fn expire_after_create(&self, _: &K, entry: &Entry<T>, created_at: Instant) -> Option<Duration> {
        Some(entry.until.saturating_duration_since(created_at))
    }

    fn expire_after_update(&self, _: &K, entry: &Entry<T>, at: Instant, _: Option<Duration>) -> Option<Duration> {
        // A replaced entry takes the new value's deadline, not the old one's.
        Some(entry.until.saturating_duration_since(at))
    }
}

/// One kind of entry: its cache and its share of the bytes.
struct Kind<K, T> {
    name: &'static str,
    cache: Cache<K, Entry<T>>,
    /// What key and value hold outside themselves.
    heap: fn(&K, &T) -> usize,
    /// Heavier entries are not kept.
    max_weight: u64,
}

impl<K, T> Kind<K, T>
where
    K: Hash + Eq + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    fn new(name: &'static str, bytes: u64, heap: fn(&K, &T) -> usize) -> Self {
        let cache = Cache::builder()
            .name(name)
            .max_capacity(bytes)
            .weigher(move |k: &K, e: &Entry<T>| u32::try_from(weight::<K, T>(heap(k, &e.value))).unwrap_or(u32::MAX))
            .expire_after(UntilDeadline)
            .build();
        Self { name, cache, heap, max_weight: bytes / MAX_ENTRY_PART }
    }

    fn get<Q: moka::Equivalent<K> + Hash + ?Sized>(&self, key: &Q) -> Option<T> {
        self.cache.get(key).filter(|e| e.until > Instant::now()).map(|e| e.value)
    }

    /// Only under the gate's read lock, after the generation check.
    fn insert(&self, key: K, value: T, ttl: Duration) {
        if ttl.is_zero() || weight::<K, T>((self.heap)(&key, &value)) as u64 > self.max_weight {
            return;
        }
        self.cache.insert(key, Entry { value, until: Instant::now() + ttl });
        metrics::gauge!("usersvc_cache_bytes", "kind" => self.name).set(self.cache.weighted_size() as f64);
    }
}

fn weight<K, T>(heap: usize) -> usize {
    size_of::<K>() + size_of::<Entry<T>>() + heap + ENTRY_OVERHEAD
}

#[derive(Clone)]
struct CachedSession {
    app_id: Uuid,
    info: SessionInfo,
}

pub struct AuthCache {
    /// True while every replica's evictions reach this one.
    live: AtomicBool,
    generation: AtomicU64,
    /// Puts hold it shared from their generation check to their insert;
    /// evictions take it exclusively after they count, so no put that
    /// passed its check before an eviction counted is still to land after
    /// the eviction has removed its keys.
    gate: RwLock<()>,
    apps: Kind<Vec<u8>, App>,
    sessions: Kind<Vec<u8>, CachedSession>,
    users: Kind<Uuid, UserRecord>,
}

impl Default for AuthCache {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_BYTES)
    }
}

/// Taken before a database read; an entry is stored only if nothing was
/// evicted since.
#[derive(Clone, Copy)]
pub struct Generation(u64);

impl AuthCache {
    /// A cache of about `bytes` in all, shared out as [`Shares::of`] says.
    pub fn new(bytes: u64) -> Self {
        let shares = Shares::of(bytes);
        Self {
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            gate: RwLock::new(()),
            apps: Kind::new("apps", shares.apps, |key, app| key.len() + app.name.len()),
            sessions: Kind::new("sessions", shares.sessions, |key, _| key.len()),
            users: Kind::new("users", shares.users, |_, user| user.profile_ct.len()),
        }
    }

    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::SeqCst))
    }

    fn live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    pub fn app(&self, key_hash: &[u8]) -> Option<App> {
        if !self.live() {
            return None;
        }
        self.apps.get(key_hash)
    }

    pub fn put_app(&self, seen: Generation, key_hash: &[u8], app: &App) {
        self.put(seen, || self.apps.insert(key_hash.to_vec(), app.clone(), APP_TTL));
    }

    /// A live session of this application, if one is remembered.
    pub fn session(&self, app_id: Uuid, token_hash: &[u8]) -> Option<SessionInfo> {
        if !self.live() {
            return None;
        }
        self.sessions.get(token_hash).filter(|s| s.app_id == app_id).map(|s| s.info)
    }

    /// Remembers a session found live for `ttl` (no longer than the caller
    /// may go without touching it, nor past its end).
    pub fn put_session(&self, seen: Generation, app_id: Uuid, token_hash: &[u8], info: &SessionInfo, ttl: Duration) {
        self.put(seen, || self.sessions.insert(token_hash.to_vec(), CachedSession { app_id, info: info.clone() }, ttl));
    }

    /// A user of this application as last stored, if one is remembered.
    pub fn user(&self, app_id: Uuid, user_id: Uuid) -> Option<UserRecord> {
        if !self.live() {
            return None;
        }
        self.users.get(&user_id).filter(|u| u.app_id == app_id)
    }

    pub fn put_user(&self, seen: Generation, user: &UserRecord) {
        self.put(seen, || self.users.insert(user.id, user.clone(), USER_TTL));
    }

    fn put(&self, seen: Generation, insert: impl FnOnce()) {
        if !self.live() {
            return;
        }
        // Nothing is guarded but the ordering, so a poisoned gate is as good.
        let _gate = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        if self.generation.load(Ordering::SeqCst) != seen.0 {
            return;
        }
        insert();
    }

    /// Counts an eviction and waits out the puts that checked before it.
    fn evicting(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.gate.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets these users' records (changed or deleted).
    pub fn evict_users(&self, ids: impl IntoIterator<Item = Uuid>) {
        let _gate = self.evicting();
        for id in ids {
            self.users.cache.invalidate(&id);
        }
    }

    /// Forgets the sessions of these token digests.
    pub fn evict_sessions<'a>(&self, token_hashes: impl IntoIterator<Item = &'a [u8]>) {
        let _gate = self.evicting();
        for h in token_hashes {
            self.sessions.cache.invalidate(h);
        }
    }

    /// Forgets everything (a change of a user's rights or an application's).
    pub fn evict_all(&self) {
        let _gate = self.evicting();
        // Entries inserted up to now are never served again; moka frees
        // them as it next tidies up.
        self.sessions.cache.invalidate_all();
        self.users.cache.invalidate_all();
        self.apps.cache.invalidate_all();
    }

    /// Whether evictions from every replica are arriving: used only then.
    pub fn set_live(&self, live: bool) {
        if !live {
            self.live.store(false, Ordering::SeqCst);
        }
        self.evict_all();
        if live {
            self.live.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SessionInfo {
        SessionInfo {
            session_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            supervisor: false,
            signed_in_at: chrono::Utc::now(),
        }
    }

    fn user(app_id: Uuid, profile_bytes: usize) -> UserRecord {
        UserRecord {
            id: Uuid::now_v7(),
            app_id,
            profile_ct: vec![7; profile_bytes],
            active: true,
            supervisor: false,
            version: 1,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            email_verified: false,
        }
    }

    fn live(bytes: u64) -> AuthCache {
        let cache = AuthCache::new(bytes);
        cache.set_live(true);
        cache
    }

    #[test]
    fn used_only_while_live_and_never_stores_what_an_eviction_overtook() {
        let cache = AuthCache::default();
        let app = Uuid::now_v7();
        let ttl = Duration::from_secs(5);
        let g = cache.generation();
        cache.put_session(g, app, b"t1", &info(), ttl);
        assert!(cache.session(app, b"t1").is_none(), "not live yet: nothing kept");

        cache.set_live(true);
        let g = cache.generation();
        cache.put_session(g, app, b"t1", &info(), ttl);
        assert!(cache.session(app, b"t1").is_some());
        assert!(cache.session(Uuid::now_v7(), b"t1").is_none(), "another application's token is none");

        // A read that started before an eviction does not store its result.
        let before = cache.generation();
        cache.evict_sessions([b"t2".as_slice()]);
        cache.put_session(before, app, b"t2", &info(), ttl);
        assert!(cache.session(app, b"t2").is_none());

        cache.evict_sessions([b"t1".as_slice()]);
        assert!(cache.session(app, b"t1").is_none());

        let g = cache.generation();
        cache.put_session(g, app, b"t3", &info(), Duration::ZERO);
        assert!(cache.session(app, b"t3").is_none(), "expired entries are not served");

        let g = cache.generation();
        cache.put_session(g, app, b"t4", &info(), ttl);
        cache.set_live(false);
        assert!(cache.session(app, b"t4").is_none(), "the channel dropped: everything forgotten");
        cache.set_live(true);
        assert!(cache.session(app, b"t4").is_none(), "and stays forgotten once it is back");
    }

    #[test]
    fn users_and_apps_are_evicted_and_checked_like_sessions() {
        let cache = live(DEFAULT_CACHE_BYTES);
        let app = App { id: Uuid::now_v7(), name: "a".into() };
        let u = user(app.id, 300);
        let (g, other) = (cache.generation(), user(app.id, 300));
        cache.put_user(g, &u);
        cache.put_user(g, &other);
        cache.put_app(g, b"key", &app);
        assert_eq!(cache.user(app.id, u.id).map(|r| r.profile_ct), Some(u.profile_ct.clone()));
        assert!(cache.user(Uuid::now_v7(), u.id).is_none(), "another application's user is none");
        assert_eq!(cache.app(b"key").map(|a| a.id), Some(app.id));

        // Evicting one user keeps the other; a read from before it stores nothing.
        let before = cache.generation();
        cache.evict_users([u.id]);
        assert!(cache.user(app.id, u.id).is_none());
        assert!(cache.user(app.id, other.id).is_some());
        cache.put_user(before, &u);
        assert!(cache.user(app.id, u.id).is_none(), "read before the eviction: not stored");
        cache.put_user(cache.generation(), &u);
        assert!(cache.user(app.id, u.id).is_some());

        cache.evict_all();
        assert!(cache.user(app.id, u.id).is_none() && cache.user(app.id, other.id).is_none());
        assert!(cache.app(b"key").is_none());
        cache.put_app(cache.generation(), b"key", &app);
        assert!(cache.app(b"key").is_some(), "stored again after evict_all");
    }

    #[test]
    fn a_put_racing_evictions_never_outlives_them() {
        // A reader keeps storing what it read, tagged with the generation it
        // saw (as its version), while evictions keep coming: after each
        // eviction, only what was read after it may be served.
        let cache = std::sync::Arc::new(live(DEFAULT_CACHE_BYTES));
        let app = Uuid::now_v7();
        let u = user(app, 100);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let putter = {
            let (cache, u, stop) = (cache.clone(), u.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let seen = cache.generation();
                    std::thread::yield_now();
                    let tagged = UserRecord { version: i64::try_from(seen.0).unwrap(), ..u.clone() };
                    cache.put_user(seen, &tagged);
                }
            })
        };
        let mut served = 0;
        for _ in 0..20_000 {
            cache.evict_users([u.id]);
            // Only this thread evicts: this is the count of its eviction.
            let after = cache.generation().0;
            if let Some(r) = cache.user(app, u.id) {
                served += 1;
                assert!(
                    u64::try_from(r.version).unwrap() >= after,
                    "read at {} served after eviction {after}",
                    r.version
                );
            }
        }
        assert!(served > 0, "the reader's entries were stored at all");
        stop.store(true, Ordering::SeqCst);
        putter.join().unwrap();
        cache.evict_users([u.id]);
        assert!(cache.user(app, u.id).is_none());
    }

    #[test]
    fn bounded_in_bytes() {
        let total = 4 * 1024 * 1024;
        let shares = Shares::of(total);
        assert_eq!(shares.apps + shares.sessions + shares.users, total);
        let cache = live(total);
        let app = Uuid::now_v7();
        // Profiles just under a 64th of the users' share: each is kept.
        let size = usize::try_from(shares.users / MAX_ENTRY_PART).unwrap() - 1024;
        let mut kept = 0;
        for _ in 0..2_000 {
            let u = user(app, size);
            cache.put_user(cache.generation(), &u);
            kept += usize::from(cache.user(app, u.id).is_some());
        }
        assert!(kept > 1_000, "large entries are cached ({kept})");
        cache.users.cache.run_pending_tasks();
        let used = cache.users.cache.weighted_size();
        assert!(used <= shares.users, "{used} bytes over a share of {}", shares.users);
        assert!(used > shares.users / 2, "the share is used: {used}");
        assert!(cache.users.cache.entry_count() <= MAX_ENTRY_PART);

        // One entry heavier than a 64th of the share is not kept at all.
        let big = user(app, usize::try_from(shares.users / MAX_ENTRY_PART).unwrap());
        cache.put_user(cache.generation(), &big);
        assert!(cache.user(app, big.id).is_none());

        // Many small sessions: the bound holds for them as well.
        for i in 0..100_000u32 {
            cache.put_session(cache.generation(), app, &i.to_be_bytes(), &info(), Duration::from_secs(60));
        }
        cache.sessions.cache.run_pending_tasks();
        let used = cache.sessions.cache.weighted_size();
        assert!(used <= shares.sessions && used > shares.sessions / 2, "{used} of {}", shares.sessions);
    }

    #[test]
    fn each_entry_lives_until_its_own_deadline() {
        let cache = live(DEFAULT_CACHE_BYTES);
        let app = Uuid::now_v7();
        cache.put_session(cache.generation(), app, b"short", &info(), Duration::from_millis(30));
        cache.put_session(cache.generation(), app, b"long", &info(), Duration::from_secs(60));
        // Put again with a shorter life: the new deadline holds.
        cache.put_session(cache.generation(), app, b"cut", &info(), Duration::from_secs(60));
        cache.put_session(cache.generation(), app, b"cut", &info(), Duration::from_millis(30));
        assert!(cache.session(app, b"short").is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.session(app, b"short").is_none());
        assert!(cache.session(app, b"cut").is_none());
        assert!(cache.session(app, b"long").is_some());
    }
}
