//! Probes for load balancers and orchestrators. Readiness is the gRPC
//! service's own health (which follows the database), so the gateway needs
//! no database handle, in process or standalone.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use super::{Gateway, error::ApiError};

/// `GET /healthz`: the process answers.
pub async fn alive() -> Response {
    Json(json!({"status": "alive"})).into_response()
}

/// `GET /readyz`: the service can reach its database, on a current schema.
pub async fn ready(State(gw): State<Gateway>) -> Response {
    let answer = (*gw.health).clone().check(HealthCheckRequest { service: String::new() }).await;
    match answer.map(|r| r.into_inner().status) {
        Ok(s) if s == ServingStatus::Serving as i32 => Json(json!({"status": "ready"})).into_response(),
        _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the service cannot reach its database yet")
            .into_response(),
    }
}
