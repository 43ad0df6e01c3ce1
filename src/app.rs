//! The running service: the store, both gRPC services, and the gateway on
//! their listeners. Tests build it on port 0 and talk to it like clients.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::service::Routes;

use crate::audit::{AuditSink, AuditWriter};
use crate::auth::{Authenticator, PasswordHasher, caller::SessionPolicy, password::QueueBound};
use crate::config::ServeArgs;
use crate::crypto::Keyring;
use crate::gateway::{self, Gateway};
use crate::pb::{group_service_server::GroupServiceServer, user_service_server::UserServiceServer};
use crate::service::{Core, GroupSvc, UserSvc};
use crate::store::{Store, backend, backend::Pool};

/// HTTP/2 pings on idle gRPC connections, to find peers that are gone.
const GRPC_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Application {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The management port (`/metrics`, `/healthz`, `/readyz`), if served.
    pub admin_addr: Option<SocketAddr>,
    pub store: Arc<dyn Store>,
    /// The database itself (tests look into it).
    pub pool: Pool,
    pub database_url: String,
    shutdown: watch::Sender<bool>,
    shutdown_grace: std::time::Duration,
    trail_writer: AuditWriter,
    /// Seals the trail into signed checkpoints; stopped after the last
    /// read records are written.
    sealer: (watch::Sender<bool>, JoinHandle<()>),
    mail_task: JoinHandle<()>,
    monitor_task: JoinHandle<()>,
    /// Indexes the MRNs of users written before they were indexed (once,
    /// from the start; stopped at shutdown, the next start goes on).
    mrn_task: JoinHandle<()>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
    admin: Option<JoinHandle<std::io::Result<()>>>,
}

/// The two services, shared by the gRPC server and the in-process gateway.
pub fn services(core: Arc<Core>) -> (Arc<UserSvc>, Arc<GroupSvc>) {
    (Arc::new(UserSvc::new(core.clone())), Arc::new(GroupSvc::new(core)))
}

impl Application {
    /// Connects, migrates, binds both addresses and starts serving.
    pub async fn start(args: &ServeArgs) -> anyhow::Result<Self> {
        // Counting starts before the first request.
        crate::observe::handle();
        // Refuse to start without a master key before touching anything.
        let master = args.keys.load_for(&args.db.database_url)?;
        // And without TLS files that do not read, or only half of them.
        let tls = crate::tls::ServerTls::load(&args.tls)?;
        let db = &args.db;
        let (store, pool) = backend::open_migrated(db, db.db_max_connections).await?;
        let checkpoint_key = crate::audit::checkpoint::CheckpointKey::from_master(&master)?;
        let keyring = Arc::new(Keyring::new(master, store.clone()));
        let (trail, trail_writer) = AuditSink::start(store.clone(), args.read_trail);
        let policy = SessionPolicy {
            idle_timeout: args.sessions.session_idle_timeout,
            max_age: args.sessions.session_max_age,
            privileged_max_age: args.sessions.privileged_session_max_age,
        };
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
            per_recipient: mail.mail_per_recipient,
        };
        let mrn_task = tokio::spawn({
            let (store, keyring) = (store.clone(), keyring.clone());
            async move {
                crate::service::mrns::backfill_in_background(store.clone(), keyring.clone()).await;
                crate::service::usernames::rekey_in_background(store, keyring).await;
            }
        });
        let core = Arc::new(Core {
            store: store.clone(),
            auth: Authenticator::new(store.clone(), policy),
            hasher: PasswordHasher::bounded(
                cores,
                QueueBound {
                    waiting: args.limits.hash_queue.unwrap_or(cores.max(1) * QueueBound::WAITING_PER_THREAD),
                    max_wait: args.limits.hash_max_wait,
                },
            )?,
            keyring,
            trail,
            min_password_chars: args.min_password_length,
            reset_lifetime: args.mail.reset_link_lifetime,
            signup_per_hour: args.limits.signup_per_address,
            mail_per_recipient: args.mail.mail_per_recipient,
        });
        let (users, groups) = services(core);

