//! Projector throughput benchmark: how fast does the projector drain a
//! backlog of completed events with actual costs, against real NATS
//! (`sync_interval: always`) and real Postgres (default durability)?
//!
//! In one run, on the same machine, it measures:
//!
//! 1. **tally**: the projector (batches of `BATCH` messages, one transaction
//!    each) draining `EVENTS` events;
//! 2. **naive**: the same code with batches of one message and one
//!    transaction at a time — one transaction and one ack per event — on a
//!    smaller backlog;
//! 3. **raw ceiling**: plain batched Postgres inserts of the same rows
//!    (generations and journal entries, 1000 rows per statement, one commit
//!    per batch), no logic, no NATS;
//!
//! and prints events/s, the ratios, and the projector's peak memory while
//! draining (peak RSS of this process, reset before the drain; NATS and
//! Postgres run in their own processes).
//!
//! Run: `bash deploy/test.sh` once (it installs NATS and starts Postgres), then
//! `cargo bench -p tally-projector --bench drain`. Sizes:
//! `TALLY_BENCH_EVENTS` (default 100000), `TALLY_BENCH_NAIVE_EVENTS` (5000),
//! `TALLY_BENCH_BATCH` (1000).

// Rates and ratios are figures for people; money stays Usd (checked
// exactly against the preloaded total).
#![allow(clippy::float_arithmetic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_bus::{Bus, BusConfig, ConsumerName};
use tally_money::Usd;
use tally_projector::{Metrics, Projector, ProjectorConfig};
use tally_sim::load::{Generator, LoadArgs};
use tally_store::ledger::PostingOptions;
use tally_store::Store;
use tally_testkit::{NatsServer, TestDb};
use tokio::sync::watch;

