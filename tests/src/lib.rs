//! End-to-end test support: a [`Harness`] of real parts — a NATS server of
//! its own, a Postgres database of its own, the bus and the store — plus
//! builders for the events producers send.
//!
//! Every test gets its own server and database, so tests run in parallel
//! and never see each other. [`procs`] runs the `tally` binary itself, one
//! process per service, for the tests that treat tally as a black box.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tally_bus::{Bus, BusConfig};
use tally_events::{
    Attribution, CloudEvent, CostReconciled, CostUnresolved, EventType, GenerationCompleted,
    GenerationStatus, Usage,
};
use tally_money::{Cost, Usd};
use tally_store::ledger::PostingOptions;
use tally_store::{NewBudget, Store};
use tally_testkit::{NatsServer, TestDb};
use tokio::sync::watch;

pub mod pg;
pub mod procs;

/// A test's own NATS server and a bus on it with tally's streams and
/// consumers in place: what every test of a bus consumer starts from.
pub struct BusHarness {
    /// The test's own NATS server (stopped when dropped).
    pub nats: NatsServer,
    /// Bus connected to `nats`, topology created.
    pub bus: Bus,
}

impl BusHarness {
    /// Starts NATS and creates the topology; messages not acknowledged
    /// within `ack_wait` are delivered again.
    pub async fn start(ack_wait: Duration) -> anyhow::Result<BusHarness> {
        let nats = NatsServer::start().await?;
        let bus = Bus::connect(&BusConfig {
            ack_wait,
            ..BusConfig::new(nats.url())
        })
        .await?;
        bus.ensure_topology().await?;
        Ok(BusHarness { nats, bus })
    }
}

/// Real NATS + Postgres for one test.
pub struct Harness {
    /// The test's own NATS server.
    pub nats: NatsServer,
    /// The test's own database.
    pub db: TestDb,
    /// Bus connected to `nats` with topology in place.
    pub bus: Bus,
    /// Store on `db`, migrated.
    pub store: Store,
}

impl Harness {
    /// Starts NATS, creates the database, migrates, creates the streams.
    pub async fn start() -> anyhow::Result<Harness> {
        // A short ack wait: a crashed projector's in-flight messages come
        // back in seconds, not a minute.
        let BusHarness { nats, bus } = BusHarness::start(Duration::from_secs(5)).await?;
        let (db, store) = tally_testkit::TestDb::migrated(8).await?;
        Ok(Harness {
            nats,
            db,
            bus,
            store,
        })
    }

