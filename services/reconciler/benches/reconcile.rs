//! Load benchmark of the reconciler (not a timed test):
//!
//! ```text
//! cargo bench -p tally-reconciler --bench reconcile [-- --rate 1000 --secs 30]
//! ```
//!
//! Starts its own NATS server (tally-testkit) and the OpenRouter simulator
//! (statistics ready 2 s after a generation, 5 % transient faults: 429 with
//! `Retry-After`, 500 and malformed replies in equal parts), publishes
//! completed events without a cost at the target rate, runs one reconciler,
//! and prints the achieved publish rate, reconciled/s, the pending set every
//! second, the median and p99 completion-to-reconciled time, and HTTP calls
//! per generation — next to a naive poller (every 250 ms from completion)
//! that runs in the same process on a sample of the same generations against
//! a second simulator with the same faults.
//!
//! Flags (or environment variables):
//!
//! | flag | env | default | meaning |
//! |---|---|---|---|
//! | `--rate N` | `TALLY_BENCH_RATE` | 1000 | completed events per second |
//! | `--secs N` | `TALLY_BENCH_SECS` | 30 | how long to publish |
//! | `--limit N` | `TALLY_BENCH_LIMIT` | 5000 | the reconciler's `rate_per_sec` |
//! | `--concurrency N` | `TALLY_BENCH_CONCURRENCY` | 64 | lookups in flight |
//! | `--sample N` | `TALLY_BENCH_SAMPLE` | 10 | every N-th generation also polled naively (0: no baseline) |
//! | `--backlog-secs N` | `TALLY_BENCH_BACKLOG_SECS` | 60 | the backlog case: how long events are published while the reconciler is stopped (0: skip) |
//!
//! **The backlog case** follows: the reconciler is stopped, events are
//! published at the same rate for `--backlog-secs` (the production case is
//! ten minutes of downtime; one minute keeps the run short and shows the
//! same behaviour, since the drain rate is set by the rate limit, not by the
//! backlog's size), then a reconciler whose deadline (half the backlog
//! duration) has passed for the older half starts; printed: how fast it
//! drains (reconciled/s), how many it gives up (must be zero) and HTTP calls
//! per generation, next to the steady-state figures.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use tally_bus::{Bus, BusConfig, ConsumerName};
use tally_events::{AnyEvent, CloudEvent, GenerationCompleted};
use tally_openrouter::{ClientConfig, OpenRouterClient};
use tally_reconciler::{Metrics, Reconciler, ReconcilerConfig};
use tally_sim::{Fraction, SimConfig, Simulator};
use tally_testkit::NatsServer;

/// Naive baseline: poll every this long from completion.
const NAIVE_INTERVAL: Duration = Duration::from_millis(250);
/// How long to wait after the last publish for everything to settle.
const DRAIN_LIMIT: Duration = Duration::from_secs(90);

struct Args {
    rate: u64,
    secs: u64,
    limit: u32,
    concurrency: usize,
    sample: u64,
    backlog_secs: u64,
}

