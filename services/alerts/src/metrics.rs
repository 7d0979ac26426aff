//! Every metric of the alert delivery service, defined in one place.
//!
//! Names follow the conventions of `tally-telemetry`: the `tally_alerts_`
//! prefix, base units (`_seconds`), `_total` counters and bounded labels
//! only (outcomes and error codes; never an organisation, webhook or URL).
//! Every series of a labelled counter exists from the start (at zero), so
//! rules and dashboards see it before the first event.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The `outcome` values of `tally_alerts_deliveries_total`.
pub const DELIVERY_OUTCOMES: [&str; 3] = ["delivered", "retried", "failed"];

/// The service's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `tally_alerts_events_total`: events taken from the bus (alerts and
    /// ledger postings) and committed to the delivery queue, whether or not
    /// a webhook wanted them.
    pub events: IntCounter,
    /// `tally_alerts_deliveries_queued_total`: deliveries created (one per
    /// event and matching webhook).
    pub queued: IntCounter,
    /// `tally_alerts_deliveries_total{outcome}`: attempts by outcome:
    /// `delivered` (2xx, final), `retried` (not delivered, will be tried
    /// again), `failed` (given up, final).
    pub deliveries: IntCounterVec,
    /// `tally_alerts_pending_deliveries`: deliveries neither delivered nor
    /// given up (read from Postgres, shared by every instance).
    pub pending: IntGauge,
    /// `tally_alerts_delivery_latency_seconds`: from the event's acceptance
    /// to the receiver's 2xx.
    pub latency: Histogram,
    /// `tally_alerts_dead_letters_total{reason}`: bus messages that could
    /// not be read, sent to `<prefix>.deadletter.alerts`.
    pub dead_letters: IntCounterVec,
    /// `tally_alerts_errors_total{code}`: failed bus and Postgres operations
    /// (the work is retried; nothing is lost).
    pub errors: IntCounterVec,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`. Fails only if a
    /// metric of the same name is already registered there.
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            events: IntCounter::new(
                "tally_alerts_events_total",
                "Events taken from the bus and committed to the webhook delivery queue",
            )?,
            queued: IntCounter::new(
                "tally_alerts_deliveries_queued_total",
                "Webhook deliveries created (one per event and matching webhook)",
            )?,
            deliveries: IntCounterVec::new(
                Opts::new(
                    "tally_alerts_deliveries_total",
                    "Webhook delivery attempts by outcome (delivered, retried, failed)",
                ),
                &["outcome"],
            )?,
            pending: IntGauge::new(
                "tally_alerts_pending_deliveries",
                "Webhook deliveries neither delivered nor given up",
            )?,
            latency: Histogram::with_opts(
                HistogramOpts::new(
                    "tally_alerts_delivery_latency_seconds",
                    "Time from an event's acceptance to the receiver's 2xx answer",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                    21600.0, 86400.0,
                ]),
            )?,
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "tally_alerts_dead_letters_total",
                    "Bus messages the alert delivery could not read, by reason",
                ),
                &["reason"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "tally_alerts_errors_total",
                    "Failed bus and Postgres operations of the alert delivery, by code",
                ),
                &["code"],
            )?,
        };
        for outcome in DELIVERY_OUTCOMES {
            m.deliveries.with_label_values(&[outcome]);
        }
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.queued.clone()))?;
        registry.register(Box::new(m.deliveries.clone()))?;
        registry.register(Box::new(m.pending.clone()))?;
        registry.register(Box::new(m.latency.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        Ok(m)
    }
}
