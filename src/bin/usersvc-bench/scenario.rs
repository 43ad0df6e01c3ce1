//! The work a run does: an application and its users made through the
//! service itself, and one step per scenario over gRPC or over the JSON
//! gateway. Every worker holds its own connection and its own user.

use std::{future::Future, pin::Pin, sync::Arc};

use anyhow::Context;

use crate::measure::Sample;
use http::Method;
use pbjson_types::FieldMask;
use tonic::{
    Request,
    metadata::{AsciiMetadataValue, MetadataValue},
    transport::Channel,
};
use usersvc::pb::{self, group_service_client::GroupServiceClient, user_service_client::UserServiceClient};

pub type Step = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Sample> + Send>> + Send>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Create,
    Signin,
    Get,
    Update,
    Groups,
    /// 90 % reads (get), 10 % updates.
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Http,
    Grpc,
}

/// Where the service listens and the application the run uses.
#[derive(Clone)]
pub struct Target {
    pub grpc: String,
    pub http: String,
    pub api_key: String,
    /// Unique per run: usernames do not collide across runs.
    pub run: String,
}

#[derive(Clone)]
pub struct BenchUser {
    pub id: String,
    pub username: String,
    pub password: String,
    pub token: String,
}

pub const PASSWORD: &str = "bench password of some length";

