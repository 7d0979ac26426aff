//! tally-reconciler: finds the actual cost of generations whose
//! `tally.generation.completed.v1` event arrived without one, and publishes
//! it.
//!
//! A generation's cost goes missing mostly when a stream is aborted before
//! its final chunk (an aborted stream never delivers `usage`). The reconciler reads every
//! completed event from the durable `reconciler` consumer and
//!
//! * **acks at once, without asking anything,** events that already carry
//!   `actual_cost_usd`;
//! * otherwise asks `GET /generation?id=…` — first about one second after
//!   `completed_at`, then with a doubling delay capped at `max_delay`,
//!   honouring `Retry-After` — until it has the cost, then publishes
//!   `tally.cost.reconciled.v1` on `<prefix>.cost.reconciled.<org>` (id
//!   `reconciled-<generation_id>`; `actual_cost_usd` = `total_cost`, plus
//!   `upstream_inference_cost` for BYOK, money rule 8, exact to the digit);
//! * or, once it may give up — at least the deadline
//!   (`TALLY_RECONCILE_DEADLINE`, default 15 min) after `completed_at`
//!   **and** at least the minimum window (`TALLY_RECONCILE_MIN_WINDOW`,
//!   default 2 min) after tally's own first lookup, on a real answer (a
//!   transient one earns one more window; see `schedule`) — publishes
//!   `tally.cost.unresolved.v1` on
//!   `<prefix>.cost.unresolved.<org>` (id `unresolved-<generation_id>`) with
//!   the reason taken from the last answer: `deadline_exceeded` (still 404),
//!   `malformed_reply`, `upstream_error` (429/5xx/unexpected status),
//!   `upstream_unreachable` (timeout, connection error) or
//!   `missing_upstream_cost` (BYOK without the provider's bill), plus the
//!   number of lookups and the last HTTP status;
//! * sweeps, every `TALLY_SWEEP_INTERVAL` (with a store), the generations
//!   still unresolved or on their estimate and younger than
//!   `TALLY_SWEEP_HORIZON`, and publishes the costs OpenRouter now has
//!   ([`sweep`]; also `tally reconcile sweep`);
//! * dead-letters events it cannot read to `<prefix>.deadletter.reconciler`
//!   (reason = the decoder's error code) and goes on with the next.
//!
//! ```no_run
//! # async fn f(bus: tally_bus::Bus, client: tally_openrouter::OpenRouterClient)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tally_reconciler::{Metrics, Reconciler, ReconcilerConfig};
//!
//! let registry = tally_telemetry::Registry::new();
//! let metrics = Arc::new(Metrics::register(&registry)?);
//! let (stop, shutdown) = tokio::sync::watch::channel(false);
//! let task = tokio::spawn(
//!     Reconciler::new(bus, client, ReconcilerConfig::default(), metrics).run(shutdown),
//! );
//! // ... later:
//! stop.send(true)?;
//! task.await??;
//! # Ok(()) }
//! ```
//!
//! # Modules
//!
//! * [`metrics`] — every `tally_reconciler_*` metric.
//! * `service` — the pull loop and the handling of one message
//!   ([`Reconciler`]).
//! * `schedule` — when to ask again and what to report when giving up (pure).
//! * `limiter` — the shared, adaptive rate limit toward OpenRouter.
//! * `first_lookup` — where the first lookup of a generation is remembered.
//! * [`sweep`] — asking again later about unresolved and estimate-basis
//!   generations.
//!
//! # Decisions
//!
//! * **The pending set is the set of unacked messages.** A generation waiting
//!   for its cost is simply a completed event the `reconciler` consumer has
//!   not acked: each time it is delivered the reconciler makes at most one
//!   lookup and then either acks it (done) or naks it with the delay until
//!   the next lookup. JetStream keeps the set durable, schedules the
//!   redeliveries, shares the work between instances and hands it over after
//!   a crash (unacked messages come back after the 60 s ack wait) — no state
//!   store, no timers in memory, nothing lost on restart, and memory bounded
//!   by the batch size plus the concurrency, whatever the number pending
//!   (the consumer's `max_ack_pending` of 20 000 bounds the set itself).
//! * **The first lookup is remembered in Postgres, not in the message.**
//!   The give-up rule needs the instant of tally's first lookup, across
//!   restarts and instances. JetStream cannot attach data to a message it
//!   redelivers (a nak carries only a delay), and the message's storage
//!   time comes *before* the first lookup, so after an outage it would end
//!   the window before it started. A row per generation
//!   (`reconcile_first_lookups`, earliest write wins) is shared by every
//!   instance and survives restarts; it is written only close to the
//!   deadline (the last lookup before the window zone and the lookups in
//!   it), so generations found early cost no write, and the calls per
//!   generation of fresh events do not change. Without a store (embedded
//!   uses, tests) the memory of the process stands in.
//! * **Doubling backoff from the generation's age, capped.** Statistics
//!   appear seconds after a normal generation and much later after an
//!   interrupted one: asking at ages 1, 2, 4, 8 … s, then every `max_delay`,
//!   finds the quick ones within a factor of two of their availability with
//!   two or three lookups, and the slow ones with a few dozen per 15 minutes.
//!   Because the delay derives from `completed_at` and the clock, not from
//!   in-memory counters, any instance computes the same schedule. The last
//!   delay is cut so one final lookup happens at the give-up instant, which
//!   makes the unresolved reason reflect the last real answer. Near and past
//!   the deadline the delay grows from the first lookup instead, so a late
//!   event is asked again within seconds.
//! * **Key and account problems never give a generation up.** 401/403
//!   (key) and 402 (credits) say nothing about the generation: its cost
//!   exists and will be readable once an operator fixes the key. Giving up
//!   would flag thousands of generations unresolved in minutes because of
//!   one configuration mistake, and their estimates would stand for good.
//!   Instead the reconciler logs at error level (at most every 30 s), counts
//!   `tally_reconciler_auth_failures_total`, and asks again every 5 minutes,
//!   past the deadline if need be.
//! * **Deterministic event ids** (`reconciled-<generation_id>`,
//!   `unresolved-<generation_id>`, also the `Nats-Msg-Id`). A crash between
//!   publishing and acking, a redelivery after the ack wait, or two instances
//!   racing on one message produce the same id again, so JetStream's
//!   duplicate window keeps one copy and the projector's idempotency keys on
//!   the generation line up (money rule 2).
//! * **Malformed answers are retried like transient errors.** A reply whose
//!   cost cannot be read exactly is never turned into a number (money rule
//!   1); it may be a glitch, so the generation is asked about again and only
//!   at the deadline reported as `malformed_reply` with the last status.
//! * **A BYOK reply without the upstream cost is not a cost.** Rule 8 says
//!   the actual cost is OpenRouter's fee plus the provider's bill; publishing
//!   the fee alone would understate spend, so such a reply is retried and, at
//!   the deadline, reported as `missing_upstream_cost`.
//! * **Each organisation's own key.** With
//!   [`Reconciler::with_org_providers`] (how `tally` runs it) a generation is
//!   looked up with the key of the organisation that made it; an
//!   organisation without a connected provider is asked about again on the
//!   normal schedule and, at the deadline, its generation ends unresolved
//!   with `provider_not_connected`. No environment key is ever used.
//! * **A shared, adaptive rate limit and bounded concurrency** keep the
//!   reconciler polite however many generations are pending; one slow or
//!   never-ready generation only ever occupies one lookup at a time and
//!   otherwise waits on the server, so it never delays the others.

