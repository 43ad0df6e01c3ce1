//! Settings from flags and the environment.

use std::{net::SocketAddr, time::Duration};

use clap::Args;

/// Where the service keeps its data.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// sqlite://PATH (the default: nothing to install) or postgres://...;
    /// the database is created when it does not exist.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://usersvc-data/usersvc.db")]
    pub database_url: String,
    /// Connections in the database pool.
    #[arg(long, env = "USERSVC_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// How long a request waits for a database connection (all busy, or the
    /// database away) before it is answered 503 / UNAVAILABLE.
    #[arg(long, env = "USERSVC_DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub db_acquire_timeout: Duration,
    /// PostgreSQL only: the URL of the role that owns the schema. With it,
    /// migrations run as that role, which then grants `DATABASE_URL`'s role
    /// only what serving needs (on the trail: SELECT and INSERT; no UPDATE,
    /// DELETE or TRUNCATE, and, not owning it, no trigger changes). Without
    /// it, `DATABASE_URL`'s role migrates, as the owner.
    #[arg(long, env = "USERSVC_MIGRATE_DATABASE_URL")]
    pub migrate_database_url: Option<String>,
    /// PostgreSQL only: memory (about) for the API keys, sessions and user
    /// records each process remembers between reads, in bytes or with
    /// KiB, MiB or GiB; 0 turns the cache off. Shared out: applications
    /// 1/16, sessions 1/4, users the rest.
    #[arg(long, env = "USERSVC_CACHE_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub cache_bytes: u64,
}

/// Where the master key comes from.
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// A file holding the master key (base64 of 32 bytes).
    #[arg(long, env = "USERSVC_MASTER_KEY_FILE")]
    pub master_key_file: Option<std::path::PathBuf>,
    /// The master key itself (base64 of 32 bytes); prefer the file.
    #[arg(long = "master-key", env = "USERSVC_MASTER_KEY", hide_env_values = true, value_parser = secret)]
    pub master_key: Option<secrecy::SecretString>,
}

impl KeyArgs {
    pub fn load(&self) -> Result<crate::crypto::MasterKey, crate::crypto::CryptoError> {
        crate::crypto::MasterKey::load(self.master_key_file.as_deref(), self.master_key.as_ref())
    }

    /// The configured master key; on SQLite, without one, the key in
    /// `master.key` beside the database file, made (mode 0600) on first use.
    /// PostgreSQL always needs one configured.
    pub fn load_for(&self, database_url: &str) -> Result<crate::crypto::MasterKey, crate::crypto::CryptoError> {
        use crate::crypto::{CryptoError, MasterKey};
        use crate::store::backend::{Backend, sqlite_dir};
        match self.load() {
            Err(CryptoError::NoMasterKey) if Backend::of(database_url) == Some(Backend::Sqlite) => {
                let Some(dir) = sqlite_dir(database_url) else {
                    // An in-memory database lives as long as its key.
                    return MasterKey::parse(secrecy::ExposeSecret::expose_secret(&MasterKey::generate()));
                };
                let path = dir.join("master.key");
                if !path.exists() {
                    write_new_key(&path).map_err(CryptoError::KeyFile)?;
                    eprintln!(
                        "usersvc: made a master key at {} (keep it, and keep it out of the database's backups)",
                        path.display()
                    );
                }
                MasterKey::load(Some(&path), None)
            }
            other => other,
        }
    }
}

/// Writes a new master key to a file only its owner can read.
fn write_new_key(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    let key = crate::crypto::MasterKey::generate();
    file.write_all(secrecy::ExposeSecret::expose_secret(&key).as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

fn secret(s: &str) -> Result<secrecy::SecretString, String> {
    Ok(secrecy::SecretString::from(s.to_owned()))
}

/// `usersvc serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Address of the gRPC server.
    #[arg(long, env = "USERSVC_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Address of the HTTP (JSON /v2) gateway.
    #[arg(long, env = "USERSVC_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub sessions: SessionArgs,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub mail: MailArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Password hashes computed at once (default: the number of cores).
    #[arg(long, env = "USERSVC_HASH_CONCURRENCY")]
    pub hash_concurrency: Option<usize>,
    /// Deprecated: standalone gateways whose forwarded client address is
    /// believed; now entries of --trusted-proxies (and added to them).
    #[arg(long, env = "USERSVC_TRUSTED_GATEWAYS", value_delimiter = ',', value_parser = crate::edge::parse_net, hide = true)]
    pub trusted_gateways: Vec<ipnet::IpNet>,
    /// The management port: `/metrics`, `/healthz` and `/readyz`, plain
    /// HTTP, outside every request limit and without credentials (keep it
    /// off the public network). `off` serves none.
    #[arg(long, env = "USERSVC_ADMIN_ADDR", default_value = "127.0.0.1:9000", value_parser = parse_admin_addr)]
    pub admin_addr: AdminAddr,
    /// Shortest password accepted.
    #[arg(long, env = "USERSVC_MIN_PASSWORD_LENGTH", default_value_t = 8)]
    pub min_password_length: usize,
    /// When a reply that discloses PII may leave: `durable` (after its
    /// trail record is committed; reads fail with 503 when the trail cannot
    /// be written) or `async` (at once, the record written just after: a
    /// crash can lose the records of the last moments' reads).
    #[arg(long, env = "USERSVC_READ_TRAIL", value_enum, default_value_t = crate::audit::ReadTrail::Durable)]
    pub read_trail: crate::audit::ReadTrail,
}

/// TLS on both ports (both plain without these flags).
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// PEM certificate (chain) both ports serve; with --tls-key.
    #[arg(long, env = "USERSVC_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "USERSVC_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM CA certificate(s): the gRPC port then requires client
    /// certificates signed by it (mutual TLS between services). The HTTP
    /// port never asks for one.
    #[arg(long, env = "USERSVC_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<std::path::PathBuf>,
}

