//! What an operator sees: Prometheus metrics and per-call spans. Labels
//! carry routes, RPC names, methods and status codes, never an id or PII.

use std::{
    future::Future,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::{IntoResponse, Response},
};
use metrics::SharedString;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

use crate::edge::Edge;

/// Latency buckets, in seconds: sub-millisecond reads to slow hashes.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process's metrics recorder (installed once, whatever starts first).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().set_buckets(BUCKETS).and_then(|b| b.install_recorder()) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .as_ref()
}

/// `GET /metrics`: the Prometheus text format.
pub async fn render() -> Response {
    let body = handle().map(|h| h.render()).unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Counts and times every HTTP request by its route template.
pub async fn http_metrics(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("usersvc_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("usersvc_http_request_duration_seconds", "route" => route, "method" => method)
        .record(start.elapsed().as_secs_f64());
    res
}

/// A tower layer for gRPC: a span per call (with its request id) and
/// counts and times by RPC and status code.
#[derive(Clone, Copy, Default)]
pub struct GrpcObserveLayer;

impl<S> tower::Layer<S> for GrpcObserveLayer {
    type Service = GrpcObserve<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcObserve { inner }
    }
}

#[derive(Clone)]
pub struct GrpcObserve<S> {
    inner: S,
}

/// The RPC name of a path, from a closed set (a client's made-up path must
/// not grow the label space).
fn rpc_label(path: &str) -> String {
    let known =
        path.starts_with("/usersvc.v1.") || path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.");
    if known && path.len() < 96 { path.trim_start_matches('/').to_owned() } else { "unknown".to_owned() }
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcObserve<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let rpc = rpc_label(req.uri().path());
        let span = rpc_span(&rpc, req.extensions().get::<Edge>());
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let res = fut.await;
                // A unary error is answered with the status in the headers;
                // a success carries it in the trailers, as 0.
                let code = match &res {
                    Ok(r) => r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_owned(),
                    Err(_) => "transport".to_owned(),
                };
                count_rpc(rpc, code, start);
                res
            }
            .instrument(span),
        )
    }
}

/// The span of one call, with its request ids (the client's only when it
/// is a short printable token: see [`crate::edge`]).
fn rpc_span(rpc: &str, edge: Option<&Edge>) -> tracing::Span {
    let request_id = edge.map(Edge::reply_id).unwrap_or_default();
    let server_request_id = edge.map(|e| e.server_request_id.to_string()).unwrap_or_default();
    tracing::info_span!("rpc", rpc = %rpc, request_id = %request_id, server_request_id = %server_request_id)
}

fn count_rpc(rpc: impl Into<SharedString>, code: impl Into<SharedString>, start: Instant) {
    let rpc: SharedString = rpc.into();
    let code: SharedString = code.into();
    metrics::counter!("usersvc_grpc_requests_total", "rpc" => rpc.clone(), "code" => code).increment(1);
    metrics::histogram!("usersvc_grpc_request_duration_seconds", "rpc" => rpc).record(start.elapsed().as_secs_f64());
}

/// A call to a service of this process made without the gRPC transport (by
/// the gateway), observed as one from the network: the same span, counts and
/// times, under the RPC's full name.
pub async fn local_rpc<R, T, F>(
    rpc: &'static str,
    request: tonic::Request<R>,
    call: impl FnOnce(tonic::Request<R>) -> F,
) -> Result<tonic::Response<T>, tonic::Status>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let span = rpc_span(rpc, request.extensions().get::<Edge>());
    let start = Instant::now();
    let res = call(request).instrument(span).await;
    // Static labels for the common case: no allocation per call.
    let code: SharedString = match &res {
        Ok(_) => "0".into(),
        Err(s) => (s.code() as i32).to_string().into(),
    };
    count_rpc(rpc, code, start);
    res
}
