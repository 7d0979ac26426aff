//! The service loop: pull completed events, decide per message, look up,
//! publish, settle.
//!
//! One loop pulls batches from the durable `reconciler` consumer and hands
//! every message to its own task; a task ends by acking the message (done:
//! priced, skipped, reconciled, unresolved or dead-lettered) or by naking it
//! with the delay after which it wants to see it again. What a task decides
//! depends only on the message (its event and delivery count), the clock and
//! OpenRouter's answer, so any instance may handle any delivery.
//!
//! Bounds: at most `batch_size + concurrency` messages are held in memory at
//! once, at most `concurrency` lookups are in flight, and lookups start no
//! faster than the shared adaptive rate limit.
//!
//! # Decisions
//!
//! * **Ack only after the derived event is stored.** The reconciled or
//!   unresolved event is published and its JetStream ack awaited before the
//!   completed event is acked; a crash in between redelivers the completed
//!   event, whose re-derived event has the same id and is dropped by
//!   JetStream's duplicate window (and by the projector's idempotency
//!   outside it).
//! * **Nak, don't sleep.** A message that must wait (too early, rate limited
//!   for long, retry later) goes back to the server with a delay instead of
//!   occupying memory and an ack-wait timer here: thousands of generations
//!   can wait at once at no cost to this process.
//! * **Graceful stop.** On shutdown the loop stops pulling, lookups in flight
//!   finish and settle, and messages still waiting for a rate-limit slot or a
//!   concurrency permit are naked at once so another instance (or the next
//!   start) takes them without waiting for the ack wait.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tally_bus::{Bus, BusError, ConsumerName, DeadLetterReason, DeadLetterService, Delivery};
use tally_events::{CloudEvent, CostReconciled, CostUnresolved, GenerationCompleted, Payload};
use tally_openrouter::{GenerationStats, OpenRouterClient};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use tally_store::Store;

use crate::first_lookup::FirstLookups;
use crate::limiter::{AdaptiveLimiter, Feedback};
use crate::schedule::{self, Patience, Verdict};
use crate::sweep::Sweeper;
use crate::{Metrics, ReconcilerConfig, ReconcilerError};

/// CloudEvents `source` of the events the reconciler publishes.
pub const SOURCE: &str = "/tally/reconciler";

/// Service name in dead-letter subjects (`<prefix>.deadletter.reconciler`).
pub const DEAD_LETTER_SERVICE: DeadLetterService = DeadLetterService::Reconciler;

/// How long one pull request waits for messages (also the shutdown latency).
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// Pause after a failed pull before the next.
const FETCH_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Longest wait for a rate-limit slot before the message is put back instead.
const LIMITER_MAX_WAIT: Duration = Duration::from_secs(5);
/// Delay before retrying a message whose derived event could not be published.
const PUBLISH_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How often the pending gauge is refreshed from the consumer's state.
const PENDING_REFRESH: Duration = Duration::from_secs(1);
/// How long a stop waits for in-flight lookups to settle.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Time after receipt after which a message's ack wait is extended before
/// its lookup (half the consumer's ack wait).
const EXTEND_AFTER: Duration = Duration::from_secs(30);
/// Minimum spacing of the error-level log lines about key problems.
const KEY_PROBLEM_LOG_EVERY: Duration = Duration::from_secs(30);

/// The reconciler service: finds the actual cost of completed generations
/// that lack one. See the [crate documentation](crate).
#[derive(Debug)]
pub struct Reconciler {
    bus: Bus,
    client: OpenRouterClient,
    providers: Option<tally_provider::OrgProviders>,
    cfg: ReconcilerConfig,
    metrics: Arc<Metrics>,
    store: Option<Store>,
}

/// State shared by the loop and every message task.
#[derive(Debug)]
struct Shared {
    bus: Bus,
    client: OpenRouterClient,
    providers: Option<tally_provider::OrgProviders>,
    cfg: ReconcilerConfig,
    metrics: Arc<Metrics>,
    limiter: AdaptiveLimiter,
    lookups: Semaphore,
    last_key_problem_log: Mutex<Option<Instant>>,
    first_lookups: FirstLookups,
}

/// How a message is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Done with it.
    Ack,
    /// Show it again after the delay (`None`: at once).
    Nak(Option<Duration>),
}