    /// Starts a projector task; stop it with the returned handle.
    pub fn spawn_projector(&self, batch_size: usize) -> Running {
        let registry = tally_telemetry::Registry::new();
        let metrics = Arc::new(tally_projector::Metrics::register(&registry).expect("metrics"));
        let p = tally_projector::Projector::new(
            self.bus.clone(),
            self.store.clone(),
            tally_projector::ProjectorConfig {
                batch_size,
                fetch_wait: Duration::from_millis(100),
                ..Default::default()
            },
            metrics,
        );
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let _ = p.run(rx).await;
        });
        Running {
            stop: tx,
            task,
            registry,
        }
    }

    /// Publishes an event with `Nats-Msg-Id` = its id.
    pub async fn publish<T: tally_events::Payload>(
        &self,
        ev: &CloudEvent<T>,
    ) -> anyhow::Result<()> {
        self.bus
            .publish(&ev.subject, &ev.id, bytes::Bytes::from(ev.to_json()))
            .await?;
        Ok(())
    }

    /// Publishes raw bytes on a subject.
    pub async fn publish_raw(
        &self,
        subject: &str,
        msg_id: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        self.bus
            .publish(subject, msg_id, bytes::Bytes::copy_from_slice(body))
            .await?;
        Ok(())
    }

    /// Creates a budget directly in the store.
    pub async fn budget(&self, b: NewBudget) -> anyhow::Result<tally_store::Budget> {
        Ok(self
            .store
            .create_budget(b, &PostingOptions::default())
            .await?
            .0)
    }

    /// Every message of `stream` matching `filter` (all of them for `""`),
    /// read from the start: its subject, its body as JSON (`Null` if it is
    /// not JSON) and, for a dead letter, its reason header.
    pub async fn read_stream(
        &self,
        stream: tally_bus::StreamKind,
        filter: &str,
    ) -> anyhow::Result<Vec<(String, serde_json::Value, Option<String>)>> {
        let mut out = Vec::new();
        if self.bus.stream_last_sequence(stream).await? == 0 {
            return Ok(out);
        }
        let c = self.bus.replay_consumer(stream, filter).await?;
        loop {
            let batch = c.fetch(500, Duration::from_millis(300)).await?;
            if batch.is_empty() {
                break;
            }
            for d in batch {
                let reason = d
                    .headers()
                    .and_then(|h| h.get(tally_bus::HEADER_DEAD_LETTER_REASON))
                    .map(|v| v.to_string());
                let json = serde_json::from_slice(d.payload()).unwrap_or(serde_json::Value::Null);
                out.push((d.subject().to_owned(), json, reason));
                d.ack().await?;
            }
        }
        Ok(out)
    }

    /// Waits until the projector's outbox is published (at most 30 s).
    pub async fn outbox_flushed(&self) -> anyhow::Result<()> {
        self.wait_for(
            "the outbox to be published",
            Duration::from_secs(30),
            || async { Ok(self.store.outbox_backlog().await? == 0) },
        )
        .await
    }

    /// Waits until `f` returns true (polling), or fails after `timeout`.
    pub async fn wait_for<F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        let start = Instant::now();
        loop {
            if f().await? {
                return Ok(());
            }
            if start.elapsed() > timeout {
                anyhow::bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the projector consumed everything published so far.
    pub async fn drained(&self) -> anyhow::Result<()> {
        self.wait_for(
            "the projector to drain its consumers",
            Duration::from_secs(150),
            || async {
                let a = self
                    .bus
                    .pending(tally_bus::ConsumerName::ProjectorCompleted)
                    .await?;
                let b = self
                    .bus
                    .pending(tally_bus::ConsumerName::ProjectorCosts)
                    .await?;
                Ok(a == 0 && b == 0)
            },
        )
        .await
    }

    /// Total spent (as text, exact) of a budget's period starting at `start`.
    pub async fn spent(&self, budget_id: &str) -> anyhow::Result<Usd> {
        const SPENT: &str = "SELECT sum(spent_usd) FROM budget_periods WHERE budget_id = $1";
        self.sum_of(SPENT, budget_id).await
    }

    /// Sum of a budget's journal entries.
    pub async fn journal_sum(&self, budget_id: &str) -> anyhow::Result<Usd> {
        const JOURNAL: &str = "SELECT sum(amount_usd) FROM ledger_entries WHERE budget_id = $1";
        self.sum_of(JOURNAL, budget_id).await
    }

    /// The sum `sql` selects for the budget `$1`, zero when there is nothing.
    async fn sum_of(&self, sql: &str, budget_id: &str) -> anyhow::Result<Usd> {
        let v: Option<Usd> = sqlx::query_scalar(sql)
            .bind(budget_id)
            .fetch_one(self.store.pool())
            .await?;
        Ok(v.unwrap_or_default())
    }

    /// A snapshot of every balance: (budget, period, spent, actual part,
    /// estimated part), and every generation's (id, debited, basis, state).
    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let periods: Vec<(String, DateTime<Utc>, Usd, Usd, Usd)> = sqlx::query_as(
            "SELECT budget_id, period_start, spent_usd, spent_actual_usd, spent_estimated_usd \
             FROM budget_periods ORDER BY 1, 2",
        )
        .fetch_all(self.store.pool())
        .await?;
        let generations: Vec<(String, Option<Usd>, Option<String>, String)> = sqlx::query_as(
            "SELECT generation_id, debited_usd, basis, state FROM generations ORDER BY 1",
        )
        .fetch_all(self.store.pool())
        .await?;
        Ok(Snapshot {
            periods: periods
                .into_iter()
                .map(|(b, p, s, a, e)| (b, p, s.normalize(), a.normalize(), e.normalize()))
                .collect(),
            generations: generations
                .into_iter()
                .map(|(g, d, b, s)| (g, d.map(|d| d.normalize()), b, s))
                .collect(),
        })
    }
}

/// Balances and generation bookings, normalised for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// (budget, period start, spent, actual part, estimated part).
    pub periods: Vec<(String, DateTime<Utc>, Usd, Usd, Usd)>,
    /// (generation, debited, basis, state).
    pub generations: Vec<(String, Option<Usd>, Option<String>, String)>,
}

/// A running service task.
pub struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The metrics it registered.
    pub registry: tally_telemetry::Registry,
}

impl Running {
    /// Asks it to stop and waits.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }

    /// Aborts the task at once (like a crash: nothing in flight completes).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// The HTTP API with `state`, served in this process on a free port until
/// the test ends; its base URL (`http://127.0.0.1:<port>`).
pub async fn serve_api(state: tally_api::AppState) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(tally_api::serve(listener, state, std::future::pending()));
    Ok(base)
}

/// Parses a decimal literal (test helper).
pub fn usd(s: &str) -> Usd {
    Usd::from_str(s).expect("decimal literal")
}

/// Parses a non-negative decimal literal as a cost (test helper).
pub fn cost(s: &str) -> Cost {
    Cost::from_str(s).expect("cost literal")
}

/// Parses an RFC 3339 time (test helper).
pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("RFC 3339 literal")
        .with_timezone(&Utc)
}