mod first_lookup;
mod limiter;
pub mod metrics;
mod schedule;
mod service;
pub mod sweep;

use std::time::Duration;

pub use metrics::Metrics;
pub use schedule::{
    KEY_PROBLEM_DELAY, REASON_DEADLINE_EXCEEDED, REASON_MALFORMED_REPLY,
    REASON_MISSING_UPSTREAM_COST, REASON_PROVIDER_NOT_CONNECTED, REASON_UPSTREAM_ERROR,
    REASON_UPSTREAM_UNREACHABLE,
};
pub use service::{
    reconciled_event_id, unresolved_event_id, Reconciler, DEAD_LETTER_SERVICE, SOURCE,
};
pub use sweep::{SweepConfig, SweepReport, Sweeper};

/// Default of [`ReconcilerConfig::deadline`] (`TALLY_RECONCILE_DEADLINE`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// Default of [`ReconcilerConfig::min_window`] (`TALLY_RECONCILE_MIN_WINDOW`).
pub const DEFAULT_MIN_WINDOW: Duration = Duration::from_secs(2 * 60);

/// How the reconciler behaves. [`Default`] gives the production settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcilerConfig {
    /// Subject prefix; must equal the bus's (default `tally`).
    pub prefix: String,
    /// How long after a generation's `completed_at` the reconciler keeps
    /// asking before it gives up (default 15 min, `TALLY_RECONCILE_DEADLINE`).
    pub deadline: Duration,
    /// How long after tally's own first lookup of a generation the
    /// reconciler keeps asking at least, whatever its age (default 2 min,
    /// `TALLY_RECONCILE_MIN_WINDOW`): a generation that reaches tally late
    /// is still looked up patiently.
    pub min_window: Duration,
    /// The sweep that asks again about unresolved and estimate-basis
    /// generations (runs only with a store, see [`Reconciler::with_store`]).
    pub sweep: SweepConfig,
    /// Age of a generation at its first lookup, and the shortest delay
    /// between two lookups (default 1 s).
    pub first_delay: Duration,
    /// Longest delay between two lookups (default 60 s); a `Retry-After` may
    /// ask for more.
    pub max_delay: Duration,
    /// Lookups in flight at most (default 64).
    pub concurrency: usize,
    /// Lookups started per second at most, before adaptation to 429s
    /// (default 50).
    pub rate_per_sec: u32,
    /// Messages pulled per fetch at most (default 256).
    pub batch_size: usize,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            prefix: "tally".to_owned(),
            deadline: DEFAULT_DEADLINE,
            min_window: DEFAULT_MIN_WINDOW,
            sweep: SweepConfig::default(),
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            concurrency: 64,
            rate_per_sec: 50,
            batch_size: 256,
        }
    }
}