impl Reconciler {
    /// A reconciler reading completed events from `bus` and asking `client`;
    /// nothing happens until [`run`](Self::run).
    pub fn new(
        bus: Bus,
        client: OpenRouterClient,
        cfg: ReconcilerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Reconciler {
            bus,
            client,
            providers: None,
            cfg,
            metrics,
            store: None,
        }
    }

    /// Looks every generation up with the key of the organisation that made
    /// it (`providers`), never with `client`'s: an organisation without a
    /// connected provider waits and, at the deadline, ends unresolved with
    /// [`REASON_PROVIDER_NOT_CONNECTED`](crate::REASON_PROVIDER_NOT_CONNECTED).
    pub fn with_org_providers(mut self, providers: tally_provider::OrgProviders) -> Self {
        self.providers = Some(providers);
        self
    }

    /// Keeps the first lookups in `store` (shared by every instance, kept
    /// across restarts) and runs the periodic sweep over it. Without a
    /// store the first lookups live in this process only and nothing is
    /// swept.
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Runs until `shutdown` becomes `true` (or its sender is dropped), then
    /// stops pulling, lets lookups in flight settle (at most 30 s) and
    /// returns.
    ///
    /// Fails at start on an invalid configuration
    /// ([`ReconcilerError::Config`]) or when the durable consumer cannot be
    /// opened ([`ReconcilerError::Bus`]; its stream must exist: `tally
    /// migrate`). Later bus failures are logged, counted and retried, never
    /// fatal: every message not acked comes back.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), ReconcilerError> {
        self.cfg.validate()?;
        if self.cfg.prefix != self.bus.prefix() {
            return Err(ReconcilerError::Config(format!(
                "subject prefix {:?} differs from the bus prefix {:?}",
                self.cfg.prefix,
                self.bus.prefix()
            )));
        }
        let consumer = self.bus.consumer(ConsumerName::Reconciler).await?;
        let first_lookups = match &self.store {
            Some(store) => FirstLookups::Store(store.clone()),
            None => FirstLookups::Memory(Mutex::default()),
        };
        let shared = Arc::new(Shared {
            limiter: AdaptiveLimiter::new(self.cfg.rate_per_sec),
            lookups: Semaphore::new(self.cfg.concurrency),
            last_key_problem_log: Mutex::new(None),
            first_lookups,
            bus: self.bus,
            client: self.client,
            providers: self.providers,
            cfg: self.cfg,
            metrics: self.metrics,
        });
        shared
            .metrics
            .rate_limit
            .set(i64::from(shared.limiter.rate()));
        tracing::info!(
            consumer = consumer.name(),
            deadline_s = shared.cfg.deadline.as_secs(),
            min_window_s = shared.cfg.min_window.as_secs(),
            sweep = self.store.is_some(),
            concurrency = shared.cfg.concurrency,
            rate_per_sec = shared.cfg.rate_per_sec,
            batch_size = shared.cfg.batch_size,
            "reconciler started"
        );
        // Aborted when `run` returns or is dropped.
        let _gauge = AbortOnDrop(tokio::spawn(refresh_pending(shared.clone())));
        let _sweep = self.store.map(|store| {
            let mut sweeper = Sweeper::new(
                shared.bus.clone(),
                store,
                shared.client.clone(),
                shared.cfg.clone(),
                shared.metrics.clone(),
            );
            if let Some(p) = &shared.providers {
                sweeper = sweeper.with_org_providers(p.clone());
            }
            AbortOnDrop(tokio::spawn(sweeper.run_periodic(shutdown.clone())))
        });
        let max_held = shared.cfg.batch_size + shared.cfg.concurrency;
        let mut tasks = JoinSet::new();

        while !is_stopped(&mut shutdown) {
            while let Some(done) = tasks.try_join_next() {
                log_task_end(done);
            }
            let room = max_held.saturating_sub(tasks.len());
            if room == 0 {
                tokio::select! {
                    done = tasks.join_next() => {
                        if let Some(done) = done {
                            log_task_end(done);
                        }
                    }
                    () = stopped(&mut shutdown) => {}
                }
                continue;
            }
            // A pull is never cancelled half-way: messages the server already
            // sent would otherwise wait for the ack wait before coming back.
            match consumer
                .fetch(room.min(shared.cfg.batch_size), FETCH_WAIT)
                .await
            {
                Ok(batch) => {
                    for delivery in batch {
                        let shared = shared.clone();
                        let shutdown = shutdown.clone();
                        tasks.spawn(async move { handle(&shared, delivery, shutdown).await });
                    }
                }
                Err(e) => {
                    shared.metrics.count_bus_error(e.code());
                    tracing::warn!(error = %e, code = e.code(), "pulling completed events failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(FETCH_ERROR_PAUSE) => {}
                        () = stopped(&mut shutdown) => {}
                    }
                }
            }
        }

