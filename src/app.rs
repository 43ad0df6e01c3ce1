//! The running service: the store, both gRPC services, and the gateway on
//! their listeners. Tests build it on port 0 and talk to it like clients.

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;

use crate::audit::{AuditSink, AuditWriter};
use crate::auth::{Authenticator, PasswordHasher, caller::SessionPolicy};
use crate::config::ServeArgs;
use crate::crypto::Keyring;
use crate::gateway::{self, Gateway};
use crate::pb::{group_service_server::GroupServiceServer, user_service_server::UserServiceServer};
use crate::service::{Core, GroupSvc, UserSvc};
use crate::store::{Store, backend, backend::Pool};

const IN_PROCESS_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

pub struct Application {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    /// The database itself (tests look into it).
    pub pool: Pool,
    pub database_url: String,
    shutdown: watch::Sender<bool>,
    trail_writer: AuditWriter,
    mail_task: JoinHandle<()>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
}

/// The two services, ready to serve over any transport.
pub fn services(core: Arc<Core>) -> (UserServiceServer<UserSvc>, GroupServiceServer<GroupSvc>) {
    (UserServiceServer::new(UserSvc::new(core.clone())), GroupServiceServer::new(GroupSvc::new(core)))
}

impl Application {
    /// Connects, migrates, binds both addresses and starts serving.
    pub async fn start(args: &ServeArgs) -> anyhow::Result<Self> {
        // Refuse to start without a master key before touching anything.
        let master = args.keys.load_for(&args.db.database_url)?;
        let (store, pool) = backend::open(&args.db.database_url, args.db.db_max_connections).await?;
        store.migrate().await?;
        let keyring = Arc::new(Keyring::new(master, store.clone()));
        let (trail, trail_writer) = AuditSink::start(store.clone());
        let policy =
            SessionPolicy { idle_timeout: args.sessions.session_idle_timeout, max_age: args.sessions.session_max_age };
        let cores =
            args.hash_concurrency.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
        let mail = &args.mail;
        let transport = crate::mail::Transport::new(mail.smtp_url.as_deref(), mail.mail_dir.clone())?;
        if let crate::mail::Transport::Dir(dir) = &transport {
            tracing::info!(mail_dir = %dir.display(), "no SMTP server set: mail is written to a folder");
        }
        let mailer = crate::mail::Mailer {
            store: store.clone(),
            keyring: keyring.clone(),
            transport,
            from: mail.mail_from.parse().map_err(|e| anyhow::anyhow!("--mail-from: {e}"))?,
            templates: crate::mail::Templates::new(mail.mail_templates.clone()),
            public_url: String::new(),
            give_up_after: mail.mail_give_up_after,
            reset_minutes: mail.reset_link_lifetime.as_secs().div_ceil(60),
            poll_every: mail.mail_poll_interval,
        };
        let core = Arc::new(Core {
            store: store.clone(),
            auth: Authenticator::new(store.clone(), policy),
            hasher: PasswordHasher::new(cores)?,
            keyring,
            trail,
            min_password_chars: args.min_password_length,
            trusted_gateways: args.trusted_gateways.clone(),
            reset_lifetime: args.mail.reset_link_lifetime,
        });
        let (users, groups) = services(core);

        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<UserServiceServer<UserSvc>>().await;
        health_reporter.set_serving::<GroupServiceServer<GroupSvc>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let grpc_listener = TcpListener::bind(args.grpc_addr).await?;
        let http_listener = TcpListener::bind(args.http_addr).await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;

        let grpc = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(reflection)
                .add_service(users.clone())
                .add_service(groups.clone())
                .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), stopped(shutdown_rx.clone())),
        );

        // In process, a request is as large as the JSON it came from allows
        // (bodies are capped at 1 MiB; protobuf may be several times that).
        let gateway = Gateway::in_process(
            Routes::new(users.max_decoding_message_size(IN_PROCESS_MESSAGE_BYTES))
                .add_service(groups.max_decoding_message_size(IN_PROCESS_MESSAGE_BYTES)),
        );
        let router = gateway::router(gateway, &args.gateway.cors_origins);
        let mailer = crate::mail::Mailer {
            public_url: mail.public_url.clone().unwrap_or_else(|| format!("http://{http_addr}")),
            ..mailer
        };
        let mail_task = tokio::spawn(mailer.run(shutdown_rx.clone()));
        let http = tokio::spawn(serve_http(http_listener, router, stopped(shutdown_rx)));
        tracing::info!(%grpc_addr, %http_addr, "usersvc serving");
        let database_url = args.db.database_url.clone();
        Ok(Self { grpc_addr, http_addr, store, pool, database_url, shutdown, trail_writer, mail_task, grpc, http })
    }

    /// Runs until either server stops, or until SIGINT or SIGTERM: then both
    /// stop accepting, finish what is in flight, and the pool closes.
    pub async fn wait(self) -> anyhow::Result<()> {
        let Self { shutdown, trail_writer, mail_task, grpc, http, pool, .. } = self;
        let mut grpc = grpc;
        let mut http = http;
        tokio::select! {
            r = &mut grpc => r??,
            r = &mut http => r??,
            () = signal() => {
                tracing::info!("shutting down");
                let _ = shutdown.send(true);
                grpc.await??;
                http.await??;
            }
        }
        // The servers are gone, and with them every handle of the trail:
        // what is queued gets written before the pool closes.
        trail_writer.finish().await;
        let _ = shutdown.send(true);
        let _ = mail_task.await;
        pool.close().await;
        Ok(())
    }

    /// Stops both servers (tests).
    pub fn abort(&self) {
        self.grpc.abort();
        self.http.abort();
        self.mail_task.abort();
    }
}

/// Serves the gateway, with the client's address available to handlers,
/// until `shutdown` completes.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Completes once the flag turns true (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
