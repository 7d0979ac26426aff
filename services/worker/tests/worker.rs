//! The worker against a real NATS server (tally-testkit) and the OpenRouter
//! simulator over real HTTP: cost capture streaming and not, aborted streams
//! reconciled later, budget holds in a real Postgres (refusal, fifty
//! requests at once against a hard budget, no second run of a generation
//! whose id is known), bad requests, retries and dead letters.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use futures::StreamExt as _;
use tally_bus::{Bus, Consumer, StreamKind};
use tally_events::{
    AnyEvent, Attribution, Capacity, CloudEvent, GenerationRequested, GenerationStatus, Input,
    Payload, Routing,
};
use tally_money::Usd;
use tally_openrouter::{ClientConfig, OpenRouterClient};
use tally_sim::{Fraction, RunningSim, SimConfig, Simulator};
use tally_testkit::NatsServer;
use tally_worker::{
    ByokProviders, Catalog, CatalogConfig, Metrics, Reservations, Worker, WorkerConfig,
};
use tokio::sync::watch;

const ORG: &str = "acme";
/// The model most requests here ask for.
const MINI: &str = "openai/gpt-4o-mini";
const WAIT: Duration = Duration::from_secs(20);

use tally_money::{cost, usd};

struct Env {
    _nats: NatsServer,
    bus: Bus,
    sim: RunningSim,
    client: OpenRouterClient,
    catalog: Catalog,
    stops: Vec<watch::Sender<bool>>,
}

impl Env {
    async fn start(sim_cfg: SimConfig) -> anyhow::Result<Env> {
        Env::start_with_ack_wait(sim_cfg, tally_bus::ACK_WAIT).await
    }

    async fn start_with_ack_wait(sim_cfg: SimConfig, ack_wait: Duration) -> anyhow::Result<Env> {
        let tally_tests::BusHarness { nats, bus } =
            tally_tests::BusHarness::start(ack_wait).await?;
        let sim = Simulator::start(sim_cfg).await?;
        let client =
            OpenRouterClient::new(ClientConfig::new(sim.base_url()).with_api_key("sk-or-test"))?;
        let catalog = Catalog::new(CatalogConfig::default());
        catalog.refresh(&client).await?;
        Ok(Env {
            _nats: nats,
            bus,
            sim,
            client,
            catalog,
            stops: Vec::new(),
        })
    }

    fn spawn_worker(&mut self, reservations: Option<Reservations>, cfg: WorkerConfig) {
        let (stop, shutdown) = watch::channel(false);
        let worker = Worker::new(
            self.bus.clone(),
            self.client.clone(),
            reservations,
            self.catalog.clone(),
            cfg,
            Arc::new(Metrics::unregistered()),
        );
        tokio::spawn(async move { worker.run(shutdown).await.unwrap() });
        self.stops.push(stop);
    }

    async fn request(&self, req: GenerationRequested) -> anyhow::Result<()> {
        let id = format!("requested-{}", req.request_id);
        let ev = CloudEvent::new_on_bus(ORG, id.clone(), "/test/agent", Utc::now(), req);
        let ev = CloudEvent {
            subject: ev.bus_subject("tally"),
            ..ev
        };
        self.bus
            .publish(&ev.bus_subject("tally"), &id, ev.to_json().into())
            .await?;
        Ok(())
    }

    /// A fresh environment with one worker that takes no budget holds, and
    /// a reader of the GENERATIONS stream opened before anything is sent.
    async fn with_worker(sim_cfg: SimConfig, cfg: WorkerConfig) -> anyhow::Result<(Env, Consumer)> {
        let mut env = Env::start(sim_cfg).await?;
        env.spawn_worker(None, cfg);
        let reader = env.reader().await?;
        Ok((env, reader))
    }

    /// Runs `req` through the worker: sends it and waits on `reader` for
    /// how it ended, `Ok` with its completed event, `Err` with its failed one.
    async fn run(&self, reader: &Consumer, req: GenerationRequested) -> anyhow::Result<Outcome> {
        let id = req.request_id.clone();
        self.request(req).await?;
        outcome_of(reader, &id).await
    }

    async fn reader(&self) -> anyhow::Result<Consumer> {
        Ok(self
            .bus
            .replay_consumer(StreamKind::Generations, "")
            .await?)
    }
}

