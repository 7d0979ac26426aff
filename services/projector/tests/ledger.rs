//! The ledger contract, end to end: given events on real NATS, when the
//! projector processes them (in any order, twice, after a crash), then the
//! ledger in real Postgres says exactly this.

use std::collections::BTreeMap;
use std::time::Duration;

use tally_bus::StreamKind;
use tally_money::Usd;
use tally_tests::{budget, reconciled, unresolved, usd, Completed, Harness};

const ORG: &str = "acme";

/// A total budget of `limit` for the generations of one agent of [`ORG`].
fn agent_budget(agent: &str, name: &str, limit: &str) -> tally_store::NewBudget {
    tally_store::NewBudget {
        scope: tally_budget::Scope {
            agent_id: Some(agent.into()),
            ..Default::default()
        },
        ..budget(ORG, name, limit)
    }
}

/// The rows `sql` selects for the budget `budget_id` (its `$1`).
async fn rows_of<T>(h: &Harness, sql: &str, budget_id: &str) -> anyhow::Result<Vec<T>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    Ok(sqlx::query_as(sql)
        .bind(budget_id)
        .fetch_all(h.store.pool())
        .await?)
}

/// The one value `sql` selects for the budget `budget_id` (its `$1`).
async fn value_of<T>(h: &Harness, sql: &str, budget_id: &str) -> anyhow::Result<T>
where
    (T,): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    T: Send + Unpin,
{
    Ok(sqlx::query_scalar(sql)
        .bind(budget_id)
        .fetch_one(h.store.pool())
        .await?)
}

/// Publishes a completed generation of [`ORG`] at `at` with its actual cost.
async fn publish_actual(h: &Harness, id: &str, at: &str, cost: &str) -> anyhow::Result<()> {
    h.publish(&Completed::new(id, ORG, at).actual(cost).event())
        .await
}

/// Publishes a completed generation of [`ORG`] at `at` with only an estimate.
async fn publish_estimate(h: &Harness, id: &str, at: &str, cost: &str) -> anyhow::Result<()> {
    h.publish(&Completed::new(id, ORG, at).estimate(cost).event())
        .await
}

#[tokio::test]
async fn costs_of_seventeen_significant_digits_sum_to_the_last_digit() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let b = h.budget(budget(ORG, "everything", "1000")).await?;
    let p = h.spawn_projector(100);
    let mut expected = Usd::ZERO;
    for i in 0..300u64 {
        // 0.00012345678901234567, 0.00012345678901234568, ... and some tiny
        // exponent-sized ones: every digit matters.
        let cost = format!("0.000{}", 12345678901234567u64 + i * 7919);
        let tiny = "0.0000001425";
        let c = if i % 10 == 0 { tiny.to_owned() } else { cost };
        expected = expected.try_add(usd(&c)).unwrap();
        let ev = Completed::new(&format!("gen-{i}"), ORG, "2026-11-25T10:00:00Z").actual(&c);
        h.publish(&ev.event()).await?;
    }
    h.drained().await?;
    assert_eq!(h.spent(&b.id).await?, expected, "period total");
    assert_eq!(h.journal_sum(&b.id).await?, expected, "journal sum");
    let text: String = value_of(
        &h,
        "SELECT spent_usd::text FROM budget_periods WHERE budget_id = $1",
        &b.id,
    )
    .await?;
    assert_eq!(
        text.trim_end_matches('0'),
        expected.normalize().to_string(),
        "stored digits"
    );
    p.stop().await;
    Ok(())
}

