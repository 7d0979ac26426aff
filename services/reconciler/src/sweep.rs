//! The sweep: unresolved is not final.
//!
//! OpenRouter keeps a generation's statistics for days, far longer than the
//! live hunt lasts. The sweep asks again about every booked generation that
//! still has no actual cost — unresolved, or still on its estimate (or
//! unpriced) — and completed less than `TALLY_SWEEP_HORIZON` (7 d) ago, and
//! publishes `tally.cost.reconciled.v1` for each one whose cost is now
//! there; the projector then trues the ledger up with an adjustment entry
//! like for any late actual (money rule 3).
//!
//! It runs periodically inside the reconciler (`TALLY_SWEEP_INTERVAL`, 1 h,
//! the first pass one interval after start) and on demand with `tally
//! reconcile sweep [--since …]`, which prints its progress.
//!
//! # Invariants
//!
//! * **Never twice at once.** A generation is claimed (a lease in
//!   `reconcile_sweeps`) before it is looked up; sweepers on several
//!   instances share a pass without asking about the same generation twice.
//! * **Never in the way of the live hunt.** Only generations the live
//!   reconciler is done with are swept: unresolved ones, and others unchanged
//!   for at least the deadline plus twice the minimum window.
//! * **Bounded in rate.** Every lookup takes a slot from the sweep's own
//!   adaptive limiter ([`SweepConfig::rate_per_sec`], halved on 429s), in
//!   addition to, not out of, the live hunt's.
//! * **Same event, same id.** A found cost is published as
//!   `reconciled-<generation_id>` exactly like the live hunt would, so a
//!   sweep racing the hunt, or two sweeps, produce one event.
//!
//! # Decisions
//!
//! * **Periodic passes skip what was swept in the last half interval**, so
//!   instances whose passes start minutes apart do not ask twice per
//!   interval; an on-demand sweep asks about everything not swept since it
//!   started.
//! * **Nothing is published for a generation that is still missing**: it
//!   stays unresolved (or provisional) and the next pass asks again, until
//!   it passes the horizon.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use std::sync::Arc;
use tally_bus::Bus;
use tally_events::CloudEvent;
use tally_openrouter::{OpenRouterClient, OpenRouterError};
use tally_store::reconcile::{SweepCandidate, SweepFilter};
use tally_store::Store;
use tokio::sync::watch;

use crate::limiter::{AdaptiveLimiter, Feedback};
use crate::service::{cost_reconciled, reconciled_event_id, SOURCE};
use crate::{Metrics, ReconcilerConfig, ReconcilerError};

/// Default of [`SweepConfig::interval`] (`TALLY_SWEEP_INTERVAL`).
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// Default of [`SweepConfig::horizon`] (`TALLY_SWEEP_HORIZON`).
pub const DEFAULT_SWEEP_HORIZON: Duration = Duration::from_secs(7 * 86_400);

/// Longest wait for a slot of the sweep's limiter before asking again.
const LIMITER_MAX_WAIT: Duration = Duration::from_secs(5);

/// How the sweep behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepConfig {
    /// Time between two periodic passes (default 1 h).
    pub interval: Duration,
    /// Only generations completed less than this long ago (default 7 d).
    pub horizon: Duration,
    /// Lookups started per second at most (default 10).
    pub rate_per_sec: u32,
    /// Lookups in flight at most (default 8).
    pub concurrency: usize,
    /// Generations claimed at a time (default 100).
    pub batch_size: usize,
    /// How long a claim lasts if the sweeper dies (default 5 min).
    pub lease: Duration,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            interval: DEFAULT_SWEEP_INTERVAL,
            horizon: DEFAULT_SWEEP_HORIZON,
            rate_per_sec: 10,
            concurrency: 8,
            batch_size: 100,
            lease: Duration::from_secs(300),
        }
    }
}

impl SweepConfig {
    /// Checks the settings; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), ReconcilerError> {
        let bad = |m: &str| Err(ReconcilerError::Config(m.to_owned()));
        if self.interval.is_zero() {
            return bad("sweep interval must be greater than zero");
        }
        if self.horizon.is_zero() {
            return bad("sweep horizon must be greater than zero");
        }
        if self.rate_per_sec == 0 {
            return bad("sweep rate_per_sec must be at least 1");
        }
        if self.concurrency == 0 || self.batch_size == 0 {
            return bad("sweep concurrency and batch_size must be at least 1");
        }
        if self.lease < Duration::from_secs(1) {
            return bad("sweep lease must be at least 1 s");
        }
        Ok(())
    }
}

/// Counts of one sweep pass, as it goes and when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Generations without an actual cost when the pass started.
    pub candidates: u64,
    /// Generations asked about.
    pub looked_up: u64,
    /// Of those, costs found and published.
    pub reconciled: u64,
    /// Of those, still without a cost (404, BYOK without the upstream bill).
    pub still_missing: u64,
    /// Of those, lookups that failed otherwise (429, 5xx, key problems,
    /// publish failures); asked again next pass.
    pub errors: u64,
}