        tracing::info!(in_flight = tasks.len(), "reconciler stopping");
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(done) = tasks.join_next().await {
                log_task_end(done);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "lookups still in flight after {DRAIN_TIMEOUT:?}; their messages come back after the ack wait"
            );
            tasks.abort_all();
        }
        tracing::info!("reconciler stopped");
        Ok(())
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether shutdown was requested (or its sender is gone).
fn is_stopped(rx: &mut watch::Receiver<bool>) -> bool {
    *rx.borrow_and_update() || rx.has_changed().is_err()
}

/// Resolves when shutdown is requested (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!(error = %e, "a message task panicked; its message comes back after the ack wait");
        }
    }
}

/// Keeps the pending gauge current.
async fn refresh_pending(shared: Arc<Shared>) {
    loop {
        match shared.bus.pending(ConsumerName::Reconciler).await {
            Ok(n) => shared
                .metrics
                .pending
                .set(i64::try_from(n).unwrap_or(i64::MAX)),
            Err(e) => tracing::debug!(error = %e, "cannot read the reconciler consumer's state"),
        }
        tokio::time::sleep(PENDING_REFRESH).await;
    }
}

/// Handles one delivery from start to settlement.
async fn handle(shared: &Shared, delivery: Delivery, shutdown: watch::Receiver<bool>) {
    let settle = decide(shared, &delivery, shutdown).await;
    let result = match settle {
        Settle::Ack => delivery.ack().await,
        Settle::Nak(delay) => delivery.nak(delay).await,
    };
    if let Err(e) = result {
        shared.metrics.count_bus_error(e.code());
        tracing::warn!(
            error = %e,
            stream_sequence = delivery.stream_sequence(),
            ?settle,
            "settling a completed event failed; it comes back after the ack wait"
        );
    }
}