#[tokio::test]
async fn duplicates_are_counted_once() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let b = h.budget(budget(ORG, "everything", "10")).await?;
    let p = h.spawn_projector(50);
    let g = Completed::new("gen-dup", ORG, "2026-11-25T10:00:00Z").estimate("0.5");
    // Same message id twice (a producer retry), then the same generation
    // under a new message id (a second producer), then the actual twice
    // under different ids.
    h.publish(&g.event()).await?;
    h.publish(&g.event()).await?;
    h.publish(&g.clone().with_id("another-producer-id").event())
        .await?;
    h.drained().await?;
    assert_eq!(h.spent(&b.id).await?, usd("0.5"));
    h.publish(&reconciled("gen-dup", ORG, "0.4")).await?;
    let mut again = reconciled("gen-dup", ORG, "0.4");
    again.id = "reconciled-again".into();
    h.publish(&again).await?;
    h.drained().await?;
    assert_eq!(h.spent(&b.id).await?, usd("0.4"));
    let kinds: Vec<(String, Usd)> = rows_of(
        &h,
        "SELECT kind, amount_usd FROM ledger_entries WHERE budget_id = $1 ORDER BY entry_id",
        &b.id,
    )
    .await?;
    assert_eq!(
        kinds
            .iter()
            .map(|(k, a)| (k.as_str(), a.normalize()))
            .collect::<Vec<_>>(),
        vec![("debit", usd("0.5")), ("adjustment", usd("-0.1"))]
    );
    p.stop().await;
    Ok(())
}

/// The same facts in two orders, on two independent systems, give the same
/// balances.
#[tokio::test]
async fn reconciled_before_completed_gives_the_same_ledger() -> anyhow::Result<()> {
    let mut results = Vec::new();
    for reversed in [false, true] {
        let h = Harness::start().await?;
        let b = h.budget(budget(ORG, "everything", "10")).await?;
        let agent = h
            .budget(agent_budget("researcher", "researcher", "5"))
            .await?;
        let p = h.spawn_projector(10);
        let completed = [
            Completed::new("g1", ORG, "2026-11-25T10:00:00Z")
                .estimate("0.3")
                .agent("researcher"),
            Completed::new("g2", ORG, "2026-11-25T10:01:00Z").estimate("0.00000000000000000001"),
            Completed::new("g3", ORG, "2026-11-25T10:02:00Z"),
            Completed::new("g4", ORG, "2026-11-25T10:03:00Z")
                .estimate("1")
                .agent("researcher"),
        ];
        if reversed {
            h.publish(&reconciled("g1", ORG, "0.123456789012345678"))
                .await?;
            h.publish(&reconciled("g3", ORG, "0.7")).await?;
            h.publish(&unresolved("g4", ORG)).await?;
            h.drained().await?;
            for c in completed.iter().rev() {
                h.publish(&c.event()).await?;
            }
        } else {
            for c in &completed {
                h.publish(&c.event()).await?;
            }
            h.drained().await?;
            h.publish(&unresolved("g4", ORG)).await?;
            h.publish(&reconciled("g3", ORG, "0.7")).await?;
            h.publish(&reconciled("g1", ORG, "0.123456789012345678"))
                .await?;
        }
        h.drained().await?;
        let snap = h.snapshot().await?;
        let by_name: BTreeMap<&str, Vec<_>> = [("everything", &b.id), ("researcher", &agent.id)]
            .into_iter()
            .map(|(n, id)| {
                (
                    n,
                    snap.periods
                        .iter()
                        .filter(|p| &p.0 == id)
                        .map(|p| (p.1, p.2, p.3, p.4))
                        .collect(),
                )
            })
            .collect();
        results.push((by_name, snap.generations.clone()));
        p.stop().await;
    }
    assert_eq!(results[0], results[1]);
    let (periods, gens) = &results[0];
    let expected_total = Usd::try_sum([
        usd("0.123456789012345678"),
        usd("0.00000000000000000001"),
        usd("0.7"),
        usd("1"),
    ])
    .unwrap();
    assert_eq!(periods["everything"][0].1, expected_total.normalize());
    assert_eq!(periods["researcher"][0].1, usd("1.123456789012345678"));
    let states: Vec<&str> = gens.iter().map(|g| g.3.as_str()).collect();
    assert_eq!(
        states,
        vec!["settled", "provisional", "settled", "unresolved"]
    );
    Ok(())
}

