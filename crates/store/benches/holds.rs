//! Benchmark of budget holds (not a timed test):
//!
//! ```text
//! cargo bench -p tally-store --bench holds [-- --secs 10 --requesters 16]
//! ```
//!
//! Against a real Postgres (a fresh database from tally-testkit), one hot
//! hard budget, `--requesters` concurrent requesters (default 16), each
//! looping: take a hold of 0.01 USD through the [`HoldBatcher`] the worker
//! uses and hand it to a settler that books the completed generation
//! (actual 0.000001 USD) through [`Store::apply_batch`] — the projector's
//! transaction, which settles the hold — in batches, as the projector does.
//! Like a worker, a requester does not wait for the settlement of its last
//! hold; a bounded queue pushes back when settlement falls behind. The rate
//! counts holds settled, from the start until the last one is settled.
//!
//! Two cases, each for `--secs` seconds, each also run with a naive
//! check-then-insert baseline on its own one-row table (read `spent +
//! held`, then add the hold if it fits — two statements, no lock):
//!
//! * **throughput**: a limit with room for everything (1 000 USD): holds
//!   taken and settled per second.
//! * **contention**: a limit with room for 8 holds while 16 requesters want
//!   one each: how far `spent + held` goes past the limit (tally: never;
//!   the baseline: by as many holds as race between its read and write).
//!
//! Printed first: the machine's raw limit, commits per second of a one-row
//! update on one hot row from `--requesters` clients. Then per case and
//! path, holds/s, refusals, and the largest `spent + held` seen against
//! the limit. The ratios tally ÷ baseline and tally ÷ raw limit are printed
//! in the same run (the machine is shared; absolute figures move).
#![allow(clippy::float_arithmetic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tally_budget::{Enforcement, Scope};
use tally_money::Usd;
use tally_store::ledger::PostingOptions;
use tally_store::{FactInput, HoldBatcher, HoldOutcome, HoldRequest, NewBudget, Store};
use tally_testkit::TestDb;
use tokio::sync::mpsc;

#[path = "../tests/support/mod.rs"]
mod support;

const ORG: &str = "bench";
/// The agent of every request (the one hot budget's scope).
const AGENT: &str = "hot";
const HOLD: &str = "0.01";
const ACTUAL: &str = "0.000001";

struct Args {
    secs: u64,
    requesters: usize,
}

fn args() -> Args {
    let mut a = Args {
        secs: 10,
        requesters: 16,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (argv[i].as_str(), next) {
            ("--secs", Some(v)) => a.secs = v.max(1),
            ("--requesters", Some(v)) => a.requesters = (v as usize).max(1),
            _ => {}
        }
        i += 1;
    }
    a
}

use tally_money::{cost, usd};

fn hold_request(id: &str) -> HoldRequest {
    support::hold_request(ORG, AGENT, id, Some(cost!(HOLD)))
}

fn completed(request_id: &str) -> FactInput {
    support::completed(
        ORG,
        AGENT,
        request_id,
        &format!("gen-{request_id}"),
        cost!(ACTUAL),
    )
}

#[derive(Debug, Default)]
struct Figures {
    settled: u64,
    refused: u64,
    peak: Usd,
    secs: f64,
}

impl Figures {
    fn per_sec(&self) -> f64 {
        self.settled as f64 / self.secs
    }
}

