//! tally on a three-node NATS cluster with streams replicated three times,
//! as tally runs in production: two projector instances, one
//! broker node killed in the middle of the stream, and the ledger is still
//! exact.

use std::sync::Arc;
use std::time::Duration;

use tally_bus::{Bus, BusConfig, ConsumerName};
use tally_money::Usd;
use tally_store::ledger::PostingOptions;
use tally_testkit::NatsCluster;
use tally_tests::{budget, publish_retrying, usd, Completed};
use tokio::sync::watch;

const ORG: &str = "acme";

#[tokio::test]
async fn a_broker_node_dies_mid_stream_and_the_ledger_stays_exact() -> anyhow::Result<()> {
    let mut cluster = NatsCluster::start(3).await?;
    let (_db, store) = tally_testkit::TestDb::migrated(8).await?;
    let bus = Bus::connect(&BusConfig {
        replicas: 3,
        ack_wait: Duration::from_secs(5),
        ..BusConfig::new(cluster.url())
    })
    .await?;
    bus.ensure_topology().await?;
    let (b, _) = store
        .create_budget(
            budget(ORG, "everything", "1000000"),
            &PostingOptions::default(),
        )
        .await?;

    // Two projector instances, each with its own connection to the cluster.
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let pbus = Bus::connect(&BusConfig {
            replicas: 3,
            ack_wait: Duration::from_secs(5),
            ..BusConfig::new(cluster.url())
        })
        .await?;
        let registry = tally_telemetry::Registry::new();
        let p = tally_projector::Projector::new(
            pbus,
            store.clone(),
            tally_projector::ProjectorConfig {
                batch_size: 100,
                fetch_wait: Duration::from_millis(100),
                ..Default::default()
            },
            Arc::new(tally_projector::Metrics::register(&registry)?),
        );
        tasks.push(tokio::spawn(p.run(stopped.clone())));
    }

    let n = 1500u64;
    let mut expected = Usd::ZERO;
    for i in 0..n {
        if i == n / 2 {
            cluster.node(0).kill().await?;
        }
        let cost = format!("0.000{:017}", 98765432109876543u64 + i);
        expected = expected.try_add(usd(&cost)).unwrap();
        let c = Completed::new(&format!("g{i}"), ORG, "2026-11-25T10:00:00Z").actual(&cost);
        publish_retrying(&bus, &c, Duration::from_millis(250)).await?;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let pending = bus
            .pending(ConsumerName::ProjectorCompleted)
            .await
            .unwrap_or(u64::MAX);
        if pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not drained: {pending} pending"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spent: Option<Usd> =
        sqlx::query_scalar("SELECT sum(spent_usd) FROM budget_periods WHERE budget_id = $1")
            .bind(&b.id)
            .fetch_one(store.pool())
            .await?;
    assert_eq!(spent.unwrap_or_default(), expected);
    let debits: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_entries WHERE budget_id = $1")
            .bind(&b.id)
            .fetch_one(store.pool())
            .await?;
    assert_eq!(debits, n as i64);
    let _ = stop.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    Ok(())
}
