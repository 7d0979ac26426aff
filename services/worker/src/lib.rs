//! tally-worker: runs generations on OpenRouter and emits everything
//! accounting needs.
//!
//! It reads `tally.generation.requested.v1` from the durable `worker`
//! consumer (`<p>.generation.requested.>`) and, per request:
//!
//! 1. **decodes** it (bad input, bad ids → `<p>.deadletter.worker` with the
//!    decoder's code, then ack);
//! 2. **validates** it: a model or fallback model missing from the price
//!    catalog → failed `unknown_model`;
//! 3. **compiles routing** ([`routing`]): presets, explicit provider fields,
//!    capacity strategy → `provider` / `models` (failed
//!    `preset_unsatisfiable`, `byok_no_providers`, `unknown_preset`,
//!    `invalid_preset`);
//! 4. **asks the budget preflight** ([`preflight`]); refused → failed
//!    `budget_exhausted`, OpenRouter is not called;
//! 5. **runs the generation** with `POST /responses` (streaming when the
//!    request says so), forwarding `session_id` and `user`;
//! 6. **publishes** `tally.generation.completed.v1` (id
//!    `completed-<generation_id>`: usage, `actual_cost_usd` from
//!    `usage.cost` (+ upstream cost for BYOK) or null, the catalog
//!    [`estimate`], `status` `completed`/`cancelled`/`errored`) — also for
//!    aborted and errored generations that have an id — and the
//!    `tally.generation.result.v1` answer to the reply subject (or
//!    `<p>.generation.result.<org>`); a request that ends without a
//!    generation publishes `tally.generation.failed.v1` (id
//!    `failed-<request_id>`) and a failed result;
//! 7. **acks** only after the events are stored.
//!
//! ```no_run
//! # async fn f(bus: tally_bus::Bus, client: tally_openrouter::OpenRouterClient)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! use std::{sync::Arc, time::Duration};
//! use tally_worker::{
//!     Catalog, CatalogConfig, HttpPreflight, Metrics, Worker, WorkerConfig,
//! };
//!
//! let registry = tally_telemetry::Registry::new();
//! let metrics = Arc::new(Metrics::register(&registry)?);
//! let catalog = Catalog::new(CatalogConfig {
//!     persist_path: Some("/var/lib/tally/catalog.json".into()),
//!     ..CatalogConfig::default()
//! });
//! catalog.load_persisted()?;
//! let (stop, shutdown) = tokio::sync::watch::channel(false);
//! let _ = catalog.refresh(&client).await; // keep the persisted one on failure
//! catalog.clone().spawn_refresh(client.clone(), shutdown.clone());
//! let preflight = Arc::new(HttpPreflight::new("http://127.0.0.1:8080", Duration::from_secs(5))?);
//! let worker = Worker::new(bus, client, preflight, catalog, WorkerConfig::default(), metrics);
//! let task = tokio::spawn(worker.run(shutdown));
//! // ... later:
//! stop.send(true)?;
//! task.await??;
//! # Ok(()) }
//! ```
//!
//! # Modules
//!
//! * [`routing`] — routing compilation (pure, table-tested).
//! * [`catalog`] — the price catalog and capability profiles.
//! * [`estimate`] — the exact, cache-aware cost estimate (pure).
//! * [`preflight`] — the budget check ([`Preflight`], [`HttpPreflight`]).
//! * [`metrics`] — every `tally_worker_*` metric.
//! * `service` — the pull loop and one request's life ([`Worker`]).
//!
//! # Decisions
//!
//! * **Deterministic event ids.** `completed-<generation_id>`,
//!   `failed-<request_id>` and `result-<request_id>`: a request redelivered
//!   after its events were stored but before its ack re-publishes the same
//!   ids, which JetStream's duplicate window drops (and consumers are
//!   idempotent on the business ids beyond it).
//! * **Retry by nak, not by sleep.** A retryable OpenRouter error (429,
//!   5xx, timeouts, transport, malformed replies) or an unanswered preflight
//!   puts the message back with `Retry-After` or a doubling backoff
//!   (`base_backoff` … `max_backoff`); after `max_attempts` deliveries the
//!   request fails with a specific, `retryable: true` reason. Nothing waits
//!   in memory.
//! * **OpenRouter's errors each get their own failed reason**
//!   ([`failure_reason`]): 402 → `upstream_payment_required` at once (not
//!   retried: it needs credits); 502 → `upstream_provider_error`, 524 →
//!   `upstream_timeout`, 529 → `upstream_overloaded`, 429 →
//!   `upstream_rate_limited`, other 5xx → `upstream_unavailable`, each
//!   retried (with `Retry-After` when sent) and failed `retryable: true`
//!   after `max_attempts`. None of them produced a generation id, so there
//!   is nothing to book. A failure *inside* a stream (`response.failed`)
//!   comes after the id: the generation is recorded as a completed event
//!   with status `errored` and a null actual cost, and is never re-run.
//! * **A generation with an id always yields a completed event**, whatever
//!   its status: cancelled and errored generations may have cost money, and
//!   the reconciler needs the id to find out. An aborted stream's event
//!   carries zero token counts, a null actual cost and an estimate from the
//!   approximate size of the input and of the output received.
//! * **No estimate rather than a wrong one**: a dynamic or unknown price
//!   gives a null estimate (see [`estimate`]).
//! * **The catalog gates only what it knows.** Before any catalog is loaded
//!   (first start while OpenRouter is down, no persisted file), models are
//!   not refused locally; OpenRouter's 400 turns into `unknown_model`.
//! * **Known limitation: a crash between the OpenRouter call and the
//!   publish** re-runs the generation on redelivery. Both generations are
//!   real spend with distinct ids, so the books stay true; avoiding the
//!   second run would need a durable claim per request id.

