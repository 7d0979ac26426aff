//! Every metric of the projector, defined in one place.
//!
//! Names follow the conventions in `tally-telemetry`: `tally_projector_`
//! prefix, base units, `_total` counters, `_usd` money; labels are bounded
//! (event type, outcome, reason code, basis, entry kind, consumer name, and
//! the model through a [`BoundedLabel`] of [`MAX_MODELS`] values).

use prometheus::CounterVec;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use tally_store::BatchOutcome;
use tally_telemetry::BoundedLabel;

/// Most distinct `model` label values one projector reports; later models
/// are summed under `other`.
pub const MAX_MODELS: usize = 100;

/// The projector's metrics.
pub struct Metrics {
    /// `tally_projector_events_total{type, outcome}`: messages handled.
    pub events: IntCounterVec,
    /// `tally_projector_entries_posted_total{kind}`.
    pub entries: IntCounterVec,
    /// `tally_projector_debited_usd_total{basis, model}`: net amount posted.
    pub debited: CounterVec,
    /// `tally_projector_batch_size`: messages per fetched batch.
    pub batch_size: Histogram,
    /// `tally_projector_commit_seconds`: time to apply and commit a batch.
    pub commit_seconds: Histogram,
    /// `tally_projector_dead_letters_total{reason}`.
    pub dead_letters: IntCounterVec,
    /// `tally_projector_retries_total{code}`: transient store failures.
    pub retries: IntCounterVec,
    /// `tally_projector_unpriced_generations_total`.
    pub unpriced: IntCounter,
    /// `tally_projector_unresolved_generations_total`.
    pub unresolved: IntCounter,
    /// `tally_projector_alerts_total`: threshold alerts raised.
    pub alerts: IntCounter,
    /// `tally_projector_consumer_pending_messages{consumer}`.
    pub pending: IntGaugeVec,
    /// `tally_projector_outbox_published_total`.
    pub outbox_published: IntCounter,
    /// `tally_projector_outbox_backlog_messages`.
    pub outbox_backlog: IntGauge,
    /// `tally_projector_credited_usd_total{basis, model}`: amount given back
    /// by negative adjustments (actual below the estimate).
    pub credited: CounterVec,
    /// `tally_projector_budgets{utilisation}`: active budgets by how much of
    /// their current period's limit is spent (bands of
    /// [`tally_store::stats::UTILISATION_BANDS`]).
    pub budgets: IntGaugeVec,
    /// `tally_projector_budget_utilisation_max_ratio`: the highest
    /// spent/limit of an active budget's current period.
    pub budget_max_ratio: prometheus::Gauge,
    models: BoundedLabel,
    /// `tally_projector_holds_settled_total`: reservations settled by
    /// completed events.
    pub holds_settled: IntCounter,
    /// `tally_projector_hold_to_actual_ratio`: worst case held ÷ amount
    /// debited, per settled hold with both positive (how much headroom the
    /// worst case takes).
    pub hold_to_actual: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            events: IntCounterVec::new(
                Opts::new(
                    "tally_projector_events_total",
                    "Messages handled by type and outcome",
                ),
                &["type", "outcome"],
            )?,
            entries: IntCounterVec::new(
                Opts::new(
                    "tally_projector_entries_posted_total",
                    "Ledger entries posted",
                ),
                &["kind"],
            )?,
            debited: CounterVec::new(
                Opts::new(
                    "tally_projector_debited_usd_total",
                    "Net amount posted, by basis of the generation and model",
                ),
                &["basis", "model"],
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new("tally_projector_batch_size", "Messages per fetched batch")
                    .buckets(vec![
                        1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0,
                    ]),
            )?,
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "tally_projector_commit_seconds",
                    "Time to apply and commit one batch",
                )
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 14)?),
            )?,
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "tally_projector_dead_letters_total",
                    "Messages dead-lettered, by reason",
                ),
                &["reason"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "tally_projector_retries_total",
                    "Batches retried after a transient failure",
                ),
                &["code"],
            )?,
            unpriced: IntCounter::new(
                "tally_projector_unpriced_generations_total",
                "Generations booked at zero: no estimate and no actual cost",
            )?,
            unresolved: IntCounter::new(
                "tally_projector_unresolved_generations_total",
                "Generations whose actual cost the reconciler gave up on",
            )?,
            alerts: IntCounter::new(
                "tally_projector_alerts_total",
                "Budget threshold alerts raised",
            )?,
            pending: IntGaugeVec::new(
                Opts::new(
                    "tally_projector_consumer_pending_messages",
                    "Messages waiting for the projector's consumers",
                ),
                &["consumer"],
            )?,
            outbox_published: IntCounter::new(
                "tally_projector_outbox_published_total",
                "Derived events published from the outbox",
            )?,
            outbox_backlog: IntGauge::new(
                "tally_projector_outbox_backlog_messages",
                "Derived events committed but not yet published",
            )?,
            credited: CounterVec::new(
                Opts::new(
                    "tally_projector_credited_usd_total",
                    "Amount given back by negative adjustments, by basis and model",
                ),
                &["basis", "model"],
            )?,
            budgets: IntGaugeVec::new(
                Opts::new(
                    "tally_projector_budgets",
                    "Active budgets by utilisation of their current period",
                ),
                &["utilisation"],
            )?,
            budget_max_ratio: prometheus::Gauge::new(
                "tally_projector_budget_utilisation_max_ratio",
                "Highest spent/limit of an active budget's current period",
            )?,
            models: BoundedLabel::new(MAX_MODELS),
            holds_settled: IntCounter::new(
                "tally_projector_holds_settled_total",
                "Reservations settled by the completed event of their request",
            )?,
            hold_to_actual: Histogram::with_opts(
                HistogramOpts::new(
                    "tally_projector_hold_to_actual_ratio",
                    "Worst case held divided by the amount debited, per settled hold",
                )
                .buckets(vec![
                    1.0, 1.5, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0, 10000.0, 100000.0,
                ]),
            )?,
        };
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.entries.clone()))?;
        registry.register(Box::new(m.debited.clone()))?;
        registry.register(Box::new(m.batch_size.clone()))?;
        registry.register(Box::new(m.commit_seconds.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.unpriced.clone()))?;
        registry.register(Box::new(m.unresolved.clone()))?;
        registry.register(Box::new(m.alerts.clone()))?;
        registry.register(Box::new(m.pending.clone()))?;
        registry.register(Box::new(m.outbox_published.clone()))?;
        registry.register(Box::new(m.outbox_backlog.clone()))?;
        registry.register(Box::new(m.credited.clone()))?;
        registry.register(Box::new(m.budgets.clone()))?;
        registry.register(Box::new(m.budget_max_ratio.clone()))?;
        registry.register(Box::new(m.holds_settled.clone()))?;
        registry.register(Box::new(m.hold_to_actual.clone()))?;
        Ok(m)
    }

    /// Records the budgets' utilisation (ratio converted only here).
    pub fn record_utilisation(&self, u: &tally_store::stats::BudgetUtilisation) {
        for (band, n) in tally_store::stats::UTILISATION_BANDS.iter().zip(u.bands) {
            self.budgets.with_label_values(&[band]).set(n);
        }
        self.budget_max_ratio.set(u.max_ratio);
    }

    /// Records what a committed batch did.
    pub fn record_outcome(&self, o: &BatchOutcome) {
        for e in &o.entries {
            self.entries.with_label_values(&[e.kind.as_str()]).inc();
        }
        for (basis, model, amount) in &o.debited_by_basis {
            let model = self.models.value(model);
            // Negation happens in Usd; only the finished figure becomes a float.
            if amount.is_sign_negative() {
                let value = (-*amount).to_f64_lossy();
                self.credited
                    .with_label_values(&[basis.as_str(), model])
                    .inc_by(value);
            } else {
                let value = amount.to_f64_lossy();
                self.debited
                    .with_label_values(&[basis.as_str(), model])
                    .inc_by(value);
            }
        }
        self.unpriced.inc_by(o.newly_unpriced);
        self.unresolved.inc_by(o.newly_unresolved);
        self.alerts.inc_by(o.alerts as u64);
        self.holds_settled.inc_by(o.settled.len() as u64);
        for s in &o.settled {
            // The ratio is taken exactly; only the figure becomes a float.
            let ratio = s
                .held_usd
                .filter(|h| h.is_positive())
                .zip(Some(s.debited_usd).filter(|d| d.is_positive()))
                .and_then(|(h, d)| h.ratio_lossy(d));
            if let Some(r) = ratio {
                self.hold_to_actual.observe(r);
            }
        }
    }
}
