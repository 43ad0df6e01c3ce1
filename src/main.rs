//! `usersvc`: serve, run the gateway alone, and the operator's commands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use tracing_subscriber::{EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};

use usersvc::{
    admin::Admin,
    app::{self, Application},
    config::{DatabaseArgs, GatewayArgs, KeyArgs, ServeArgs},
    crypto::MasterKey,
    gateway::{self, Gateway},
    store::{AuditFilter, TokenRevocation, backend},
};

#[derive(Parser)]
#[command(name = "usersvc", version, about = "A HIPAA-minded user and PII service")]
struct Cli {
    /// Log lines as JSON objects (for collectors) or for people.
    #[arg(long, global = true, env = "USERSVC_LOG_FORMAT", default_value = "pretty")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate the database, then serve gRPC and the JSON gateway.
    Serve(Box<ServeArgs>),
    /// Serve the JSON gateway alone, calling a remote gRPC service.
    Gateway {
        /// The gRPC service, e.g. http://127.0.0.1:50051, or https://... for
        /// one serving TLS.
        #[arg(long, env = "USERSVC_GRPC_UPSTREAM")]
        grpc_upstream: String,
        #[command(flatten)]
        upstream_tls: usersvc::tls::UpstreamTlsArgs,
        #[arg(long, env = "USERSVC_HTTP_ADDR", default_value = "127.0.0.1:8080")]
        http_addr: std::net::SocketAddr,
        /// The management port (`/metrics`, `/healthz`, `/readyz`), or `off`.
        #[arg(long, env = "USERSVC_ADMIN_ADDR", default_value = "127.0.0.1:9000", value_parser = usersvc::config::parse_admin_addr)]
        admin_addr: usersvc::config::AdminAddr,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Manage applications.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// Manage supervisors.
    Supervisor {
        #[command(subcommand)]
        command: SupervisorCommand,
    },
    /// Service tokens: revocable credentials for internal callers.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Master and application keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The access trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Bring users in from a file: JSON lines (the /v2 user with `password`
    /// or `passwordHash`, `groups`, `supervisor`), a Parse Server `_User`
    /// export or a Keycloak realm export. Users whose username the
    /// application has are skipped; each bad entry is named on standard
    /// error. Prints a one-line JSON summary; exits non-zero when any entry
    /// failed.
    /// Write an application's users (or one, with --user) as JSON lines in
    /// the form `import` reads, password hashes included (keep the file as
    /// you keep the database): the whole record, groups, live sessions and
    /// the accounting of disclosures. Each user's export is recorded.
    Export {
        #[arg(long)]
        app: uuid::Uuid,
        #[arg(long)]
        user: Option<uuid::Uuid>,
        #[command(flatten)]
        sessions: usersvc::config::SessionArgs,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    Import {
        #[arg(long)]
        app: uuid::Uuid,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: usersvc::import::formats::Format,
        /// The file, or `-` for standard input.
        file: std::path::PathBuf,
        /// Make the groups that entries name and the application lacks
        /// (as when importing another application's export).
        #[arg(long)]
        create_groups: bool,
        /// Shortest password accepted (as for sign-up).
        #[arg(long, env = "USERSVC_MIN_PASSWORD_LENGTH", default_value_t = 8)]
        min_password_length: usize,
        /// Passwords hashed at once (default: the number of cores).
        #[arg(long, env = "USERSVC_HASH_CONCURRENCY")]
        hash_concurrency: Option<usize>,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

#[derive(Subcommand)]
enum AppCommand {
    /// Create an application; prints {"appId", "apiKey", ...} as JSON.
    Create {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Change an application's settings: only the flags given change. Each
    /// change is recorded as `app.update`; prints the settings changed as
    /// JSON.
    Update {
        #[arg(long)]
        app: uuid::Uuid,
        /// Email verification: `optional` mails a link on sign-up and on a
        /// change of the primary address; `required` also refuses sign-in
        /// (403 `email_unverified`) and password-reset mail to the
        /// unverified; `off` mails and shows nothing. Until set, as
        /// `optional` but nothing is mailed by itself.
        #[arg(long, value_parser = ["required", "optional", "off"])]
        verify_email: Option<String>,
        /// The WebAuthn relying party id of the application's passkeys: the
        /// domain its pages are on (`example.org`). An empty value removes
        /// the relying party (the passkey routes then answer 400
        /// `passkeys_not_configured`).
        #[arg(long)]
        webauthn_rp_id: Option<String>,
        /// An origin the application's pages are served from
        /// (`https://app.example.org`), on the rp id's domain; repeatable.
        /// Needed with --webauthn-rp-id.
        #[arg(long)]
        webauthn_origin: Vec<String>,
        /// Whether supervisors must have a second factor (TOTP or a
        /// passkey) to act as supervisors: `required-for-supervisors` or
        /// `optional` (the default of a new application).
        #[arg(long, value_parser = ["required-for-supervisors", "optional"])]
        mfa: Option<String>,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

#[derive(Subcommand)]
enum SupervisorCommand {
    /// Make a user of an application a supervisor.
    Add {
        #[arg(long)]
        app: uuid::Uuid,
        #[arg(long)]
        username: String,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a service token; prints {"tokenId", "token", "appId", "name",
    /// "role"} as JSON. The token is shown only here: callers send it as
    /// `authorization: Bearer TOKEN` with the application's x-api-key.
    Create {
        #[arg(long)]
        app: uuid::Uuid,
        /// The rights it acts with in the application: supervisor.
        #[arg(long)]
        role: String,
        /// A label for the operator (which service holds it).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Revoke a service token: every replica refuses it from the next call.
    Revoke {
        #[arg(long)]
        app: uuid::Uuid,
        #[arg(long)]
        token_id: uuid::Uuid,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Print an application's service tokens as JSON lines (never the tokens).
    List {
        #[arg(long)]
        app: uuid::Uuid,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new master key (base64 of 32 random bytes).
    Generate,
    /// Re-wrap every application key under a new master key; then restart
    /// the service with the new key.
    RotateMaster {
        /// A file holding the new master key.
        #[arg(long, env = "USERSVC_NEW_MASTER_KEY_FILE")]
        new_master_key_file: std::path::PathBuf,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Give an application a new data key and re-encrypt its users, online.
    RotateApp {
        #[arg(long)]
        app: uuid::Uuid,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every record against the Merkle tree and every signed
    /// checkpoint; with --checkpoint, also that the trail extends a
    /// checkpoint exported earlier (not rolled back, its tail not cut).
    Verify {
        /// A checkpoint printed by `usersvc audit checkpoint` and kept
        /// off the database.
        #[arg(long)]
        checkpoint: Option<std::path::PathBuf>,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Print the latest signed checkpoint as one JSON object (making one
    /// first if records are waiting), to keep off the database.
    Checkpoint {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Print records as JSON lines: an accounting of disclosures.
    List {
        #[arg(long)]
        app: Option<uuid::Uuid>,
        /// Records about this user.
        #[arg(long)]
        user: Option<uuid::Uuid>,
        /// From this time on (RFC 3339).
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

/// mimalloc: per-thread free lists instead of glibc's locked arenas; a read
/// allocates a few hundred small blocks, and glibc's malloc and free were a
/// sixth of the server's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits its arenas eagerly by default, and purges them without
/// giving pages back: 64 connections of the mixed load held 75 MiB, and 46
/// committing on demand (same requests/s; see `memory.rs`). mimalloc makes
/// its first arena at the first allocation, before `main`, so this is set
/// from a constructor that runs before any other (priority 101), unless the
/// environment sets it (`MIMALLOC_ARENA_EAGER_COMMIT`).
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array.00101")]
static MIMALLOC_OPTIONS: extern "C" fn() = mimalloc_options;

#[cfg(target_os = "linux")]
extern "C" fn mimalloc_options() {
    // `mi_option_arena_eager_commit` in mimalloc 3's mimalloc.h (the version
    // libmimalloc-sys 0.1.49 builds).
    const ARENA_EAGER_COMMIT: libc::c_int = 4;
    unsafe extern "C" {
        fn mi_option_set(option: libc::c_int, value: libc::c_long);
    }
    // SAFETY: getenv with a NUL-terminated name, before any thread exists
    // (and without allocating, which would make the arena); mi_option_set
    // only stores the value.
    unsafe {
        if libc::getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
            mi_option_set(ARENA_EAGER_COMMIT, 0);
        }
    }
}

fn main() -> ExitCode {
    usersvc::memory::tune_allocator();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(start()),
        Err(e) => {
            eprintln!("usersvc: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match cli.log_format {
        LogFormat::Json => logs.json().with_current_span(true).boxed(),
        LogFormat::Pretty => logs.boxed(),
    };
    let (otel, telemetry) = match usersvc::telemetry::init() {
        Ok(Some((layer, telemetry))) => (Some(layer), Some(telemetry)),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("usersvc: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::registry().with(filter).with(logs).with(otel).init();
    let code = match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("usersvc: {e:#}");
            ExitCode::FAILURE
        }
    };
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    code
}

async fn admin(db: &DatabaseArgs, keys: &KeyArgs) -> anyhow::Result<Admin> {
    let master = keys.load_for(&db.database_url)?;
    let (store, _) = backend::open_migrated(db, 2).await?;
    Ok(Admin::new(store, master))
}

struct ImportOptions {
    app: uuid::Uuid,
    format: usersvc::import::formats::Format,
    create_groups: bool,
    min_password_length: usize,
    hash_concurrency: Option<usize>,
}

async fn import(
    opts: ImportOptions,
    file: &std::path::Path,
    db: &DatabaseArgs,
    keys: &KeyArgs,
) -> anyhow::Result<ExitCode> {
    let ImportOptions { app, format, create_groups, min_password_length, hash_concurrency } = opts;
    use std::io::{BufRead, BufReader, IsTerminal};
    let (input, size): (Box<dyn BufRead>, Option<u64>) = if file.as_os_str() == "-" {
        (Box::new(BufReader::new(std::io::stdin())), None)
    } else {
        let f = std::fs::File::open(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(BufReader::with_capacity(1 << 20, f)), size)
    };
    let admin = admin(db, keys).await?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hasher = usersvc::auth::password::PasswordHasher::new(hash_concurrency.unwrap_or(cores))?;
    // On a terminal, a bar of entries read (of bytes unknown: entries are
    // counted, not sized).
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {pos} users read ({per_sec}) {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    if let Some(size) = size {
        bar.set_message(format!("from {} bytes", size));
    }
    let importer =
        usersvc::import::Importer::new(admin.store.clone(), &admin.keyring, hasher, app, min_password_length)
            .creating_groups(create_groups);
    let started = std::time::Instant::now();
    let summary = importer
        .run(
            format,
            input,
            |f| bar.suspend(|| eprintln!("usersvc import: {}: {}", f.at, f.reason)),
            |n| {
                if n % 256 == 0 {
                    bar.set_position(n)
                }
            },
        )
        .await;
    bar.finish_and_clear();
    let summary = summary?;
    let seconds = started.elapsed().as_secs_f64();
    let mut out = serde_json::to_value(&summary)?;
    out["seconds"] = serde_json::json!((seconds * 1000.0).round() / 1000.0);
    println!("{out}");
    Ok(if summary.failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => Application::start(&args).await?.wait().await?,
        Command::Gateway { grpc_upstream, upstream_tls, http_addr, admin_addr, gateway: gw } => {
            // Counting starts before the first request (as serve's does).
            usersvc::observe::handle();
            let channel = usersvc::tls::upstream_channel(&grpc_upstream, &upstream_tls)?;
            let gw_state = Gateway::remote(channel).trusting(usersvc::edge::TrustedProxies::new(gw.trusted_proxies));
            let router = gateway::router(gw_state.clone(), &gw.cors_origins);
            let listener = tokio::net::TcpListener::bind(http_addr).await?;
            let admin = match admin_addr.0 {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
                None => None,
            };
            let admin_shown = match &admin {
                Some(l) => l.local_addr()?.to_string(),
                None => "off".to_owned(),
            };
            tracing::info!(http_addr = %listener.local_addr()?, admin_addr = %admin_shown, "usersvc gateway serving");
            if let Some(admin) = admin {
                tokio::spawn(app::serve_http(admin, gateway::admin_router(gw_state), app::signal()));
            }
            app::serve_http(listener, router, app::signal()).await?;
        }
        Command::App { command: AppCommand::Create { name, db, keys } } => {
            let (app, key) = admin(&db, &keys).await?.create_app(&name).await?;
            let out = serde_json::json!({
                "appId": app.id,
                "name": app.name,
                "apiKey": key.expose_secret(),
                "apiKeyHeader": format!("X-Api-Key: server usersvc {}", key.expose_secret()),
            });
            println!("{out}");
        }
        Command::App {
            command: AppCommand::Update { app, verify_email, webauthn_rp_id, webauthn_origin, mfa, db, keys },
        } => {
            if verify_email.is_none() && webauthn_rp_id.is_none() && mfa.is_none() {
                anyhow::bail!("nothing to change: give a setting (--verify-email, --mfa, --webauthn-rp-id)");
            }
            if webauthn_rp_id.is_none() && !webauthn_origin.is_empty() {
                anyhow::bail!("--webauthn-origin needs --webauthn-rp-id");
            }
            let mut out = serde_json::json!({ "appId": app });
            let admin = admin(&db, &keys).await?;
            if let Some(mode) = verify_email.as_deref().and_then(|m| usersvc::store::VerifyMode::parse(Some(m))) {
                admin.set_verify_email(app, mode).await?;
                out["verifyEmail"] = verify_email.into();
            }
            if let Some(rp_id) = webauthn_rp_id {
                admin.set_webauthn(app, &rp_id, &webauthn_origin).await?;
                out["webauthnRpId"] = rp_id.into();
                out["webauthnOrigins"] = webauthn_origin.into();
            }
            if let Some(mfa) = mfa {
                let policy = usersvc::store::MfaPolicy::parse(&mfa).ok_or_else(|| anyhow::anyhow!("--mfa {mfa}?"))?;
                admin.set_mfa_policy(app, policy).await?;
                out["mfa"] = policy.as_str().into();
            }
            println!("{out}");
        }
        Command::Supervisor { command: SupervisorCommand::Add { app, username, db, keys } } => {
            if !admin(&db, &keys).await?.add_supervisor(app, &username).await? {
                anyhow::bail!("no user with that username in application {app}");
            }
            eprintln!("usersvc: the user is now a supervisor of application {app}");
        }
        Command::Token { command } => match command {
            TokenCommand::Create { app, role, name, db, keys } => {
                let issued = admin(&db, &keys).await?.create_token(app, &role, &name).await?;
                let out = serde_json::json!({
                    "tokenId": issued.id,
                    "token": issued.token.expose_secret(),
                    "appId": issued.app_id,
                    "name": issued.name,
                    "role": issued.role,
                });
                println!("{out}");
            }
            TokenCommand::Revoke { app, token_id, db, keys } => {
                match admin(&db, &keys).await?.revoke_token(app, token_id).await? {
                    TokenRevocation::Revoked => eprintln!("usersvc: service token {token_id} is revoked"),
                    TokenRevocation::AlreadyRevoked => {
                        eprintln!("usersvc: service token {token_id} was already revoked")
                    }
                    TokenRevocation::Unknown => anyhow::bail!("no service token {token_id} in application {app}"),
                }
            }
            TokenCommand::List { app, db, keys } => {
                let mut out = std::io::stdout().lock();
                admin(&db, &keys).await?.list_tokens(app, &mut out).await?;
            }
        },
        Command::Keys { command } => match command {
            KeysCommand::Generate => println!("{}", MasterKey::generate().expose_secret()),
            KeysCommand::RotateMaster { new_master_key_file, db, keys } => {
                let new = MasterKey::load(Some(&new_master_key_file), None)?;
                let n = admin(&db, &keys).await?.rotate_master(&new).await?;
                eprintln!(
                    "usersvc: {n} application keys re-wrapped under master key {}; restart the service with it",
                    new.id()
                );
            }
            KeysCommand::RotateApp { app, db, keys } => {
                let n = admin(&db, &keys).await?.rotate_app(app).await?;
                eprintln!(
                    "usersvc: application {app} has a new data key; re-encrypted: {} users, {} TOTP secrets, {} passkeys",
                    n.users, n.totp_secrets, n.passkeys
                );
            }
        },
        Command::Export { app, user, sessions, db, keys } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let n = admin(&db, &keys).await?.export(app, user, sessions.session_idle_timeout, &mut out).await?;
            eprintln!("usersvc: {n} users exported");
        }
        Command::Import { app, format, file, create_groups, min_password_length, hash_concurrency, db, keys } => {
            let opts = ImportOptions { app, format, create_groups, min_password_length, hash_concurrency };
            return import(opts, &file, &db, &keys).await;
        }
        Command::Audit { command } => match command {
            AuditCommand::Verify { checkpoint, db, keys } => {
                let exported = match &checkpoint {
                    None => None,
                    Some(path) => {
                        let text = std::fs::read_to_string(path)
                            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                        match serde_json::from_str::<usersvc::audit::checkpoint::Exported>(&text) {
                            Ok(e) => Some(e),
                            Err(e) => {
                                println!("broken: the checkpoint file is refused: not a checkpoint ({e})");
                                return Ok(ExitCode::FAILURE);
                            }
                        }
                    }
                };
                match admin(&db, &keys).await?.verify_trail(exported.as_ref()).await? {
                    Ok(r) => {
                        println!(
                            "ok: {} records, {} signed checkpoints, the latest covering {} records",
                            r.records, r.checkpoints, r.covered
                        );
                        if let Some(e) = &exported {
                            println!(
                                "ok: the trail extends the exported checkpoint of {} ({} records; consistency proof of {} hashes)",
                                e.timestamp.to_rfc3339(),
                                e.tree_size,
                                r.proof_hashes.unwrap_or(0)
                            );
                        }
                    }
                    Err(why) => {
                        println!("broken: {why}");
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
            AuditCommand::Checkpoint { db, keys } => {
                let c = admin(&db, &keys).await?.checkpoint().await?;
                println!("{}", serde_json::to_string(&c)?);
            }
            AuditCommand::List { app, user, since, db, keys } => {
                let filter = AuditFilter { app_id: app, subject_id: user, since, ..Default::default() };
                let mut out = std::io::stdout().lock();
                admin(&db, &keys).await?.list_trail(filter, &mut out).await?;
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}