impl Target {
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Channel::from_shared(self.grpc.clone())?.connect().await.with_context(|| format!("connecting to {}", self.grpc))
    }

    fn key(&self) -> anyhow::Result<AsciiMetadataValue> {
        Ok(MetadataValue::try_from(self.api_key.as_str())?)
    }

    fn new_user(&self, name: &str) -> pb::User {
        pb::User {
            username: format!("{name}-{}", self.run),
            password: PASSWORD.into(),
            email: Some(pb::Email { primary: format!("{name}@example.com"), ..Default::default() }),
            name: Some(pb::Name { first_name: "Bench".into(), last_name: name.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    /// Makes `n` users (and signs each in) through CreateUser, 8 at a time.
    pub async fn users(&self, prefix: &str, n: usize) -> anyhow::Result<Vec<BenchUser>> {
        let client = UserServiceClient::new(self.channel().await?);
        let key = self.key()?;
        let mut out = Vec::with_capacity(n);
        let mut pending = tokio::task::JoinSet::new();
        for i in 0..n {
            let (mut client, key, user) = (client.clone(), key.clone(), self.new_user(&format!("{prefix}{i}")));
            pending.spawn(async move {
                let mut req = Request::new(pb::CreateUserRequest { user: Some(user.clone()) });
                req.metadata_mut().insert("x-api-key", key);
                let made = client.create_user(req).await?.into_inner();
                anyhow::Ok(BenchUser {
                    id: made.users_id,
                    username: user.username,
                    password: user.password,
                    token: made.session_token,
                })
            });
            if pending.len() >= 8
                && let Some(done) = pending.join_next().await
            {
                out.push(done??);
            }
        }
        while let Some(done) = pending.join_next().await {
            out.push(done??);
        }
        Ok(out)
    }

    /// Puts every user in two of three groups, made by a supervisor.
    pub async fn groups(&self, supervisor: &BenchUser, members: &[BenchUser]) -> anyhow::Result<()> {
        let mut client = GroupServiceClient::new(self.channel().await?);
        let mut ids = Vec::new();
        for g in 0..3 {
            let group = pb::Group { name: format!("bench group {g} {}", self.run), ..Default::default() };
            let req = self.signed_in(pb::CreateGroupRequest { group: Some(group) }, &supervisor.token)?;
            ids.push(client.create_group(req).await?.into_inner().groups_id);
        }
        for (i, user) in members.iter().enumerate() {
            for g in [i % 3, (i + 1) % 3] {
                let req = pb::AddMemberRequest { groups_id: ids[g].clone(), users_id: user.id.clone() };
                client.add_member(self.signed_in(req, &supervisor.token)?).await?;
            }
        }
        Ok(())
    }

    fn signed_in<T>(&self, msg: T, token: &str) -> anyhow::Result<Request<T>> {
        let mut req = Request::new(msg);
        req.metadata_mut().insert("x-api-key", self.key()?);
        req.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {token}"))?);
        Ok(req)
    }

    /// One worker's step: its own connection, acting as `user`.
    pub async fn step(&self, scenario: Scenario, via: Via, user: BenchUser, worker: usize) -> anyhow::Result<Step> {
        Ok(match via {
            Via::Grpc => self.grpc_step(scenario, user, worker).await?,
            Via::Http => self.http_step(scenario, user, worker)?,
        })
    }

    async fn grpc_step(&self, scenario: Scenario, user: BenchUser, worker: usize) -> anyhow::Result<Step> {
        let client = UserServiceClient::new(self.channel().await?);
        let key = self.key()?;
        let auth: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {}", user.token))?;
        let target = Arc::new(self.clone());
        let mut n = 0u64;
        Ok(Box::new(move || {
            n += 1;
            let (mut client, key, auth, user, target) =
                (client.clone(), key.clone(), auth.clone(), user.clone(), target.clone());
            Box::pin(async move {
                let authed = Authed { key: &key, auth: &auth };
                let get = |id: String| pb::GetUserRequest { users_id: id };
                let update = |id: String| pb::UpdateUserRequest {
                    users_id: id,
                    user: Some(pb::User {
                        name: Some(pb::Name { last_name: format!("Tester {n}"), ..Default::default() }),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask { paths: vec!["name.last_name".into()] }),
                    ..Default::default()
                };
                let read = scenario == Scenario::Get || (scenario == Scenario::Mixed && !n.is_multiple_of(10));
                let ok = match scenario {
                    Scenario::Get => client.get_user(authed.req(get(user.id))).await.is_ok(),
                    Scenario::Update => client.update_user(authed.req(update(user.id))).await.is_ok(),
                    Scenario::Mixed if n.is_multiple_of(10) => {
                        client.update_user(authed.req(update(user.id))).await.is_ok()
                    }
                    Scenario::Mixed => client.get_user(authed.req(get(user.id))).await.is_ok(),
                    Scenario::Groups => client
                        .list_user_groups(
                            authed.req(pb::ListUserGroupsRequest { users_id: user.id, ..Default::default() }),
                        )
                        .await
                        .is_ok(),
                    Scenario::Signin => {
                        let mut req =
                            Request::new(pb::SignInRequest { username: user.username, password: user.password });
                        req.metadata_mut().insert("x-api-key", key);
                        client.sign_in(req).await.is_ok()
                    }
                    Scenario::Create => {
                        let user = target.new_user(&format!("c{worker}-{n}"));
                        let mut req = Request::new(pb::CreateUserRequest { user: Some(user) });
                        req.metadata_mut().insert("x-api-key", key);
                        client.create_user(req).await.is_ok()
                    }
                };
                Sample { ok, read }
            })
        }))
    }

    fn http_step(&self, scenario: Scenario, user: BenchUser, worker: usize) -> anyhow::Result<Step> {
        let authority = self.http.trim_start_matches("http://").trim_end_matches('/').to_owned();
        // One keep-alive connection per worker, on hyper itself: the client's
        // own cost per request is part of what the machine spends.
        let conn = Arc::new(tokio::sync::Mutex::new(HttpConn { authority: authority.clone(), send: None }));
        let key = format!("browser bench {}", self.api_key);
        let auth = format!("Bearer {}", user.token);
        let me = format!("/v2/users/{}", user.id);
        let target = Arc::new(self.clone());
        let mut n = 0u64;
        Ok(Box::new(move || {
            n += 1;
            let json = |v: serde_json::Value| Some(v.to_string());
            let (method, path, body) = match scenario {
                Scenario::Get => (Method::GET, me.clone(), None),
                Scenario::Mixed if !n.is_multiple_of(10) => (Method::GET, me.clone(), None),
                Scenario::Update | Scenario::Mixed => {
                    (Method::PUT, me.clone(), json(serde_json::json!({"name": {"lastName": format!("Tester {n}")}})))
                }
                Scenario::Groups => (Method::GET, format!("{me}/groups"), None),
                Scenario::Signin => (
                    Method::POST,
                    "/v2/auth/signin".to_owned(),
                    json(serde_json::json!({"username": user.username, "password": user.password})),
                ),
                Scenario::Create => {
                    let u = target.new_user(&format!("c{worker}-{n}"));
                    let body = serde_json::json!({
                        "username": u.username, "password": u.password,
                        "email": {"primary": format!("c{worker}-{n}@example.com")},
                        "name": {"firstName": "Bench", "lastName": format!("c{worker}-{n}")},
                    });
                    (Method::POST, "/v2/users".to_owned(), json(body))
                }
            };
            let read = method == Method::GET;
            let mut req = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, &authority)
                .header("X-Api-Key", &key);
            // Sign-up and sign-in are made as nobody.
            if !matches!(scenario, Scenario::Create | Scenario::Signin) {
                req = req.header(http::header::AUTHORIZATION, &auth);
            }
            let req = match body {
                Some(b) => req.header(http::header::CONTENT_TYPE, "application/json").body(axum::body::Body::from(b)),
                None => req.body(axum::body::Body::empty()),
            };
            let conn = conn.clone();
            Box::pin(async move {
                let ok = match req {
                    Ok(req) => conn.lock().await.send(req).await,
                    Err(_) => false,
                };
                Sample { ok, read }
            })
        }))
    }
}

/// A worker's HTTP/1.1 connection, opened again if the server closed it.
struct HttpConn {
    authority: String,
    send: Option<hyper::client::conn::http1::SendRequest<axum::body::Body>>,
}

impl HttpConn {
    /// Whether the request got a 2xx with its whole body.
    async fn send(&mut self, req: http::Request<axum::body::Body>) -> bool {
        if self.send.as_ref().is_none_or(|s| s.is_closed()) {
            self.send = self.connect().await.ok();
        }
        let Some(send) = self.send.as_mut() else { return false };
        if send.ready().await.is_err() {
            self.send = None;
            return false;
        }
        match send.send_request(req).await {
            Ok(res) => {
                let ok = res.status().is_success();
                let body = axum::body::to_bytes(axum::body::Body::new(res.into_body()), 4 << 20).await;
                ok && body.is_ok()
            }
            Err(_) => {
                self.send = None;
                false
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<hyper::client::conn::http1::SendRequest<axum::body::Body>> {
        let stream = tokio::net::TcpStream::connect(&self.authority).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(send)
    }
}

/// A request with the worker's key and session.
struct Authed<'a> {
    key: &'a AsciiMetadataValue,
    auth: &'a AsciiMetadataValue,
}

impl Authed<'_> {
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut().insert("x-api-key", self.key.clone());
        req.metadata_mut().insert("authorization", self.auth.clone());
        req
    }
}