/// tally's path: holds through the batcher, settlement through the
/// projector's batch transaction.
async fn tally_case(store: &Store, case: &str, limit: &str, a: &Args) -> anyhow::Result<Figures> {
    let (budget, _) = store
        .create_budget(
            NewBudget {
                thresholds: vec![],
                ..support::monthly_budget(
                    ORG,
                    &format!("hot {case}"),
                    cost!(limit),
                    Enforcement::Hard,
                    Scope {
                        agent_id: Some(AGENT.into()),
                        ..Scope::default()
                    },
                )
            },
            &PostingOptions::default(),
        )
        .await?;
    // Only this case's budget matches its holds: the others are archived.
    let batcher = HoldBatcher::spawn(store.clone(), 256);
    let stop = Arc::new(AtomicBool::new(false));
    let settled = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = mpsc::channel::<String>(4096);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.requesters {
        let batcher = batcher.clone();
        let tx = tx.clone();
        let stop = stop.clone();
        let refused = refused.clone();
        let case = case.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = format!("{case}-{w}-{i}");
                match batcher.hold(hold_request(&id)).await {
                    Ok(HoldOutcome::Held(_)) => {
                        // Like a worker: the next request does not wait
                        // for the projector (the bounded channel pushes
                        // back when settlement falls behind).
                        if tx.send(id).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                    Err(e) => panic!("hold failed: {e}"),
                }
            }
        }));
    }
    drop(tx);
    let settler = {
        let store = store.clone();
        let settled = settled.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < 256 {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let facts: Vec<FactInput> = batch.iter().map(|id| completed(id)).collect();
                let out = store
                    .apply_batch(&facts, &PostingOptions::default())
                    .await
                    .expect("settlement batch");
                settled.fetch_add(out.settled.len() as u64, Ordering::Relaxed);
                batch.clear();
            }
        })
    };
    // A sampler of spent + held on the hot period.
    let peak = Arc::new(Mutex::new(Usd::ZERO));
    let sampler = {
        let store = store.clone();
        let stop = stop.clone();
        let peak = peak.clone();
        let budget = budget.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(p) = store
                    .periods_at(std::slice::from_ref(&budget), Utc::now())
                    .await
                {
                    let t = &p[0].1;
                    let c = t.spent_usd.try_add(t.reserved_usd).expect("in range");
                    let mut m = peak.lock().expect("peak");
                    *m = (*m).max(c);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(a.secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    settler.await?;
    sampler.await?;
    let secs = started.elapsed().as_secs_f64();
    let p = store
        .periods_at(std::slice::from_ref(&budget), Utc::now())
        .await?
        .remove(0)
        .1;
    anyhow::ensure!(p.reserved_usd.is_zero(), "holds left: {}", p.reserved_usd);
    let peak = (*peak.lock().expect("peak")).max(p.spent_usd);
    store.archive_budget(&budget.id).await?;
    Ok(Figures {
        settled: settled.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        peak,
        secs,
    })
}

/// The naive baseline: read `spent + held`, then add the hold if it fits
/// (two statements, no lock), settle with one update. The largest value
/// any update returned is the exact peak.
async fn naive_case(store: &Store, case: &str, limit: &str, a: &Args) -> anyhow::Result<Figures> {
    let pool = store.pool().clone();
    let table = format!("naive_{case}");
    sqlx::query(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, spent numeric NOT NULL, held numeric NOT NULL)"
    ))
    .execute(&pool)
    .await?;
    sqlx::query(&format!("INSERT INTO {table} VALUES (1, 0, 0)"))
        .execute(&pool)
        .await?;
    let limit = usd!(limit);
    let stop = Arc::new(AtomicBool::new(false));
    let settled = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let peaks = Arc::new(Mutex::new(HashMap::<usize, Usd>::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.requesters {
        let pool = pool.clone();
        let table = table.clone();
        let (stop, settled, refused, peaks) = (
            stop.clone(),
            settled.clone(),
            refused.clone(),
            peaks.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut peak = Usd::ZERO;
            let (hold, actual) = (usd!(HOLD), usd!(ACTUAL));
            while !stop.load(Ordering::Relaxed) {
                let committed: Usd =
                    sqlx::query_scalar(&format!("SELECT spent + held FROM {table} WHERE id = 1"))
                        .fetch_one(&pool)
                        .await
                        .expect("read");
                if committed.try_add(hold).expect("in range") > limit {
                    refused.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    continue;
                }
                let after: Usd = sqlx::query_scalar(&format!(
                    "UPDATE {table} SET held = held + $1 WHERE id = 1 RETURNING spent + held"
                ))
                .bind(hold)
                .fetch_one(&pool)
                .await
                .expect("hold");
                peak = peak.max(after);
                sqlx::query(&format!(
                    "UPDATE {table} SET held = held - $1, spent = spent + $2 WHERE id = 1"
                ))
                .bind(hold)
                .bind(actual)
                .execute(&pool)
                .await
                .expect("settle");
                settled.fetch_add(1, Ordering::Relaxed);
            }
            peaks.lock().expect("peaks").insert(w, peak);
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let peak = peaks
        .lock()
        .expect("peaks")
        .values()
        .copied()
        .max()
        .unwrap_or_default();
    Ok(Figures {
        settled: settled.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        peak,
        secs,
    })
}

/// The machine's raw limit on one hot row: `--requesters` clients each
/// committing `UPDATE … SET v = v + 1` on the same row, one transaction
/// per update (what any design that commits each hold on its own is
/// bounded by).
async fn raw_commits(store: &Store, a: &Args) -> anyhow::Result<f64> {
    let pool = store.pool().clone();
    sqlx::query("CREATE TABLE raw_hot (id int PRIMARY KEY, v numeric NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("INSERT INTO raw_hot VALUES (1, 0)")
        .execute(&pool)
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.requesters {
        let (pool, stop, commits) = (pool.clone(), stop.clone(), commits.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sqlx::query("UPDATE raw_hot SET v = v + 1 WHERE id = 1")
                    .execute(&pool)
                    .await
                    .expect("raw update");
                commits.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    Ok(commits.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn line(path: &str, f: &Figures, limit: &str) {
    let limit = usd!(limit);
    let over = f.peak.try_sub(limit).expect("in range").max(Usd::ZERO);
    println!(
        "  {path:<9} {:>8.0} holds/s settled  ({} in {:.1} s, {} refusals)  peak spent+held {} vs limit {limit}: overrun {over}",
        f.per_sec(),
        f.settled,
        f.secs,
        f.refused,
        f.peak,
    );
}

fn main() -> anyhow::Result<()> {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (_db, store) = TestDb::migrated(32).await?;
        store.create_org(ORG, Some("bench")).await?;
        println!(
            "holds bench: {} requesters, {} s per case, hold {HOLD} USD, actual {ACTUAL} USD, one hot hard budget",
            a.requesters, a.secs
        );
        let raw = raw_commits(&store, &a).await?;
        println!(
            "raw limit: {raw:.0} commits/s of a one-row update on one hot row ({} clients)",
            a.requesters
        );
        for (case, limit) in [("throughput", "1000"), ("contention", "0.08")] {
            println!("{case} (limit {limit} USD):");
            let t = tally_case(&store, case, limit, &a).await?;
            line("tally", &t, limit);
            let n = naive_case(&store, case, limit, &a).await?;
            line("naive", &n, limit);
            println!(
                "  ratio tally/naive holds/s: {:.2}; tally holds/s per raw hot-row commit/s: {:.2}",
                t.per_sec() / n.per_sec().max(f64::MIN_POSITIVE),
                t.per_sec() / raw.max(f64::MIN_POSITIVE)
            );
        }
        anyhow::Ok(())
    })
}
