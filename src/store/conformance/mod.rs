//! One contract, tested once: every method of every store concern, on
//! SQLite always and on PostgreSQL whenever `TEST_DATABASE_URL` (or
//! `DATABASE_URL`) names a server; where `CI` is set, a missing server fails
//! the run instead of skipping it. As in the `object_store` crate's
//! `integration.rs`: the tests are generic functions over [`Store`], and
//! each backend's tests (at the end) call every one of them.
//!
//! What a test needs beyond the trait (time passing, a raw statement) goes
//! through [`Db`], one method per need, written in each dialect.

use std::{sync::Arc, time::Duration};

use uuid::Uuid;

use crate::store::trail::record::{AuditRecord, GENESIS, StoredAudit, verify};
use crate::store::*;

mod cases;
mod passkeys;
mod verifications;
use cases::*;
use passkeys::*;
use verifications::*;
mod factors;
use factors::*;

/// The database under a store, for the tests' own reads and writes.
pub enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// A store on a database of its own (a new SQLite file or PostgreSQL database).
pub struct Under {
    pub store: Arc<dyn Store>,
    pub db: Db,
    dir: Option<std::path::PathBuf>,
}

impl Drop for Under {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The PostgreSQL server to test on, if any; in CI there must be one.
pub fn postgres_server() -> Option<String> {
    let url = std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .ok()
        .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(url.is_some() || !in_ci, "CI is set but no PostgreSQL is named: set TEST_DATABASE_URL");
    url
}

impl Under {
    pub async fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("usersvc-sqlite-{}", Uuid::new_v4()));
        let url = format!("sqlite://{}/nested/usersvc.db", dir.display());
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        assert!(dir.join("nested/usersvc.db").exists(), "the folder and file are made");
        let db = Db::Sqlite(store.pool().clone());
        Self { store: Arc::new(store), db, dir: Some(dir) }
    }

    /// None (and the test skipped, saying so) without a server.
    pub async fn postgres() -> Option<Self> {
        let Some(server) = postgres_server() else {
            eprintln!("PostgreSQL run not made: set TEST_DATABASE_URL to a postgres:// server");
            return None;
        };
        let name = format!("usersvc_test_{}", Uuid::new_v4().simple());
        let (base, query) = server.split_once('?').map_or((server.as_str(), None), |(b, q)| (b, Some(q)));
        let base = base.rfind('/').filter(|i| *i > "postgres://".len()).map_or(base, |i| &base[..i]);
        let url = match query {
            Some(q) => format!("{base}/{name}?{q}"),
            None => format!("{base}/{name}"),
        };
        // connect makes the database; `.ci/run` drops old usersvc_test_ ones.
        let store = PgStore::connect(&url, 8).await.unwrap();
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        let db = Db::Postgres(store.pool().clone());
        Some(Self { store: Arc::new(store), db, dir: None })
    }
}

/// Microseconds, as the dialects' clocks are compared here.
pub(super) const DAY_US: i64 = 86_400_000_000;

impl Db {
    /// A key's failure count (0 when it has no row).
    pub(super) async fn failures(&self, key: &[u8]) -> i32 {
        match self {
            Db::Sqlite(p) => sqlx::query_scalar("SELECT COALESCE((SELECT failures FROM throttles WHERE key = ?1), 0)")
                .bind(key)
                .fetch_one(p)
                .await
                .unwrap(),
            Db::Postgres(p) => {
                sqlx::query_scalar("SELECT COALESCE((SELECT failures FROM throttles WHERE key = $1), 0)")
                    .bind(key)
                    .fetch_one(p)
                    .await
                    .unwrap()
            }
        }
    }

    /// Microseconds until a key's wait ends (negative: it has ended).
    pub(super) async fn wait_left_us(&self, key: &[u8]) -> i64 {
        match self {
            Db::Sqlite(p) => {
                let until: i64 = sqlx::query_scalar("SELECT blocked_until FROM throttles WHERE key = ?1")
                    .bind(key)
                    .fetch_one(p)
                    .await
                    .unwrap();
                until - chrono::Utc::now().timestamp_micros()
            }
            Db::Postgres(p) => sqlx::query_scalar(
                "SELECT (extract(epoch FROM blocked_until - clock_timestamp()) * 1e6)::int8 FROM throttles WHERE key = $1",
            )
            .bind(key)
            .fetch_one(p)
            .await
            .unwrap(),
        }
    }

    /// Runs one statement of the test's own; its error's text, if any.
    pub(super) async fn run(&self, sql: &str) -> Result<u64, String> {
        match self {
            Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
            Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(|r| r.rows_affected()),
        }
        .map_err(|e| e.to_string())
    }

    /// Several statements, as one script.
    pub(super) async fn script(&self, sql: &str) -> Result<(), String> {
        match self {
            Db::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
            Db::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
        }
        .map_err(|e| e.to_string())
    }

    /// `sql` run with the trail's append-only triggers off, as the owner of
    /// the tables could.
    pub(super) fn without_trail_triggers(&self, sql: &str) -> String {
        match self {
            Db::Sqlite(_) => format!(
                "DROP TRIGGER audit_events_no_update; {sql}; CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON \
                 audit_events BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;"
            ),
            Db::Postgres(_) => format!(
                "ALTER TABLE audit_events DISABLE TRIGGER USER; {sql}; ALTER TABLE audit_events ENABLE TRIGGER USER"
            ),
        }
    }

