//! Liveness, readiness and metrics.
//!
//! * `GET /healthz`: 200 whenever the process answers (liveness).
//! * `GET /readyz`: 200 when Postgres answers within [`READY_TIMEOUT`], else
//!   503 `database_unavailable` (readiness: take the instance out of the
//!   load balancer, do not restart it).
//! * `GET /metrics`: the shared Prometheus registry, text format.
//!
//! # Decisions
//!
//! * **Readiness checks only Postgres.** The API reads and writes nothing
//!   else; NATS being down does not stop it from answering correctly.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::AppState;

/// The answer of `/healthz` and `/readyz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Health)]
#[allow(dead_code)]
pub(crate) struct HealthDoc {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    #[schema(pattern = "^(ok|ready)$")]
    status: String,
}

/// How long `/readyz` waits for Postgres.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness: 200 whenever the process answers",
    responses((status = 200, description = "alive", body = HealthDoc)),
)]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: 200 when Postgres answers",
    responses(
        (status = 200, description = "ready", body = HealthDoc),
        (status = 503, description = "`database_unavailable`, `request_timeout`", body = crate::Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(Json(json!({"status": "ready"}))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database unavailable");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database does not answer",
            ))
        }
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            format!("the database did not answer within {READY_TIMEOUT:?}"),
        )),
    }
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics (text exposition format)",
    responses((status = 200, description = "the metrics", content_type = "text/plain", body = String)),
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    tally_telemetry::metrics_response(&state.registry)
}