        let (health_reporter, health) = tonic_health::server::health_reporter();
        // Serving only once the database answers (the monitor keeps it true).
        set_health(&health_reporter, monitor::database_ready(&pool).await).await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let grpc_listener = TcpListener::bind(args.grpc_addr).await?;
        let http_listener = TcpListener::bind(args.http_addr).await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let admin_listener = match args.admin_addr.0 {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("--admin-addr {addr}"))?),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let trusted = args.trusted_proxies();

        let limits = &args.limits;
        let mut grpc_server = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            grpc_server = grpc_server.tls_config(tls.grpc.clone()).context("TLS for the gRPC port")?;
        }
        let conn_limits = crate::net::ConnLimits::from(limits);
        let grpc = tokio::spawn(
            grpc_server
                .concurrency_limit_per_connection(limits.grpc_concurrency_per_connection)
                .http2_keepalive_interval(Some(GRPC_KEEPALIVE))
                .layer(crate::edge::GrpcEdgeLayer(trusted.clone()))
                .layer(crate::deadline::GrpcDeadlineLayer(limits.request_timeout))
                .layer(crate::observe::GrpcObserveLayer)
                .add_service(health.clone())
                .add_service(reflection)
                .add_service(UserServiceServer::from_arc(users.clone()))
                .add_service(GroupServiceServer::from_arc(groups.clone()))
                .serve_with_incoming_shutdown(
                    crate::net::grpc_incoming(grpc_listener, conn_limits),
                    stopped(shutdown_rx.clone()),
                ),
        );

        let gateway = Gateway::in_process(users, groups, Routes::new(health))
            .trusting(trusted)
            .with_deadline(limits.request_timeout);
        // Outside the public port's request limits, so that a flood there
        // never fails the probes or hides the metrics.
        let admin = admin_listener.map(|listener| {
            let router = gateway::admin_router(gateway.clone());
            tokio::spawn(crate::net::serve_http(
                listener,
                router,
                crate::net::ConnLimits::default(),
                stopped(shutdown_rx.clone()),
            ))
        });
        let limited = gateway::router(gateway.clone(), &args.gateway.cors_origins)
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(limits.max_concurrent_requests));
        // Load balancers probe the public port: there too the probes are
        // answered before the limits, everything else behind them.
        let router = gateway::probes(gateway).fallback_service(limited);
        let monitor_task = tokio::spawn(monitor::run(pool.clone(), health_reporter, shutdown_rx.clone()));
        let mailer = crate::mail::Mailer {
            public_url: mail.public_url.clone().unwrap_or_else(|| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{http_addr}")
            }),
            ..mailer
        };
        let mail_task = tokio::spawn(mailer.run(shutdown_rx.clone()));
        let (sealer_stop, sealer_stopped) = watch::channel(false);
        let sealer = (sealer_stop, crate::audit::sealer::start(store.clone(), checkpoint_key, sealer_stopped));
        let http = match &tls {
            Some(tls) => tokio::spawn(crate::net::serve_http(
                crate::tls::TlsListener::new(http_listener, tls.http.clone()),
                router,
                conn_limits,
                stopped(shutdown_rx),
            )),
            None => tokio::spawn(crate::net::serve_http(http_listener, router, conn_limits, stopped(shutdown_rx))),
        };
        let tls_mode = match &tls {
            None => "off",
            Some(t) if t.mutual => "on (gRPC requires client certificates)",
            Some(_) => "on",
        };
        let admin_shown = admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
        tracing::info!(%grpc_addr, %http_addr, admin_addr = %admin_shown, tls = tls_mode, "usersvc serving");
        let database_url = args.db.database_url.clone();
        Ok(Self {
            grpc_addr,
            http_addr,
            admin_addr,
            store,
            pool,
            database_url,
            shutdown,
            shutdown_grace: limits.shutdown_grace,
            trail_writer,
            sealer,
            mail_task,
            monitor_task,
            mrn_task,
            grpc,
            http,
            admin,
        })
    }

    /// Runs until either server stops, or until SIGINT or SIGTERM: then both
    /// stop accepting, finish what is in flight, and the pool closes.
    pub async fn wait(self) -> anyhow::Result<()> {
        let Self {
            shutdown,
            shutdown_grace,
            trail_writer,
            sealer,
            mail_task,
            monitor_task,
            mrn_task,
            grpc,
            http,
            admin,
            pool,
            ..
        } = self;
        let mut grpc = grpc;
        let mut http = http;
        tokio::select! {
            r = &mut grpc => r??,
            r = &mut http => r??,
            () = signal() => {
                tracing::info!(grace_s = shutdown_grace.as_secs(), "shutting down: finishing requests in flight");
                let _ = shutdown.send(true);
                let drained = tokio::time::timeout(shutdown_grace, async {
                    let _ = (&mut grpc).await;
                    let _ = (&mut http).await;
                })
                .await;
                if drained.is_err() {
                    tracing::warn!("requests still running after the grace period were cut off");
                    grpc.abort();
                    http.abort();
                }
            }
        }
        // The probes answer until the servers are gone.
        if let Some(admin) = admin {
            admin.abort();
        }
        let _ = monitor_task.await;
        // Safe to cut short: each user is indexed in a transaction of its
        // own, and the next start takes the rest.
        mrn_task.abort();
        // The servers are gone, and with them every handle of the trail:
        // what is queued gets written before the pool closes.
        trail_writer.finish().await;
        // And sealed into a last checkpoint.
        let _ = sealer.0.send(true);
        let _ = sealer.1.await;
        let _ = shutdown.send(true);
        let _ = mail_task.await;
        pool.close().await;
        Ok(())
    }

    /// Stops both servers (tests).
    pub fn abort(&self) {
        self.grpc.abort();
        self.http.abort();
        if let Some(admin) = &self.admin {
            admin.abort();
        }
        self.mail_task.abort();
        self.monitor_task.abort();
        self.mrn_task.abort();
        self.sealer.1.abort();
    }
}