/// One sweeper. Cheap to build; [`pass`](Self::pass) runs one pass,
/// [`run_periodic`](Self::run_periodic) one every interval.
#[derive(Debug)]
pub struct Sweeper {
    bus: Bus,
    store: Store,
    client: OpenRouterClient,
    cfg: ReconcilerConfig,
    metrics: Arc<Metrics>,
    limiter: AdaptiveLimiter,
    providers: Option<tally_provider::OrgProviders>,
}

/// What happened to one claimed generation.
enum Outcome {
    Reconciled,
    Missing(&'static str),
    Error(&'static str),
}

impl Sweeper {
    /// A sweeper over `store`, asking `client` and publishing on `bus`,
    /// with the deadline, window and sweep settings of `cfg`.
    pub fn new(
        bus: Bus,
        store: Store,
        client: OpenRouterClient,
        cfg: ReconcilerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Sweeper {
            limiter: AdaptiveLimiter::new(cfg.sweep.rate_per_sec),
            bus,
            store,
            client,
            cfg,
            metrics,
            providers: None,
        }
    }

    /// Asks with the key of the organisation that made each generation
    /// (like the live hunt), never with the client's own.
    pub fn with_org_providers(mut self, providers: tally_provider::OrgProviders) -> Self {
        self.providers = Some(providers);
        self
    }

    /// The selection of a pass started at `now` over generations completed
    /// since `since` (never before the horizon), skipping those swept after
    /// `not_swept_since`.
    fn filter(
        &self,
        now: DateTime<Utc>,
        since: Option<DateTime<Utc>>,
        not_swept_since: DateTime<Utc>,
    ) -> SweepFilter {
        let d = |x: Duration| chrono::Duration::from_std(x).unwrap_or(chrono::Duration::MAX);
        let horizon = now - d(self.cfg.sweep.horizon);
        let quiet = self
            .cfg
            .deadline
            .saturating_add(self.cfg.min_window.saturating_mul(2));
        SweepFilter {
            completed_since: since.map_or(horizon, |s| s.max(horizon)),
            quiet_before: now - d(quiet),
            not_swept_since,
        }
    }

    /// Runs one pass over generations completed since `since` (default and
    /// earliest: the horizon), calling `progress` after every claimed batch,
    /// until nothing is left to claim or `shutdown` turns true.
    pub async fn pass(
        &self,
        since: Option<DateTime<Utc>>,
        progress: &(dyn Fn(&SweepReport) + Sync),
        shutdown: watch::Receiver<bool>,
    ) -> Result<SweepReport, ReconcilerError> {
        let now = Utc::now();
        self.pass_with(self.filter(now, since, now), progress, shutdown)
            .await
    }

    async fn pass_with(
        &self,
        filter: SweepFilter,
        progress: &(dyn Fn(&SweepReport) + Sync),
        shutdown: watch::Receiver<bool>,
    ) -> Result<SweepReport, ReconcilerError> {
        self.cfg.validate()?;
        let candidates = self.store.count_sweep_candidates(&filter).await?;
        self.metrics.sweep_candidates.set(candidates);
        let mut report = SweepReport {
            candidates: u64::try_from(candidates).unwrap_or(0),
            ..SweepReport::default()
        };
        progress(&report);
        let batch_size = i64::try_from(self.cfg.sweep.batch_size).unwrap_or(i64::MAX);
        while !*shutdown.borrow() {
            let batch = self
                .store
                .claim_sweep(&filter, batch_size, self.cfg.sweep.lease)
                .await?;
            if batch.is_empty() {
                break;
            }
            let outcomes: Vec<Outcome> = futures::stream::iter(batch)
                .map(|c| self.sweep_one(c))
                .buffer_unordered(self.cfg.sweep.concurrency)
                .collect()
                .await;
            for o in outcomes {
                report.looked_up += 1;
                match o {
                    Outcome::Reconciled => report.reconciled += 1,
                    Outcome::Missing(_) => report.still_missing += 1,
                    Outcome::Error(_) => report.errors += 1,
                }
            }
            progress(&report);
        }
        self.metrics.sweep_passes.inc();
        Ok(report)
    }

    /// Asks about one claimed generation, publishes its cost if found, and
    /// ends the claim.
    async fn sweep_one(&self, c: SweepCandidate) -> Outcome {
        loop {
            match self.limiter.reserve(LIMITER_MAX_WAIT) {
                Ok(wait) => {
                    tokio::time::sleep(wait).await;
                    break;
                }
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
        let client = match &self.providers {
            None => self.client.clone(),
            Some(p) => match p.get(&c.org_id).await {
                Ok(org) => match &org.client {
                    Some(client) => client.clone(),
                    None => {
                        return self
                            .finish(&c, Outcome::Missing(crate::REASON_PROVIDER_NOT_CONNECTED))
                            .await
                    }
                },
                Err(e) => return self.finish(&c, Outcome::Error(e.code())).await,
            },
        };
        let answer = client.generation(&c.generation_id).await;
        let feedback = match &answer {
            Err(OpenRouterError::RateLimited { .. }) => Feedback::RateLimited,
            _ => Feedback::Other,
        };
        self.limiter.record(feedback);
        let outcome = match answer {
            Ok(stats) if !stats.missing_upstream_cost() => {
                self.metrics.sweep_lookups.with_label_values(&["ok"]).inc();
                let now = Utc::now();
                let attempts = u32::try_from(c.sweeps)
                    .unwrap_or(u32::MAX)
                    .saturating_add(1);
                let data = match cost_reconciled(&c.generation_id, &c.org_id, &stats, attempts, now)
                {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(generation_id = %c.generation_id, code = e.code(), "actual cost cannot be exact; next pass asks again: {e}");
                        return self.finish(&c, Outcome::Error(e.code())).await;
                    }
                };
                let actual = data.actual_cost_usd;
                let id = reconciled_event_id(&c.generation_id);
                let event = CloudEvent::new_on_bus(&self.cfg.prefix, &id, SOURCE, now, data);
                match self
                    .bus
                    .publish(&event.subject, &id, event.to_json().into())
                    .await
                {
                    Ok(()) => {
                        self.metrics.sweep_reconciled.inc();
                        self.metrics.observe_drift(actual, c.estimated_cost_usd);
                        tracing::info!(
                            generation_id = %c.generation_id,
                            org_id = %c.org_id,
                            state = %c.state,
                            actual_cost_usd = %actual,
                            "sweep found the actual cost"
                        );
                        Outcome::Reconciled
                    }
                    Err(e) => {
                        self.metrics.count_bus_error(e.code());
                        tracing::warn!(error = %e, generation_id = %c.generation_id, "publishing a swept cost failed; next pass asks again");
                        Outcome::Error(e.code())
                    }
                }
            }
            Ok(_) => {
                self.metrics
                    .sweep_lookups
                    .with_label_values(&[crate::REASON_MISSING_UPSTREAM_COST])
                    .inc();
                Outcome::Missing(crate::REASON_MISSING_UPSTREAM_COST)
            }
            Err(e) => {
                self.metrics
                    .sweep_lookups
                    .with_label_values(&[e.code()])
                    .inc();
                if matches!(e, OpenRouterError::NotYet) {
                    Outcome::Missing(e.code())
                } else {
                    tracing::debug!(error = %e, generation_id = %c.generation_id, "sweep lookup failed");
                    Outcome::Error(e.code())
                }
            }
        };
        self.finish(&c, outcome).await
    }

    /// Ends the claim on `c` with `outcome`.
    async fn finish(&self, c: &SweepCandidate, outcome: Outcome) -> Outcome {
        let label = match &outcome {
            Outcome::Reconciled => "reconciled",
            Outcome::Missing(code) | Outcome::Error(code) => code,
        };
        if let Err(e) = self.store.finish_sweep(&c.generation_id, label).await {
            // The lease expires on its own; the next pass asks again.
            self.metrics
                .store_errors
                .with_label_values(&[e.code()])
                .inc();
            tracing::warn!(error = %e, generation_id = %c.generation_id, "ending a sweep claim failed");
        }
        outcome
    }

    /// Runs a pass every interval (the first one interval after start) until
    /// `shutdown` turns true; failures are logged and retried next interval.
    pub async fn run_periodic(self, mut shutdown: watch::Receiver<bool>) {
        let interval = self.cfg.sweep.interval;
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let started = Instant::now();
            let now = Utc::now();
            let half = chrono::Duration::from_std(interval / 2).unwrap_or(chrono::Duration::MAX);
            let filter = self.filter(now, None, now - half);
            match self.pass_with(filter, &|_| {}, shutdown.clone()).await {
                Ok(r) => tracing::info!(
                    candidates = r.candidates,
                    looked_up = r.looked_up,
                    reconciled = r.reconciled,
                    still_missing = r.still_missing,
                    errors = r.errors,
                    took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "sweep pass finished"
                ),
                Err(e) => {
                    if let ReconcilerError::Store(se) = &e {
                        self.metrics
                            .store_errors
                            .with_label_values(&[se.code()])
                            .inc();
                    }
                    tracing::warn!(error = %e, code = e.code(), "sweep pass failed; next interval tries again");
                }
            }
            let d = |x: Duration| chrono::Duration::from_std(x).unwrap_or(chrono::Duration::MAX);
            let before = now - d(self.cfg.sweep.horizon);
            if let Err(e) = self.store.prune_first_lookups(before).await {
                tracing::debug!(error = %e, "pruning the reconciler's memory failed");
            }
        }
    }
}