#[tokio::test]
async fn a_crashed_projector_restarted_mid_stream_gives_the_same_ledger() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let b = h.budget(budget(ORG, "everything", "1000000")).await?;
    let mut expected = Usd::ZERO;
    for i in 0..3000u64 {
        let c = format!("0.0000{:016}", 1234567890123456u64 + i);
        expected = expected.try_add(usd(&c)).unwrap();
        publish_estimate(&h, &format!("g{i}"), "2026-11-25T10:00:00Z", &c).await?;
    }
    // Crash repeatedly while batches are in flight, then let one finish.
    for _ in 0..5 {
        let p = h.spawn_projector(200);
        tokio::time::sleep(Duration::from_millis(150)).await;
        p.abort();
    }
    let p = h.spawn_projector(200);
    h.drained().await?;
    assert_eq!(h.spent(&b.id).await?, expected);
    assert_eq!(h.journal_sum(&b.id).await?, expected);
    let debits: i64 = value_of(
        &h,
        "SELECT count(*) FROM ledger_entries WHERE budget_id = $1",
        &b.id,
    )
    .await?;
    assert_eq!(debits, 3000);
    p.stop().await;
    Ok(())
}

#[tokio::test]
async fn thresholds_alert_exactly_once_per_budget_period_and_threshold() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let b = h.budget(budget(ORG, "capped", "1")).await?;
    let p = h.spawn_projector(1);
    // 0.3 → 0.6 (crosses 50) → estimate 0.3 for g3 → 0.9 (crosses 80) →
    // actual 0.1 for g3 → 0.7 (down) → 1.2 (crosses 80 again: no alert; 100: alert).
    publish_actual(&h, "g1", "2026-11-25T10:00:00Z", "0.3").await?;
    publish_actual(&h, "g2", "2026-11-25T10:00:01Z", "0.3").await?;
    h.drained().await?;
    publish_estimate(&h, "g3", "2026-11-25T10:00:02Z", "0.3").await?;
    h.drained().await?;
    h.publish(&reconciled("g3", ORG, "0.1")).await?;
    h.drained().await?;
    publish_actual(&h, "g4", "2026-11-25T10:00:03Z", "0.5").await?;
    h.publish(
        &Completed::new("g4", ORG, "2026-11-25T10:00:03Z")
            .actual("0.5")
            .with_id("dup")
            .event(),
    )
    .await?;
    h.drained().await?;
    h.outbox_flushed().await?;
    let alerts = h.read_stream(StreamKind::Alerts, "").await?;
    let mut thresholds: Vec<u64> = alerts
        .iter()
        .map(|(s, v, _)| {
            assert_eq!(s, &format!("tally.budget.alert.{ORG}.{}", b.id));
            v["data"]["threshold_percent"].as_u64().unwrap()
        })
        .collect();
    thresholds.sort();
    assert_eq!(thresholds, vec![50, 80, 100]);
    let at_100 = alerts
        .iter()
        .find(|a| a.1["data"]["threshold_percent"] == 100)
        .unwrap();
    assert_eq!(at_100.1["data"]["spent_usd"], "1.2");
    assert_eq!(at_100.1["data"]["generation_id"], "g4");
    assert_eq!(at_100.1["type"], "tally.budget.threshold_crossed.v1");
    p.stop().await;
    Ok(())
}