/// Serves the gateway, with the client's address available to handlers,
/// until `shutdown` completes (connections bounded as by default).
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::net::serve_http(listener, router, crate::net::ConnLimits::default(), shutdown).await
}

/// The same over TLS: handshakes run beside the accept loop, and handlers
/// still see the client's address (`ConnectInfo<SocketAddr>`).
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = crate::tls::TlsListener::new(listener, tls);
    crate::net::serve_http(listener, router, crate::net::ConnLimits::default(), shutdown).await
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

/// Every service of the gRPC port answers health checks alike.
async fn set_health(reporter: &tonic_health::server::HealthReporter, ready: bool) {
    use tonic_health::ServingStatus::{NotServing, Serving};
    let status = if ready { Serving } else { NotServing };
    reporter.set_service_status("", status).await;
    reporter.set_service_status("usersvc.v1.UserService", status).await;
    reporter.set_service_status("usersvc.v1.GroupService", status).await;
}

/// Watches the database: health follows it, and the pool and outbox
/// gauges are kept current.
mod monitor {
    use std::time::Duration;

    use tokio::sync::watch;

    use crate::store::backend::Pool;

    const EVERY: Duration = Duration::from_secs(1);

    /// The database answers and has every migration this build knows.
    pub async fn database_ready(pool: &Pool) -> bool {
        let check = async {
            match pool {
                Pool::Postgres(p) => {
                    let applied: Option<i64> =
                        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                            .fetch_one(p)
                            .await?;
                    let known = sqlx::migrate!("./migrations/postgres").iter().map(|m| m.version).max();
                    Ok::<bool, sqlx::Error>(applied >= known)
                }
                Pool::Sqlite(p) => {
                    let applied: Option<i64> =
                        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                            .fetch_one(p)
                            .await?;
                    let known = sqlx::migrate!("./migrations/sqlite").iter().map(|m| m.version).max();
                    Ok(applied >= known)
                }
            }
        };
        matches!(tokio::time::timeout(Duration::from_secs(2), check).await, Ok(Ok(true)))
    }

    async fn gauges(pool: &Pool) {
        let (size, idle) = match pool {
            Pool::Postgres(p) => (p.size(), p.num_idle()),
            Pool::Sqlite(p) => (p.size(), p.num_idle()),
        };
        metrics::gauge!("usersvc_db_pool_connections").set(f64::from(size));
        metrics::gauge!("usersvc_db_pool_idle").set(idle as f64);
        let sql = "SELECT count(*) FROM outbox WHERE failed_at IS NULL";
        let backlog: Result<i64, sqlx::Error> = match pool {
            Pool::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
            Pool::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        };
        if let Ok(n) = backlog {
            metrics::gauge!("usersvc_outbox_backlog").set(n as f64);
        }
    }

    pub async fn run(pool: Pool, reporter: tonic_health::server::HealthReporter, mut stop: watch::Receiver<bool>) {
        let mut was = None;
        loop {
            let ready = database_ready(&pool).await;
            if was != Some(ready) {
                if !ready {
                    tracing::warn!("database unreachable or behind: reporting NOT_SERVING");
                } else if was.is_some() {
                    tracing::info!("database back: reporting SERVING");
                }
                super::set_health(&reporter, ready).await;
                was = Some(ready);
            }
            if ready {
                gauges(&pool).await;
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    }
}
