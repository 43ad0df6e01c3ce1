//! The real binary: `usersvc serve` as a child process on loopback ports,
//! its CLI, and clients for both doors.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use secrecy::ExposeSecret;
use serde_json::Value;
use tonic::{Request, metadata::MetadataValue, transport::Channel};
use usersvc::pb::{self, group_service_client::GroupServiceClient, user_service_client::UserServiceClient};

use crate::cluster::free_port;

/// One master key for every process of the run.
pub fn master_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| usersvc::crypto::MasterKey::generate().expose_secret().to_owned())
}

/// The binary with the run's master key.
pub fn usersvc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_usersvc"));
    c.env("USERSVC_MASTER_KEY", master_key()).env_remove("DATABASE_URL");
    c
}

/// A SQLite database of its own, for tests that need no PostgreSQL.
pub fn sqlite_url() -> String {
    let dir = std::env::temp_dir().join(format!("usersvc-faults-{}", uuid::Uuid::new_v4().simple()));
    format!("sqlite://{}/usersvc.db", dir.display())
}

/// `usersvc app create`: (app id, API key).
pub fn create_app(db: &str) -> (String, String) {
    let out = usersvc().args(["app", "create", "--name", "faults", "--database-url", db]).output().unwrap();
    assert!(out.status.success(), "app create: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["appId"].as_str().unwrap().to_owned(), v["apiKey"].as_str().unwrap().to_owned())
}

/// A running `usersvc serve`.
pub struct Serve {
    child: std::sync::Mutex<Option<Child>>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub log: PathBuf,
    pub db: String,
    args: Vec<String>,
}

impl Serve {
    /// Starts serve on `db` with extra flags and waits until it answers.
    pub async fn start(db: &str, extra: &[&str]) -> Self {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::env::temp_dir().join(format!("usersvc-faults-{}.log", uuid::Uuid::new_v4().simple()));
        let s = Self {
            child: std::sync::Mutex::default(),
            http,
            grpc,
            log,
            db: db.to_owned(),
            args: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        s.spawn().await;
        s
    }

    async fn spawn(&self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mail = std::env::temp_dir().join(format!("usersvc-faults-mail-{}", uuid::Uuid::new_v4().simple()));
        let child = usersvc()
            .arg("serve")
            .args(["--database-url", &self.db])
            .args(["--http-addr", &self.http.to_string(), "--grpc-addr", &self.grpc.to_string()])
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(["--mail-dir", &mail.display().to_string(), "--hash-concurrency", "2"])
            .args(&self.args)
            // The load of these tests comes from one address; the sign-up
            // quota is not what they test (a flag in `extra` still wins).
            .env("USERSVC_SIGNUP_PER_ADDRESS", "0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        *self.child.lock().unwrap() = Some(child);
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(r) = client.get(self.url("/healthz")).send().await
                && r.status() == 200
            {
                return;
            }
            let exited = self.child.lock().unwrap().as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("serve exited with {status}:\n{}", self.log_text());
            }
            assert!(started.elapsed() < Duration::from_secs(60), "serve did not come up:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill9(&self) {
        let child = self.child.lock().unwrap().take();
        if let Some(mut c) = child {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Starts it again on the same database and ports.
    pub async fn restart(&self) {
        self.kill9();
        self.spawn().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A new gRPC channel (connected lazily).
    pub fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc)).unwrap().connect_lazy()
    }

    pub fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel())
    }

    pub fn groups(&self) -> GroupServiceClient<Channel> {
        GroupServiceClient::new(self.channel())
    }

    /// Panics when the process panicked at some point.
    /// Signs up a user over gRPC (password "correct horse battery").
    pub async fn sign_up(&self, api_key: &str, username: &str) -> pb::User {
        let user =
            pb::User { username: username.into(), password: "correct horse battery".into(), ..Default::default() };
        self.users()
            .create_user(req(pb::CreateUserRequest { user: Some(user) }, api_key, None))
            .await
            .expect("sign up")
            .into_inner()
    }

    pub fn assert_no_panic(&self) {
        let log = self.log_text();
        assert!(!log.contains("panicked"), "serve panicked:\n{log}");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A gRPC request with the application's key and, when given, a token.
pub fn req<T>(message: T, api_key: &str, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert("x-api-key", MetadataValue::try_from(format!("server faults {api_key}")).unwrap());
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {t}")).unwrap());
    }
    r.set_timeout(Duration::from_secs(30));
    r
}

/// What a request came to, as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    /// 503 with an `errors[]` body, or UNAVAILABLE.
    Unavailable,
    /// Anything else: status and body, or code and message.
    Other(String),
}

impl Outcome {
    /// An HTTP reply: 2xx is Ok, 503 must carry `errors[]`.
    pub async fn of_http(res: reqwest::Result<reqwest::Response>) -> (Self, Option<Value>) {
        let res = match res {
            Ok(r) => r,
            Err(e) => return (Outcome::Other(format!("transport: {e}")), None),
        };
        let status = res.status();
        let body: Option<Value> = res.json().await.ok();
        if status.is_success() {
            return (Outcome::Ok, body);
        }
        let has_errors = body.as_ref().and_then(|b| b["errors"][0]["code"].as_u64()) == Some(503);
        if status == 503 && has_errors {
            (Outcome::Unavailable, body)
        } else {
            (Outcome::Other(format!("HTTP {status}: {body:?}")), body)
        }
    }

    pub fn of_grpc<T>(res: &Result<T, tonic::Status>) -> Self {
        match res {
            Ok(_) => Outcome::Ok,
            Err(s) if s.code() == tonic::Code::Unavailable => Outcome::Unavailable,
            Err(s) => Outcome::Other(format!("gRPC {:?}: {}", s.code(), s.message())),
        }
    }
}

/// FAULTS_LONG=1: the long form (longer outages, more load).
pub fn long() -> bool {
    std::env::var("FAULTS_LONG").is_ok_and(|v| !v.is_empty() && v != "0")
}
