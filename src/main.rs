//! `usersvc`: serve, run the gateway alone, and the operator's commands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use tracing_subscriber::EnvFilter;

use usersvc::{
    app::{self, Application},
    auth::secret,
    config::{DatabaseArgs, GatewayArgs, ServeArgs},
    gateway::{self, Gateway},
    service::profile,
    store::{PgStore, Store},
};

#[derive(Parser)]
#[command(
    name = "usersvc",
    version,
    about = "A HIPAA-minded user and PII service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate the database, then serve gRPC and the JSON gateway.
    Serve(ServeArgs),
    /// Serve the JSON gateway alone, calling a remote gRPC service.
    Gateway {
        /// The gRPC service, e.g. http://127.0.0.1:50051
        #[arg(long, env = "USERSVC_GRPC_UPSTREAM")]
        grpc_upstream: String,
        #[arg(long, env = "USERSVC_HTTP_ADDR", default_value = "127.0.0.1:8080")]
        http_addr: std::net::SocketAddr,
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
}

#[derive(Subcommand)]
enum AppCommand {
    /// Create an application; prints {"appId", "apiKey", ...} as JSON.
    Create {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        db: DatabaseArgs,
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
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("usersvc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => Application::start(&args).await?.wait().await,
        Command::Gateway {
            grpc_upstream,
            http_addr,
            gateway: gw,
        } => {
            let channel = tonic::transport::Channel::from_shared(grpc_upstream)?.connect_lazy();
            let router = gateway::router(Gateway::remote(channel), &gw.cors_origins);
            let listener = tokio::net::TcpListener::bind(http_addr).await?;
            tracing::info!(http_addr = %listener.local_addr()?, "usersvc gateway serving");
            app::serve_http(listener, router, app::signal()).await?;
            Ok(())
        }
        Command::App {
            command: AppCommand::Create { name, db },
        } => {
            let store = open(&db).await?;
            let key = secret::generate();
            let app = store
                .create_app(
                    uuid::Uuid::now_v7(),
                    &name,
                    &secret::digest(key.expose_secret()),
                )
                .await?;
            let out = serde_json::json!({
                "appId": app.id,
                "name": app.name,
                "apiKey": key.expose_secret(),
                "apiKeyHeader": format!("X-Api-Key: server usersvc {}", key.expose_secret()),
            });
            println!("{out}");
            Ok(())
        }
        Command::Supervisor {
            command: SupervisorCommand::Add { app, username, db },
        } => {
            let store = open(&db).await?;
            if !store
                .set_supervisor(app, &profile::fold(&username), true)
                .await?
            {
                anyhow::bail!("no user with that username in application {app}");
            }
            eprintln!("usersvc: the user is now a supervisor of application {app}");
            Ok(())
        }
    }
}

async fn open(db: &DatabaseArgs) -> anyhow::Result<PgStore> {
    let store = PgStore::connect(&db.database_url, 2).await?;
    store.migrate().await?;
    Ok(store)
}