fn arg<T: FromStr>(args: &[String], flag: &str, env: &str, default: T) -> T {
    let from_flag = args
        .iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("{flag}=")).map(str::to_owned))
        });
    from_flag
        .or_else(|| std::env::var(env).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Args {
    fn parse() -> Args {
        // `cargo bench` adds `--bench`; unknown arguments are ignored.
        let args: Vec<String> = std::env::args().collect();
        // Without `--bench` this runs under `cargo test` (the test suite
        // builds and runs every target): a short smoke run keeps the
        // benchmark's code working without spending the suite's time.
        let smoke = !args.iter().any(|a| a == "--bench");
        let (rate, secs) = if smoke { (50, 2) } else { (1000, 30) };
        Args {
            rate: arg(&args, "--rate", "TALLY_BENCH_RATE", rate).max(1),
            secs: arg(&args, "--secs", "TALLY_BENCH_SECS", secs).max(1),
            limit: arg(&args, "--limit", "TALLY_BENCH_LIMIT", 5000u32).max(1),
            concurrency: arg(&args, "--concurrency", "TALLY_BENCH_CONCURRENCY", 64usize).max(1),
            sample: arg(&args, "--sample", "TALLY_BENCH_SAMPLE", 10u64),
            backlog_secs: arg(
                &args,
                "--backlog-secs",
                "TALLY_BENCH_BACKLOG_SECS",
                if smoke { 2 } else { 60 },
            ),
        }
    }
}

fn sim_config() -> SimConfig {
    // 5 % transient faults in equal parts (one draw decides, rates exclusive).
    let third = Fraction::from_ppm(50_000 / 3);
    SimConfig {
        stats_delay: Duration::from_secs(2),
        rate_429: third,
        rate_500: third,
        rate_malformed: third,
        retry_after: Duration::from_secs(1),
        seed: Some(42),
        ..SimConfig::ephemeral()
    }
}

/// A completed generation of 100 prompt and 50 completion tokens, cost unknown.
fn completed(id: &str, at: DateTime<Utc>) -> CloudEvent<GenerationCompleted> {
    let mut data = tally_tests::Completed::at(id, "bench", at).data;
    data.provider = None;
    data.usage.completion_tokens = 50;
    CloudEvent::new_on_bus("tally", format!("completed-{id}"), "/bench", at, data)
}

fn client(base_url: String) -> OpenRouterClient {
    OpenRouterClient::new(ClientConfig::new(base_url).with_api_key(tally_sim::TEST_KEY))
        .expect("valid client config")
}

fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = (sorted.len() * pct).div_ceil(100).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

/// A rate with two decimals, from integer arithmetic.
fn per_sec(count: u64, over: Duration) -> String {
    let ms = over.as_millis().max(1);
    let centi = u128::from(count) * 100_000 / ms;
    format!("{}.{:02}", centi / 100, centi % 100)
}

/// `num / den` with two decimals.
fn ratio(num: u64, den: u64) -> String {
    let centi = u128::from(num) * 100 / u128::from(den.max(1));
    format!("{}.{:02}", centi / 100, centi % 100)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let total = args.rate * args.secs;
    println!(
        "reconcile bench: {} completed events/s for {} s ({total} generations), stats after 2 s, \
         5 % transient faults; reconciler rate limit {}/s, {} lookups in flight",
        args.rate, args.secs, args.limit, args.concurrency
    );

    let nats = NatsServer::start().await?;
    let bus = Bus::connect(&BusConfig::new(nats.url())).await?;
    bus.ensure_topology().await?;
    let sim = Simulator::start(sim_config()).await?;
    let naive_sim = Simulator::start(sim_config()).await?;

    // Completion times by generation, and what came back.
    let completed_at: Arc<Mutex<HashMap<String, DateTime<Utc>>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let reconciled = Arc::new(AtomicU64::new(0));
    let unresolved = Arc::new(AtomicU64::new(0));
    let last_settled: Arc<Mutex<Option<Instant>>> = Arc::default();

    // Read the cost events as they are stored (core subscription on the
    // stream's subjects).
    let mut sub = bus.client().subscribe("tally.cost.>").await?;
    let reader = {
        let completed_at = completed_at.clone();
        let latencies = latencies.clone();
        let reconciled = reconciled.clone();
        let unresolved = unresolved.clone();
        let last_settled = last_settled.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                match tally_events::decode("tally", msg.subject.as_str(), &msg.payload) {
                    Ok(AnyEvent::Reconciled(ev)) => {
                        let at = completed_at
                            .lock()
                            .unwrap()
                            .get(&ev.data.generation_id)
                            .copied();
                        if let Some(at) = at {
                            let took = (ev.data.reconciled_at - at).to_std().unwrap_or_default();
                            latencies.lock().unwrap().push(took);
                        }
                        reconciled.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(AnyEvent::Unresolved(_)) => {
                        unresolved.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => continue,
                }
                *last_settled.lock().unwrap() = Some(Instant::now());
            }
        })
    };

    // The reconciler under test.
    let metrics = Arc::new(Metrics::unregistered());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let cfg = ReconcilerConfig {
        rate_per_sec: args.limit,
        concurrency: args.concurrency,
        ..ReconcilerConfig::default()
    };
    let reconciler = tokio::spawn(
        Reconciler::new(bus.clone(), client(sim.base_url()), cfg, metrics.clone()).run(shutdown),
    );

    // The naive baseline: poll every 250 ms from completion until the cost is there.
    let naive_client = client(naive_sim.base_url());
    let naive_done = Arc::new(AtomicU64::new(0));
    let naive_sampled = Arc::new(AtomicU64::new(0));

    // Publisher: paced in 10 ms ticks, publishes in parallel (bounded).
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let bus = bus.clone();
        let sim = sim.simulator().clone();
        let naive = naive_sim.simulator().clone();
        let completed_at = completed_at.clone();
        let published = published.clone();
        let naive_done = naive_done.clone();
        let naive_sampled = naive_sampled.clone();
        let rate = args.rate;
        let sample = args.sample;
        tokio::spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(256));
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut sent = 0u64;
            let mut tasks = tokio::task::JoinSet::new();
            while sent < total {
                tick.tick().await;
                let due = (u128::from(rate) * start.elapsed().as_millis() / 1000) as u64;
                while sent < due.min(total) {
                    let id = format!("gen-{sent:07}");
                    let permit = permits.clone().acquire_owned().await.expect("open");
                    let g = sim.random_generation(&id);
                    let naive_g = (sample > 0 && sent % sample == 0).then(|| g.clone());
                    let now = Utc::now();
                    sim.register_generation(g);
                    completed_at.lock().unwrap().insert(id.clone(), now);
                    if let Some(g) = naive_g {
                        naive.register_generation(g);
                        naive_sampled.fetch_add(1, Ordering::Relaxed);
                        let client = naive_client.clone();
                        let id = id.clone();
                        let naive_done = naive_done.clone();
                        tokio::spawn(async move {
                            let mut tick = tokio::time::interval_at(
                                tokio::time::Instant::now() + NAIVE_INTERVAL,
                                NAIVE_INTERVAL,
                            );
                            loop {
                                tick.tick().await;
                                if client.generation(&id).await.is_ok() {
                                    naive_done.fetch_add(1, Ordering::Relaxed);
                                    return;
                                }
                            }
                        });
                    }
                    let ev = completed(&id, now);
                    let bus = bus.clone();
                    let published = published.clone();
                    tasks.spawn(async move {
                        let subject = ev.bus_subject("tally");
                        let mut tries = 0;
                        while let Err(e) = bus.publish(&subject, &ev.id, ev.to_json().into()).await
                        {
                            tries += 1;
                            if tries > 5 {
                                eprintln!("publish failed: {e}");
                                return;
                            }
                        }
                        published.fetch_add(1, Ordering::Relaxed);
                        drop(permit);
                    });
                    sent += 1;
                }
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
            start.elapsed()
        })
    };

    // Sample the pending set every second.
    println!();
    println!(
        "{:>4}  {:>9}  {:>10}  {:>10}  {:>8}  {:>10}  {:>10}",
        "t_s", "published", "reconciled", "unresolved", "pending", "http_calls", "rate_limit"
    );
    let bench_start = Instant::now();
    let mut samples: Vec<(u64, u64, u64)> = Vec::new();
    let mut publish_took = None;
    let mut publisher = Some(publisher);
    let mut second = 0u64;
    loop {
        second += 1;
        tokio::time::sleep_until(
            tokio::time::Instant::from_std(bench_start) + Duration::from_secs(second),
        )
        .await;
        let pending = bus.pending(ConsumerName::Reconciler).await.unwrap_or(0);
        let done = reconciled.load(Ordering::Relaxed);
        let gave_up = unresolved.load(Ordering::Relaxed);
        println!(
            "{:>4}  {:>9}  {:>10}  {:>10}  {:>8}  {:>10}  {:>10}",
            second,
            published.load(Ordering::Relaxed),
            done,
            gave_up,
            pending,
            sim.simulator().total_calls(),
            metrics.rate_limit.get()
        );
        samples.push((second, pending, done));
        if publisher.as_ref().is_some_and(|p| p.is_finished()) {
            publish_took = Some(publisher.take().expect("checked").await?);
        }
        if publish_took.is_some() && done + gave_up >= total {
            break;
        }
        if second > args.secs + DRAIN_LIMIT.as_secs() {
            println!("(stopping: not everything settled within {DRAIN_LIMIT:?} after publishing)");
            break;
        }
    }
    let end_of_bench = Instant::now();
    let _ = stop.send(true);
    reconciler.await??;
    reader.abort();

    let publish_took = publish_took.unwrap_or_else(|| bench_start.elapsed());
    let done = reconciled.load(Ordering::Relaxed);
    let gave_up = unresolved.load(Ordering::Relaxed);
    let calls = sim.simulator().total_calls();
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let settled_at = last_settled.lock().unwrap().unwrap_or(end_of_bench);
    let steady: Vec<u64> = samples
        .iter()
        .filter(|(t, _, _)| *t > 5 && *t <= args.secs)
        .map(|(_, p, _)| *p)
        .collect();
    // Reconciled per second while publishing at full rate (t = 6 .. secs).
    let window = samples
        .iter()
        .find(|(t, _, _)| *t == 5)
        .zip(samples.iter().find(|(t, _, _)| *t == args.secs));

    println!();
    println!("== results ==");
    println!(
        "published:              {} events in {:.1?} = {} /s (target {} /s)",
        published.load(Ordering::Relaxed),
        publish_took,
        per_sec(published.load(Ordering::Relaxed), publish_took),
        args.rate
    );
    println!(
        "reconciled:             {done} ({} /s from first publish to last event), unresolved: {gave_up}",
        per_sec(done, settled_at.duration_since(bench_start))
    );
    if let Some(((t0, _, r0), (t1, _, r1))) = window {
        println!(
            "steady state:           {} reconciled/s (t={t0}..{t1} s, while publishing)",
            per_sec(
                r1.saturating_sub(*r0),
                Duration::from_secs(t1.saturating_sub(*t0).max(1))
            )
        );
    }
    if let (Some(min), Some(max)) = (steady.iter().min(), steady.iter().max()) {
        let mean = steady.iter().sum::<u64>() / steady.len() as u64;
        println!(
            "pending set (t=6..{} s): min {min}, mean {mean}, max {max} (flat = bounded by rate x time-to-cost)",
            args.secs
        );
    }
    println!(
        "completion->reconciled: median {:.3?}, p99 {:.3?}, max {:.3?} ({} samples)",
        percentile(&lat, 50),
        percentile(&lat, 99),
        lat.last().copied().unwrap_or_default(),
        lat.len()
    );
    println!(
        "HTTP calls/generation:  {} ({calls} calls for {total} generations)",
        ratio(calls, total)
    );
    let outcomes = [
        "ok",
        "not_yet",
        "rate_limited",
        "server_error",
        "malformed_reply",
    ]
    .map(|o| {
        format!(
            "{o}={}",
            metrics.fetch_attempts.with_label_values(&[o]).get()
        )
    });
    println!("lookup outcomes:        {}", outcomes.join(" "));
    let sampled = naive_sampled.load(Ordering::Relaxed);
    if sampled > 0 {
        // Let the last naive pollers finish.
        let wait_until = Instant::now() + Duration::from_secs(10);
        while naive_done.load(Ordering::Relaxed) < sampled && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let naive_calls = naive_sim.simulator().total_calls();
        println!(
            "naive 250 ms poller:    {} calls/generation ({naive_calls} calls for {sampled} sampled generations, same run)",
            ratio(naive_calls, sampled)
        );
        // naive calls per generation / ours, with two decimals.
        let den = u128::from(sampled) * u128::from(calls);
        if let Some(factor) = (u128::from(naive_calls) * u128::from(total) * 100).checked_div(den) {
            println!(
                "                        the reconciler makes {}.{:02}x fewer calls per generation",
                factor / 100,
                factor % 100
            );
        }
    }
    if args.backlog_secs > 0 {
        backlog(&args, &bus).await?;
    }
    Ok(())
}

