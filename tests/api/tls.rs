//! TLS on both ports: HTTPS for the gateway, TLS with required client
//! certificates (mutual TLS) on the gRPC port, a standalone gateway
//! reaching a TLS upstream, and clear refusals of half a configuration.

use std::{path::PathBuf, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use usersvc::{
    app::Application,
    config::TlsArgs,
    gateway::{self, Gateway},
    pb,
    store::AuditFilter,
    tls::UpstreamTlsArgs,
};

use crate::common::{self, TestApp};

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate, all as PEM files in a folder of their own.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("usersvc-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Self::issue(dir, "usersvc test CA");
        std::fs::write(pki.path("ca.pem"), &pki.ca_pem).unwrap();
        pki
    }

    fn issue(dir: PathBuf, ca_name: &str) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, &ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        server.distinguished_name.push(DnType::CommonName, "usersvc");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();
        std::fs::write(dir.join("server.pem"), server_cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, "billing-service");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert_pem = client.signed_by(&client_key, &issuer).unwrap().pem();
        std::fs::write(dir.join("client.pem"), &client_cert_pem).unwrap();
        std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();

        Self { dir, ca_pem, client_cert_pem, client_key_pem: client_key.serialize_pem() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The flags of a service serving this PKI's server certificate, and
    /// requiring client certificates of its CA on the gRPC port.
    fn mutual(&self) -> TlsArgs {
        TlsArgs {
            tls_cert: Some(self.path("server.pem")),
            tls_key: Some(self.path("server.key")),
            tls_client_ca: Some(self.path("ca.pem")),
        }
    }

    fn https_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem))
    }

    fn client_identity(&self) -> Identity {
        Identity::from_pem(&self.client_cert_pem, &self.client_key_pem)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn spawn_tls(tls: TlsArgs) -> TestApp {
    common::spawn_in(common::fresh_database().await, |args| args.tls = tls).await
}

async fn grpc_channel(t: &TestApp, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://{}", t.grpc_addr())).unwrap().tls_config(tls)?.connect().await
}

/// A health check over a fresh TLS connection; the error of whichever step
/// failed (with TLS 1.3 a refused client certificate may surface only at
/// the first call).
async fn health_over(t: &TestApp, tls: ClientTlsConfig) -> Result<i32, String> {
    let check = async {
        let channel = grpc_channel(t, tls).await.map_err(|e| format!("connect: {e:?}"))?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest { service: String::new() })
            .await
            .map_err(|e| format!("check: {e:?}"))?;
        Ok(answer.into_inner().status)
    };
    tokio::time::timeout(Duration::from_secs(15), check).await.expect("the health check ended")
}

async fn client_addr_of(t: &TestApp, subject: &str, action: &str) -> Value {
    let mut out = Vec::new();
    let filter = AuditFilter { subject_id: Some(subject.parse().unwrap()), ..Default::default() };
    common::admin(&t.app).list_trail(filter, &mut out).await.unwrap();
    let records: Vec<Value> =
        String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    records.iter().find(|r| r["action"] == action).expect("a trail record")["clientAddr"].clone()
}

