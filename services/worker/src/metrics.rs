//! Every metric of the worker, defined in one place (`tally_worker_*`).
//!
//! Labels are bounded: outcomes, reasons and error codes, never ids.
//! Money becomes `f64` only here, for dashboards (tally-telemetry
//! conventions).

use prometheus::{
    Counter, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use tally_money::Cost;

/// The worker's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `tally_worker_requests_total{outcome}`: requests settled, by outcome
    /// (`completed`, `cancelled`, `errored`, `failed`, `dead_letter`).
    pub requests: IntCounterVec,
    /// `tally_worker_failures_total{reason}`: failed events by reason.
    pub failures: IntCounterVec,
    /// `tally_worker_retries_total{code}`: deliveries put back for a retry,
    /// by error code.
    pub retries: IntCounterVec,
    /// `tally_worker_openrouter_seconds`: duration of generation calls.
    pub openrouter_seconds: Histogram,
    /// `tally_worker_missing_actual_cost_total`: completed events published
    /// without an actual cost (aborted streams, cost null).
    pub missing_actual_cost: prometheus::IntCounter,
    /// `tally_worker_actual_cost_usd_total`: actual costs published.
    pub actual_cost_usd: Counter,
    /// `tally_worker_estimated_cost_usd_total`: estimates published.
    pub estimated_cost_usd: Counter,
    /// `tally_worker_bus_errors_total{code}`: failed fetches, publishes and acks.
    pub bus_errors: IntCounterVec,
    /// `tally_worker_catalog_models`: models in the price catalog.
    pub catalog_models: IntGauge,
    /// `tally_worker_holds_total{outcome}`: budget holds asked for, by
    /// outcome (`held`, `refused`, `generated` — an earlier delivery ran it,
    /// `failed` — an earlier delivery failed it).
    pub holds: IntCounterVec,
    /// `tally_worker_hold_refusals_total{reason}`: requests refused by a
    /// hard budget (`budget_exhausted`, `unpriced_model`).
    pub hold_refusals: IntCounterVec,
    /// `tally_worker_holds_expired_total`: holds released by the sweeper
    /// because their worker stopped extending them.
    pub holds_expired: IntCounter,
    /// `tally_worker_reservations_held`: reservations holding budget now.
    pub reservations_held: IntGauge,
    /// `tally_worker_reserved_usd`: the worst cases held now (each request
    /// once), USD.
    pub reserved_usd: Gauge,
    /// `tally_worker_generations_not_rerun_total`: redelivered requests whose
    /// generation already existed, published without calling OpenRouter.
    pub not_rerun: IntCounter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics::build()?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.openrouter_seconds.clone()))?;
        registry.register(Box::new(m.missing_actual_cost.clone()))?;
        registry.register(Box::new(m.actual_cost_usd.clone()))?;
        registry.register(Box::new(m.estimated_cost_usd.clone()))?;
        registry.register(Box::new(m.bus_errors.clone()))?;
        registry.register(Box::new(m.catalog_models.clone()))?;
        registry.register(Box::new(m.holds.clone()))?;
        registry.register(Box::new(m.hold_refusals.clone()))?;
        registry.register(Box::new(m.holds_expired.clone()))?;
        registry.register(Box::new(m.reservations_held.clone()))?;
        registry.register(Box::new(m.reserved_usd.clone()))?;
        registry.register(Box::new(m.not_rerun.clone()))?;
        Ok(m)
    }

    /// Metrics registered nowhere (tests).
    pub fn unregistered() -> Metrics {
        Metrics::build().expect("metric definitions are valid")
    }

    fn build() -> Result<Metrics, prometheus::Error> {
        Ok(Metrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "tally_worker_requests_total",
                    "Generation requests settled, by outcome",
                ),
                &["outcome"],
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    "tally_worker_failures_total",
                    "Failed generation requests, by reason",
                ),
                &["reason"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "tally_worker_retries_total",
                    "Requests put back for a retry, by error code",
                ),
                &["code"],
            )?,
            openrouter_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "tally_worker_openrouter_seconds",
                    "Duration of generation calls to OpenRouter",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                ]),
            )?,
            missing_actual_cost: prometheus::IntCounter::new(
                "tally_worker_missing_actual_cost_total",
                "Completed events published without an actual cost",
            )?,
            actual_cost_usd: Counter::new(
                "tally_worker_actual_cost_usd_total",
                "Actual costs published, USD",
            )?,
            estimated_cost_usd: Counter::new(
                "tally_worker_estimated_cost_usd_total",
                "Estimated costs published, USD",
            )?,
            bus_errors: IntCounterVec::new(
                Opts::new(
                    "tally_worker_bus_errors_total",
                    "Failed fetches, publishes and acks, by code",
                ),
                &["code"],
            )?,
            catalog_models: IntGauge::new(
                "tally_worker_catalog_models",
                "Models in the price catalog",
            )?,
            holds: IntCounterVec::new(
                Opts::new(
                    "tally_worker_holds_total",
                    "Budget holds asked for, by outcome",
                ),
                &["outcome"],
            )?,
            hold_refusals: IntCounterVec::new(
                Opts::new(
                    "tally_worker_hold_refusals_total",
                    "Requests refused by a hard budget, by reason",
                ),
                &["reason"],
            )?,
            holds_expired: IntCounter::new(
                "tally_worker_holds_expired_total",
                "Budget holds released because they expired",
            )?,
            reservations_held: IntGauge::new(
                "tally_worker_reservations_held",
                "Reservations holding budget now",
            )?,
            reserved_usd: Gauge::new(
                "tally_worker_reserved_usd",
                "Worst-case cost held by running generations, USD",
            )?,
            not_rerun: IntCounter::new(
                "tally_worker_generations_not_rerun_total",
                "Redelivered requests whose generation already ran, not sent again",
            )?,
        })
    }

    /// Adds `amount` to a USD counter (for dashboards only).
    pub(crate) fn add_usd(counter: &Counter, amount: Option<Cost>) {
        if let Some(v) = amount.map(|c| c.usd().to_f64_lossy()) {
            counter.inc_by(v);
        }
    }
}
