//! The harness: a real database (SQLite, and PostgreSQL when one is named),
//! the real servers on port 0, and real gRPC and HTTP clients.

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, PgConnection};
use tokio::sync::OnceCell;
use tonic::{Request, metadata::MetadataValue, transport::Channel};
use usersvc::{
    admin::Admin,
    app::Application,
    config::{DatabaseArgs, GatewayArgs, KeyArgs, MailArgs, ServeArgs, SessionArgs},
    crypto::MasterKey,
    pb::{self, group_service_client::GroupServiceClient, user_service_client::UserServiceClient},
    store::backend::Pool,
};

/// Which store a test runs on. Every test runs on SQLite (nothing to
/// install); with TEST_DATABASE_URL or DATABASE_URL naming a PostgreSQL
/// server, on PostgreSQL as well (see `both_stores!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

tokio::task_local! {
    pub static BACKEND: Backend;
}

/// The backend of the running test (SQLite outside `both_stores!`).
pub fn backend() -> Backend {
    BACKEND.try_with(|b| *b).unwrap_or(Backend::Sqlite)
}

/// Runs each test once per store: `mod NAME { fn sqlite(); fn postgres() }`.
/// The PostgreSQL run needs a server (TEST_DATABASE_URL or DATABASE_URL);
/// without one it says so and passes, except where `CI` is set: there it
/// fails, so a CI that lost its PostgreSQL cannot pass silently.
macro_rules! both_stores {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                $crate::common::BACKEND.scope($crate::common::Backend::Sqlite, async $body).await
            }

            #[tokio::test]
            async fn postgres() {
                if $crate::common::postgres_server().is_none() {
                    eprintln!("PostgreSQL run not made: set TEST_DATABASE_URL (or DATABASE_URL) to a postgres:// server");
                    return;
                }
                $crate::common::BACKEND.scope($crate::common::Backend::Postgres, async $body).await
            }
        }
    };
}

/// The PostgreSQL server tests make their databases on, if one is named.
/// Where `CI` is set, one must be.
pub fn postgres_server() -> Option<String> {
    let url = std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .ok()
        .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(url.is_some() || !in_ci, "CI is set but no PostgreSQL is named: set TEST_DATABASE_URL");
    url
}

pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A database of its own on the test's backend: a new PostgreSQL database,
/// or a new SQLite file.
pub async fn fresh_database() -> String {
    match backend() {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join(format!("usersvc-test-{}", uuid::Uuid::new_v4().simple()));
            format!("sqlite://{}/usersvc.db", dir.display())
        }
        Backend::Postgres => {
            let admin = postgres_server().expect("a PostgreSQL server");
            let name = format!("usersvc_test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = PgConnection::connect(&admin).await.expect("connect to PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
            conn.close().await.ok();
            with_database(&admin, &name)
        }
    }
}

static SHARED_PG: OnceCell<String> = OnceCell::const_new();

/// Where a test's service keeps its data. On PostgreSQL, one database per
/// run, each test isolated by its own application (`.ci/run` drops old
/// ones); on SQLite, a file per test (SQLite has one writer).
pub async fn database_url() -> String {
    match backend() {
        Backend::Sqlite => fresh_database().await,
        Backend::Postgres => SHARED_PG
            .get_or_init(|| async {
                let url = fresh_database().await;
                let (store, _) = usersvc::store::backend::open(&url, 1).await.expect("open test database");
                store.migrate().await.expect("migrate test database");
                url
            })
            .await
            .clone(),
    }
}

/// One master key for the whole run: every server of the run shares the
/// database, and so its wrapped keys.
pub fn master_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| MasterKey::generate().expose_secret().to_owned())
}

