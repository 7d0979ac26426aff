//! tally's HTTP API (`tally api`): manages budgets and answers questions
//! about spend, over the Postgres ledger.
//!
//! JSON in and out, money as decimal strings, errors as RFC 9457
//! `application/problem+json` (see [`error`]). Endpoints:
//!
//! | route | success | errors |
//! |---|---|---|
//! | `POST /v1/budgets` | 201 + `Location` | 400, 413, 415, 422, 503 |
//! | `GET /v1/budgets?org_id=…[&include_archived=true]` | 200 | 422, 503 |
//! | `GET /v1/budgets/{id}` | 200 | 404, 422, 503 |
//! | `GET /v1/budgets/{id}/periods/{start}` | 200 | 404, 422 (`not_a_period_start`), 503 |
//! | `PATCH /v1/budgets/{id}` | 200 | 400, 404, 415, 422 (`immutable_field`), 503 |
//! | `DELETE /v1/budgets/{id}` (archives) | 200 | 404, 422, 503 |
//! | `GET /v1/budgets/{id}/entries?cursor=&limit=` | 200 | 404, 422, 503 |
//! | `POST /v1/budgets/check` | 200 | 400, 415, 422, 503 |
//! | `GET /v1/generations/{generation_id}` | 200 | 404, 422, 503 |
//! | `GET /v1/spend?org_id&from&to&group_by` | 200 | 422, 503 |
//! | `GET /healthz` | 200 | |
//! | `GET /readyz` | 200 | 503 |
//! | `GET /metrics` | 200 | |
//!
//! Unknown routes answer 404 `route_not_found`, wrong methods 405
//! `method_not_allowed`, requests slower than the configured timeout 503
//! `request_timeout`.
//!
//! Modules: [`error`] (problems), [`metrics`] (Prometheus), and private
//! modules per resource (budgets, generations, spend, health), the request
//! extractors (extract) and the response shapes (wire).
//!
//! # Decisions
//!
//! * **Money must be strings.** `limit_usd` given as a JSON number is
//!   refused (422 `amount_not_string` naming `limit_usd`): most JSON
//!   libraries decode numbers as doubles, so a number may already have lost
//!   digits before tally sees it. Responses carry every amount as a decimal
//!   string for the same reason.
//! * **`remaining_usd` is clamped at zero**; an overshoot is reported as
//!   `over_by_usd` (see the wire module).
//! * **Scope, period, time zone and organisation of a budget are
//!   immutable**: changing them would move money already booked (see the
//!   budgets module).
//! * **Enforcement defaults to `hard`** (the contract names no default): a
//!   budget exists to cap spend.
//! * **Strict input.** Unknown body fields and query parameters are refused
//!   (422 naming them), so a typo never silently changes a request; bodies
//!   are limited to [`BODY_LIMIT`] bytes by default.
//! * **Limits everywhere** ([`limits`], [`server`]): header-read, idle and
//!   request timeouts, a body limit, a connection cap, per-organisation
//!   limits on what may be created, and every list paginated.
//! * **Every error is a problem.** A middleware converts any error response
//!   that is not yet `application/problem+json` (routing 404/405, body
//!   limit, timeout) into one; no plain-text rejection reaches a client.

pub mod error;
pub mod limits;
pub mod metrics;
pub mod server;

mod budgets;
mod extract;
mod generations;
mod health;
mod pagination;
mod spend;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use tally_store::Store;
use tally_telemetry::Registry;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, Problem};
pub use limits::{HttpLimits, OrgLimits};
pub use metrics::ApiMetrics;

/// Largest accepted request body, in bytes (64 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Default time a request may take before it is answered 503.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Header carrying the request id (set when the client sent none, echoed
/// in the response, logged in the request's span).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// How the API is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Listen address (`TALLY_HTTP_ADDR`, default `127.0.0.1:8080`).
    pub addr: SocketAddr,
    /// NATS subject prefix of derived events (`TALLY_SUBJECT_PREFIX`).
    pub prefix: String,
    /// Time a request may take before it is answered 503 `request_timeout`.
    pub request_timeout: Duration,
    /// Connection limits and timeouts (its `request_timeout` is replaced
    /// by the field above).
    pub http_limits: HttpLimits,
    /// What one organisation may create.
    pub org_limits: OrgLimits,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            prefix: "tally".to_owned(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            http_limits: HttpLimits::default(),
            org_limits: OrgLimits::default(),
        }
    }
}