#[tokio::test]
async fn late_events_land_in_the_period_of_their_completion() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let daily = h
        .budget(tally_store::NewBudget {
            period: tally_budget::PeriodKind::Daily,
            timezone: "Europe/Berlin".into(),
            ..budget(ORG, "daily", "10")
        })
        .await?;
    let p = h.spawn_projector(10);
    // 23:30 UTC on the 24th is 00:30 on the 25th in Berlin.
    publish_actual(&h, "late", "2026-11-24T23:30:00Z", "0.2").await?;
    publish_actual(&h, "early", "2026-11-24T22:30:00Z", "0.1").await?;
    publish_actual(&h, "now", "2026-11-25T12:00:00Z", "0.4").await?;
    h.drained().await?;
    let rows: Vec<(chrono::DateTime<chrono::Utc>, Usd)> = rows_of(
        &h,
        "SELECT period_start, spent_usd FROM budget_periods WHERE budget_id = $1 ORDER BY 1",
        &daily.id,
    )
    .await?;
    let rows: Vec<(String, Usd)> = rows
        .into_iter()
        .map(|(p, s)| (p.to_rfc3339(), s.normalize()))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("2026-11-23T23:00:00+00:00".into(), usd("0.1")),
            ("2026-11-24T23:00:00+00:00".into(), usd("0.6")),
        ]
    );
    p.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_and_the_batch_around_them_commits() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let b = h.budget(budget(ORG, "everything", "10")).await?;
    publish_actual(&h, "before", "2026-11-25T10:00:00Z", "0.1").await?;
    h.publish_raw("tally.generation.completed.acme", "junk-1", b"{not json")
        .await?;
    let mut number =
        serde_json::to_value(Completed::new("n", ORG, "2026-11-25T10:00:00Z").event())?;
    number["data"]["actual_cost_usd"] = serde_json::json!(0.1);
    h.publish_raw(
        "tally.generation.completed.acme",
        "junk-2",
        &serde_json::to_vec(&number)?,
    )
    .await?;
    // Org token of the subject differs from data.org_id.
    let other = Completed::new("wrong-org", ORG, "2026-11-25T10:00:00Z")
        .actual("5")
        .event();
    h.publish_raw(
        "tally.generation.completed.other",
        "junk-3",
        &other.to_json(),
    )
    .await?;
    // A second completed event for the same generation with another
    // actual: the first stands, the second is reported.
    publish_actual(&h, "conflict", "2026-11-25T10:00:00Z", "0.2").await?;
    h.publish(
        &Completed::new("conflict", ORG, "2026-11-25T10:00:00Z")
            .actual("0.25")
            .with_id("conflict-2")
            .event(),
    )
    .await?;
    publish_actual(&h, "after", "2026-11-25T10:00:00Z", "0.3").await?;
    // One batch holds all of them.
    let p = h.spawn_projector(100);
    h.drained().await?;
    assert_eq!(h.spent(&b.id).await?, usd("0.6"));
    let dead = h
        .read_stream(StreamKind::DeadLetter, "tally.deadletter.projector")
        .await?;
    let mut reasons: Vec<String> = dead.iter().filter_map(|d| d.2.clone()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            "conflicting_actual_cost",
            "invalid_money",
            "malformed_json",
            "subject_mismatch"
        ],
        "{dead:?}"
    );
    p.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_budget_created_later_counts_the_generations_already_recorded() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let p = h.spawn_projector(10);
    h.publish(
        &Completed::new("g1", ORG, "2026-11-25T10:00:00Z")
            .actual("0.1")
            .agent("a")
            .event(),
    )
    .await?;
    h.publish(
        &Completed::new("g2", ORG, "2026-11-25T10:00:00Z")
            .estimate("0.2")
            .agent("b")
            .event(),
    )
    .await?;
    h.publish(&Completed::new("g3", ORG, "2026-11-25T10:00:00Z").event())
        .await?;
    h.drained().await?;
    let all = h.budget(budget(ORG, "late", "10")).await?;
    let only_b = h.budget(agent_budget("b", "agent b", "10")).await?;
    assert_eq!(h.spent(&all.id).await?, usd("0.3"));
    assert_eq!(h.spent(&only_b.id).await?, usd("0.2"));
    // A later actual adjusts both.
    h.publish(&reconciled("g2", ORG, "0.25")).await?;
    h.drained().await?;
    assert_eq!(h.spent(&all.id).await?, usd("0.35"));
    assert_eq!(h.spent(&only_b.id).await?, usd("0.25"));
    p.stop().await;
    Ok(())
}