pub mod catalog;
pub mod estimate;
pub mod metrics;
pub mod preflight;
pub mod routing;
mod service;

use std::time::Duration;

pub use catalog::{Capabilities, Catalog, CatalogConfig, CatalogError};
pub use metrics::Metrics;
pub use preflight::{AllowAll, HttpPreflight, Preflight, PreflightDecision, PreflightError};
pub use routing::{ByokProviders, Target};
pub use service::{
    completed_event_id, failed_event_id, failure_reason, result_event_id, Worker,
    DEAD_LETTER_SERVICE, SOURCE,
};

/// Worker settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Subject prefix (must equal the bus prefix), default `tally`.
    pub prefix: String,
    /// Generations in flight at once (≥ 1), default 16.
    pub concurrency: usize,
    /// Most messages pulled at once (≥ 1), default 32.
    pub batch_size: usize,
    /// Deliveries after which a retryable error fails the request (≥ 1),
    /// default 8.
    pub max_attempts: i64,
    /// First retry delay, default 1 s.
    pub base_backoff: Duration,
    /// Longest retry delay, default 60 s.
    pub max_backoff: Duration,
    /// BYOK providers per org/agent.
    pub byok: ByokProviders,
    /// Where requests go (OpenRouter: routing extensions apply).
    pub target: Target,
    /// How often a request still being generated is reported in progress
    /// to JetStream (must be well below the consumer's ack wait), default 15 s.
    pub heartbeat: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            prefix: "tally".to_owned(),
            concurrency: 16,
            batch_size: 32,
            max_attempts: 8,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            byok: ByokProviders::default(),
            target: Target::OpenRouter,
            heartbeat: service::HEARTBEAT,
        }
    }
}

impl WorkerConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), WorkerError> {
        let bad = |m: &str| Err(WorkerError::Config(m.to_owned()));
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        if self.max_attempts < 1 {
            return bad("max_attempts must be at least 1");
        }
        if self.base_backoff.is_zero() || self.max_backoff < self.base_backoff {
            return bad("backoff must be positive and max_backoff ≥ base_backoff");
        }
        Ok(())
    }
}

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Invalid configuration.
    #[error("invalid worker configuration: {0}")]
    Config(String),
    /// The bus failed at start (consumer missing: run `tally migrate`).
    #[error(transparent)]
    Bus(#[from] tally_bus::BusError),
}

impl WorkerError {
    /// Stable code: `worker_config` or the bus error's code.
    pub fn code(&self) -> &'static str {
        match self {
            WorkerError::Config(_) => "worker_config",
            WorkerError::Bus(e) => e.code(),
        }
    }
}
