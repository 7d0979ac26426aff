//! The API's Prometheus metrics, all in one place.
//!
//! * `tally_api_requests_total{route, method, status}`: requests answered.
//! * `tally_api_request_duration_seconds{route}`: time to answer.
//! * `tally_api_auth_failures_total{reason}`: requests refused by
//!   authentication (`missing_api_key`, `malformed_api_key`,
//!   `invalid_api_key`, `forbidden_role`; never the key itself).
//! * `tally_api_connections_open`: HTTP connections open now.
//! * `tally_api_connections_refused_total`: connections refused because
//!   the connection cap was reached.
//!
//! # Decisions
//!
//! * **`route` is the matched path template** (`/v1/budgets/{id}`), never
//!   the raw path: raw paths carry budget and generation ids and would make
//!   the label set unbounded. Requests that match no route are labelled
//!   `unmatched`.
//! * **`method` is bounded** to the standard methods; anything else is
//!   labelled `other`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Label of requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The API's metrics (see the module docs).
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    /// `tally_api_requests_total{route, method, status}`.
    pub requests: IntCounterVec,
    /// `tally_api_request_duration_seconds{route}`.
    pub duration: HistogramVec,
    /// `tally_api_auth_failures_total{reason}`.
    pub auth_failures: IntCounterVec,
    /// `tally_api_provider_drift_usd{provider, org_id, window}`: what OpenRouter reports
    /// for the configured key minus what tally booked for the same UTC
    /// window (positive: spend tally did not see). Set by every drift check.
    pub provider_drift: GaugeVec,
    /// `tally_api_connections_open`.
    pub connections_open: IntGauge,
    /// `tally_api_connections_refused_total`.
    pub connections_refused: IntCounter,
}

impl ApiMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<ApiMetrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "tally_api_requests_total",
                "HTTP requests answered by the API.",
            ),
            &["route", "method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tally_api_request_duration_seconds",
                "Time the API took to answer a request.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "tally_api_auth_failures_total",
                "Requests refused by authentication, by reason.",
            ),
            &["reason"],
        )?;
        let provider_drift = GaugeVec::new(
            Opts::new(
                "tally_api_provider_drift_usd",
                "Provider-reported usage of an organisation's key minus tally's booked spend for the same UTC window, USD.",
            ),
            &["provider", "org_id", "window"],
        )?;
        let connections_open = IntGauge::new(
            "tally_api_connections_open",
            "HTTP connections the API has open.",
        )?;
        let connections_refused = IntCounter::new(
            "tally_api_connections_refused_total",
            "HTTP connections refused because the connection cap was reached.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(provider_drift.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        Ok(ApiMetrics {
            requests,
            duration,
            auth_failures,
            provider_drift,
            connections_open,
            connections_refused,
        })
    }
}

/// The route template a request matched, carried from the routing layer to
/// the metrics layer in the response's extensions.
#[derive(Clone, Debug)]
struct RouteLabel(String);

/// Route layer: copies the matched path template into the response.
pub(crate) async fn record_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let mut resp = next.run(req).await;
    if let Some(route) = route {
        resp.extensions_mut().insert(RouteLabel(route));
    }
    resp
}

/// The `method` label of a request (and the method of a route table row):
/// one of seven names or `other`, so the label stays bounded.
pub(crate) fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Outer layer: counts and times every request.
pub(crate) async fn track(State(metrics): State<ApiMetrics>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let resp = next.run(req).await;
    let route = resp
        .extensions()
        .get::<RouteLabel>()
        .map(|r| r.0.as_str())
        .unwrap_or(UNMATCHED_ROUTE);
    metrics
        .requests
        .with_label_values(&[route, method, resp.status().as_str()])
        .inc();
    metrics
        .duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    resp
}