    /// A time `ago_us` before now, as a SQL literal of the dialect.
    pub(super) fn ago(&self, ago_us: i64) -> String {
        match self {
            Db::Sqlite(_) => (chrono::Utc::now().timestamp_micros() - ago_us).to_string(),
            Db::Postgres(_) => format!("(clock_timestamp() - make_interval(secs => {}))", ago_us as f64 / 1e6),
        }
    }

    /// `n` throttle counts whose last failure was two days ago, unblocked.
    pub(super) async fn stale_throttles(&self, n: i64) {
        let sql = match self {
            Db::Sqlite(_) => format!(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {n})
                 INSERT INTO throttles (key, failures, last_failure) SELECT CAST(printf('stale-%d', n) AS BLOB), 1, {}
                 FROM g",
                self.ago(2 * DAY_US)
            ),
            Db::Postgres(_) => format!(
                "INSERT INTO throttles (key, failures, last_failure)
                 SELECT int4send(g), 1, {} FROM generate_series(1, {n}) AS g",
                self.ago(2 * DAY_US)
            ),
        };
        assert_eq!(self.run(&sql).await, Ok(u64::try_from(n).unwrap()));
    }

    pub(super) async fn count(&self, sql: &str) -> i64 {
        match self {
            Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }
}

pub(super) fn key(app_id: Uuid, purpose: &str) -> StoredKey {
    StoredKey {
        id: Uuid::now_v7(),
        app_id,
        purpose: purpose.into(),
        wrapped: vec![7; 40],
        master_key_id: "mk1".into(),
        current: true,
    }
}

pub(super) struct Fixture {
    pub(super) app: App,
    pub(super) data_key: StoredKey,
}

pub(super) async fn new_app(s: &dyn Store, name: &str) -> Fixture {
    let app = App { id: Uuid::now_v7(), name: name.into() };
    let data_key = key(app.id, "data");
    let keys = [data_key.clone(), key(app.id, "index")];
    s.create_app(&app, name.as_bytes(), &keys, &AuditRecord::new("app.create", Some(app.id))).await.unwrap();
    Fixture { app, data_key }
}

pub(super) fn new_user(f: &Fixture, username: &str) -> NewUser {
    NewUser {
        id: Uuid::now_v7(),
        app_id: f.app.id,
        key_id: f.data_key.id,
        username_ct: format!("ct:{username}").into_bytes(),
        username_bidx: username.as_bytes().to_vec(),
        password_hash: "hash-1".into(),
        email_bidx: Some(format!("mail:{username}").into_bytes()),
        profile_ct: b"profile".to_vec(),
        active: true,
        mrn_bidx: vec![format!("mrn:{username}").into_bytes()],
    }
}

pub(super) fn session(token: &str) -> NewSession {
    NewSession { id: Uuid::now_v7(), token_hash: token.as_bytes().to_vec(), max_age: Duration::from_secs(3600) }
}

pub(super) fn change(expected_version: i64, key_id: Uuid) -> UserChange {
    UserChange {
        expected_version,
        key_id,
        username: None,
        password_hash: None,
        email_bidx: None,
        profile_ct: b"profile-2".to_vec(),
        active: true,
        mrn_bidx: Vec::new(),
        end_sessions: None,
        void_resets: false,
        mail: vec![],
    }
}

pub(super) async fn chain_is_whole(s: &dyn Store) -> Vec<StoredAudit> {
    let all = s.audit_records(&AuditFilter { limit: 10_000, ..Default::default() }).await.unwrap();
    verify(&all, GENESIS.to_vec()).unwrap();
    all
}

pub(super) const HOUR: Duration = Duration::from_secs(3600);

/// Every test of the contract, once per backend.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Under::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(u) = super::Under::postgres().await {
                        super::$name(&u).await
                    }
                }
            )*
        }
    };
}

contract!(
    apps_keys_and_users,
    sessions_and_groups,
    throttles_block_after_the_free_attempts,
    quotas_refuse_past_the_window_s_attempts,
    the_trail_chains_and_is_append_only,
    server_request_ids_are_kept,
    outbox_and_password_reset,
    sweep_deletes_what_ran_out,
    sweep_goes_on_past_a_batch,
    users_not_under_key_continue_after_the_last,
    service_tokens_are_scoped_touched_listed_and_revoked,
    keys_rewrap_and_sign_in_attempts,
    two_writers_on_one_user,
    racing_sign_ups,
    claims_of_one_outbox_message,
    the_trail_seals_into_signed_checkpoints,
    a_late_commit_is_sealed_in_its_place,
    imports_skip_known_usernames_and_rehash_in_place,
    members_page_in_user_id_order,
    groups_page_in_id_order,
    user_groups_page_in_group_id_order,
    sessions_page_in_id_order,
    mrn_indexes_follow_the_user_row,
    usernames_are_rekeyed_once,
    user_changes_void_resets_and_queue_notices,
    passkeys_ceremonies_and_counters,
    verification_links_are_bound_to_the_address,
    resends_count_per_recipient_and_reset_mail_waits_for_verification,
    second_factors_are_pending_then_confirmed_and_used_once,
);
