//! The JSON gateway: the documented Catalyze `/v2` routes, each translated
//! into one gRPC call. It holds no database handle and no rules; what it
//! knows is the wire: JSON <-> protobuf, headers -> metadata, Status -> HTTP.
//! The routes are one table (`routes.rs`) that both the router and the
//! OpenAPI document (`openapi.rs`) are built from.

pub mod error;
mod groups;
pub mod json;
mod mfa;
pub mod openapi;
mod paging;
mod passkeys;
mod probes;
mod reset;
pub mod routes;
pub mod upstream;
mod users;
mod verification;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts},
    http::{HeaderName, HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::get,
};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tower::{ServiceExt, util::BoxCloneSyncService};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    limit::RequestBodyLimitLayer,
    normalize_path::NormalizePath,
};

use crate::edge::{Edge, TrustedProxies};
use crate::pb::{
    group_service_client::GroupServiceClient, group_service_server::GroupService,
    user_service_client::UserServiceClient, user_service_server::UserService,
};
use crate::service::context::{CLIENT_ADDR, REQUEST_ID};
use error::ApiError;
use tonic_health::pb::health_client::HealthClient;

/// Request bodies larger than this are refused with 413 before parsing.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Any gRPC transport: the in-process health service or a channel to a remote one.
/// (The error is a concrete type: a boxed `dyn Error` trips rustc's
/// higher-ranked lifetime check in the handlers' futures.)
pub type GrpcTransport =
    BoxCloneSyncService<http::Request<tonic::body::Body>, http::Response<tonic::body::Body>, tonic::transport::Error>;

/// The services the handlers call (see [`upstream`]).
#[derive(Clone)]
pub struct Gateway {
    users: Arc<dyn UserService>,
    groups: Arc<dyn GroupService>,
    // Behind an `Arc`: axum clones the state for every request, and a
    // client's boxed transport allocates when cloned.
    health: Arc<HealthClient<GrpcTransport>>,
    /// Whose `Forwarded` / `X-Forwarded-For` is believed.
    trusted_proxies: TrustedProxies,
    /// The server's own limit on a request (`--request-timeout`); none in
    /// a remote gateway, whose upstream keeps its own.
    request_timeout: Option<std::time::Duration>,
}

impl Gateway {
    /// Calls the services of this process directly; `health` (the readiness
    /// probe's) through the in-process gRPC transport.
    pub fn in_process<U: UserService, G: GroupService>(
        users: Arc<U>,
        groups: Arc<G>,
        health: tonic::service::Routes,
    ) -> Self {
        let observed = tower::Layer::layer(&crate::observe::GrpcObserveLayer, health);
        let svc = ServiceExt::<http::Request<tonic::body::Body>>::map_err(observed, |e: Infallible| match e {});
        Self {
            users: Arc::new(upstream::Local(users)),
            groups: Arc::new(upstream::Local(groups)),
            health: Arc::new(HealthClient::new(BoxCloneSyncService::new(svc))),
            trusted_proxies: TrustedProxies::default(),
            request_timeout: None,
        }
    }

    /// Calls a remote gRPC service.
    pub fn remote(channel: tonic::transport::Channel) -> Self {
        let transport: GrpcTransport = BoxCloneSyncService::new(channel);
        Self {
            users: Arc::new(upstream::Remote(UserServiceClient::new(transport.clone()))),
            groups: Arc::new(upstream::Remote(GroupServiceClient::new(transport.clone()))),
            health: Arc::new(HealthClient::new(transport)),
            trusted_proxies: TrustedProxies::default(),
            request_timeout: None,
        }
    }

    /// Believes what these proxies say of their client's address.
    pub fn trusting(mut self, proxies: TrustedProxies) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// Answers a request not done within `limit` with 503 `timeout`
    /// ([`crate::deadline`]).
    pub fn with_deadline(mut self, limit: std::time::Duration) -> Self {
        self.request_timeout = Some(limit);
        self
    }
}

/// The metadata a call carries: the caller's key and token, the request
/// ids, and the client's address (for throttling and the audit trail), as
/// the [`Edge`] of the request settled them.
pub struct CallMeta(MetadataMap, Edge);

const FORWARDED: &[&str] = &["x-api-key", "authorization"];

