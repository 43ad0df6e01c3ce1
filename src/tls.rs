//! TLS with rustls (ring): the certificate and key both ports serve, the CA
//! whose client certificates the gRPC port requires (mutual TLS between
//! services), the HTTP listener that terminates TLS before axum, and the
//! channel of a standalone gateway to a TLS upstream.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::config::TlsArgs;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes ring the process's rustls provider (tonic's server takes the
/// process default). Installed once; if another part of the process already
/// installed one, that one stays.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What both ports serve with when TLS is on.
#[derive(Clone)]
pub struct ServerTls {
    /// For tonic: the identity, and the client CA when client certificates
    /// are required.
    pub grpc: ServerTlsConfig,
    /// For the HTTP port, which never asks for a client certificate.
    pub http: Arc<ServerConfig>,
    /// Whether the gRPC port requires client certificates.
    pub mutual: bool,
}

impl ServerTls {
    /// Reads and checks the files named by the flags: `None` when TLS is
    /// off; an error naming the flag and file when only one of
    /// --tls-cert/--tls-key is given, a file cannot be read or parsed, or
    /// the key is not the certificate's.
    pub fn load(args: &TlsArgs) -> anyhow::Result<Option<Self>> {
        let (cert_path, key_path) = match (&args.tls_cert, &args.tls_key) {
            (None, None) => {
                if args.tls_client_ca.is_some() {
                    bail!("--tls-client-ca needs --tls-cert and --tls-key (TLS is off without them)");
                }
                return Ok(None);
            }
            (Some(_), None) => bail!("--tls-cert is given without --tls-key: TLS needs both (or neither)"),
            (None, Some(_)) => bail!("--tls-key is given without --tls-cert: TLS needs both (or neither)"),
            (Some(c), Some(k)) => (c, k),
        };
        install_crypto_provider();
        let cert_pem = read("--tls-cert", cert_path)?;
        let key_pem = read("--tls-key", key_path)?;
        let chain = parse_certs("--tls-cert", cert_path, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            anyhow::anyhow!(
                "--tls-key {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) could be read: {e}",
                key_path.display()
            )
        })?;

        let mut http = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .with_context(|| {
                format!(
                    "--tls-cert {} with --tls-key {}: not a usable certificate and key (do they belong together?)",
                    cert_path.display(),
                    key_path.display()
                )
            })?;
        // axum serves HTTP/1.1 here.
        http.alpn_protocols = vec![b"http/1.1".to_vec()];

        let mut grpc =
            ServerTlsConfig::new().identity(Identity::from_pem(&cert_pem, &key_pem)).timeout(HANDSHAKE_TIMEOUT);
        let mutual = args.tls_client_ca.is_some();
        if let Some(ca_path) = &args.tls_client_ca {
            let ca_pem = read("--tls-client-ca", ca_path)?;
            let mut roots = RootCertStore::empty();
            for cert in parse_certs("--tls-client-ca", ca_path, &ca_pem)? {
                roots.add(cert).with_context(|| format!("--tls-client-ca {}: not a usable CA", ca_path.display()))?;
            }
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .with_context(|| format!("--tls-client-ca {}: not a usable CA", ca_path.display()))?;
            grpc = grpc.client_ca_root(Certificate::from_pem(ca_pem));
        }
        Ok(Some(Self { grpc, http: Arc::new(http), mutual }))
    }
}

fn read(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}: cannot read the file", path.display()))
}

/// Every certificate of a PEM file; at least one.
fn parse_certs(flag: &str, path: &Path, pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{flag} {}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{flag} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file", path.display());
    }
    Ok(certs)
}

/// Accepts TCP connections and hands axum the ones whose TLS handshake
/// succeeded. Handshakes run side by side, so a slow or silent client
/// holds up no one; a failed one is logged (debug) and dropped.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Self {
        Self { tcp, acceptor: TlsAcceptor::from(config), handshakes: JoinSet::new() }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => Some((tls, peer)),
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                    None
                                }
                                Err(_) => {
                                    tracing::debug!("TLS handshake timed out");
                                    None
                                }
                            }
                        });
                    }
                    Err(e) if is_connection_error(&e) => {}
                    Err(e) => {
                        // E.g. out of file descriptors: wait rather than spin.
                        tracing::error!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// How a standalone gateway reaches an `https://` gRPC upstream.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UpstreamTlsArgs {
    /// PEM CA certificate(s) the upstream's certificate must chain to
    /// (default: the public web PKI roots). Only for an https:// upstream.
    #[arg(long, env = "USERSVC_GRPC_UPSTREAM_CA")]
    pub grpc_upstream_ca: Option<PathBuf>,
    /// PEM client certificate for an upstream that requires one (its
    /// --tls-client-ca), with --grpc-upstream-key.
    #[arg(long, env = "USERSVC_GRPC_UPSTREAM_CERT")]
    pub grpc_upstream_cert: Option<PathBuf>,
    /// PEM private key of --grpc-upstream-cert.
    #[arg(long, env = "USERSVC_GRPC_UPSTREAM_KEY")]
    pub grpc_upstream_key: Option<PathBuf>,
}

/// A lazily connecting channel to the gRPC service at `url`: plain for
/// http://, TLS for https:// (verified against --grpc-upstream-ca, or the
/// web PKI roots), with a client certificate when one is given.
pub fn upstream_channel(url: &str, tls: &UpstreamTlsArgs) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned()).with_context(|| format!("--grpc-upstream {url}"))?;
    let https = endpoint.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
    let any_tls_flag =
        tls.grpc_upstream_ca.is_some() || tls.grpc_upstream_cert.is_some() || tls.grpc_upstream_key.is_some();
    if !https {
        if any_tls_flag {
            bail!("--grpc-upstream-ca, --grpc-upstream-cert and --grpc-upstream-key need an https:// --grpc-upstream");
        }
        return Ok(endpoint.connect_lazy());
    }
    install_crypto_provider();
    let mut config = ClientTlsConfig::new();
    config = match &tls.grpc_upstream_ca {
        Some(path) => {
            let pem = read("--grpc-upstream-ca", path)?;
            parse_certs("--grpc-upstream-ca", path, &pem)?;
            config.ca_certificate(Certificate::from_pem(pem))
        }
        None => config.with_webpki_roots(),
    };
    match (&tls.grpc_upstream_cert, &tls.grpc_upstream_key) {
        (None, None) => {}
        (Some(cert_path), Some(key_path)) => {
            let cert = read("--grpc-upstream-cert", cert_path)?;
            let key = read("--grpc-upstream-key", key_path)?;
            parse_certs("--grpc-upstream-cert", cert_path, &cert)?;
            PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
                anyhow::anyhow!("--grpc-upstream-key {}: no PEM private key could be read: {e}", key_path.display())
            })?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        _ => bail!("--grpc-upstream-cert and --grpc-upstream-key go together: give both (or neither)"),
    }
    let endpoint = endpoint.tls_config(config).context("TLS for --grpc-upstream")?;
    Ok(endpoint.connect_lazy())
}