#[tokio::test]
async fn ledger_posted_events_rebuild_every_balance() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let b = h.budget(budget(ORG, "everything", "10")).await?;
    let p = h.spawn_projector(25);
    for i in 0..100 {
        let c = Completed::new(&format!("g{i}"), ORG, "2026-11-25T10:00:00Z").estimate("0.01");
        h.publish(&c.event()).await?;
        if i % 3 == 0 {
            h.publish(&reconciled(&format!("g{i}"), ORG, "0.009"))
                .await?;
        }
    }
    h.drained().await?;
    h.outbox_flushed().await?;
    let posted = h.read_stream(StreamKind::Ledger, "").await?;
    let mut rebuilt = Usd::ZERO;
    for (_, ev, _) in &posted {
        assert_eq!(ev["type"], "tally.ledger.posted.v1");
        for e in ev["data"]["entries"].as_array().unwrap() {
            if e["budget_id"] == b.id.as_str() {
                rebuilt = rebuilt
                    .try_add(usd(e["amount_usd"].as_str().unwrap()))
                    .unwrap();
            }
        }
    }
    assert_eq!(rebuilt, h.spent(&b.id).await?);
    assert_eq!(
        rebuilt,
        usd("0.01")
            .try_mul_int(66)
            .unwrap()
            .try_add(usd("0.009").try_mul_int(34).unwrap())
            .unwrap()
    );
    p.stop().await;
    Ok(())
}

/// Several projector instances on the same durable consumers, as when the
/// service is scaled out: the ledger is still exact.
#[tokio::test]
async fn two_projector_instances_share_the_work_and_the_ledger_stays_exact() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let b = h.budget(budget(ORG, "everything", "1000000")).await?;
    let agent = h.budget(agent_budget("a1", "agent a1", "1000000")).await?;
    let first = h.spawn_projector(50);
    let second = h.spawn_projector(50);
    let mut expected = Usd::ZERO;
    let mut expected_agent = Usd::ZERO;
    let mut events = Vec::new();
    let mut costs = Vec::new();
    for i in 0..2000u64 {
        let id = format!("g{i}");
        let estimate = format!("0.00{:018}", 123456789012345678u64 + i);
        let actual = format!("0.00{:018}", 120000000000000000u64 + i * 3);
        let reconciled_later = i % 4 == 0;
        let c = Completed::new(&id, ORG, "2026-11-25T10:00:00Z").estimate(&estimate);
        let c = if i % 2 == 0 { c.agent("a1") } else { c };
        let counted = if reconciled_later {
            usd(&actual)
        } else {
            usd(&estimate)
        };
        expected = expected.try_add(counted)?;
        if i % 2 == 0 {
            expected_agent = expected_agent.try_add(counted)?;
        }
        events.push(c.event());
        if reconciled_later {
            costs.push(reconciled(&id, ORG, &actual));
        }
    }
    for chunk in events.chunks(500) {
        futures::future::try_join_all(chunk.iter().map(|e| h.publish(e))).await?;
    }
    for chunk in costs.chunks(500) {
        futures::future::try_join_all(chunk.iter().map(|e| h.publish(e))).await?;
    }
    h.drained().await?;
    assert_eq!(h.spent(&b.id).await?, expected);
    assert_eq!(h.journal_sum(&b.id).await?, expected);
    assert_eq!(h.spent(&agent.id).await?, expected_agent);
    assert_eq!(h.journal_sum(&agent.id).await?, expected_agent);
    let adjustments: i64 = value_of(
        &h,
        "SELECT count(*) FROM ledger_entries WHERE budget_id = $1 AND kind = 'adjustment'",
        &b.id,
    )
    .await?;
    assert!(
        adjustments <= 500,
        "at most one adjustment per reconciled generation"
    );
    // Both instances did work.
    for p in [&first, &second] {
        let text = tally_telemetry::render(&p.registry);
        assert!(
            text.lines()
                .any(|l| l.starts_with("tally_projector_events_total") && !l.ends_with(" 0")),
            "an instance applied nothing:\n{text}"
        );
    }
    first.stop().await;
    second.stop().await;
    Ok(())
}
