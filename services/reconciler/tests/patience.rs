//! The give-up rule against real NATS, Postgres and the simulator over
//! HTTP: events that reach tally late, transient first answers, and a
//! backlog that piles up while the reconciler is down.

mod common;

use std::time::Duration;
use tally_money::usd;

use chrono::Utc;
use common::*;
use tally_money::Usd;
use tally_reconciler::ReconcilerConfig;
use tally_sim::{Fraction, ScriptedReply, SimConfig, SimGeneration};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_completed_twenty_minutes_ago_whose_first_lookup_fails_are_all_reconciled(
) -> anyhow::Result<()> {
    let env = Env::start(SimConfig::ephemeral()).await?;
    let (_db, store) = store().await?;
    let twenty_ago = Utc::now() - chrono::Duration::minutes(20);
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = format!("gen-late-{i}");
        let fault = if i % 2 == 0 {
            ScriptedReply::RateLimited
        } else {
            ScriptedReply::ServerError
        };
        let cost = usd!("0.00012345678901234567").try_add(Usd::new(i, 12))?;
        env.sim()
            .register_generation(SimGeneration::new(&id, cost).script([fault]));
        env.publish_completed(&completed(&id, twenty_ago)).await?;
        ids.push((id, cost));
    }
    // The production schedule, with a deadline of 8 s long past.
    let cfg = ReconcilerConfig {
        deadline: Duration::from_secs(8),
        rate_per_sec: 1000,
        ..ReconcilerConfig::default()
    };
    let running = env.spawn_reconciler_stored(cfg, &store);
    let mut costs = env.costs().await?;
    let all: Vec<String> = ids.iter().map(|(id, _)| id.clone()).collect();
    costs.wait_settled(&all, Duration::from_secs(60)).await?;
    assert!(costs.unresolved.is_empty(), "{:?}", costs.unresolved.keys());
    for (id, cost) in &ids {
        assert_eq!(costs.reconciled(id).actual_cost_usd, *cost, "{id}");
        // One transient answer, then the cost: a second later, not a minute.
        assert_eq!(env.sim().calls(id), 2, "{id}");
    }
    // The first lookups are on record for every instance and restart.
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM reconcile_first_lookups")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(recorded, 20);
    running.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_events_that_arrive_while_the_reconciler_is_down_are_all_reconciled(
) -> anyhow::Result<()> {
    // One answer in ten is a 500 or a 429: under a deadline counted from
    // completion alone, those would be given up at their first lookup.
    let env = Env::start(SimConfig {
        rate_500: Fraction::from_ppm(50_000),
        rate_429: Fraction::from_ppm(50_000),
        seed: Some(12),
        ..SimConfig::ephemeral()
    })
    .await?;
    let (_db, store) = store().await?;
    let cfg = ReconcilerConfig {
        deadline: Duration::from_secs(2),
        min_window: Duration::from_secs(3),
        concurrency: 64,
        batch_size: 256,
        ..fast_config()
    };
    let mut ids = Vec::new();
    let mut expected = Usd::ZERO;
    for i in 0..1000 {
        let id = format!("gen-backlog-{i}");
        let cost = usd!("0.000001").try_add(Usd::new(i, 10))?;
        expected.try_add_assign(cost)?;
        env.sim().register_generation(SimGeneration::new(&id, cost));
        env.publish_completed(&completed(&id, Utc::now())).await?;
        ids.push(id);
    }
    // Down for longer than the deadline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let running = env.spawn_reconciler_stored(cfg, &store);
    let mut costs = env.costs().await?;
    costs.wait_settled(&ids, Duration::from_secs(120)).await?;
    assert!(
        costs.unresolved.is_empty(),
        "{} unresolved",
        costs.unresolved.len()
    );
    let got = Usd::try_sum(
        ids.iter()
            .map(|id| costs.reconciled(id).actual_cost_usd.usd()),
    )?;
    assert_eq!(got, expected);
    let metrics = running.stop().await?;
    assert_eq!(metrics.reconciled.get(), 1000);
    Ok(())
}