pub fn serve_args(database_url: String) -> ServeArgs {
    ServeArgs {
        db: DatabaseArgs {
            database_url,
            db_max_connections: 4,
            db_acquire_timeout: Duration::from_secs(5),
            migrate_database_url: None,
            cache_bytes: usersvc::store::auth_cache::DEFAULT_CACHE_BYTES,
        },
        keys: KeyArgs { master_key_file: None, master_key: Some(SecretString::from(master_key().to_owned())) },
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        sessions: SessionArgs {
            session_idle_timeout: Duration::from_secs(1800),
            session_max_age: Duration::from_secs(12 * 3600),
            privileged_session_max_age: Duration::from_secs(15 * 60),
        },
        gateway: GatewayArgs { cors_origins: vec![], trusted_proxies: vec![] },
        mail: MailArgs {
            smtp_url: None,
            mail_from: "usersvc tests <no-reply@usersvc.test>".into(),
            mail_dir: std::env::temp_dir().join(format!("usersvc-mail-{}", uuid::Uuid::new_v4().simple())),
            mail_templates: None,
            public_url: None,
            mail_give_up_after: Duration::from_secs(3600),
            reset_link_lifetime: Duration::from_secs(30 * 60),
            mail_poll_interval: Duration::from_millis(100),
            mail_per_recipient: usersvc::config::parse_recipient_limit("3/h").unwrap(),
        },
        hash_concurrency: Some(2),
        min_password_length: 8,
        read_trail: usersvc::audit::ReadTrail::Durable,
        limits: usersvc::config::LimitArgs {
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
            grpc_concurrency_per_connection: 256,
            shutdown_grace: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            hash_queue: None,
            // Tests share busy cores: a hash slowed down by them must not
            // turn into the 503s only the tests of floods look for.
            hash_max_wait: Duration::from_secs(60),
            // Off: tests sign up as many users from 127.0.0.1 as they need
            // (tests/api/floods.rs turns it on where it is the subject).
            signup_per_address: 0,
        },
        trusted_gateways: vec![],
        // Port 0: servers of one run never meet on the default 9000.
        admin_addr: usersvc::config::AdminAddr(Some("127.0.0.1:0".parse().unwrap())),
        tls: usersvc::config::TlsArgs::default(),
    }
}

/// A running service with one application of its own.
pub struct TestApp {
    pub app: Application,
    pub app_id: uuid::Uuid,
    pub api_key: String,
    pub http: reqwest::Client,
    pub db_url: String,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.app.abort();
    }
}

pub async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(configure: impl FnOnce(&mut ServeArgs)) -> TestApp {
    spawn_in(database_url().await, configure).await
}

/// A service on a database of its own: for tests whose background work
/// (the mail sender drains every application's outbox) must not meet
/// other tests'.
pub async fn spawn_alone(configure: impl FnOnce(&mut ServeArgs)) -> TestApp {
    spawn_in(fresh_database().await, configure).await
}

pub async fn spawn_in(database_url: String, configure: impl FnOnce(&mut ServeArgs)) -> TestApp {
    let mut args = serve_args(database_url.clone());
    configure(&mut args);
    let app = Application::start(&args).await.expect("start usersvc");
    let (app_id, api_key) = new_application(&app).await;
    TestApp { app, app_id, api_key, http: reqwest::Client::new(), db_url: database_url }
}

/// Creates another application in the same service; returns its id and key.
pub async fn new_application(app: &Application) -> (uuid::Uuid, String) {
    new_application_keyed(app, Some(master_key())).await
}

/// The same, under a given master key (None: the one beside a SQLite file).
pub async fn new_application_keyed(app: &Application, master: Option<&str>) -> (uuid::Uuid, String) {
    let master = match master {
        Some(k) => MasterKey::parse(k).unwrap(),
        None => usersvc::config::KeyArgs { master_key_file: None, master_key: None }
            .load_for(&database_url_of(app))
            .unwrap(),
    };
    let (created, key) =
        Admin::new(app.store.clone(), master).create_app("test app").await.expect("create application");
    (created.id, key.expose_secret().to_owned())
}

fn database_url_of(app: &Application) -> String {
    app.database_url.clone()
}

/// The operator's view of the service's database.
pub fn admin(app: &Application) -> Admin {
    Admin::new(app.store.clone(), MasterKey::parse(master_key()).unwrap())
}

