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
//! `pg_notify.rs`). The cache is used only while that notification channel
//! is connected; when it drops, everything is forgotten and calls go to the
//! database until it is back. An entry read from the database before an
//! eviction is never stored after it (the generation check).

use std::{
    collections::HashMap,
    sync::{
        RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::{App, SessionInfo, UserRecord};

/// Entries kept at most per map; past it the map starts again.
const MAX_ENTRIES: usize = 100_000;
/// How long an application is remembered (its changes also evict).
const APP_TTL: Duration = Duration::from_secs(60);
/// User records kept at most: sealed profiles are a few hundred bytes each.
const MAX_USERS: usize = 20_000;
/// How long a user record is remembered (its changes also evict).
const USER_TTL: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct CachedSession {
    app_id: Uuid,
    info: SessionInfo,
    until: Instant,
}

#[derive(Default)]
pub struct AuthCache {
    /// True while every replica's evictions reach this one.
    live: AtomicBool,
    generation: AtomicU64,
    apps: RwLock<HashMap<Vec<u8>, (App, Instant)>>,
    sessions: RwLock<HashMap<Vec<u8>, CachedSession>>,
    users: RwLock<HashMap<Uuid, (UserRecord, Instant)>>,
}

/// Taken before a database read; an entry is stored only if nothing was
/// evicted since.
#[derive(Clone, Copy)]
pub struct Generation(u64);

impl AuthCache {
    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::SeqCst))
    }

    pub fn app(&self, key_hash: &[u8]) -> Option<App> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        let apps = self.apps.read().ok()?;
        apps.get(key_hash).filter(|(_, until)| *until > Instant::now()).map(|(app, _)| app.clone())
    }

    pub fn put_app(&self, seen: Generation, key_hash: &[u8], app: &App) {
        self.put(seen, &self.apps, MAX_ENTRIES, key_hash.to_vec(), (app.clone(), Instant::now() + APP_TTL));
    }

    /// A live session of this application, if one is remembered.
    pub fn session(&self, app_id: Uuid, token_hash: &[u8]) -> Option<SessionInfo> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        let sessions = self.sessions.read().ok()?;
        sessions.get(token_hash).filter(|s| s.app_id == app_id && s.until > Instant::now()).map(|s| s.info.clone())
    }

    /// Remembers a session found live for `ttl` (no longer than the caller
    /// may go without touching it, nor past its end).
    pub fn put_session(&self, seen: Generation, app_id: Uuid, token_hash: &[u8], info: &SessionInfo, ttl: Duration) {
        let entry = CachedSession { app_id, info: info.clone(), until: Instant::now() + ttl };
        self.put(seen, &self.sessions, MAX_ENTRIES, token_hash.to_vec(), entry);
    }

    /// A user of this application as last stored, if one is remembered.
    pub fn user(&self, app_id: Uuid, user_id: Uuid) -> Option<UserRecord> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        let users = self.users.read().ok()?;
        users.get(&user_id).filter(|(u, until)| u.app_id == app_id && *until > Instant::now()).map(|(u, _)| u.clone())
    }

    pub fn put_user(&self, seen: Generation, user: &UserRecord) {
        let entry = (user.clone(), Instant::now() + USER_TTL);
        self.put(seen, &self.users, MAX_USERS, user.id, entry);
    }

    fn put<K: std::hash::Hash + Eq, V>(
        &self,
        seen: Generation,
        map: &RwLock<HashMap<K, V>>,
        max: usize,
        key: K,
        value: V,
    ) {
        if !self.live.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut map) = map.write() else { return };
        // Checked under the lock that evictions take after they count.
        if self.generation.load(Ordering::SeqCst) != seen.0 {
            return;
        }
        if map.len() >= max {
            map.clear();
        }
        map.insert(key, value);
    }

    /// Forgets these users' records (changed or deleted).
    pub fn evict_users(&self, ids: impl IntoIterator<Item = Uuid>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut map) = self.users.write() {
            for id in ids {
                map.remove(&id);
            }
        }
    }

    /// Forgets the sessions of these token digests.
    pub fn evict_sessions<'a>(&self, token_hashes: impl IntoIterator<Item = &'a [u8]>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut map) = self.sessions.write() {
            for h in token_hashes {
                map.remove(h);
            }
        }
    }

    /// Forgets everything (a change of a user's rights or an application's).
    pub fn evict_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut map) = self.sessions.write() {
            map.clear();
        }
        if let Ok(mut map) = self.users.write() {
            map.clear();
        }
        if let Ok(mut map) = self.apps.write() {
            map.clear();
        }
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
        SessionInfo { session_id: Uuid::now_v7(), user_id: Uuid::now_v7(), supervisor: false }
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
    }
}
