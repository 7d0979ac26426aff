//! The ledger projector: turns generation and cost events into ledger
//! entries, one Postgres transaction per batch of messages.
//!
//! Two pull loops (completed events; reconciled/unresolved events) each
//! repeat: fetch up to `batch_size` messages → decode (bad ones go to
//! `<prefix>.deadletter.projector` with a reason) → apply the good ones in
//! one transaction ([`tally_store::Store::apply_batch`]) → ack every message
//! → wake the outbox publisher, which publishes `ledger.posted` and
//! threshold alerts from the outbox.
//!
//! # Invariants
//!
//! * A message is acked only after the transaction that applied it has
//!   committed, or after it is on the dead-letter subject.
//! * Nothing blocks the messages behind a bad one: decode errors are
//!   dead-lettered individually; a batch the database refuses for a reason
//!   other than a transient one is split until the offending message is
//!   isolated and dead-lettered (`store_rejected`).
//! * A database outage never turns into dead letters: the batch is retried
//!   with backoff and nothing is acked until it commits.
//!
//! # Decisions
//!
//! * **Two loops, one rule set.** Completed and cost events live in
//!   different streams (see `tally-bus`); order between them does not matter
//!   (money rule 4), so each has its own durable consumer and loop.
//! * **Batch size 1000, short fetch wait.** Large enough to amortise the
//!   fsync of a commit over many messages (Postgres commits and JetStream
//!   writes are each one fsync, about 170 µs on the reference machine), small
//!   enough that a batch commits in tens of milliseconds and memory stays
//!   bounded (at most `batch_size` messages per loop in memory, whatever the
//!   backlog).
//! * **Conflicting actuals are applied partially and dead-lettered.** A
//!   completed event whose actual differs from the known one still places
//!   the generation (its budgets and period); the refused figure is
//!   reported on the dead letters with reason `conflicting_actual_cost`.

pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use tally_bus::{Bus, ConsumerName, DeadLetterReason, DeadLetterService, Delivery};
use tally_events::{AnyEvent, CloudEvent, EventType, GenerationCompleted};
use tally_ledger::{Fact, Placement};
use tally_store::ledger::{CompletedDetails, PostingOptions};
use tally_store::{retry, BatchOutcome, FactInput, FactOutcome, Store, StoreError};
use tokio::sync::{watch, Notify};

pub use metrics::Metrics;

/// A fetched batch with each message's decoding result.
type Decoded = Vec<(
    Delivery,
    Result<(FactInput, &'static str), (&'static str, String)>,
)>;

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The service name used in dead-letter subjects and metrics.
pub const SERVICE: DeadLetterService = DeadLetterService::Projector;

/// Errors that stop the projector (everything else is retried or
/// dead-lettered).
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    /// The bus failed in a way retrying did not fix.
    #[error("bus: {0}")]
    Bus(#[from] tally_bus::BusError),
    /// The store failed in a way retrying did not fix.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl ProjectorError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ProjectorError::Bus(e) => e.code(),
            ProjectorError::Store(e) => e.code(),
        }
    }
}

/// Projector settings.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// Most messages per transaction.
    pub batch_size: usize,
    /// How long a fetch waits for the first message.
    pub fetch_wait: Duration,
    /// Batches applied at the same time per consumer, each in its own
    /// transaction (while one waits for Postgres, another is prepared).
    pub apply_concurrency: usize,
    /// Subject prefix.
    pub prefix: String,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            batch_size: 1000,
            fetch_wait: Duration::from_millis(500),
            apply_concurrency: 2,
            prefix: "tally".into(),
        }
    }
}

/// A running projector's shared parts.
#[derive(Clone)]
pub struct Projector {
    bus: Bus,
    store: Store,
    cfg: ProjectorConfig,
    metrics: Arc<Metrics>,
    outbox_wake: Arc<Notify>,
}

impl Projector {
    /// Wires a projector. Register `metrics` in the process registry.
    pub fn new(bus: Bus, store: Store, cfg: ProjectorConfig, metrics: Arc<Metrics>) -> Projector {
        Projector {
            bus,
            store,
            cfg,
            metrics,
            outbox_wake: Arc::new(Notify::new()),
        }
    }