fn fast() -> WorkerConfig {
    WorkerConfig {
        base_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        ..WorkerConfig::default()
    }
}

/// [`fast`], giving up after the third delivery.
fn three_attempts() -> WorkerConfig {
    WorkerConfig {
        max_attempts: 3,
        ..fast()
    }
}

/// [`request`] for [`MINI`].
fn mini(id: &str, stream: bool) -> GenerationRequested {
    request(id, MINI, stream)
}

fn request(id: &str, model: &str, stream: bool) -> GenerationRequested {
    GenerationRequested {
        request_id: id.to_owned(),
        attribution: Attribution {
            agent_id: Some("agent-1".into()),
            session_id: Some("sess-1".into()),
            user_id: Some("user-1".into()),
            ..Attribution::new(ORG, model)
        },
        models: None,
        input: Input::Text("What is 2+2?".into()),
        instructions: None,
        max_output_tokens: Some(8),
        stream,
        routing: None,
        server_tools: None,
        reply_subject: None,
        requested_at: Utc::now(),
    }
}

/// Reads the GENERATIONS stream until `pick` returns something.
async fn wait_for<T>(
    reader: &Consumer,
    mut pick: impl FnMut(&AnyEvent) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        // One at a time: nothing fetched is dropped when `pick` matches.
        for m in reader.fetch(1, Duration::from_millis(200)).await? {
            m.ack().await?;
            let Ok(ev) = tally_events::decode("tally", m.subject(), m.payload()) else {
                continue;
            };
            if let Some(t) = pick(&ev) {
                return Ok(t);
            }
        }
    }
    anyhow::bail!("no matching event within {WAIT:?}")
}

/// How one request ended: completed or failed.
type Outcome = Result<tally_events::GenerationCompleted, tally_events::GenerationFailed>;