/// What every handler shares: the store, the metrics registry and settings.
#[derive(Clone, Debug)]
pub struct AppState {
    store: Store,
    registry: Registry,
    prefix: String,
    metrics: ApiMetrics,
    http_limits: HttpLimits,
    org_limits: OrgLimits,
}

impl AppState {
    /// Creates the state and registers the API's metrics in `registry`
    /// (fails if they are registered there already). `prefix` is the
    /// subject prefix of the events a budget creation publishes.
    pub fn new(
        store: Store,
        registry: Registry,
        prefix: String,
    ) -> Result<Self, prometheus::Error> {
        let metrics = ApiMetrics::register(&registry)?;
        Ok(AppState {
            store,
            registry,
            prefix,
            metrics,
            http_limits: HttpLimits::default(),
            org_limits: OrgLimits::default(),
        })
    }

    /// Creates the state from a configuration (its `prefix` and
    /// `request_timeout`; `addr` is for the caller to bind).
    pub fn from_config(
        store: Store,
        registry: Registry,
        config: &ApiConfig,
    ) -> Result<Self, prometheus::Error> {
        Ok(AppState::new(store, registry, config.prefix.clone())?
            .with_http_limits(config.http_limits)
            .with_org_limits(config.org_limits)
            .with_request_timeout(config.request_timeout))
    }

    /// Sets the time a request may take (default
    /// [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.http_limits.request_timeout = timeout;
        self
    }

    /// Sets the connection limits and timeouts (default
    /// [`HttpLimits::default`]), the request timeout among them.
    pub fn with_http_limits(mut self, limits: HttpLimits) -> Self {
        self.http_limits = limits;
        self
    }

    /// Sets what one organisation may create (default
    /// [`OrgLimits::default`]).
    pub fn with_org_limits(mut self, limits: OrgLimits) -> Self {
        self.org_limits = limits;
        self
    }

    /// What one organisation may create.
    pub fn org_limits(&self) -> OrgLimits {
        self.org_limits
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The metrics registry served on `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The subject prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// The API's router with every layer (request ids, tracing, metrics,
/// problems, timeout, body limit).
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let routes = Router::new()
        .route("/v1/budgets", post(budgets::create).get(budgets::list))
        .route("/v1/budgets/check", post(budgets::check))
        .route(
            "/v1/budgets/{id}",
            get(budgets::get)
                .patch(budgets::patch)
                .delete(budgets::archive),
        )
        .route("/v1/budgets/{id}/periods/{start}", get(budgets::period))
        .route("/v1/budgets/{id}/entries", get(budgets::entries))
        .route("/v1/generations/{generation_id}", get(generations::get))
        .route("/v1/spend", get(spend::get))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        // Inner route layers: the timeout, then the matched route template
        // for the metrics (so timed-out requests keep their route label).
        .route_layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            state.http_limits.request_timeout,
        ))
        .route_layer(axum::middleware::from_fn(metrics::record_route))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route")
        });
    let metrics = state.metrics.clone();
    let body_limit = state.http_limits.body_limit;
    routes.with_state(state).layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get(REQUEST_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!(
                    "http",
                    method = %req.method(),
                    path = %req.uri().path(),
                    request_id = %id,
                )
            }))
            .layer(PropagateRequestIdLayer::new(request_id))
            .layer(axum::middleware::from_fn_with_state(
                metrics,
                metrics::track,
            ))
            .layer(axum::middleware::from_fn(error::problems_only))
            .layer(DefaultBodyLimit::max(body_limit)),
    )
}

/// Serves the API on `listener` until `shutdown` completes, then finishes
/// the requests in flight; with the state's [`HttpLimits`] (see
/// [`server`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.http_limits;
    let metrics = state.metrics.clone();
    server::serve(listener, router(state), limits, metrics, shutdown).await
}
