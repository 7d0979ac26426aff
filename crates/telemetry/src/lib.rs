//! Logs and metrics, set up the same way by every tally process.
//!
//! * [`init_tracing`]: human-readable logs by default, one JSON object per
//!   line with `json = true`; the level comes from `RUST_LOG` (default
//!   `info`).
//! * [`Registry`]: the Prometheus registry every service registers its
//!   metrics in; [`serve_metrics`] serves it on `/metrics`, and
//!   [`metrics_response`] renders it for an existing HTTP server.
//!
//! # Conventions (the metric spec every crate follows)
//!
//! * Names start with `tally_<service>_`, are defined in one `metrics`
//!   module per crate, use base units (`_seconds`, `_bytes`) and `_usd` for
//!   money, and counters end in `_total`.
//! * Labels are bounded: types, outcomes, reasons (stable error codes),
//!   never generation, session or budget ids.
//! * Money in Prometheus is the one place amounts become `f64`: dashboards
//!   need floats, and nothing ever reads them back into the ledger.
//! * A label whose values come from the outside world (a model id) goes
//!   through a [`BoundedLabel`]: the first values seen keep their names,
//!   later ones are reported as [`OTHER_LABEL`], so no producer can grow a
//!   process's series without bound.
//! * Every service's `/metrics` passes `promtool check metrics`, and every
//!   metric the alert rules and the dashboard query is exported (both
//!   checked by the workspace's end-to-end tests).
//!
//! # Decisions
//!
//! * **One registry per process, passed in.** Each service registers its
//!   metrics in the registry it is given (`Metrics::register(&registry)`),
//!   so `tally run` can host every service in one process and tests can
//!   read one service's metrics without globals.
//! * **Logs go to stderr.** Standard output belongs to commands that print
//!   results (`tally migrate`, `tally replay --verify`, the demo's summary).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;

use prometheus::{Encoder, TextEncoder};

pub use prometheus;

/// The shared Prometheus registry.
pub type Registry = prometheus::Registry;

/// Errors of telemetry setup.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A metric could not be registered (duplicate name: a bug).
    #[error("metric registration failed: {0}")]
    Register(#[from] prometheus::Error),
    /// The metrics listener could not bind.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

impl TelemetryError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TelemetryError::Register(_) => "metric_registration",
            TelemetryError::Bind { .. } => "metrics_bind",
        }
    }
}

/// Installs the global tracing subscriber. Safe to call more than once (later
/// calls do nothing), so tests and `tally run` can share it.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,async_nats=warn,hyper=warn"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
}

/// The label value that stands for every value past a [`BoundedLabel`]'s limit.
pub const OTHER_LABEL: &str = "other";

/// Keeps the values of one label bounded: the first `max` distinct values
/// are reported as they are, every later one as [`OTHER_LABEL`].
#[derive(Debug)]
pub struct BoundedLabel {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl BoundedLabel {
    /// A label that keeps at most `max` distinct values of its own.
    pub fn new(max: usize) -> BoundedLabel {
        BoundedLabel {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// The value to report for `value`.
    pub fn value<'a>(&self, value: &'a str) -> &'a str {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            return value;
        }
        if seen.len() < self.max {
            seen.insert(value.to_owned());
            return value;
        }
        OTHER_LABEL
    }
}

/// Renders the registry in Prometheus' text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    // Encoding into a Vec cannot fail for well-formed metric families.
    let _ = encoder.encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// An axum response with the registry's metrics.
pub fn metrics_response(registry: &Registry) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(registry),
    )
        .into_response()
}

/// Serves `/metrics` (and `/healthz`, `/readyz` for orchestrators' probes)
/// on `addr` until the task is dropped.
/// Returns the bound address (useful with port 0).
pub async fn serve_metrics(
    addr: SocketAddr,
    registry: Registry,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), TelemetryError> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let r = registry.clone();
                async move { metrics_response(&r) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }));
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_are_served_over_http() {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("tally_test_events_total", "test").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc_by(3);
        let (addr, _h) = serve_metrics("127.0.0.1:0".parse().unwrap(), registry)
            .await
            .unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).await.unwrap();
        assert!(body.contains("tally_test_events_total 3"), "{body}");
    }

    #[test]
    fn a_bounded_label_keeps_its_first_values_and_folds_the_rest() {
        let label = BoundedLabel::new(2);
        assert_eq!(label.value("a"), "a");
        assert_eq!(label.value("b"), "b");
        assert_eq!(label.value("c"), OTHER_LABEL);
        assert_eq!(label.value("a"), "a");
        assert_eq!(label.value("d"), OTHER_LABEL);
    }
}