#[tokio::test]
async fn the_http_port_serves_https_without_asking_for_a_client_certificate() {
    let pki = Pki::new();
    let t = spawn_tls(pki.mutual()).await;
    let port = t.app.http_addr.port();
    let https = pki.https_client();

    for host in ["127.0.0.1", "localhost"] {
        let res = https.get(format!("https://{host}:{port}/healthz")).send().await.unwrap();
        assert_eq!(res.status(), 200, "over https://{host}");
        assert_eq!(res.json::<Value>().await.unwrap()["status"], "alive");
    }
    let res = https.get(format!("https://127.0.0.1:{port}/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    // Handlers still see the client's address through TLS.
    let res = https
        .post(format!("https://127.0.0.1:{port}/v2/users"))
        .header("X-Api-Key", format!("browser usersvc.test {}", t.api_key))
        .json(&json!({"username": "over.https", "password": "long enough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = res.json::<Value>().await.unwrap()["usersId"].as_str().unwrap().to_owned();
    assert_eq!(client_addr_of(&t, &id, "user.create").await, "127.0.0.1");

    // Plain HTTP to the TLS port gets nothing.
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let err = plain.get(format!("http://127.0.0.1:{port}/healthz")).send().await;
    assert!(err.is_err(), "plain HTTP answered: {:?}", err.map(|r| r.status()));
    // Nor does a client that does not trust the CA.
    assert!(plain.get(format!("https://127.0.0.1:{port}/healthz")).send().await.is_err());
    // And the port still serves after those failed handshakes.
    assert_eq!(https.get(format!("https://127.0.0.1:{port}/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn the_grpc_port_requires_a_client_certificate_of_the_ca() {
    let pki = Pki::new();
    let t = spawn_tls(pki.mutual()).await;

    let status = health_over(&t, pki.client_tls().identity(pki.client_identity())).await.unwrap();
    assert_eq!(status, ServingStatus::Serving as i32);

    // The services answer over mutual TLS, and see the client's address.
    let channel = grpc_channel(&t, pki.client_tls().identity(pki.client_identity())).await.unwrap();
    let user = pb::User { username: "over.mtls".into(), password: "long enough".into(), ..Default::default() };
    let created = pb::user_service_client::UserServiceClient::new(channel)
        .create_user(t.req(pb::CreateUserRequest { user: Some(user) }, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(client_addr_of(&t, &created.users_id, "user.create").await, "127.0.0.1");

    // No client certificate: refused.
    let refused = health_over(&t, pki.client_tls()).await.expect_err("served without a client certificate");
    assert!(refused.contains("CertificateRequired"), "{refused}");

    // A client certificate of another CA: refused.
    let stranger_dir = pki.path("stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let stranger = Pki::issue(stranger_dir, "someone else's CA");
    let refused = health_over(&t, pki.client_tls().identity(stranger.client_identity()))
        .await
        .expect_err("served a client certificate of another CA");
    assert!(refused.contains("UnknownCA"), "{refused}");

    // Plain gRPC to the TLS port: refused.
    let plain = async {
        let channel = Channel::from_shared(format!("http://{}", t.grpc_addr())).unwrap().connect().await?;
        HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let plain = tokio::time::timeout(Duration::from_secs(15), plain).await.expect("the plain call ended");
    assert!(plain.is_err(), "plain gRPC answered on the TLS port");

    // Still serving after all that.
    let status = health_over(&t, pki.client_tls().identity(pki.client_identity())).await.unwrap();
    assert_eq!(status, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn without_a_client_ca_the_grpc_port_serves_tls_to_anyone() {
    let pki = Pki::new();
    let t = spawn_tls(TlsArgs { tls_client_ca: None, ..pki.mutual() }).await;
    assert_eq!(health_over(&t, pki.client_tls()).await.unwrap(), ServingStatus::Serving as i32);
}

#[tokio::test]
async fn a_standalone_gateway_reaches_a_tls_upstream() {
    let pki = Pki::new();
    let t = spawn_tls(pki.mutual()).await;
    let upstream = format!("https://{}", t.grpc_addr());

    // With the CA and a client certificate, through to the service's health.
    let with_identity = UpstreamTlsArgs {
        grpc_upstream_ca: Some(pki.path("ca.pem")),
        grpc_upstream_cert: Some(pki.path("client.pem")),
        grpc_upstream_key: Some(pki.path("client.key")),
    };
    let (base, stop, server) = standalone_gateway(&upstream, &with_identity).await;
    let res = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    // Stops gracefully.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("the gateway stopped").unwrap().unwrap();

    // Without a client certificate the upstream refuses it.
    let without = UpstreamTlsArgs { grpc_upstream_cert: None, grpc_upstream_key: None, ..with_identity.clone() };
    let (base, _stop, _server) = standalone_gateway(&upstream, &without).await;
    assert_eq!(reqwest::get(format!("{base}/readyz")).await.unwrap().status(), 503);

    // Half or misplaced flags are refused.
    let half = UpstreamTlsArgs { grpc_upstream_key: None, ..with_identity.clone() };
    let err = usersvc::tls::upstream_channel(&upstream, &half).unwrap_err();
    assert!(format!("{err:#}").contains("--grpc-upstream-key"), "{err:#}");
    let err = usersvc::tls::upstream_channel(&format!("http://{}", t.grpc_addr()), &with_identity).unwrap_err();
    assert!(format!("{err:#}").contains("https://"), "{err:#}");
}

async fn standalone_gateway(
    upstream: &str,
    tls: &UpstreamTlsArgs,
) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let channel = usersvc::tls::upstream_channel(upstream, tls).unwrap();
    let router = gateway::router(Gateway::remote(channel), &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(usersvc::app::serve_http(listener, router, async move {
        let _ = stopped.await;
    }));
    (base, stop, server)
}

#[tokio::test]
async fn https_shuts_down_gracefully() {
    let pki = Pki::new();
    let tls = usersvc::tls::ServerTls::load(&pki.mutual()).unwrap().unwrap();
    let router = axum::Router::new().route(
        "/slow",
        axum::routing::get(
            |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>| async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                peer.ip().to_string()
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(usersvc::app::serve_https(listener, tls.http, router, async move {
        let _ = stopped.await;
    }));
    let https = pki.https_client();
    let in_flight = tokio::spawn({
        let https = https.clone();
        async move { https.get(format!("https://localhost:{port}/slow")).send().await?.text().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    // The request in flight is finished, with the client's address ...
    assert_eq!(in_flight.await.unwrap().unwrap(), "127.0.0.1");
    // ... and then the server stops, and the port is closed.
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("the server stopped").unwrap().unwrap();
    assert!(https.get(format!("https://127.0.0.1:{port}/slow")).send().await.is_err());
}

async fn start_error(tls: TlsArgs) -> String {
    let mut args = common::serve_args(common::fresh_database().await);
    args.tls = tls;
    match Application::start(&args).await {
        Ok(app) => {
            app.abort();
            panic!("started with {:?}", args.tls)
        }
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn half_a_tls_configuration_is_refused_at_startup() {
    let pki = Pki::new();
    let cert = Some(pki.path("server.pem"));
    let key = Some(pki.path("server.key"));

    let err = start_error(TlsArgs { tls_cert: cert.clone(), tls_key: None, tls_client_ca: None }).await;
    assert!(err.contains("--tls-cert") && err.contains("--tls-key"), "{err}");
    let err = start_error(TlsArgs { tls_cert: None, tls_key: key.clone(), tls_client_ca: None }).await;
    assert!(err.contains("--tls-cert") && err.contains("--tls-key"), "{err}");
    let err = start_error(TlsArgs { tls_cert: None, tls_key: None, tls_client_ca: Some(pki.path("ca.pem")) }).await;
    assert!(err.contains("--tls-client-ca"), "{err}");

    // Files that are missing or do not parse are named.
    let missing = pki.path("nowhere.pem");
    let err = start_error(TlsArgs { tls_cert: Some(missing.clone()), tls_key: key.clone(), tls_client_ca: None }).await;
    assert!(err.contains("--tls-cert") && err.contains(&missing.display().to_string()), "{err}");
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let err = start_error(TlsArgs { tls_cert: Some(garbage.clone()), tls_key: key.clone(), tls_client_ca: None }).await;
    assert!(err.contains("--tls-cert") && err.contains(&garbage.display().to_string()), "{err}");
    let err =
        start_error(TlsArgs { tls_cert: cert.clone(), tls_key: Some(garbage.clone()), tls_client_ca: None }).await;
    assert!(err.contains("--tls-key") && err.contains(&garbage.display().to_string()), "{err}");
    let err = start_error(TlsArgs { tls_client_ca: Some(garbage.clone()), ..pki.mutual() }).await;
    assert!(err.contains("--tls-client-ca") && err.contains(&garbage.display().to_string()), "{err}");
    // A key that is not the certificate's.
    let err = start_error(TlsArgs { tls_cert: cert, tls_key: Some(pki.path("client.key")), tls_client_ca: None }).await;
    assert!(err.contains("--tls-cert") && err.contains("--tls-key"), "{err}");
}

#[tokio::test]
async fn the_binary_explains_a_half_configuration() {
    let pki = Pki::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usersvc"))
        .args([
            "serve",
            "--database-url",
            "sqlite::memory:",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .env("USERSVC_MASTER_KEY", common::master_key())
        .env("USERSVC_TLS_CERT", pki.path("server.pem"))
        .env_remove("USERSVC_TLS_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tls-cert is given without --tls-key"), "{stderr}");
}