/// A budget definition with common defaults: org-wide, total period, UTC.
pub fn budget(org: &str, name: &str, limit: &str) -> NewBudget {
    NewBudget {
        org_id: org.into(),
        name: name.into(),
        scope: Default::default(),
        period: tally_budget::PeriodKind::Total,
        timezone: "UTC".into(),
        limit_usd: cost(limit),
        thresholds: vec![50, 80, 100],
        enforcement: tally_budget::Enforcement::Hard,
        allow_unpriced_models: false,
    }
}

/// Builder of `generation.completed` events.
#[derive(Clone)]
pub struct Completed {
    /// The payload.
    pub data: GenerationCompleted,
    /// CloudEvent id (= Nats-Msg-Id).
    pub id: String,
}

impl Completed {
    /// A completed generation of `org` at `completed_at` with neither cost.
    pub fn new(generation_id: &str, org: &str, completed_at: &str) -> Completed {
        Completed::at(generation_id, org, at(completed_at))
    }

    /// [`Completed::new`] at an instant rather than a text.
    pub fn at(generation_id: &str, org: &str, completed_at: DateTime<Utc>) -> Completed {
        Completed {
            id: format!("completed-{generation_id}"),
            data: GenerationCompleted {
                generation_id: generation_id.into(),
                attribution: Attribution::new(org, "openai/gpt-4o-mini"),
                provider: Some("OpenAI".into()),
                completed_at,
                usage: Usage {
                    prompt_tokens: 100,
                    completion_tokens: 20,
                    reasoning_tokens: None,
                    cached_tokens: None,
                    cache_write_tokens: None,
                },
                is_byok: false,
                actual_cost_usd: None,
                estimated_cost_usd: None,
                status: GenerationStatus::Completed,
                request_id: None,
                upstream_inference_cost_usd: None,
            },
        }
    }

    /// Sets the actual cost.
    pub fn actual(mut self, v: &str) -> Self {
        self.data.actual_cost_usd = Some(cost(v));
        self
    }

    /// Sets the estimate.
    pub fn estimate(mut self, v: &str) -> Self {
        self.data.estimated_cost_usd = Some(cost(v));
        self
    }

    /// Sets the agent.
    pub fn agent(mut self, v: &str) -> Self {
        self.data.attribution.agent_id = Some(v.into());
        self
    }

    /// Sets the model.
    pub fn model(mut self, v: &str) -> Self {
        self.data.attribution.model = v.into();
        self
    }

    /// Uses another CloudEvent id (a re-emission by another producer).
    pub fn with_id(mut self, id: &str) -> Self {
        self.id = id.into();
        self
    }

    /// The CloudEvent.
    pub fn event(&self) -> CloudEvent<GenerationCompleted> {
        let subject =
            EventType::GenerationCompleted.subject("tally", &self.data.attribution.org_id, None);
        CloudEvent::new(
            self.id.clone(),
            "tests",
            subject,
            self.data.completed_at,
            self.data.clone(),
        )
    }
}

/// Publishes `c` until the bus takes it, for up to a minute, every
/// `retry_every`: while a NATS node dies or restarts, publishes fail ("no
/// stream found") or time out, and a producer retries with the same message
/// id, which JetStream keeps one copy of.
pub async fn publish_retrying(
    bus: &Bus,
    c: &Completed,
    retry_every: Duration,
) -> anyhow::Result<()> {
    let ev = c.event();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match bus.publish(&ev.subject, &ev.id, ev.to_json().into()).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("publish retry after: {e}");
                tokio::time::sleep(retry_every).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A `cost.reconciled` event.
pub fn reconciled(generation_id: &str, org: &str, actual: &str) -> CloudEvent<CostReconciled> {
    let subject = EventType::CostReconciled.subject("tally", org, None);
    CloudEvent::new(
        format!("reconciled-{generation_id}"),
        "tests",
        subject,
        Utc::now(),
        CostReconciled {
            generation_id: generation_id.into(),
            org_id: org.into(),
            actual_cost_usd: cost(actual),
            total_cost_usd: cost(actual),
            upstream_inference_cost_usd: None,
            is_byok: false,
            attempts: 1,
            reconciled_at: Utc::now(),
        },
    )
}

/// A `cost.unresolved` event.
pub fn unresolved(generation_id: &str, org: &str) -> CloudEvent<CostUnresolved> {
    let subject = EventType::CostUnresolved.subject("tally", org, None);
    CloudEvent::new(
        format!("unresolved-{generation_id}"),
        "tests",
        subject,
        Utc::now(),
        CostUnresolved {
            generation_id: generation_id.into(),
            org_id: org.into(),
            reason: "deadline_exceeded".into(),
            attempts: 9,
            last_status: Some(404),
            gave_up_at: Utc::now(),
        },
    )
}