    /// Runs both consumer loops and the outbox publisher until `shutdown`
    /// becomes true. In-flight batches finish (commit and ack) first.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), ProjectorError> {
        // A JoinSet aborts its tasks when dropped: if this future is dropped
        // (the process is going away), no loop outlives it.
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(
            self.clone()
                .consume(ConsumerName::ProjectorCompleted, shutdown.clone()),
        );
        tasks.spawn(
            self.clone()
                .consume(ConsumerName::ProjectorCosts, shutdown.clone()),
        );
        tasks.spawn(self.clone().publish_outbox(shutdown.clone()));
        tasks.spawn(self.clone().watch_pending(shutdown));
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(join) => tracing::error!(error = %join, "projector task panicked"),
            }
        }
        result
    }

    async fn consume(
        self,
        name: ConsumerName,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ProjectorError> {
        let consumer = retry_forever("projector consumer", &mut shutdown, || {
            self.bus.consumer(name)
        })
        .await;
        let Some(consumer) = consumer else {
            return Ok(());
        };
        tracing::info!(consumer = name.durable(), "projector consuming");
        // The next batches are fetched and decoded while the current ones
        // are in their transactions; the channel holds `apply_concurrency`
        // batches, so memory stays bounded by a few batches whatever the
        // backlog.
        let workers = self.cfg.apply_concurrency.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel::<Decoded>(workers);
        let fetcher = {
            let this = self.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                while !*shutdown.borrow() {
                    let batch = tokio::select! {
                        r = consumer.fetch(this.cfg.batch_size, this.cfg.fetch_wait) => r,
                        _ = shutdown.changed() => break,
                    };
                    match batch {
                        Ok(b) if b.is_empty() => continue,
                        Ok(b) => {
                            let decoded = decode_all(&this.cfg.prefix, b);
                            if tx.send(decoded).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, code = e.code(), "fetch failed; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            })
        };
        let _abort_fetcher = AbortOnDrop(fetcher);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut appliers = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let this = self.clone();
            let rx = rx.clone();
            appliers.spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    match next {
                        Some(batch) => this.process_decoded(batch).await,
                        None => break,
                    }
                }
            });
        }
        while appliers.join_next().await.is_some() {}
        Ok(())
    }

    /// Decodes, applies, dead-letters and acks one batch. Never returns
    /// before every message of the batch is either applied and committed,
    /// dead-lettered, or left unacked for redelivery (database down).
    pub async fn process_batch(&self, batch: Vec<Delivery>) {
        let decoded = decode_all(&self.cfg.prefix, batch);
        self.process_decoded(decoded).await;
    }

    async fn process_decoded(&self, batch: Decoded) {
        self.metrics.batch_size.observe(batch.len() as f64);
        let mut good: Vec<(Delivery, FactInput, &'static str)> = Vec::with_capacity(batch.len());
        for (d, r) in batch {
            match r {
                Ok((fact, ty)) => good.push((d, fact, ty)),
                Err((reason, detail)) => self.dead_letter(&d, reason, &detail, "invalid").await,
            }
        }
        self.apply(good).await;
        self.outbox_wake.notify_one();
    }

    /// Applies decoded messages; isolates a message the database refuses.
    async fn apply(&self, msgs: Vec<(Delivery, FactInput, &'static str)>) {
        if msgs.is_empty() {
            return;
        }
        let facts: Vec<FactInput> = msgs.iter().map(|m| m.1.clone()).collect();
        let opts = PostingOptions {
            prefix: self.cfg.prefix.clone(),
            source: "tally/projector".into(),
            publish: true,
        };
        let started = std::time::Instant::now();
        let outcome = (|| self.store.apply_batch(&facts, &opts))
            .retry(retry::TRANSACTION.backoff())
            .when(StoreError::is_transient)
            .notify(|e: &StoreError, _| {
                self.metrics.retries.with_label_values(&[e.code()]).inc();
                tracing::warn!(error = %e, code = e.code(), "batch not applied; retrying");
            })
            .await;
        if outcome.is_ok() {
            self.metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        match outcome {
            Ok(outcome) => self.finish(msgs, outcome).await,
            Err(e) if msgs.len() == 1 => {
                let (d, _, _) = &msgs[0];
                tracing::error!(error = %e, code = e.code(), "message refused by the store");
                // Money that cannot stay exact (a total past 10^10 USD) is
                // named by its money code; never rounded, never stuck.
                let reason = match &e {
                    StoreError::Money(m) => m.code(),
                    _ => "store_rejected",
                };
                self.dead_letter(d, reason, &e.to_string(), "rejected")
                    .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, n = msgs.len(), "batch refused; splitting to isolate the cause");
                let mut msgs = msgs;
                let right = msgs.split_off(msgs.len() / 2);
                Box::pin(self.apply(msgs)).await;
                Box::pin(self.apply(right)).await;
            }
        }
    }

    async fn finish(&self, msgs: Vec<(Delivery, FactInput, &'static str)>, outcome: BatchOutcome) {
        self.metrics.record_outcome(&outcome);
        let mut acked = 0usize;
        for ((d, _, ty), result) in msgs.iter().zip(&outcome.outcomes) {
            let label = match result {
                FactOutcome::Applied => "applied",
                FactOutcome::Duplicate => "duplicate",
                FactOutcome::ConflictingActual { kept, refused } => {
                    let detail = format!(
                        "actual cost {refused} refused: {kept} is already recorded for this generation"
                    );
                    self.dead_letter(d, "conflicting_actual_cost", &detail, "conflict")
                        .await;
                    continue;
                }
                FactOutcome::OrgMismatch { recorded } => {
                    let detail = format!("generation is recorded under organisation {recorded}");
                    self.dead_letter(d, "generation_org_mismatch", &detail, "rejected")
                        .await;
                    continue;
                }
            };
            self.metrics.events.with_label_values(&[ty, label]).inc();
            acked += 1;
        }
        // The effect is committed: ack in the background while the next
        // batch goes into its transaction. A lost ack only means a harmless
        // redelivery.
        let deliveries: Vec<Delivery> = msgs
            .into_iter()
            .zip(&outcome.outcomes)
            .filter(|(_, o)| matches!(o, FactOutcome::Applied | FactOutcome::Duplicate))
            .map(|((d, _, _), _)| d)
            .collect();
        debug_assert_eq!(deliveries.len(), acked);
        tokio::spawn(async move {
            let results = futures::future::join_all(deliveries.iter().map(|d| d.ack())).await;
            for r in results {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "ack failed; the message will be redelivered and ignored");
                }
            }
        });
    }

    async fn dead_letter(
        &self,
        d: &Delivery,
        reason: &'static str,
        detail: &str,
        outcome: &'static str,
    ) {
        let ty = type_label(d.subject(), &self.cfg.prefix);
        self.metrics.events.with_label_values(&[ty, outcome]).inc();
        self.metrics.dead_letters.with_label_values(&[reason]).inc();
        tracing::warn!(
            reason,
            detail,
            subject = d.subject(),
            "dead-lettering message"
        );
        // Retried until published: the message is acked only after it.
        let reason = DeadLetterReason::new(reason, detail);
        let _published = (|| self.bus.dead_letter(SERVICE, d, &reason))
            .retry(retry::TRANSACTION.backoff())
            .notify(|e: &tally_bus::BusError, _| {
                tracing::warn!(error = %e, "dead letter not published; retrying");
            })
            .await;
        if let Err(e) = d.ack().await {
            tracing::warn!(error = %e, "ack of dead-lettered message failed; it will be dead-lettered again (same id)");
        }
    }

    async fn publish_outbox(
        self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ProjectorError> {
        loop {
            // Drain everything there is, then wait for a wake-up or a tick.
            loop {
                match self.publish_outbox_once(500).await {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox publishing failed; will retry");
                        break;
                    }
                }
            }
            if *shutdown.borrow() {
                return Ok(());
            }
            tokio::select! {
                _ = self.outbox_wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Publishes up to `limit` outbox rows; returns how many.
    pub async fn publish_outbox_once(&self, limit: i64) -> Result<usize, ProjectorError> {
        let claim = self.store.claim_outbox(limit).await?;
        let n = claim.messages.len();
        if n == 0 {
            return Ok(0);
        }
        let results = futures::future::join_all(claim.messages.iter().map(|m| {
            self.bus
                .publish(&m.subject, &m.msg_id, bytes_of(&m.payload))
        }))
        .await;
        for r in results {
            r?;
        }
        claim.mark_published().await?;
        self.metrics.outbox_published.inc_by(n as u64);
        Ok(n)
    }

    async fn watch_pending(
        self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ProjectorError> {
        let mut round: u32 = 0;
        while !*shutdown.borrow() {
            for name in [
                ConsumerName::ProjectorCompleted,
                ConsumerName::ProjectorCosts,
            ] {
                if let Ok(n) = self.bus.pending(name).await {
                    self.metrics
                        .pending
                        .with_label_values(&[name.durable()])
                        .set(n as i64);
                }
            }
            if let Ok(n) = self.store.outbox_backlog().await {
                self.metrics.outbox_backlog.set(n);
            }
            // Budgets change slowly and the query reads every active one:
            // every sixth round (30 s) is enough.
            if round % 6 == 0 {
                if let Ok(u) = self.store.budget_utilisation().await {
                    self.metrics.record_utilisation(&u);
                }
            }
            round = round.wrapping_add(1);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => {}
            }
        }
        Ok(())
    }
}

fn bytes_of(v: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(v)
}

/// A bounded label for the message's event type, from its subject: the
/// type's subject root (`generation.completed`, …) or `other`.
fn type_label(subject: &str, prefix: &str) -> &'static str {
    EventType::from_subject(prefix, subject).map_or("other", |t| t.subject_root())
}

/// Decodes every message of a fetched batch.
fn decode_all(prefix: &str, batch: Vec<Delivery>) -> Decoded {
    batch
        .into_iter()
        .map(|d| {
            let r = decode(prefix, &d);
            (d, r)
        })
        .collect()
}

/// The fact of a cost event of type `ty` (no descriptive fields) and the
/// subject root it counts under.
fn cost_fact(
    ty: EventType,
    generation_id: String,
    org_id: String,
    fact: Fact,
) -> (FactInput, &'static str) {
    let input = FactInput {
        generation_id,
        org_id,
        fact,
        details: None,
    };
    (input, ty.subject_root())
}

/// Turns a message into a ledger fact, or a dead-letter reason and detail.
pub fn decode(
    prefix: &str,
    d: &Delivery,
) -> Result<(FactInput, &'static str), (&'static str, String)> {
    let ev = tally_events::decode(prefix, d.subject(), d.payload())
        .map_err(|e| (e.code(), e.to_string()))?;
    Ok(match ev {
        AnyEvent::Completed(ev) => (
            completed_fact(ev),
            EventType::GenerationCompleted.subject_root(),
        ),
        AnyEvent::Reconciled(ev) => {
            let c = ev.data;
            let fact = Fact::Reconciled {
                actual: c.actual_cost_usd,
            };
            cost_fact(EventType::CostReconciled, c.generation_id, c.org_id, fact)
        }
        AnyEvent::Unresolved(ev) => {
            let c = ev.data;
            let fact = Fact::Unresolved { reason: c.reason };
            cost_fact(EventType::CostUnresolved, c.generation_id, c.org_id, fact)
        }
        other => {
            return Err((
                "unexpected_type",
                format!(
                    "the projector does not consume {}",
                    other.event_type().as_str()
                ),
            ))
        }
    })
}

fn completed_fact(ev: CloudEvent<GenerationCompleted>) -> FactInput {
    let g = ev.data;
    // One clone of the org id for the fact's key; the attribution itself
    // moves into the placement.
    let org_id = g.attribution.org_id.clone();
    FactInput {
        details: Some(CompletedDetails {
            provider: g.provider.clone(),
            status: status_str(&g),
            is_byok: g.is_byok,
            request_id: g.request_id.clone(),
        }),
        fact: Fact::Completed {
            placement: Placement {
                attribution: g.attribution,
                completed_at: g.completed_at,
            },
            estimate: g.estimated_cost_usd,
            actual: g.actual_cost_usd,
        },
        generation_id: g.generation_id,
        org_id,
    }
}

fn status_str(g: &GenerationCompleted) -> String {
    g.status.as_str().to_owned()
}

/// Retries `f` with backoff until it succeeds or shutdown is requested.
async fn retry_forever<T, E: std::fmt::Display, Fut>(
    what: &str,
    shutdown: &mut watch::Receiver<bool>,
    f: impl FnMut() -> Fut,
) -> Option<T>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let retried = f
        .retry(retry::TRANSACTION.backoff())
        .notify(|e: &E, _| tracing::warn!(error = %e, "{what} not ready; retrying"));
    tokio::select! {
        r = retried => r.ok(),
        _ = shutdown.changed() => None,
    }
}
