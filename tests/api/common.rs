//! The harness: a real PostgreSQL database for this test run, the real
//! servers on port 0, and real gRPC and HTTP clients.

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
    store::{PgStore, Store},
};

/// The server that tests create their database on:
/// TEST_DATABASE_URL, else DATABASE_URL, else the local default.
fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn with_database(url: &str, db: &str) -> String {
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

/// A database of its own, for tests that change what every other test
/// shares (the master key, the trail's chain).
pub async fn fresh_database() -> String {
    let admin = server_url();
    let name = format!("usersvc_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&admin).await.expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
    conn.close().await.ok();
    with_database(&admin, &name)
}

static DATABASE: OnceCell<String> = OnceCell::const_new();

/// One fresh database per test run (tests isolate by application inside it);
/// `.ci/run` drops the old ones.
pub async fn database_url() -> String {
    DATABASE
        .get_or_init(|| async {
            let admin = server_url();
            let name = format!("usersvc_test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = PgConnection::connect(&admin).await.expect("connect to PostgreSQL (set TEST_DATABASE_URL)");
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
            conn.close().await.ok();
            let url = with_database(&admin, &name);
            let store = PgStore::connect(&url, 1).await.expect("connect to test database");
            store.migrate().await.expect("migrate test database");
            url
        })
        .await
        .clone()
}

/// One master key for the whole run: every server of the run shares the
/// database, and so its wrapped keys.
pub fn master_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| MasterKey::generate().expose_secret().to_owned())
}

pub fn serve_args(database_url: String) -> ServeArgs {
    ServeArgs {
        db: DatabaseArgs { database_url, db_max_connections: 4 },
        keys: KeyArgs { master_key_file: None, master_key: Some(SecretString::from(master_key().to_owned())) },
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        sessions: SessionArgs {
            session_idle_timeout: Duration::from_secs(1800),
            session_max_age: Duration::from_secs(12 * 3600),
        },
        gateway: GatewayArgs { cors_origins: vec![] },
        mail: MailArgs {
            smtp_url: None,
            mail_from: "usersvc tests <no-reply@usersvc.test>".into(),
            mail_dir: std::env::temp_dir().join(format!("usersvc-mail-{}", uuid::Uuid::new_v4().simple())),
            mail_templates: None,
            public_url: None,
            mail_give_up_after: Duration::from_secs(3600),
            mail_poll_interval: Duration::from_millis(100),
        },
        hash_concurrency: Some(2),
        min_password_length: 8,
        trusted_gateways: vec![],
    }
}

/// A running service with one application of its own.
pub struct TestApp {
    pub app: Application,
    pub app_id: uuid::Uuid,
    pub api_key: String,
    pub http: reqwest::Client,
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
    let mut args = serve_args(database_url);
    configure(&mut args);
    let app = Application::start(&args).await.expect("start usersvc");
    let (app_id, api_key) = new_application(&app).await;
    TestApp { app, app_id, api_key, http: reqwest::Client::new() }
}

/// Creates another application in the same service; returns its id and key.
pub async fn new_application(app: &Application) -> (uuid::Uuid, String) {
    let (created, key) = admin(app).create_app("test app").await.expect("create application");
    (created.id, key.expose_secret().to_owned())
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

    pub async fn count(&self, sql: &str, id: &str) -> i64 {
        let id = uuid::Uuid::parse_str(id).unwrap();
        sqlx::query_scalar(sql).bind(id).fetch_one(self.app.store.pool()).await.unwrap()
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