impl TestApp {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.app.grpc_addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.app.http_addr, path)
    }

    /// A URL on the management port.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.app.admin_addr.expect("a management port"), path)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr())).unwrap().connect().await.expect("connect gRPC")
    }

    pub async fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel().await)
    }

    pub async fn groups(&self) -> GroupServiceClient<Channel> {
        GroupServiceClient::new(self.channel().await)
    }

    /// A request with this application's key and, when given, a token.
    pub fn req<T>(&self, message: T, token: Option<&str>) -> Request<T> {
        with_auth(message, Some(&self.api_key), token)
    }

    /// Signs up a user over gRPC; returns (id, token).
    pub async fn sign_up(&self, username: &str) -> (String, String) {
        self.sign_up_in(&self.api_key.clone(), username).await
    }

    /// Signs up a user of the application with this key.
    pub async fn sign_up_in(&self, api_key: &str, username: &str) -> (String, String) {
        let user = pb::User {
            username: username.into(),
            password: "correct horse battery".into(),
            email: Some(pb::Email { primary: format!("{username}@example.com"), ..Default::default() }),
            ..Default::default()
        };
        let out = self
            .users()
            .await
            .create_user(with_auth(pb::CreateUserRequest { user: Some(user) }, Some(api_key), None))
            .await
            .expect("sign up")
            .into_inner();
        assert!(!out.session_token.is_empty());
        (out.users_id, out.session_token)
    }

    /// Signs up a user and makes them a supervisor; returns (id, token).
    pub async fn supervisor(&self, username: &str) -> (String, String) {
        let (id, token) = self.sign_up(username).await;
        self.make_supervisor(self.app_id, username).await;
        (id, token)
    }

    pub async fn make_supervisor(&self, app_id: uuid::Uuid, username: &str) {
        assert!(admin(&self.app).add_supervisor(app_id, username).await.unwrap(), "no user {username}");
    }

    /// A count from SQL with one id bound (`$1`), on either store.
    pub async fn count(&self, sql: &str, id: &str) -> i64 {
        let id = uuid::Uuid::parse_str(id).unwrap();
        match &self.app.pool {
            Pool::Postgres(p) => sqlx::query_scalar(sql).bind(id).fetch_one(p).await.unwrap(),
            Pool::Sqlite(p) => sqlx::query_scalar(sql).bind(id).fetch_one(p).await.unwrap(),
        }
    }

    /// One integer from SQL with nothing bound.
    pub async fn scalar(&self, sql: &str) -> i64 {
        match &self.app.pool {
            Pool::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            Pool::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }

    /// A count from SQL with this test's application bound (`$1`).
    pub async fn count_app(&self, sql: &str) -> i64 {
        self.count(sql, &self.app_id.to_string()).await
    }

    /// Integers from SQL with this test's application bound (`$1`).
    pub async fn ints_app(&self, sql: &str) -> Vec<i64> {
        match &self.app.pool {
            Pool::Postgres(p) => sqlx::query_scalar::<_, i32>(sql)
                .bind(self.app_id)
                .fetch_all(p)
                .await
                .unwrap()
                .into_iter()
                .map(i64::from)
                .collect(),
            Pool::Sqlite(p) => sqlx::query_scalar(sql).bind(self.app_id).fetch_all(p).await.unwrap(),
        }
    }

    /// Runs SQL with two ids bound (`$1`, `$2`); false when the database refuses.
    pub async fn exec2(&self, sql: &str, a: uuid::Uuid, b: uuid::Uuid) -> bool {
        match &self.app.pool {
            Pool::Postgres(p) => sqlx::query(sql).bind(a).bind(b).execute(p).await.is_ok(),
            Pool::Sqlite(p) => sqlx::query(sql).bind(a).bind(b).execute(p).await.is_ok(),
        }
    }

    /// Runs SQL with one integer bound (`$1`); false when the database refuses.
    pub async fn exec_int(&self, sql: &str, n: i64) -> bool {
        match &self.app.pool {
            Pool::Postgres(p) => sqlx::query(sql).bind(n).execute(p).await.is_ok(),
            Pool::Sqlite(p) => sqlx::query(sql).bind(n).execute(p).await.is_ok(),
        }
    }

    /// Everything the database holds, as text: `pg_dump`, or the SQLite
    /// files themselves.
    pub async fn dump(&self) -> String {
        match &self.app.pool {
            Pool::Postgres(_) => {
                let out = std::process::Command::new("pg_dump").arg(&self.db_url).output().expect("pg_dump");
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
            Pool::Sqlite(p) => {
                sqlx::query("PRAGMA wal_checkpoint(FULL)").execute(p).await.unwrap();
                let path = self.db_url.trim_start_matches("sqlite://").to_owned();
                let mut all = Vec::new();
                for file in [path.clone(), format!("{path}-wal")] {
                    all.extend(std::fs::read(&file).unwrap_or_default());
                }
                String::from_utf8_lossy(&all).into_owned()
            }
        }
    }

    /// Changes a trail record as a superuser would: around the trigger.
    pub async fn tamper_with_trail(&self, seq: i64) {
        match &self.app.pool {
            Pool::Postgres(p) => {
                let mut tx = p.begin().await.unwrap();
                for sql in [
                    "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update",
                    "UPDATE audit_events SET fields = '{ssn}' WHERE seq = $1",
                    "ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update",
                ] {
                    let q = sqlx::query(sql);
                    let q = if sql.contains("$1") { q.bind(seq) } else { q };
                    q.execute(&mut *tx).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
            Pool::Sqlite(p) => {
                let triggers: Vec<String> = sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_events'",
                )
                .fetch_all(p)
                .await
                .unwrap();
                for t in &triggers {
                    sqlx::query(&format!("DROP TRIGGER {t}")).execute(p).await.unwrap();
                }
                sqlx::query("UPDATE audit_events SET fields = '[\"ssn\"]' WHERE seq = $1")
                    .bind(seq)
                    .execute(p)
                    .await
                    .unwrap();
            }
        }
    }
}

pub fn with_auth<T>(message: T, api_key: Option<&str>, token: Option<&str>) -> Request<T> {
    let mut req = Request::new(message);
    if let Some(key) = api_key {
        req.metadata_mut().insert("x-api-key", MetadataValue::try_from(format!("browser usersvc.test {key}")).unwrap());
    }
    if let Some(token) = token {
        req.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {token}")).unwrap());
    }
    req
}

/// The field named by an INVALID_ARGUMENT status.
pub fn violation_field(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status.get_error_details().bad_request().and_then(|b| b.field_violations.first()).map(|v| v.field.clone())
}

/// `usersvc audit verify` on `db`: the number of records when it exits 0
/// (the chain is whole), else what it printed.
pub async fn audit_verified(db: &str) -> Result<u64, String> {
    let out = cli(db, &["audit", "verify"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    let n = text.strip_prefix("ok: ").and_then(|t| t.split_whitespace().next()).and_then(|n| n.parse().ok());
    Ok(n.unwrap_or_else(|| panic!("audit verify exited 0 without 'ok: N': {text}")))
}

/// The binary, with the run's master key.
pub fn usersvc() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_usersvc"));
    c.env("USERSVC_MASTER_KEY", master_key());
    c
}

/// The binary as `usersvc()` gives it, for a test whose server runs in
/// this process: awaited, so the runtime's one thread is never blocked on
/// it. The server runs on that thread and may hold SQLite's write lock (or
/// a PostgreSQL row lock) across an await; a thread blocked on a child that
/// needs the lock freezes the server holding it, and the child gives up
/// after its busy timeout with "database is locked".
pub fn usersvc_awaited() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_usersvc"));
    c.env("USERSVC_MASTER_KEY", master_key());
    c
}

/// `usersvc ARGS` on `db`, awaited (`usersvc_awaited`).
pub async fn cli(db: &str, args: &[&str]) -> std::process::Output {
    usersvc_awaited().args(args).env("DATABASE_URL", db).output().await.expect("usersvc starts")
}

/// `usersvc app update --app <the test's app> ARGS` beside the running server.
pub async fn app_update(t: &TestApp, args: &[&str]) -> std::process::Output {
    let app = t.app_id.to_string();
    cli(&t.db_url, &[&["app", "update", "--app", &app], args].concat()).await
}

/// A child process, killed when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
