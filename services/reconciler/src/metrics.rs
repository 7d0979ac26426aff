//! Every metric of the reconciler, defined in one place.
//!
//! Names follow the conventions of `tally-telemetry`: the
//! `tally_reconciler_` prefix, base units (`_seconds`), `_total` counters,
//! and bounded labels only (error codes, reasons, outcomes; never a
//! generation or org id).
//!
//! # Decisions
//!
//! * **The pending gauge comes from JetStream**, not from an in-process
//!   count: pending generations are unacked messages of the durable
//!   consumer, shared by every instance, so the consumer's own count
//!   (`num_pending + num_ack_pending`) is the truth, and one instance's
//!   memory would only see its own share.
//! * **Ratios and durations are `f64` only here.** Prometheus samples are
//!   floats; the drift ratio is computed exactly with `Usd` and only the
//!   result is converted.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tally_money::Cost;

/// The `code` values of `tally_reconciler_auth_failures_total`.
pub const AUTH_FAILURE_CODES: [&str; 3] = ["auth", "payment_required", "invalid_config"];

/// The reconciler's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `tally_reconciler_fetch_attempts_total{outcome}`: lookups at
    /// OpenRouter by outcome (`ok` or the client's error code, e.g.
    /// `not_yet`, `rate_limited`, `malformed_reply`).
    pub fetch_attempts: IntCounterVec,
    /// `tally_reconciler_reconciled_total`: cost.reconciled events published.
    pub reconciled: IntCounter,
    /// `tally_reconciler_completion_to_reconciled_seconds`: from a
    /// generation's `completed_at` to the publication of its actual cost.
    pub completion_to_reconciled: Histogram,
    /// `tally_reconciler_pending_generations`: messages of the `reconciler`
    /// consumer not yet acknowledged (waiting for a lookup, in flight, or not
    /// yet delivered).
    pub pending: IntGauge,
    /// `tally_reconciler_unresolved_total{reason}`: generations given up on.
    pub unresolved: IntCounterVec,
    /// `tally_reconciler_skipped_total`: completed events that already
    /// carried an actual cost (no lookup made).
    pub skipped: IntCounter,
    /// `tally_reconciler_auth_failures_total{code}`: lookups refused because
    /// of the API key or account (`auth`, `payment_required`,
    /// `invalid_config`).
    pub auth_failures: IntCounterVec,
    /// `tally_reconciler_estimate_drift_ratio`: actual cost divided by the
    /// producer's estimate, for generations that had a positive estimate.
    pub estimate_drift: Histogram,
    /// `tally_reconciler_dead_letters_total{reason}`: completed events that
    /// could not be read, sent to the dead-letter subject.
    pub dead_letters: IntCounterVec,
    /// `tally_reconciler_deferred_total{cause}`: deliveries put back without
    /// a lookup (`too_early`, `rate_limit`, `shutdown`).
    pub deferred: IntCounterVec,
    /// `tally_reconciler_bus_errors_total{code}`: failed fetches, publishes,
    /// acks and naks (the message comes back; nothing is lost).
    pub bus_errors: IntCounterVec,
    /// `tally_reconciler_rate_limit_per_second`: the adaptive rate limit
    /// currently applied to lookups.
    pub rate_limit: IntGauge,
    /// `tally_reconciler_store_errors_total{code}`: failed Postgres
    /// operations (first lookups, sweep claims); the work is retried.
    pub store_errors: IntCounterVec,
    /// `tally_reconciler_sweep_lookups_total{outcome}`: lookups made by the
    /// sweep, by outcome (`ok` or the client's error code).
    pub sweep_lookups: IntCounterVec,
    /// `tally_reconciler_sweep_reconciled_total`: actual costs the sweep
    /// found and published.
    pub sweep_reconciled: IntCounter,
    /// `tally_reconciler_sweep_passes_total`: sweep passes finished.
    pub sweep_passes: IntCounter,
    /// `tally_reconciler_sweep_candidates`: generations the last sweep pass
    /// found without an actual cost.
    pub sweep_candidates: IntGauge,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`. Fails only if a
    /// metric of the same name is already registered there.
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            fetch_attempts: IntCounterVec::new(
                Opts::new(
                    "tally_reconciler_fetch_attempts_total",
                    "Lookups of generation statistics at OpenRouter, by outcome",
                ),
                &["outcome"],
            )?,
            reconciled: IntCounter::new(
                "tally_reconciler_reconciled_total",
                "Actual costs found and published",
            )?,
            completion_to_reconciled: Histogram::with_opts(
                HistogramOpts::new(
                    "tally_reconciler_completion_to_reconciled_seconds",
                    "Time from a generation's completion to the publication of its actual cost",
                )
                .buckets(vec![
                    0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0,
                    1800.0, 3600.0,
                ]),
            )?,
            pending: IntGauge::new(
                "tally_reconciler_pending_generations",
                "Completed events of the reconciler consumer not yet acknowledged",
            )?,
            unresolved: IntCounterVec::new(
                Opts::new(
                    "tally_reconciler_unresolved_total",
                    "Generations whose actual cost was given up on, by reason",
                ),
                &["reason"],
            )?,
            skipped: IntCounter::new(
                "tally_reconciler_skipped_total",
                "Completed events that already carried an actual cost",
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "tally_reconciler_auth_failures_total",
                    "Lookups refused because of the API key or account, by code",
                ),
                &["code"],
            )?,
            estimate_drift: Histogram::with_opts(
                HistogramOpts::new(
                    "tally_reconciler_estimate_drift_ratio",
                    "Actual cost divided by the producer's estimate",
                )
                .buckets(vec![
                    0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0, 1.01, 1.05, 1.1, 1.25, 1.5, 2.0,
                    4.0, 10.0,
                ]),
            )?,
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "tally_reconciler_dead_letters_total",
                    "Completed events sent to the dead-letter subject, by reason",
                ),
                &["reason"],
            )?,
            deferred: IntCounterVec::new(
                Opts::new(
                    "tally_reconciler_deferred_total",
                    "Deliveries put back without a lookup, by cause",
                ),
                &["cause"],
            )?,
            bus_errors: IntCounterVec::new(
                Opts::new(
                    "tally_reconciler_bus_errors_total",
                    "Failed bus operations (the message is retried), by code",
                ),
                &["code"],
            )?,
            rate_limit: IntGauge::new(
                "tally_reconciler_rate_limit_per_second",
                "Adaptive rate limit currently applied to lookups",
            )?,
            store_errors: IntCounterVec::new(
                Opts::new(
                    "tally_reconciler_store_errors_total",
                    "Failed Postgres operations of the reconciler (retried), by code",
                ),
                &["code"],
            )?,
            sweep_lookups: IntCounterVec::new(
                Opts::new(
                    "tally_reconciler_sweep_lookups_total",
                    "Lookups made by the sweep, by outcome",
                ),
                &["outcome"],
            )?,
            sweep_reconciled: IntCounter::new(
                "tally_reconciler_sweep_reconciled_total",
                "Actual costs found and published by the sweep",
            )?,
            sweep_passes: IntCounter::new(
                "tally_reconciler_sweep_passes_total",
                "Sweep passes finished",
            )?,
            sweep_candidates: IntGauge::new(
                "tally_reconciler_sweep_candidates",
                "Generations without an actual cost found by the last sweep pass",
            )?,
        };
        registry.register(Box::new(m.fetch_attempts.clone()))?;
        registry.register(Box::new(m.reconciled.clone()))?;
        registry.register(Box::new(m.completion_to_reconciled.clone()))?;
        registry.register(Box::new(m.pending.clone()))?;
        registry.register(Box::new(m.unresolved.clone()))?;
        registry.register(Box::new(m.skipped.clone()))?;
        registry.register(Box::new(m.auth_failures.clone()))?;
        registry.register(Box::new(m.estimate_drift.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.deferred.clone()))?;
        registry.register(Box::new(m.bus_errors.clone()))?;
        registry.register(Box::new(m.rate_limit.clone()))?;
        // The key-problem codes are a closed set: exported at zero from the
        // start, so the first refusal is an increase an alert rule sees.
        for code in AUTH_FAILURE_CODES {
            m.auth_failures.with_label_values(&[code]);
        }
        registry.register(Box::new(m.store_errors.clone()))?;
        registry.register(Box::new(m.sweep_lookups.clone()))?;
        registry.register(Box::new(m.sweep_reconciled.clone()))?;
        registry.register(Box::new(m.sweep_passes.clone()))?;
        registry.register(Box::new(m.sweep_candidates.clone()))?;
        Ok(m)
    }

    /// Metrics registered nowhere (for tests and tools that do not export
    /// them).
    pub fn unregistered() -> Metrics {
        Metrics::register(&Registry::new())
            .expect("a fresh registry has no metric of the same name")
    }

    /// Counts one failed bus operation under its error code.
    pub fn count_bus_error(&self, code: &str) {
        self.bus_errors.with_label_values(&[code]).inc();
    }

    /// Records `actual / estimate` when the estimate is positive. The ratio
    /// is computed exactly and only then turned into a sample.
    pub fn observe_drift(&self, actual: Cost, estimate: Option<Cost>) {
        let Some(estimate) = estimate.filter(|e| e.is_positive()) else {
            return;
        };
        if let Some(ratio) = actual.usd().ratio_lossy(estimate.usd()) {
            self.estimate_drift.observe(ratio);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn names_follow_the_conventions() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        m.fetch_attempts.with_label_values(&["ok"]).inc();
        m.unresolved.with_label_values(&["deadline_exceeded"]).inc();
        m.auth_failures.with_label_values(&["auth"]).inc();
        m.dead_letters.with_label_values(&["malformed_json"]).inc();
        m.deferred.with_label_values(&["too_early"]).inc();
        m.bus_errors.with_label_values(&["bus_ack"]).inc();
        m.store_errors
            .with_label_values(&["database_unavailable"])
            .inc();
        m.sweep_lookups.with_label_values(&["ok"]).inc();
        for family in registry.gather() {
            let name = family.name();
            assert!(name.starts_with("tally_reconciler_"), "{name}");
            if family.get_field_type() == prometheus::proto::MetricType::COUNTER {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
        // Registering twice in one registry is refused.
        assert!(Metrics::register(&registry).is_err());
    }

    #[test]
    fn drift_is_the_exact_ratio() {
        let m = Metrics::unregistered();
        let d = |s| Cost::from_str(s).unwrap();
        m.observe_drift(d("0.0003"), Some(d("0.0002")));
        m.observe_drift(d("1"), None);
        m.observe_drift(d("1"), Some(Cost::ZERO));
        assert_eq!(m.estimate_drift.get_sample_count(), 1);
        assert_eq!(m.estimate_drift.get_sample_sum(), 1.5);
    }
}