impl ReconcilerConfig {
    /// Checks the settings; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), ReconcilerError> {
        let bad = |m: &str| Err(ReconcilerError::Config(m.to_owned()));
        if self.prefix.trim().is_empty() {
            return bad("prefix must not be empty");
        }
        if self.deadline.is_zero() {
            return bad("deadline must be greater than zero");
        }
        if self.min_window.is_zero() {
            return bad("min_window must be greater than zero");
        }
        self.sweep.validate()?;
        if self.first_delay.is_zero() {
            return bad("first_delay must be greater than zero");
        }
        if self.max_delay < self.first_delay {
            return bad("max_delay must be at least first_delay");
        }
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1");
        }
        if self.rate_per_sec == 0 {
            return bad("rate_per_sec must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        Ok(())
    }
}

/// Why the reconciler could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcilerError {
    /// A setting is invalid.
    #[error("invalid reconciler configuration: {0}")]
    Config(String),
    /// The bus refused something the reconciler cannot do without (opening
    /// its durable consumer).
    #[error(transparent)]
    Bus(#[from] tally_bus::BusError),
    /// Postgres refused something the sweep cannot do without (listing or
    /// claiming generations).
    #[error(transparent)]
    Store(#[from] tally_store::StoreError),
}

impl ReconcilerError {
    /// Stable machine-readable code: `reconciler_config`, or the bus or
    /// store error's code (`bus_consumer`, `bus_stream`,
    /// `database_unavailable`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            ReconcilerError::Config(_) => "reconciler_config",
            ReconcilerError::Bus(e) => e.code(),
            ReconcilerError::Store(e) => e.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = ReconcilerConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.deadline, Duration::from_secs(900));
        assert_eq!(c.min_window, Duration::from_secs(120));
        assert_eq!(c.sweep.interval, Duration::from_secs(3600));
        assert_eq!(c.sweep.horizon, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn invalid_settings_are_named() {
        type Mutate = fn(&mut ReconcilerConfig);
        let cases: [(Mutate, &str); 9] = [
            (|c| c.deadline = Duration::ZERO, "deadline"),
            (|c| c.min_window = Duration::ZERO, "min_window"),
            (|c| c.sweep.interval = Duration::ZERO, "sweep interval"),
            (|c| c.sweep.horizon = Duration::ZERO, "sweep horizon"),
            (|c| c.first_delay = Duration::ZERO, "first_delay"),
            (|c| c.max_delay = Duration::from_millis(1), "max_delay"),
            (|c| c.concurrency = 0, "concurrency"),
            (|c| c.rate_per_sec = 0, "rate_per_sec"),
            (|c| c.batch_size = 0, "batch_size"),
        ];
        for (mutate, name) in cases {
            let mut c = ReconcilerConfig::default();
            mutate(&mut c);
            let e = c.validate().unwrap_err();
            assert_eq!(e.code(), "reconciler_config");
            assert!(e.to_string().contains(name), "{e}");
        }
    }
}