impl<S: Send + Sync> FromRequestParts<S> for CallMeta {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Settled by the router's edge middleware; without it (a router
        // built otherwise), the peer, believing no one.
        let edge = parts.extensions.get::<Edge>().cloned().unwrap_or_else(|| {
            let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
            Edge::of_http(&TrustedProxies::default(), peer, &parts.headers)
        });
        let mut md = call_metadata(&parts.headers, edge.client);
        // For a standalone gateway's upstream, which believes them from a
        // trusted peer only.
        if let Some(id) = edge.request_id.as_deref().and_then(|id| AsciiMetadataValue::try_from(id).ok()) {
            md.insert(REQUEST_ID, id);
        }
        if let Ok(id) = AsciiMetadataValue::try_from(edge.server_request_id.to_string()) {
            md.insert(crate::edge::SERVER_REQUEST_ID, id);
        }
        Ok(CallMeta(md, edge))
    }
}

/// The gRPC metadata of an HTTP request: the caller's key and token, and
/// the client's address.
pub fn call_metadata(headers: &header::HeaderMap, client: Option<std::net::IpAddr>) -> MetadataMap {
    let mut md = MetadataMap::new();
    for name in FORWARDED {
        if let Some(v) = headers.get(*name) {
            // A value that is not visible ASCII is passed on as one that
            // can match nothing, so the service answers it as invalid.
            let v = AsciiMetadataValue::try_from(v.as_bytes())
                .unwrap_or_else(|_| AsciiMetadataValue::from_static("invalid"));
            md.insert(*name, v);
        }
    }
    if let Some(ip) = client
        && let Ok(v) = AsciiMetadataValue::try_from(ip.to_string())
    {
        md.insert(CLIENT_ADDR, v);
    }
    md
}

impl CallMeta {
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        *req.metadata_mut() = self.0.clone();
        // The services of this process read it as it is.
        req.extensions_mut().insert(self.1.clone());
        req
    }
}

/// A JSON reply of a message, `{}` for an empty one.
pub fn reply<T: serde::Serialize>(message: &T) -> Response {
    axum::Json(message).into_response()
}

pub type ApiResult = Result<Response, ApiError>;

/// The `/v2` router with its layers: body limit, JSON errors, the request's
/// [`Edge`] (client address and request ids), CORS when origins are given.
/// `/healthz` and `/readyz` stay here for load balancers; `/metrics` is on
/// the management port only ([`admin_router`]).
pub fn router(gateway: Gateway, cors_origins: &[String]) -> Router {
    let v2 = routes::router().route_layer(axum::middleware::from_fn(crate::observe::http_metrics));

    let trusted = gateway.trusted_proxies.clone();
    let deadline = gateway.request_timeout;
    let mut app = v2
        .route("/healthz", get(probes::alive))
        .route("/readyz", get(probes::ready))
        .with_state(gateway)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(error::json_errors));
    // Inside the edge and CORS layers: a timeout's 503 carries the request
    // ids and, for a browser, the CORS headers that let it read the reply.
    if let Some(limit) = deadline {
        app = app.layer(axum::middleware::from_fn_with_state(limit, crate::deadline::http));
    }
    app = app.layer(axum::middleware::from_fn_with_state(trusted, crate::edge::http));
    if let Some(cors) = cors_layer(cors_origins) {
        app = app.layer(cors);
    }
    // Clients call `/v2/auth/verify/` (the JS SDK) and the like: a trailing
    // slash names the same route. It is trimmed before routing, so it is
    // outside the router it changes.
    Router::new().fallback_service(NormalizePath::trim_trailing_slash(app))
}

/// The management port's router: `/metrics`, `/healthz` and `/readyz`, plain,
/// with no request limits and no credentials (bind it where only the
/// operator's tools reach).
pub fn admin_router(gateway: Gateway) -> Router {
    Router::new()
        .route("/healthz", get(probes::alive))
        .route("/readyz", get(probes::ready))
        .route("/metrics", get(crate::observe::render))
        .with_state(gateway)
}

/// `/healthz` and `/readyz` alone, for a server to answer before its
/// request limits (`usersvc serve` puts the limited router behind them):
/// a flood that fills every slot must not fail the load balancer's probes
/// and get the process restarted.
pub fn probes(gateway: Gateway) -> Router {
    Router::new().route("/healthz", get(probes::alive)).route("/readyz", get(probes::ready)).with_state(gateway)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<&str> = origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()).collect();
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
            .allow_headers([
                HeaderName::from_static("x-api-key"),
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                HeaderName::from_static("x-request-id"),
            ])
            // A browser's script may read where the next page is, and the
            // ids to quote to support.
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static(crate::edge::SERVER_REQUEST_ID),
                header::LINK,
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// 404 with the API's error shape, for the fallback.
pub async fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