/// Everything between receiving a message and settling it.
async fn decide(shared: &Shared, d: &Delivery, mut shutdown: watch::Receiver<bool>) -> Settle {
    let received = Instant::now();
    let cfg = &shared.cfg;
    let metrics = &shared.metrics;
    let event =
        match tally_events::decode_as::<GenerationCompleted>(&cfg.prefix, d.subject(), d.payload())
        {
            Ok(event) => event,
            Err(e) => return dead_letter(shared, d, e.code(), &e.to_string()).await,
        };
    let g = &event.data;
    if g.actual_cost_usd.is_some() {
        metrics.skipped.inc();
        return Settle::Ack;
    }
    if !is_header_safe(&g.generation_id) {
        return dead_letter(
            shared,
            d,
            "invalid_generation_id",
            &format!(
                "data.generation_id {:?} cannot be looked up or used in a message id \
                 (printable ASCII without spaces expected)",
                g.generation_id
            ),
        )
        .await;
    }

    let now = Utc::now();
    let age = age_at(g.completed_at, now);
    if d.delivered() <= 1 {
        if let Some(wait) = schedule::first_wait(age, cfg.first_delay) {
            metrics.deferred.with_label_values(&["too_early"]).inc();
            return Settle::Nak(Some(wait));
        }
    }

    // A slot of the shared rate, then a lookup permit.
    let wait = match shared.limiter.reserve(LIMITER_MAX_WAIT) {
        Ok(wait) => wait,
        Err(wait) => {
            metrics.deferred.with_label_values(&["rate_limit"]).inc();
            return Settle::Nak(Some(wait.max(schedule::MIN_DELAY)));
        }
    };
    let permit = tokio::select! {
        permit = async {
            tokio::time::sleep(wait).await;
            shared.lookups.acquire().await
        } => permit,
        () = stopped(&mut shutdown) => {
            metrics.deferred.with_label_values(&["shutdown"]).inc();
            return Settle::Nak(None);
        }
    };
    let Ok(permit) = permit else {
        // The semaphore is never closed; settle defensively all the same.
        return Settle::Nak(None);
    };
    if received.elapsed() >= EXTEND_AFTER {
        // Waited long for a permit: keep the message ours for the lookup
        // and the publish instead of having it redelivered meanwhile.
        if let Err(e) = d.in_progress().await {
            tracing::debug!(error = %e, "extending the ack wait failed");
        }
    }
    let client = match &shared.providers {
        None => shared.client.clone(),
        Some(p) => match p.get(&g.attribution.org_id).await {
            Ok(org) => match &org.client {
                Some(c) => c.clone(),
                None => {
                    drop(permit);
                    metrics
                        .fetch_attempts
                        .with_label_values(&[schedule::REASON_PROVIDER_NOT_CONNECTED])
                        .inc();
                    let attempts = attempts(d, g.completed_at, cfg.first_delay);
                    let age = age_at(g.completed_at, Utc::now());
                    if age >= cfg.deadline {
                        return unresolved(
                            shared,
                            &event,
                            schedule::REASON_PROVIDER_NOT_CONNECTED,
                            None,
                            attempts,
                        )
                        .await;
                    }
                    return Settle::Nak(Some(schedule::next_delay(
                        age,
                        cfg.first_delay,
                        cfg.max_delay,
                        None,
                        cfg.deadline - age,
                    )));
                }
            },
            Err(e) => {
                drop(permit);
                tracing::warn!(org_id = %g.attribution.org_id, code = e.code(), error = %e, "organisation's provider key unavailable; retrying");
                return Settle::Nak(Some(schedule::KEY_PROBLEM_DELAY.min(cfg.max_delay)));
            }
        },
    };
    let answer = client.generation(&g.generation_id).await;
    drop(permit);

    let now = Utc::now();
    let age = age_at(g.completed_at, now);
    let attempts = attempts(d, g.completed_at, cfg.first_delay);
    let feedback = match &answer {
        Err(tally_openrouter::OpenRouterError::RateLimited { .. }) => Feedback::RateLimited,
        _ => Feedback::Other,
    };
    if let Some(rate) = shared.limiter.record(feedback) {
        metrics.rate_limit.set(i64::from(rate));
        tracing::info!(rate_per_sec = rate, "lookup rate limit adapted");
    }

    let verdict = match answer {
        Ok(stats) if !stats.missing_upstream_cost() => {
            metrics.fetch_attempts.with_label_values(&["ok"]).inc();
            return reconciled(shared, &event, &stats, attempts).await;
        }
        Ok(_) => {
            // BYOK without the upstream bill: only OpenRouter's fee is known,
            // and booking it as the actual cost would understate the spend.
            metrics
                .fetch_attempts
                .with_label_values(&[schedule::REASON_MISSING_UPSTREAM_COST])
                .inc();
            Verdict::Retry {
                reason: schedule::REASON_MISSING_UPSTREAM_COST,
                last_status: Some(200),
                retry_after: None,
            }
        }
        Err(e) => {
            metrics.fetch_attempts.with_label_values(&[e.code()]).inc();
            let verdict = schedule::verdict(&e);
            if verdict == Verdict::KeyProblem {
                metrics.auth_failures.with_label_values(&[e.code()]).inc();
                log_key_problem(shared, &e);
            } else {
                tracing::debug!(
                    generation_id = %g.generation_id,
                    code = e.code(),
                    error = %e,
                    attempts,
                    "generation cost not available yet"
                );
            }
            verdict
        }
    };

    match verdict {
        Verdict::KeyProblem => Settle::Nak(Some(schedule::KEY_PROBLEM_DELAY)),
        Verdict::Retry {
            reason,
            last_status,
            retry_after,
        } => {
            if !schedule::in_window_zone(age, cfg.deadline, cfg.min_window) {
                // Far from the deadline: the age-based schedule, with no
                // state. The last lookup before the window zone records
                // itself, so the zone knows a lookup happened this early.
                let next = schedule::next_delay(
                    age,
                    cfg.first_delay,
                    cfg.max_delay,
                    retry_after,
                    cfg.deadline.saturating_sub(age),
                );
                if schedule::needs_first_lookup(age, next, cfg.deadline, cfg.min_window) {
                    shared
                        .first_lookups
                        .record(&g.generation_id, &g.attribution.org_id, now, metrics)
                        .await;
                }
                return Settle::Nak(Some(next));
            }
            let first = shared
                .first_lookups
                .record(&g.generation_id, &g.attribution.org_id, now, metrics)
                .await;
            let patience = Patience {
                deadline: cfg.deadline,
                min_window: cfg.min_window,
                first_delay: cfg.first_delay,
                max_delay: cfg.max_delay,
            };
            match schedule::late_next(
                patience,
                now,
                g.completed_at,
                first,
                schedule::is_transient(reason),
                retry_after,
            ) {
                Some(delay) => Settle::Nak(Some(delay)),
                None => unresolved(shared, &event, reason, last_status, attempts).await,
            }
        }
    }
}