/// Bounds on what requests may take.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// A request not answered by then is cut off: HTTP 503 `timeout` with
    /// `Retry-After`, gRPC UNAVAILABLE with a retry hint.
    #[arg(long, env = "USERSVC_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// HTTP requests served at once; more wait their turn.
    #[arg(long, env = "USERSVC_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,
    /// gRPC calls served at once on one connection.
    #[arg(long, env = "USERSVC_GRPC_CONCURRENCY_PER_CONNECTION", default_value_t = 256)]
    pub grpc_concurrency_per_connection: usize,
    /// On SIGTERM or SIGINT, how long requests in flight may take to finish.
    #[arg(long, env = "USERSVC_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// A connection must send a request's complete headers (HTTP) or its
    /// preface (gRPC) within this time of opening; an HTTP keep-alive
    /// connection idle this long after its last response is closed too
    /// (behind a load balancer, set it above the balancer's idle timeout).
    #[arg(long, env = "USERSVC_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Open connections per port; more are closed as soon as they are
    /// accepted.
    #[arg(long, env = "USERSVC_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Password hashes (sign-in, sign-up, password change and reset) that
    /// may wait for a hashing thread; past them a call is answered at once
    /// with 503 / UNAVAILABLE (`overloaded`) and a Retry-After. Default: 32
    /// per hashing thread. A hash takes 15 to 20 ms on one core (105
    /// hashes/s on 2 threads measured here), so that is 0.5 to 0.65 s of
    /// waiting, within the 2 s a sign-in may wait even when hashes run three
    /// times slower (they run at the lowest priority, and slow down when the
    /// cores are busy with anything else).
    #[arg(long, env = "USERSVC_HASH_QUEUE")]
    pub hash_queue: Option<usize>,
    /// A password hash is also refused at once when the hashes ahead of it
    /// would take longer than this, at the speed hashes ran lately; and one
    /// let in that still waits this long for a hashing thread (hashes slowed
    /// down since) gives up then, with the same answer.
    #[arg(long, env = "USERSVC_HASH_MAX_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub hash_max_wait: Duration,
    /// Anonymous sign-ups per hour from one client address (an IPv6 client
    /// by its /64) to one application (a supervisor's or a service token's creations are not
    /// counted); past them, 429 with Retry-After until the hour that began
    /// with the first is over. Counted in the database, so every replica
    /// shares the count. 0 turns the limit off.
    #[arg(long, env = "USERSVC_SIGNUP_PER_ADDRESS", default_value_t = 20)]
    pub signup_per_address: u32,
}

/// Mail delivery.
#[derive(Debug, Clone, Args)]
pub struct MailArgs {
    /// SMTP server: smtp://host:port (STARTTLS where offered),
    /// smtp://host:port?tls=required, or smtps://user:pass@host:465.
    /// Without it, messages are written to --mail-dir.
    #[arg(long, env = "USERSVC_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// The sender of every message.
    #[arg(long, env = "USERSVC_MAIL_FROM", default_value = "usersvc <no-reply@localhost>")]
    pub mail_from: String,
    /// Where messages go as .eml files when no SMTP server is set.
    #[arg(long, env = "USERSVC_MAIL_DIR", default_value = "usersvc-mail")]
    pub mail_dir: std::path::PathBuf,
    /// A folder of message templates replacing the built-in ones.
    #[arg(long, env = "USERSVC_MAIL_TEMPLATES")]
    pub mail_templates: Option<std::path::PathBuf>,
    /// The address users reach the HTTP gateway at, for reset links
    /// (default: http://HTTP_ADDR).
    #[arg(long, env = "USERSVC_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How long a mailed password reset link works.
    #[arg(long, env = "USERSVC_RESET_LINK_LIFETIME", default_value = "30m", value_parser = parse_duration)]
    pub reset_link_lifetime: Duration,
    /// A message not delivered by then is given up on.
    #[arg(long, env = "USERSVC_MAIL_GIVE_UP_AFTER", default_value = "24h", value_parser = parse_duration)]
    pub mail_give_up_after: Duration,
    /// How often the outbox is looked at when it was empty.
    #[arg(long, env = "USERSVC_MAIL_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub mail_poll_interval: Duration,
    /// Username reminders and reset links to one address, at most: `N/PERIOD`
    /// (e.g. 3/h, 10/d, 5/30m; a day at most). Past it a request is answered
    /// as any other and no mail goes.
    #[arg(long, env = "USERSVC_MAIL_PER_RECIPIENT", default_value = "3/h", value_parser = parse_recipient_limit)]
    pub mail_per_recipient: crate::store::RecipientLimit,
}