/// The backlog case: events published while no reconciler runs, then one
/// starts with a deadline already past for the older half of them.
async fn backlog(args: &Args, bus: &Bus) -> anyhow::Result<()> {
    let n = args.rate * args.backlog_secs;
    let sim = Simulator::start(sim_config()).await?;
    println!();
    println!(
        "== backlog: {n} events published over {} s while the reconciler is stopped ==",
        args.backlog_secs
    );
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(256));
    while sent < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let due = (u128::from(args.rate) * start.elapsed().as_millis() / 1000) as u64;
        while sent < due.min(n) {
            let id = format!("gen-b-{sent:07}");
            sim.simulator()
                .register_generation(sim.simulator().random_generation(&id));
            let ev = completed(&id, Utc::now());
            let bus = bus.clone();
            let permit = permits.clone().acquire_owned().await?;
            tasks.spawn(async move {
                let subject = ev.bus_subject("tally");
                for _ in 0..5 {
                    if bus
                        .publish(&subject, &ev.id, ev.to_json().into())
                        .await
                        .is_ok()
                    {
                        break;
                    }
                }
                drop(permit);
            });
            sent += 1;
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let published_in = start.elapsed();

    let reconciled = Arc::new(AtomicU64::new(0));
    let unresolved = Arc::new(AtomicU64::new(0));
    let mut sub = bus.client().subscribe("tally.cost.>").await?;
    let reader = {
        let reconciled = reconciled.clone();
        let unresolved = unresolved.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                match tally_events::decode("tally", msg.subject.as_str(), &msg.payload) {
                    Ok(AnyEvent::Reconciled(ev)) if ev.data.generation_id.starts_with("gen-b-") => {
                        reconciled.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(AnyEvent::Unresolved(ev)) if ev.data.generation_id.starts_with("gen-b-") => {
                        unresolved.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        })
    };
    let metrics = Arc::new(Metrics::unregistered());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let cfg = ReconcilerConfig {
        rate_per_sec: args.limit,
        concurrency: args.concurrency,
        deadline: Duration::from_secs((args.backlog_secs / 2).max(1)),
        ..ReconcilerConfig::default()
    };
    let started = Instant::now();
    let reconciler = tokio::spawn(
        Reconciler::new(bus.clone(), client(sim.base_url()), cfg, metrics.clone()).run(shutdown),
    );
    let limit = started + DRAIN_LIMIT + Duration::from_secs(args.backlog_secs);
    while reconciled.load(Ordering::Relaxed) + unresolved.load(Ordering::Relaxed) < n
        && Instant::now() < limit
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_in = started.elapsed();
    let _ = stop.send(true);
    reconciler.await??;
    reader.abort();
    let done = reconciled.load(Ordering::Relaxed);
    let calls = sim.simulator().total_calls();
    println!("published:              {n} events in {published_in:.1?} (reconciler stopped)");
    println!(
        "drained:                {done} reconciled in {drained_in:.1?} after the start = {} reconciled/s, unresolved: {}",
        per_sec(done, drained_in),
        unresolved.load(Ordering::Relaxed)
    );
    println!(
        "HTTP calls/generation:  {} ({calls} calls for {n} generations)",
        ratio(calls, n)
    );
    Ok(())
}