/// The generation's age at `now` (zero when `completed_at` is in the future).
fn age_at(completed_at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - completed_at).to_std().unwrap_or(Duration::ZERO)
}

/// Lookups made for this generation, including the current one, derived
/// from the delivery count: every delivery makes one lookup except a first
/// delivery that came before the first lookup was due (recognised by the
/// message having been stored before that instant). Deliveries deferred by
/// the local rate limiter or a shutdown are counted too, so this may
/// overstate slightly; it is never below 1.
fn attempts(d: &Delivery, completed_at: DateTime<Utc>, first_delay: Duration) -> u32 {
    let deliveries = u32::try_from(d.delivered().max(1)).unwrap_or(u32::MAX);
    let first_due = completed_at + chrono::Duration::from_std(first_delay).unwrap_or_default();
    let stored_early = d
        .message()
        .info()
        .ok()
        .and_then(|info| {
            let stored_ns = info.published.unix_timestamp_nanos();
            first_due
                .timestamp_nanos_opt()
                .map(|due_ns| stored_ns < i128::from(due_ns))
        })
        .unwrap_or(false);
    if stored_early && deliveries > 1 {
        deliveries - 1
    } else {
        deliveries
    }
}

/// Whether `id` can be sent in a NATS header (`Nats-Msg-Id`): printable
/// ASCII, no spaces.
fn is_header_safe(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Publishes `data` as a CloudEvent with `id` on its subject and waits for
/// the stream's ack.
async fn publish<T: Payload>(shared: &Shared, id: &str, data: T) -> Result<(), BusError> {
    let event = CloudEvent::new_on_bus(&shared.cfg.prefix, id, SOURCE, Utc::now(), data);
    let subject = event.subject.clone();
    shared
        .bus
        .publish(&subject, id, event.to_json().into())
        .await
}

/// Publishes the actual cost; acks only once it is stored.
async fn reconciled(
    shared: &Shared,
    event: &CloudEvent<GenerationCompleted>,
    stats: &GenerationStats,
    attempts: u32,
) -> Settle {
    let g = &event.data;
    let now = Utc::now();
    // Parsed replies always have an exact sum (the client refuses the
    // others as malformed); should one not, ask again later, never round.
    let data = match cost_reconciled(
        &g.generation_id,
        &g.attribution.org_id,
        stats,
        attempts,
        now,
    ) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(generation_id = %g.generation_id, code = e.code(), "actual cost cannot be exact: {e}");
            return Settle::Nak(Some(Duration::from_secs(60)));
        }
    };
    let actual = data.actual_cost_usd;
    let id = reconciled_event_id(&g.generation_id);
    if let Err(e) = publish(shared, &id, data).await {
        return publish_failed(shared, &e, &g.generation_id);
    }
    shared.first_lookups.forget(&g.generation_id);
    let m = &shared.metrics;
    m.reconciled.inc();
    m.completion_to_reconciled
        .observe(age_at(g.completed_at, now).as_secs_f64());
    m.observe_drift(actual, g.estimated_cost_usd);
    tracing::debug!(
        generation_id = %g.generation_id,
        actual_cost_usd = %actual,
        attempts,
        "actual cost reconciled"
    );
    Settle::Ack
}

/// The `cost.reconciled` payload of `stats` (the actual cost per money rule
/// 8), as the live hunt and the sweep publish it.
pub(crate) fn cost_reconciled(
    generation_id: &str,
    org_id: &str,
    stats: &GenerationStats,
    attempts: u32,
    now: DateTime<Utc>,
) -> Result<CostReconciled, tally_money::MoneyError> {
    Ok(CostReconciled {
        generation_id: generation_id.to_owned(),
        org_id: org_id.to_owned(),
        actual_cost_usd: stats.actual_cost()?,
        total_cost_usd: stats.total_cost,
        upstream_inference_cost_usd: stats.upstream_inference_cost,
        is_byok: stats.is_byok,
        attempts: attempts.max(1),
        reconciled_at: now,
    })
}