#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    /// A session unused for this long ends, e.g. 30m, 90s, 1h.
    #[arg(long, env = "USERSVC_SESSION_IDLE_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub session_idle_timeout: Duration,
    /// A session ends this long after sign-in, however much it is used.
    #[arg(long, env = "USERSVC_SESSION_MAX_AGE", default_value = "12h", value_parser = parse_duration)]
    pub session_max_age: Duration,
    /// Changing one's own password, username or primary email needs a
    /// session signed in within this long (or the current password in the
    /// same request), so that a stolen token cannot take the account over.
    #[arg(long, env = "USERSVC_PRIVILEGED_SESSION_MAX_AGE", default_value = "15m", value_parser = parse_duration)]
    pub privileged_session_max_age: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Origins allowed to call the JSON API from a browser, comma-separated
    /// (e.g. https://app.example.com); `*` allows any. Default: none.
    #[arg(long, env = "USERSVC_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Load balancers and proxies whose word on the client's address is
    /// believed, comma-separated CIDR networks or addresses (e.g.
    /// 10.0.0.0/8,192.0.2.7). From them the client is the rightmost
    /// address of `Forwarded` (or, without one, `X-Forwarded-For`) that is
    /// not itself theirs; standalone gateways among them are believed on
    /// `x-client-addr` (gRPC). Anyone else is taken at the address they
    /// connect from, whatever they send.
    #[arg(long, env = "USERSVC_TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::edge::parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl ServeArgs {
    /// --trusted-proxies and the deprecated --trusted-gateways, as one.
    pub fn trusted_proxies(&self) -> crate::edge::TrustedProxies {
        crate::edge::TrustedProxies::new(self.gateway.trusted_proxies.iter().chain(&self.trusted_gateways).copied())
    }
}

/// Where the management port listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddr(pub Option<SocketAddr>);

impl AdminAddr {
    pub const OFF: AdminAddr = AdminAddr(None);
}

/// `HOST:PORT`, or `off`.
pub fn parse_admin_addr(s: &str) -> Result<AdminAddr, String> {
    match s.trim() {
        "off" | "none" | "" => Ok(AdminAddr(None)),
        addr => addr.parse().map(|a| AdminAddr(Some(a))).map_err(|e| format!("--admin-addr {addr:?}: {e}")),
    }
}

/// Bare bytes, or `512KiB`, `64MiB`, `1GiB` (powers of 1024: `MB` would
/// leave open whether 1000 or 1024 was meant, so it is refused).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("unknown unit in size {s:?} (use bytes, KiB, MiB or GiB)")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("size too large: {s:?}"))
}

/// `90s`, `30m`, `12h`, `2d`, `500ms`, or bare seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!("unknown unit in duration {s:?} (use ms, s, m, h or d)"));
        }
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("duration must be positive: {s:?}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// `N/PERIOD`: at most N per PERIOD, a [`parse_duration`] whose number may
/// be left out (`3/h` is `3/1h`), of a day at most (the sweep forgets
/// counts a day old).
pub fn parse_recipient_limit(s: &str) -> Result<crate::store::RecipientLimit, String> {
    let (n, period) = s.trim().split_once('/').ok_or_else(|| format!("not N/PERIOD (e.g. 3/h): {s:?}"))?;
    let max: u32 = n.trim().parse().map_err(|_| format!("not a count in {s:?}"))?;
    let period = period.trim();
    let period =
        if period.starts_with(|c: char| c.is_ascii_alphabetic()) { format!("1{period}") } else { period.into() };
    let window = parse_duration(&period)?;
    if max == 0 {
        return Err(format!("at least one mail per period: {s:?}"));
    }
    if window > Duration::from_secs(24 * 60 * 60) {
        return Err(format!("a period of a day at most: {s:?}"));
    }
    Ok(crate::store::RecipientLimit { max, window })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_limits() {
        let limit = |max, secs| Ok(crate::store::RecipientLimit { max, window: Duration::from_secs(secs) });
        assert_eq!(parse_recipient_limit("3/h"), limit(3, 3600));
        assert_eq!(parse_recipient_limit("10/1d"), limit(10, 86400));
        assert_eq!(parse_recipient_limit(" 5 / 30m "), limit(5, 1800));
        for bad in ["3", "0/h", "x/h", "3/2d", "3/y", "-1/h", "3/"] {
            assert!(parse_recipient_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43200));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn admin_addresses() {
        assert_eq!(parse_admin_addr("off"), Ok(AdminAddr::OFF));
        assert_eq!(parse_admin_addr("127.0.0.1:9000"), Ok(AdminAddr(Some("127.0.0.1:9000".parse().unwrap()))));
        assert!(parse_admin_addr("localhost").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert!(parse_bytes("64MB").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("99999999999GiB").is_err());
    }
}
