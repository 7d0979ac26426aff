//! Shared set-up of the reconciler's integration tests: a real NATS server
//! (tally-testkit), the OpenRouter simulator over real HTTP, and helpers to
//! publish completed events and read back what the reconciler published.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tally_bus::{Bus, Consumer, StreamKind};
use tally_events::{AnyEvent, CloudEvent, CostReconciled, CostUnresolved, GenerationCompleted};
use tally_openrouter::{ClientConfig, OpenRouterClient};
use tally_reconciler::{Metrics, Reconciler, ReconcilerConfig};
use tally_sim::{RunningSim, SimConfig, Simulator};
use tally_store::Store;
use tally_testkit::{NatsServer, TestDb};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The org every test event belongs to.
pub const ORG: &str = "acme";

/// One test's world.
pub struct Env {
    pub nats: NatsServer,
    pub bus: Bus,
    pub sim: RunningSim,
}

impl Env {
    /// NATS with the topology, and a simulator with `sim_cfg`.
    pub async fn start(sim_cfg: SimConfig) -> anyhow::Result<Env> {
        init_logs();
        let tally_tests::BusHarness { nats, bus } =
            tally_tests::BusHarness::start(tally_bus::ACK_WAIT).await?;
        let sim = Simulator::start(sim_cfg).await?;
        Ok(Env { nats, bus, sim })
    }

    /// The simulator's state.
    pub fn sim(&self) -> &Simulator {
        self.sim.simulator()
    }

    /// An OpenRouter client pointed at the simulator (with a key unless
    /// `key` is `None`).
    pub fn client(&self, key: Option<&str>) -> OpenRouterClient {
        let mut cfg = ClientConfig::new(self.sim.base_url());
        cfg.api_key = key.map(str::to_owned);
        cfg.timeout = Duration::from_secs(5);
        cfg.connect_timeout = Duration::from_secs(2);
        OpenRouterClient::new(cfg).expect("valid client config")
    }

    /// Starts a reconciler with `cfg` in the background.
    pub fn spawn_reconciler(&self, cfg: ReconcilerConfig) -> Running {
        self.spawn_reconciler_with(cfg, self.client(Some("sk-or-test")))
    }

    /// Starts a reconciler with `cfg` and `client` in the background.
    pub fn spawn_reconciler_with(
        &self,
        cfg: ReconcilerConfig,
        client: OpenRouterClient,
    ) -> Running {
        self.spawn_reconciler_on(cfg, client, None)
    }

    /// Starts a reconciler that keeps its first lookups in `store`.
    pub fn spawn_reconciler_stored(&self, cfg: ReconcilerConfig, store: &Store) -> Running {
        self.spawn_reconciler_on(cfg, self.client(Some("sk-or-test")), Some(store.clone()))
    }

    fn spawn_reconciler_on(
        &self,
        cfg: ReconcilerConfig,
        client: OpenRouterClient,
        store: Option<Store>,
    ) -> Running {
        let metrics = Arc::new(Metrics::unregistered());
        let (stop, shutdown) = watch::channel(false);
        let mut reconciler = Reconciler::new(self.bus.clone(), client, cfg, metrics.clone());
        if let Some(store) = store {
            reconciler = reconciler.with_store(store);
        }
        let task = tokio::spawn(reconciler.run(shutdown));
        Running {
            stop,
            task,
            metrics,
        }
    }

    /// Publishes a completed event the way producers do (msg id = event id).
    pub async fn publish_completed(
        &self,
        ev: &CloudEvent<GenerationCompleted>,
    ) -> anyhow::Result<()> {
        let subject = ev.bus_subject(self.bus.prefix());
        self.bus
            .publish(&subject, &ev.id, ev.to_json().into())
            .await?;
        Ok(())
    }

    /// A reader of everything on the COSTS stream.
    pub async fn costs(&self) -> anyhow::Result<CostReader> {
        let consumer = self.bus.replay_consumer(StreamKind::Costs, "").await?;
        Ok(CostReader {
            consumer,
            prefix: self.bus.prefix().to_owned(),
            messages: 0,
            reconciled: HashMap::new(),
            unresolved: HashMap::new(),
            ids: Vec::new(),
        })
    }
}

