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
//! 4. **takes the budget hold** ([`reserve`]): the request's worst case
//!    ([`worst_case`]) against every matching budget, atomically in
//!    Postgres; refused → failed `budget_exhausted` / `unpriced_model`
//!    naming the budget, and OpenRouter is not called. A redelivered
//!    request whose generation already exists is published (null actual)
//!    instead of running again;
//! 5. **runs the generation** with `POST /responses` (streaming when the
//!    request says so), forwarding `session_id` and `user` and the resolved
//!    `max_output_tokens`; the generation id is recorded the moment the
//!    response headers arrive, and the hold is extended while it runs;
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
//! # async fn f(bus: tally_bus::Bus, client: tally_openrouter::OpenRouterClient,
//! #     store: tally_store::Store) -> Result<(), Box<dyn std::error::Error>> {
//! use std::{sync::Arc, time::Duration};
//! use tally_worker::{Catalog, CatalogConfig, Metrics, Reservations, Worker, WorkerConfig};
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
//! let reservations = Some(Reservations::new(store));
//! let worker = Worker::new(bus, client, reservations, catalog, WorkerConfig::default(), metrics);
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
//! * [`worst_case`] — the worst-case cost held before a generation (pure).
//! * [`reserve`] — budget holds and the sweeper ([`Reservations`]).
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
//!   5xx, timeouts, transport, malformed replies) or a hold the database
//!   could not take puts the message back with `Retry-After` or a doubling backoff
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
//! * **A generation is never run twice.** The reservation keyed by
//!   `request_id` records the generation id as soon as OpenRouter's
//!   response headers arrive; a redelivery (crash, lost ack) that finds it
//!   publishes the completed event with a null actual cost and the held
//!   worst case as estimate, and the reconciler finds the actual. The one
//!   window left is a crash after the request was sent and before its
//!   headers came back: OpenRouter may have started a generation tally
//!   never learnt the id of, and the redelivery runs the request again.

pub mod catalog;
pub mod estimate;
pub mod metrics;
pub mod reserve;
pub mod routing;
mod service;
pub mod worst_case;

use std::time::Duration;

pub use catalog::{Capabilities, Catalog, CatalogConfig, CatalogError};
pub use metrics::Metrics;
pub use reserve::Reservations;
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
    /// How long a budget hold stands without a heartbeat
    /// (`TALLY_RESERVATION_TTL`), default 10 min; a running generation
    /// extends it every third of this.
    pub reservation_ttl: Duration,
    /// How often the sweeper releases expired holds, default 15 s.
    pub sweep_interval: Duration,
    /// Output cap when neither the request nor the model sets one
    /// (`TALLY_DEFAULT_MAX_OUTPUT_TOKENS`), default 4096.
    pub default_max_output_tokens: u32,
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
            reservation_ttl: Duration::from_secs(600),
            sweep_interval: Duration::from_secs(15),
            default_max_output_tokens: worst_case::DEFAULT_MAX_OUTPUT_TOKENS,
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
        if self.reservation_ttl < Duration::from_millis(300) {
            return bad("reservation_ttl must be at least 300 ms");
        }
        if self.sweep_interval.is_zero() {
            return bad("sweep_interval must be positive");
        }
        if self.default_max_output_tokens == 0 {
            return bad("default_max_output_tokens must be at least 1");
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