async fn outcome_of(reader: &Consumer, request_id: &str) -> anyhow::Result<Outcome> {
    wait_for(reader, |ev| match ev {
        AnyEvent::Completed(c) if c.data.request_id.as_deref() == Some(request_id) => {
            assert_eq!(c.id, format!("completed-{}", c.data.generation_id));
            Some(Ok(c.data.clone()))
        }
        AnyEvent::Failed(f) if f.data.request_id == request_id => {
            assert_eq!(f.id, format!("failed-{request_id}"));
            Some(Err(f.data.clone()))
        }
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_streaming_cost_is_captured_exactly_and_the_result_answers() -> anyhow::Result<()> {
    let (env, reader) = Env::with_worker(SimConfig::ephemeral(), fast()).await?;
    let mut replies = env.bus.client().subscribe("agent.replies.r1").await?;
    let mut req = mini("r1", false);
    req.reply_subject = Some("agent.replies.r1".into());
    let c = env.run(&reader, req).await?.unwrap();
    assert_eq!(c.status, GenerationStatus::Completed);
    // 3 prompt tokens × 0.00000015 + 8 completion tokens × 0.0000006
    assert_eq!(c.actual_cost_usd, Some(cost!("0.00000525")));
    assert_eq!(c.estimated_cost_usd, Some(cost!("0.00000525")));
    assert_eq!((c.usage.prompt_tokens, c.usage.completion_tokens), (3, 8));
    assert_eq!(c.attribution.agent_id.as_deref(), Some("agent-1"));
    assert_eq!(c.provider.as_deref(), Some("OpenAI"));
    let g = env.sim.simulator().generation(&c.generation_id).unwrap();
    assert_eq!(g.actual_cost(), usd!("0.00000525"));

    let msg = tokio::time::timeout(WAIT, replies.next()).await?.unwrap();
    let result = tally_events::decode_body_as::<tally_events::GenerationResult>(&msg.payload)?;
    assert_eq!(
        result.data.generation_id.as_deref(),
        Some(c.generation_id.as_str())
    );
    assert_eq!(result.data.status, tally_events::ResultStatus::Completed);
    assert_eq!(
        result
            .data
            .output_text
            .as_deref()
            .map(|t| t.split_whitespace().count()),
        Some(8)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streaming_cost_with_cache_and_reasoning_and_byok() -> anyhow::Result<()> {
    let (env, reader) = Env::with_worker(SimConfig::ephemeral(), fast()).await?;
    let mut req = request("r2", "deepseek/deepseek-r1", true);
    req.input = Input::Text("x".repeat(160));
    let c = env.run(&reader, req).await?.unwrap();
    assert_eq!(c.status, GenerationStatus::Completed);
    // 20 uncached × 0.0000004 + 20 cached × 0.0000001 + 8 × 0.000002
    assert_eq!(c.actual_cost_usd, Some(cost!("0.000026")));
    assert_eq!(c.estimated_cost_usd, Some(cost!("0.000026")));
    assert_eq!(c.usage.cached_tokens, Some(20));
    assert_eq!(c.usage.reasoning_tokens, Some(2));
    drop(env);

    // BYOK: OpenRouter's fee plus the upstream bill.
    let mut sim = SimConfig::ephemeral();
    sim.byok_rate = Fraction::ONE;
    let (env, reader) = Env::with_worker(sim, fast()).await?;
    let c = env.run(&reader, mini("r3", true)).await?.unwrap();
    assert!(c.is_byok);
    assert_eq!(c.upstream_inference_cost_usd, Some(cost!("0.00000525")));
    assert_eq!(c.actual_cost_usd, Some(cost!("0.0000055125")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborted_stream_completes_with_null_cost_then_the_reconciler_finds_it() -> anyhow::Result<()>
{
    let mut sim = SimConfig::ephemeral();
    sim.gen_abort_rate = Fraction::ONE;
    let (env, reader) = Env::with_worker(sim, fast()).await?;
    let c = env.run(&reader, mini("r4", true)).await?.unwrap();
    assert_eq!(c.status, GenerationStatus::Cancelled);
    assert_eq!(c.actual_cost_usd, None);
    // ⌈12/4⌉ = 3 prompt tokens, "The simulated answer is " ⌈24/4⌉ = 6
    // completion tokens: 3 × 0.00000015 + 6 × 0.0000006
    assert_eq!(c.estimated_cost_usd, Some(cost!("0.00000405")));
    assert_eq!(c.usage.prompt_tokens, 0);
    assert!(
        env.sim
            .simulator()
            .generation(&c.generation_id)
            .unwrap()
            .cancelled
    );

    // The reconciler finds the actual cost of what was produced.
    let (stop, task) = spawn_reconciler(&env);
    let costs = env.bus.replay_consumer(StreamKind::Costs, "").await?;
    let deadline = Instant::now() + WAIT;
    let mut found = None;
    while found.is_none() && Instant::now() < deadline {
        for m in costs.fetch(10, Duration::from_millis(200)).await? {
            m.ack().await?;
            if let Ok(AnyEvent::Reconciled(r)) =
                tally_events::decode("tally", m.subject(), m.payload())
            {
                found = Some(r.data);
            }
        }
    }
    let r = found.expect("cost.reconciled arrives");
    assert_eq!(r.generation_id, c.generation_id);
    // 3 × 0.00000015 + 4 × 0.0000006 (half of the output was produced)
    assert_eq!(r.actual_cost_usd, usd!("0.00000285"));
    stop.send(true)?;
    task.await?;
    Ok(())
}

async fn store() -> anyhow::Result<(tally_testkit::TestDb, tally_store::Store)> {
    let (db, store) = tally_testkit::TestDb::migrated(16).await?;
    Ok((db, store))
}

async fn hard_budget(
    store: &tally_store::Store,
    name: &str,
    limit: &str,
) -> anyhow::Result<tally_store::Budget> {
    let (b, _) = store
        .create_budget(
            tally_store::NewBudget {
                org_id: ORG.into(),
                name: name.into(),
                scope: tally_budget::Scope {
                    agent_id: Some("agent-1".into()),
                    ..Default::default()
                },
                period: tally_budget::PeriodKind::Total,
                timezone: "UTC".into(),
                limit_usd: cost!(limit),
                thresholds: vec![100],
                enforcement: tally_budget::Enforcement::Hard,
                allow_unpriced_models: false,
            },
            &tally_store::ledger::PostingOptions::default(),
        )
        .await?;
    Ok(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exhausted_hard_budget_refuses_and_openrouter_is_not_called() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    hard_budget(&store, "team-cap", "0").await?;
    let mut env = Env::start(SimConfig::ephemeral()).await?;
    env.spawn_worker(Some(Reservations::new(store.clone())), fast());
    let reader = env.reader().await?;
    let f = env.run(&reader, mini("r5", false)).await?.unwrap_err();
    assert_eq!(f.reason, "budget_exhausted");
    assert!(f.message.contains("team-cap"), "{}", f.message);
    assert_eq!(f.generation_id, None);
    assert!(!f.retryable);
    assert_eq!(env.sim.simulator().stats(None).generations_registered, 0);
    let r = store.reservation("r5").await?;
    assert_eq!(r.state, tally_store::ReservationState::Refused);
    Ok(())
}

/// The worst case of `mini(…)`: (12 input
/// bytes + 16) × 0.00000015 + 8 output tokens × 0.0000006.
const MINI_WORST_CASE: &str = "0.000009";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_requests_never_pass_a_hard_budget() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    // Room for three worst cases.
    let limit = usd!(MINI_WORST_CASE)
        .try_mul_int(3)?
        .try_add(usd!("0.0000005"))?;
    let budget = hard_budget(&store, "three", &limit.to_string()).await?;
    let mut env = Env::start(SimConfig {
        gen_latency: Duration::from_millis(400),
        ..SimConfig::ephemeral()
    })
    .await?;
    env.spawn_worker(
        Some(Reservations::new(store.clone())),
        WorkerConfig {
            concurrency: 64,
            batch_size: 64,
            ..fast()
        },
    );
    // The projector settles the holds as the completed events arrive.
    let projector = tally_projector::Projector::new(
        env.bus.clone(),
        store.clone(),
        tally_projector::ProjectorConfig::default(),
        Arc::new(tally_projector::Metrics::register(
            &tally_telemetry::Registry::new(),
        )?),
    );
    let (stop_p, shutdown_p) = watch::channel(false);
    let p = tokio::spawn(projector.run(shutdown_p));
    let watch_store = store.clone();
    let watched = budget.clone();
    let peak = tokio::spawn(async move {
        let mut peak = Usd::ZERO;
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            let t = watch_store
                .periods_at(std::slice::from_ref(&watched), Utc::now())
                .await
                .unwrap()
                .remove(0)
                .1;
            peak = peak.max(t.spent_usd.try_add(t.reserved_usd).expect("within range"));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        peak
    });
    let reader = env.reader().await?;
    let ids: Vec<String> = (0..50).map(|i| format!("par-{i}")).collect();
    futures::future::try_join_all(ids.iter().map(|id| env.request(mini(id, false)))).await?;
    let mut completed = 0;
    let mut refused = 0;
    let mut left: std::collections::HashSet<String> = ids.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !left.is_empty() && Instant::now() < deadline {
        for m in reader.fetch(64, Duration::from_millis(200)).await? {
            m.ack().await?;
            match tally_events::decode("tally", m.subject(), m.payload()) {
                Ok(AnyEvent::Completed(c)) => {
                    if let Some(r) = c.data.request_id.as_ref().filter(|r| left.remove(*r)) {
                        let _ = r;
                        completed += 1;
                    }
                }
                Ok(AnyEvent::Failed(f)) if left.remove(&f.data.request_id) => {
                    assert_eq!(f.data.reason, "budget_exhausted", "{:?}", f.data);
                    refused += 1;
                }
                _ => {}
            }
        }
    }
    assert!(left.is_empty(), "unanswered: {left:?}");
    assert!(completed >= 1, "at least one generation ran");
    assert_eq!(completed + refused, 50);
    // Every hold ends settled (or was never taken).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (held, _) = store
            .list_reservations(ORG, Some(tally_store::ReservationState::Held), None, 100)
            .await?;
        if held.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "holds left: {held:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (settled, _) = store
        .list_reservations(ORG, Some(tally_store::ReservationState::Settled), None, 100)
        .await?;
    assert_eq!(settled.len(), completed);
    let t = store
        .periods_at(std::slice::from_ref(&budget), Utc::now())
        .await?
        .remove(0)
        .1;
    assert!(
        t.spent_usd <= limit,
        "spent {} > limit {limit}",
        t.spent_usd
    );
    assert_eq!(t.reserved_usd, Usd::ZERO);
    assert_eq!(
        env.sim.simulator().stats(None).generations_registered,
        completed
    );
    let peak = peak.await?;
    assert!(peak <= limit, "spent + held peaked at {peak} > {limit}");
    stop_p.send(true)?;
    let _ = p.await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_request_with_a_generation_id_is_not_run_again() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let mut env = Env::start(SimConfig::ephemeral()).await?;
    // As if an earlier delivery had taken the hold and got OpenRouter's
    // headers, then died.
    let hold = tally_store::HoldRequest {
        request_id: "again-1".into(),
        attribution: Attribution {
            agent_id: Some("agent-1".into()),
            session_id: Some("sess-1".into()),
            user_id: Some("user-1".into()),
            ..Attribution::new(ORG, MINI)
        },
        fallback_models: Vec::new(),
        amount_usd: Some(cost!(MINI_WORST_CASE)),
        max_output_tokens: 8,
        ttl: Duration::from_secs(600),
    };
    store.take_holds(&[hold]).await?;
    store
        .record_generation("again-1", "gen-earlier-1", Duration::from_secs(600))
        .await?;
    env.spawn_worker(Some(Reservations::new(store.clone())), fast());
    let reader = env.reader().await?;
    let c = env.run(&reader, mini("again-1", false)).await?.unwrap();
    assert_eq!(c.generation_id, "gen-earlier-1");
    assert_eq!(c.actual_cost_usd, None);
    assert_eq!(c.estimated_cost_usd, Some(cost!(MINI_WORST_CASE)));
    assert_eq!(env.sim.simulator().stats(None).generations_registered, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_fail_with_specific_reasons() -> anyhow::Result<()> {
    let mut env = Env::start(SimConfig::ephemeral()).await?;
    env.spawn_worker(
        None,
        WorkerConfig {
            byok: ByokProviders::new().with_org("other-org", ["OpenAI"]),
            ..fast()
        },
    );
    let reader = env.reader().await?;
    let routed = |id: &str, model: &str, routing: Routing| GenerationRequested {
        routing: Some(routing),
        ..request(id, model, false)
    };
    let presets = |p: &[&str]| Routing {
        presets: Some(p.iter().map(|s| s.to_string()).collect()),
        ..Routing::default()
    };
    let mut fallback = mini("bad-fallback", false);
    fallback.models = Some(vec!["nope/never".into()]);
    let cases = [
        (request("bad-model", "nope/nope", false), "unknown_model"),
        (fallback, "unknown_model"),
        (
            routed(
                "bad-byok",
                "openai/gpt-4o-mini",
                Routing {
                    capacity: Some(Capacity::ByokOnly),
                    ..Routing::default()
                },
            ),
            "byok_no_providers",
        ),
        (
            routed(
                "bad-reasoning",
                "openai/gpt-4o-mini",
                presets(&["reasoning-required"]),
            ),
            "preset_unsatisfiable",
        ),
        (
            routed(
                "bad-json",
                "deepseek/deepseek-r1",
                presets(&["strict-json"]),
            ),
            "preset_unsatisfiable",
        ),
        (
            routed(
                "bad-price",
                "openai/gpt-4o-mini",
                presets(&["max-price:-3"]),
            ),
            "invalid_preset",
        ),
    ];
    for (req, _) in &cases {
        env.request(req.clone()).await?;
    }
    // Requests run concurrently: collect every failure, in any order.
    let mut failures = std::collections::HashMap::new();
    while failures.len() < cases.len() {
        let f = wait_for(&reader, |ev| match ev {
            AnyEvent::Failed(f) => Some(f.data.clone()),
            AnyEvent::Completed(c) => panic!("a bad request completed: {:?}", c.data),
            _ => None,
        })
        .await?;
        failures.insert(f.request_id.clone(), f.reason);
    }
    for (req, reason) in &cases {
        assert_eq!(failures[&req.request_id], *reason, "{}", req.request_id);
    }
    assert_eq!(env.sim.simulator().stats(None).generations_registered, 0);

    // A request whose subject names another org is dead-lettered.
    let req = mini("wrong-org", false);
    let ev = CloudEvent::new_on_bus("tally", "requested-wrong-org", "/test", Utc::now(), req);
    env.bus
        .publish(
            "tally.generation.requested.globex",
            &ev.id,
            ev.to_json().into(),
        )
        .await?;
    let dl = env.bus.replay_consumer(StreamKind::DeadLetter, "").await?;
    let deadline = Instant::now() + WAIT;
    let mut reason = None;
    while reason.is_none() && Instant::now() < deadline {
        for m in dl.fetch(10, Duration::from_millis(200)).await? {
            reason = m
                .headers()
                .and_then(|h| h.get(tally_bus::HEADER_DEAD_LETTER_REASON))
                .map(|v| v.as_str().to_owned());
        }
    }
    assert_eq!(reason.as_deref(), Some("subject_mismatch"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retryable_errors_are_retried_then_fail_retryable() -> anyhow::Result<()> {
    let sim = SimConfig {
        gen_rate_429: Fraction::ONE,
        retry_after: Duration::from_millis(100),
        ..SimConfig::ephemeral()
    };
    let (env, reader) = Env::with_worker(sim, three_attempts()).await?;
    let f = env.run(&reader, mini("r7", false)).await?.unwrap_err();
    assert_eq!(f.reason, "upstream_rate_limited");
    assert!(f.retryable);
    Ok(())
}

#[test]
fn requested_events_used_here_are_valid() {
    let r = request("x", "m/x", false);
    r.validate().unwrap();
}

/// A generation that takes longer than the consumer's ack wait is kept in
/// progress by the heartbeat: it runs once, not once per redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generation_longer_than_the_ack_wait_runs_once() -> anyhow::Result<()> {
    let mut env = Env::start_with_ack_wait(
        SimConfig {
            gen_latency: Duration::from_secs(5),
            ..SimConfig::ephemeral()
        },
        Duration::from_secs(2),
    )
    .await?;
    // Two workers, so a redelivery would find one free.
    for _ in 0..2 {
        env.spawn_worker(
            None,
            WorkerConfig {
                heartbeat: Duration::from_millis(500),
                ..fast()
            },
        );
    }
    let reader = env.reader().await?;
    let c = env.run(&reader, mini("slow-1", false)).await?.unwrap();
    assert_eq!(c.status, GenerationStatus::Completed);
    // Past another ack wait: no second generation was started.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.sim.simulator().stats(None).generations_registered, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_subject_inside_tally_is_refused_and_nothing_lands_there() -> anyhow::Result<()> {
    let (env, reader) = Env::with_worker(SimConfig::ephemeral(), fast()).await?;
    let target = format!("tally.generation.completed.{ORG}");
    let mut spy = env.bus.client().subscribe("tally.>").await?;
    let mut req = mini("r-hostile-reply", false);
    req.reply_subject = Some(target.clone());
    let f = env.run(&reader, req).await?.unwrap_err();
    assert_eq!(f.reason, "reply_subject_forbidden");
    assert!(!f.retryable);
    assert_eq!(env.sim.simulator().stats(None).generations_registered, 0);
    // Nothing was published on the hostile subject (only the request, the
    // failed event and the result on the org's own result subject).
    let until = Instant::now() + Duration::from_secs(1);
    while let Ok(Some(m)) = tokio::time::timeout_at(until.into(), spy.next()).await {
        assert_ne!(m.subject.as_str(), target, "a message landed on {target}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_organisation_runs_on_its_own_connection() -> anyhow::Result<()> {
    use std::collections::HashMap;
    use tally_sim::KeySpec;
    let env = Env::start(SimConfig::ephemeral()).await?;
    let (_db, store) = tally_testkit::TestDb::migrated(4).await?;
    let kek = tally_secrets::generate_key_setting("k1");
    let keyring = Arc::new(tally_secrets::Keyring::from_settings(Some(&kek), None)?);
    let base = OpenRouterClient::new(ClientConfig::new(env.sim.base_url()))?;
    let conns = tally_provider::Connections::new(
        store.clone(),
        Some(keyring.clone()),
        base.clone(),
        "http://127.0.0.1:1/auth",
        None,
    );
    let ka = env.sim.simulator().issue_key(KeySpec::default());
    let kb = env.sim.simulator().issue_key(KeySpec::default());
    for (org, k) in [("acme", &ka.key), ("globex", &kb.key)] {
        conns
            .connect_key(
                org,
                secrecy::SecretString::from(k.clone()),
                tally_store::providers::ConnectedVia::ApiKey,
                None,
            )
            .await?;
    }
    store
        .put_routing_profile(
            "globex",
            None,
            &serde_json::json!({"server_tools": ["web_search"]}),
        )
        .await?;
    let providers = tally_provider::OrgProviders::new(store.clone(), Some(keyring), base.clone());
    let (_stop, shutdown) = watch::channel(false);
    providers.spawn_listener(shutdown.clone());
    let worker = Worker::new(
        env.bus.clone(),
        base,
        None,
        Catalog::new(CatalogConfig::default()),
        fast(),
        Arc::new(Metrics::unregistered()),
    )
    .with_org_providers(providers);
    tokio::spawn(async move { worker.run(shutdown).await.unwrap() });
    let reader = env.reader().await?;

    let mut asked = Vec::new();
    for (org, n) in [("acme", 3), ("globex", 3), ("initech", 1)] {
        for i in 0..n {
            let id = format!("{org}-{i}");
            let mut r = mini(&id, i % 2 == 0);
            r.attribution.org_id = org.to_owned();
            if org == "globex" && i == 2 {
                r.server_tools = Some(vec!["web_search".into()]);
            }
            env.request(r).await?;
            asked.push(id);
        }
    }
    let mut r = mini("acme-tools", false);
    r.server_tools = Some(vec!["web_search".into()]);
    env.request(r).await?;
    asked.push("acme-tools".into());

    let mut outcome: HashMap<String, Result<String, String>> = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while outcome.len() < asked.len() && Instant::now() < deadline {
        for m in reader.fetch(16, Duration::from_millis(200)).await? {
            m.ack().await?;
            match tally_events::decode("tally", m.subject(), m.payload()) {
                Ok(AnyEvent::Completed(c)) => {
                    let rid = c.data.request_id.clone().unwrap();
                    outcome.insert(rid, Ok(c.data.generation_id.clone()));
                }
                Ok(AnyEvent::Failed(f)) => {
                    outcome.insert(f.data.request_id.clone(), Err(f.data.reason.clone()));
                }
                _ => {}
            }
        }
    }
    assert_eq!(outcome.len(), asked.len(), "{outcome:?}");
    assert_eq!(outcome["initech-0"], Err("provider_not_connected".into()));
    assert_eq!(outcome["acme-tools"], Err("server_tool_not_granted".into()));
    let gens = |prefix: &str| -> Vec<String> {
        let mut v: Vec<String> = outcome
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && *k != "acme-tools")
            .map(|(_, v)| v.clone().expect("completed"))
            .collect();
        v.sort();
        v
    };
    let served = |key: &str| -> Vec<String> {
        let mut v: Vec<String> = env
            .sim
            .simulator()
            .key_activity(key)
            .unwrap()
            .generations
            .into_iter()
            .map(|g| g.id)
            .collect();
        v.sort();
        v
    };
    assert_eq!(served(&ka.key), gens("acme-"));
    assert_eq!(served(&kb.key), gens("globex-"));
    assert_eq!(gens("acme-").len(), 3);
    assert_eq!(gens("globex-").len(), 3, "the granted server tool ran");
    assert!(
        served(tally_sim::TEST_KEY).is_empty(),
        "no other key was used"
    );
    Ok(())
}

/// Reads the COSTS stream until the reconciled event of `generation_id`.
async fn reconciled_of(
    env: &Env,
    generation_id: &str,
) -> anyhow::Result<tally_events::CostReconciled> {
    let costs = env.bus.replay_consumer(StreamKind::Costs, "").await?;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        for m in costs.fetch(10, Duration::from_millis(200)).await? {
            m.ack().await?;
            match tally_events::decode("tally", m.subject(), m.payload()) {
                Ok(AnyEvent::Reconciled(r)) if r.data.generation_id == generation_id => {
                    return Ok(r.data)
                }
                Ok(AnyEvent::Unresolved(u)) if u.data.generation_id == generation_id => {
                    anyhow::bail!("unresolved: {:?}", u.data)
                }
                _ => {}
            }
        }
    }
    anyhow::bail!("no cost.reconciled for {generation_id} within {WAIT:?}")
}

fn spawn_reconciler(env: &Env) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, shutdown) = watch::channel(false);
    let rec = tally_reconciler::Reconciler::new(
        env.bus.clone(),
        env.client.clone(),
        tally_reconciler::ReconcilerConfig {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            deadline: Duration::from_secs(60),
            ..tally_reconciler::ReconcilerConfig::default()
        },
        Arc::new(tally_reconciler::Metrics::unregistered()),
    );
    let task = tokio::spawn(async move { rec.run(shutdown).await.unwrap() });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mid_stream_error_completes_errored_once_and_the_reconciler_finds_the_cost_through_502_524_529(
) -> anyhow::Result<()> {
    let mut sim = SimConfig::ephemeral();
    sim.gen_mid_stream_error_rate = Fraction::ONE;
    sim.stats_delay = Duration::from_millis(300);
    let (env, reader) = Env::with_worker(sim, fast()).await?;
    let c = env.run(&reader, mini("r-mid", true)).await?.unwrap();
    assert_eq!(c.status, GenerationStatus::Errored);
    assert_eq!(c.actual_cost_usd, None);
    assert!(c.estimated_cost_usd.is_some());
    let g = env.sim.simulator().generation(&c.generation_id).unwrap();
    assert_eq!(g.finish_reason.as_deref(), Some("error"));
    assert!(!g.cancelled);
    // Ran once: one generation in the simulator, one completed event.
    assert_eq!(env.sim.simulator().stats(None).generations_registered, 1);

    // The lookups meet a provider error, an edge timeout and an overload
    // first: all transient, so the reconciler keeps asking.
    use tally_sim::ScriptedReply;
    env.sim.simulator().register_generation(g.script([
        ScriptedReply::BadGateway,
        ScriptedReply::EdgeTimeout,
        ScriptedReply::Overloaded,
    ]));
    let (stop, task) = spawn_reconciler(&env);
    let r = reconciled_of(&env, &c.generation_id).await?;
    // 3 × 0.00000015 + 4 × 0.0000006: half of the output was produced.
    assert_eq!(r.actual_cost_usd, usd!("0.00000285"));
    assert!(r.attempts >= 4, "{}", r.attempts);
    assert!(env.sim.simulator().calls(&c.generation_id) >= 4);
    stop.send(true)?;
    task.await?;
    // Nothing more happened for the request: no second generation.
    assert_eq!(env.sim.simulator().stats(None).generations_registered, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_required_fails_at_once_and_gateway_errors_fail_after_retries() -> anyhow::Result<()>
{
    for (knob, reason, retryable) in [
        ("402", "upstream_payment_required", false),
        ("502", "upstream_provider_error", true),
        ("524", "upstream_timeout", true),
        ("529", "upstream_overloaded", true),
    ] {
        let mut cfg = SimConfig::ephemeral();
        match knob {
            "402" => cfg.gen_rate_402 = Fraction::ONE,
            "502" => cfg.gen_rate_502 = Fraction::ONE,
            "524" => cfg.gen_rate_524 = Fraction::ONE,
            _ => cfg.gen_rate_529 = Fraction::ONE,
        }
        cfg.retry_after = Duration::from_millis(100);
        let (env, reader) = Env::with_worker(cfg, three_attempts()).await?;
        let started = Instant::now();
        let f = env
            .run(&reader, mini(&format!("r-{knob}"), false))
            .await?
            .unwrap_err();
        assert_eq!(f.reason, reason, "{knob}");
        assert_eq!(f.retryable, retryable, "{knob}");
        assert_eq!(f.generation_id, None, "{knob}");
        if retryable {
            // Three deliveries with backoff (100 ms, 200 ms) before giving up.
            assert!(
                started.elapsed() >= Duration::from_millis(300),
                "{knob}: {:?}",
                started.elapsed()
            );
        }
        // No generation ran, so nothing is to be booked.
        assert_eq!(
            env.sim.simulator().stats(None).generations_registered,
            0,
            "{knob}"
        );
    }
    Ok(())
}
