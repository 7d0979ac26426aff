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

/// How long `/readyz` waits for Postgres.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`.
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
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    tally_telemetry::metrics_response(&state.registry)
}