/// Publishes that the cost could not be found; acks only once it is stored.
async fn unresolved(
    shared: &Shared,
    event: &CloudEvent<GenerationCompleted>,
    reason: &'static str,
    last_status: Option<u16>,
    attempts: u32,
) -> Settle {
    let g = &event.data;
    let data = CostUnresolved {
        generation_id: g.generation_id.clone(),
        org_id: g.attribution.org_id.clone(),
        reason: reason.to_owned(),
        attempts,
        last_status,
        gave_up_at: Utc::now(),
    };
    let id = unresolved_event_id(&g.generation_id);
    if let Err(e) = publish(shared, &id, data).await {
        return publish_failed(shared, &e, &g.generation_id);
    }
    shared.first_lookups.forget(&g.generation_id);
    shared.metrics.unresolved.with_label_values(&[reason]).inc();
    tracing::warn!(
        generation_id = %g.generation_id,
        org_id = %g.attribution.org_id,
        reason,
        ?last_status,
        attempts,
        "gave up finding the actual cost; the estimate stands"
    );
    Settle::Ack
}

fn publish_failed(shared: &Shared, e: &BusError, generation_id: &str) -> Settle {
    shared.metrics.count_bus_error(e.code());
    tracing::warn!(
        error = %e,
        code = e.code(),
        generation_id,
        "publishing a cost event failed; retrying the generation"
    );
    Settle::Nak(Some(PUBLISH_RETRY_DELAY))
}

/// Sends an unreadable message to `<prefix>.deadletter.reconciler`, then
/// acks it (or retries when the dead letter could not be stored).
async fn dead_letter(shared: &Shared, d: &Delivery, reason: &'static str, detail: &str) -> Settle {
    match shared
        .bus
        .dead_letter(
            DEAD_LETTER_SERVICE,
            d,
            &DeadLetterReason::new(reason, detail),
        )
        .await
    {
        Ok(()) => {
            shared
                .metrics
                .dead_letters
                .with_label_values(&[reason])
                .inc();
            Settle::Ack
        }
        Err(e) => {
            shared.metrics.count_bus_error(e.code());
            tracing::warn!(error = %e, "dead-lettering failed; retrying");
            Settle::Nak(Some(PUBLISH_RETRY_DELAY))
        }
    }
}

fn log_key_problem(shared: &Shared, e: &tally_openrouter::OpenRouterError) {
    let now = Instant::now();
    let mut last = shared
        .last_key_problem_log
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let due = last.is_none_or(|t| now.duration_since(t) >= KEY_PROBLEM_LOG_EVERY);
    if due {
        *last = Some(now);
        tracing::error!(
            code = e.code(),
            error = %e,
            retry_in_s = schedule::KEY_PROBLEM_DELAY.as_secs(),
            "OpenRouter refuses the reconciler's API key or account: no actual cost can be \
             fetched until this is fixed (generations keep waiting, none is given up)"
        );
    } else {
        tracing::debug!(code = e.code(), error = %e, "OpenRouter refuses the API key or account");
    }
}

/// The CloudEvent id (and `Nats-Msg-Id`) of the reconciled event of a
/// generation: `reconciled-<generation_id>`.
pub fn reconciled_event_id(generation_id: &str) -> String {
    format!("reconciled-{generation_id}")
}

/// The CloudEvent id (and `Nats-Msg-Id`) of the unresolved event of a
/// generation: `unresolved-<generation_id>`.
pub fn unresolved_event_id(generation_id: &str) -> String {
    format!("unresolved-{generation_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_deterministic() {
        assert_eq!(reconciled_event_id("gen-1"), "reconciled-gen-1");
        assert_eq!(unresolved_event_id("gen-1"), "unresolved-gen-1");
    }

    #[test]
    fn header_safety() {
        assert!(is_header_safe("gen-1732531200-Xa81bQ0sPfTz4kLmN2vR"));
        for bad in ["", "gen 1", "gen\r\nX: y", "gén"] {
            assert!(!is_header_safe(bad), "{bad:?}");
        }
    }

    #[test]
    fn ages_are_never_negative() {
        let t = Utc::now();
        assert_eq!(age_at(t + chrono::Duration::seconds(5), t), Duration::ZERO);
        assert_eq!(
            age_at(t - chrono::Duration::seconds(5), t),
            Duration::from_secs(5)
        );
    }
}