/// A reconciler running in the background.
pub struct Running {
    pub stop: watch::Sender<bool>,
    pub task: JoinHandle<Result<(), tally_reconciler::ReconcilerError>>,
    pub metrics: Arc<Metrics>,
}

impl Running {
    /// Asks it to stop and waits until it has.
    pub async fn stop(self) -> anyhow::Result<Arc<Metrics>> {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(40), self.task).await???;
        Ok(self.metrics)
    }
}

/// Cost events read back from the stream.
pub struct CostReader {
    consumer: Consumer,
    prefix: String,
    /// Messages read in total (duplicates would show here).
    pub messages: usize,
    pub reconciled: HashMap<String, (CloudEvent<CostReconciled>, String, Instant)>,
    pub unresolved: HashMap<String, (CloudEvent<CostUnresolved>, String, Instant)>,
    /// Every message id, in order.
    pub ids: Vec<String>,
}

impl CostReader {
    /// Reads what is there now (waiting at most `wait` for the first message).
    pub async fn poll(&mut self, wait: Duration) -> anyhow::Result<()> {
        for d in self.consumer.fetch(1000, wait).await? {
            let event = tally_events::decode(&self.prefix, d.subject(), d.payload())
                .map_err(|e| anyhow::anyhow!("the reconciler published an invalid event: {e}"))?;
            self.messages += 1;
            self.ids.push(d.msg_id().unwrap_or_default().to_owned());
            let subject = d.subject().to_owned();
            match event {
                AnyEvent::Reconciled(ev) => {
                    let id = ev.data.generation_id.clone();
                    anyhow::ensure!(
                        !self.reconciled.contains_key(&id),
                        "two reconciled events for {id}"
                    );
                    self.reconciled.insert(id, (ev, subject, Instant::now()));
                }
                AnyEvent::Unresolved(ev) => {
                    let id = ev.data.generation_id.clone();
                    anyhow::ensure!(
                        !self.unresolved.contains_key(&id),
                        "two unresolved events for {id}"
                    );
                    self.unresolved.insert(id, (ev, subject, Instant::now()));
                }
                other => anyhow::bail!("unexpected event on the costs stream: {other:?}"),
            }
            d.ack().await?;
        }
        Ok(())
    }

    /// Whether a reconciled or unresolved event for `id` was read.
    pub fn settled(&self, id: &str) -> bool {
        self.reconciled.contains_key(id) || self.unresolved.contains_key(id)
    }

    /// Reads until every id in `ids` is settled or `timeout` passes.
    pub async fn wait_settled(&mut self, ids: &[String], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ids.iter().all(|id| self.settled(id)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let missing: Vec<_> = ids.iter().filter(|id| !self.settled(id)).collect();
                anyhow::bail!("not settled within {timeout:?}: {missing:?}");
            }
            self.poll(Duration::from_millis(200)).await?;
        }
    }

    /// The reconciled event of `id`.
    pub fn reconciled(&self, id: &str) -> &CostReconciled {
        &self
            .reconciled
            .get(id)
            .unwrap_or_else(|| panic!("no reconciled event for {id}"))
            .0
            .data
    }
}

/// A completed event of agent `agent-1` without an actual cost (estimate
/// 0.0001 USD), completed at `completed_at`.
pub fn completed(
    generation_id: &str,
    completed_at: DateTime<Utc>,
) -> CloudEvent<GenerationCompleted> {
    tally_tests::Completed::at(generation_id, ORG, completed_at)
        .agent("agent-1")
        .estimate("0.0001")
        .event()
}

/// Test configuration: short delays so tests stay fast.
pub fn fast_config() -> ReconcilerConfig {
    ReconcilerConfig {
        deadline: Duration::from_secs(60),
        min_window: Duration::from_secs(1),
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
        concurrency: 16,
        rate_per_sec: 1000,
        batch_size: 64,
        ..ReconcilerConfig::default()
    }
}

/// A fresh, migrated database of the test's own.
pub async fn store() -> anyhow::Result<(TestDb, Store)> {
    let (db, store) = tally_testkit::TestDb::migrated(8).await?;
    Ok((db, store))
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
