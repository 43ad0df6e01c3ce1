//! The server's own time limit on a request (`--request-timeout`), on both
//! doors, answered as what it is: the service could not finish in time and
//! the client may try again (HTTP 503 `timeout` with `Retry-After`, gRPC
//! UNAVAILABLE with a retry hint).
//!
//! tower-http's timeout answers 408, which tells the client it was too slow
//! sending; tonic's answers CANCELLED. Neither is a status a client retries
//! on, and the usual cause is the server's: a database that stopped
//! answering, as a write waiting for a synchronous standby does while the
//! standby is promoted away from under it. Such a write is not on the new
//! primary, so a retry is what the client should do.
//!
//! A deadline the gRPC client set itself (`grpc-timeout`) is still tonic's
//! to enforce: that client has given up and sees DEADLINE_EXCEEDED anyway.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{gateway::error::ApiError, service::error::ServiceError};

/// The HTTP side: a middleware with the limit as its state.
pub async fn http(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::from(tonic::Status::from(ServiceError::TimedOut)).into_response(),
    }
}

/// The gRPC side, as a layer of the tonic server.
#[derive(Clone, Copy)]
pub struct GrpcDeadlineLayer(pub Duration);

impl<S> tower::Layer<S> for GrpcDeadlineLayer {
    type Service = GrpcDeadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcDeadline { inner, limit: self.0 }
    }
}

#[derive(Clone)]
pub struct GrpcDeadline<S> {
    inner: S,
    limit: Duration,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcDeadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(res) => res,
                Err(_) => Ok(tonic::Status::from(ServiceError::TimedOut).into_http()),
            }
        })
    }
}