const ORGS: [&str; 4] = ["org-a", "org-b", "org-c", "org-d"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Setup {
    _nats: NatsServer,
    _db: TestDb,
    bus: Bus,
    store: Store,
}

async fn setup() -> anyhow::Result<Setup> {
    let nats = NatsServer::start().await?;
    let (db, store) = tally_testkit::TestDb::migrated(8).await?;
    let bus = Bus::connect(&BusConfig::new(nats.url())).await?;
    bus.ensure_topology().await?;
    // Two budgets per organisation: org-wide and one agent.
    for org in ORGS {
        let mut b = tally_store::NewBudget {
            org_id: org.into(),
            name: "org".into(),
            scope: Default::default(),
            period: tally_budget::PeriodKind::Monthly,
            timezone: "UTC".into(),
            limit_usd: tally_money::cost!("1000000"),
            thresholds: vec![50, 80, 100],
            enforcement: tally_budget::Enforcement::Soft,
            allow_unpriced_models: false,
        };
        store
            .create_budget(b.clone(), &PostingOptions::default())
            .await?;
        b.name = "researcher".into();
        b.scope.agent_id = Some("researcher".into());
        store.create_budget(b, &PostingOptions::default()).await?;
    }
    Ok(Setup {
        _nats: nats,
        _db: db,
        bus,
        store,
    })
}

/// Publishes `n` completed events with actual costs; returns their exact total.
async fn preload(bus: &Bus, n: usize) -> anyhow::Result<Usd> {
    let mut gens: Vec<Generator> = ORGS
        .iter()
        .enumerate()
        .map(|(i, org)| {
            Generator::new(
                LoadArgs {
                    org: (*org).into(),
                    missing_cost: tally_sim::Fraction::ZERO,
                    seed: Some(i as u64),
                    ..Default::default()
                },
                bus.prefix(),
            )
        })
        .collect::<Result<_, _>>()?;
    let mut total = Usd::ZERO;
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let chunk = (n - i).min(2000);
        let events: Vec<_> = (0..chunk)
            .map(|k| gens[(i + k) % ORGS.len()].generate())
            .collect();
        let publishes = events
            .iter()
            .map(|g| bus.publish(&g.event.subject, &g.event.id, g.event.to_json().into()));
        for r in futures::future::join_all(publishes).await {
            r?;
        }
        total = total.try_add(Usd::try_sum(events.iter().map(|g| g.true_cost))?)?;
        i += chunk;
    }
    eprintln!(
        "  preloaded {n} events in {:.1}s ({:.0}/s publish rate)",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64()
    );
    Ok(total)
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Runs the projector until its consumers are empty; returns events/s.
async fn drain(s: &Setup, n: usize, batch: usize, concurrency: usize) -> anyhow::Result<f64> {
    let registry = tally_telemetry::Registry::new();
    let metrics = Arc::new(Metrics::register(&registry)?);
    let m = metrics.clone();
    let p = Projector::new(
        s.bus.clone(),
        s.store.clone(),
        ProjectorConfig {
            batch_size: batch,
            fetch_wait: Duration::from_millis(200),
            apply_concurrency: concurrency,
            ..Default::default()
        },
        metrics,
    );
    let (tx, rx) = watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(p.run(rx));
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let pending = s.bus.pending(ConsumerName::ProjectorCompleted).await?;
        if pending == 0 {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = tx.send(true);
    let _ = task.await;
    let commits = m.commit_seconds.get_sample_count();
    eprintln!(
        "  {commits} batches, {:.1} ms per transaction on average ({:.0}% of the drain time in transactions)",
        1000.0 * m.commit_seconds.get_sample_sum() / commits.max(1) as f64,
        100.0 * m.commit_seconds.get_sample_sum() / secs
    );
    Ok(n as f64 / secs)
}

/// Plain batched inserts of the rows the projector writes for `n` events.
async fn raw_ceiling(store: &Store, n: usize) -> anyhow::Result<f64> {
    sqlx::query(
        "CREATE TABLE raw_generations (generation_id text PRIMARY KEY, org_id text, agent_id text, \
         model text, completed_at timestamptz, actual numeric, debited numeric, basis text, state text)",
    )
    .execute(store.pool())
    .await?;
    sqlx::query(
        "CREATE TABLE raw_entries (budget_id text, entry_id uuid, generation_id text, kind text, \
         amount numeric, period_start timestamptz, PRIMARY KEY (budget_id, entry_id), \
         UNIQUE (budget_id, generation_id, kind))",
    )
    .execute(store.pool())
    .await?;
    let started = Instant::now();
    let batch = 1000;
    let mut i = 0;
    while i < n {
        let k = (n - i).min(batch);
        let ids: Vec<String> = (i..i + k).map(|j| format!("gen-raw-{j}")).collect();
        let amounts: Vec<Usd> = (i..i + k)
            .map(|j| Usd::new(12345678901234567 + j as i64, 20))
            .collect();
        let now = chrono::Utc::now();
        let mut tx = store.pool().begin().await?;
        sqlx::query(
            "INSERT INTO raw_generations SELECT g, 'org-a', 'researcher', 'openai/gpt-4o-mini', $3, a, a, 'actual', 'settled' \
             FROM unnest($1::text[], $2::numeric[]) AS t(g, a)",
        )
        .bind(&ids)
        .bind(&amounts)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // ~1.5 budgets per event on average (every event hits the org budget,
        // a third also the agent budget); write 2 to stay on the safe side.
        for budget in ["b-org", "b-agent"] {
            let entry_ids: Vec<uuid::Uuid> = (0..k).map(|_| uuid::Uuid::now_v7()).collect();
            sqlx::query(
                "INSERT INTO raw_entries SELECT $4, e, g, 'debit', a, $3 \
                 FROM unnest($1::text[], $2::numeric[], $5::uuid[]) AS t(g, a, e)",
            )
            .bind(&ids)
            .bind(&amounts)
            .bind(now)
            .bind(budget)
            .bind(&entry_ids)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        i += k;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn spent_total(store: &Store) -> anyhow::Result<Usd> {
    let v: Option<Usd> = sqlx::query_scalar(
        "SELECT sum(p.spent_usd) FROM budget_periods p JOIN budgets b ON b.id = p.budget_id WHERE b.name = 'org'",
    )
    .fetch_one(store.pool())
    .await?;
    Ok(v.unwrap_or_default())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tally_telemetry::init_tracing(false);
    // Without `--bench` this runs under `cargo test` (the suite runs every
    // target): a small smoke run keeps the benchmark working, fast.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (n, naive_n) = if smoke { (300, 30) } else { (100_000, 5_000) };
    let n = env_usize("TALLY_BENCH_EVENTS", n);
    let naive_n = env_usize("TALLY_BENCH_NAIVE_EVENTS", naive_n);
    let batch = env_usize("TALLY_BENCH_BATCH", 1000);
    println!("projector drain benchmark: {n} events (naive baseline: {naive_n}), batch {batch}");

    // 1. tally
    let s = setup().await?;
    let expected = preload(&s.bus, n).await?;
    reset_peak_rss();
    let rss_before = peak_rss_mib();
    let tally_rate = drain(&s, n, batch, ProjectorConfig::default().apply_concurrency).await?;
    let peak = peak_rss_mib();
    let spent = spent_total(&s.store).await?;
    assert_eq!(
        spent, expected,
        "the ledger must hold exactly the preloaded costs"
    );
    println!("  tally projector:  {tally_rate:>9.0} events/s   peak RSS {peak:.0} MiB (at start {rss_before:.0} MiB)   total exact: {spent} USD");

    // 2. naive
    let naive = setup().await?;
    preload(&naive.bus, naive_n).await?;
    let naive_rate = drain(&naive, naive_n, 1, 1).await?;
    println!("  naive (1 msg/tx): {naive_rate:>9.0} events/s");

    // 3. raw ceiling
    let raw_rate = raw_ceiling(&naive.store, n).await?;
    println!("  raw batched inserts (same rows, no logic, no NATS): {raw_rate:>9.0} events/s");

    println!(
        "RESULT events_per_s={tally_rate:.0} vs_naive={:.1}x vs_raw_ceiling={:.2} peak_rss_mib={peak:.0}",
        tally_rate / naive_rate,
        tally_rate / raw_rate
    );
    Ok(())
}
