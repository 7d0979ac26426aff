//! The reconciler against a real NATS server and the OpenRouter simulator
//! over real HTTP: exact costs, faults, deadlines, restarts, skips and dead
//! letters.

mod common;

use std::time::{Duration, Instant};
use tally_money::{cost, usd};

use chrono::Utc;
use common::{completed, fast_config, Env, ORG};
use tally_bus::{ConsumerName, StreamKind, HEADER_DEAD_LETTER_REASON};
use tally_reconciler::ReconcilerConfig;
use tally_sim::{NumberFormat, ScriptedReply, SimConfig, SimGeneration};

const SETTLE: Duration = Duration::from_secs(20);

/// Waits until the reconciler consumer has nothing unacked left.
async fn wait_consumer_drained(env: &Env, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let pending = env.bus.pending(ConsumerName::Reconciler).await?;
        if pending == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{pending} messages still pending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1.1 GET with a bearer key over a plain TCP connection; the
/// whole response as text.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer sk-or-test\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

/// The value of the counter of `counters` labelled `label`.
fn count(counters: &prometheus::IntCounterVec, label: &str) -> u64 {
    counters.with_label_values(&[label]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn actual_costs_are_exact_to_the_digit_and_byok_adds_upstream() -> anyhow::Result<()> {
    let env = Env::start(SimConfig::ephemeral()).await?;
    // Written as `1.425e-7` on the wire (JavaScript rendering below 1e-6).
    env.sim().register_generation(
        SimGeneration::new("gen-tiny", usd!("0.0000001425")).number_format(NumberFormat::Js),
    );
    // 17 significant digits: more than a double keeps.
    env.sim().register_generation(
        SimGeneration::new("gen-long", usd!("0.00012345678901234567"))
            .number_format(NumberFormat::Plain),
    );
    // BYOK: OpenRouter's fee plus the provider's bill.
    env.sim().register_generation(
        SimGeneration::new("gen-byok", usd!("0.0000015"))
            .byok(Some(usd!("0.00042000000000000001"))),
    );
    // The simulator really sends these literals.
    let body = raw_get(env.sim.addr(), "/api/v1/generation?id=gen-tiny").await?;
    assert!(body.contains(r#""total_cost":1.425e-7"#), "{body}");
    let body = raw_get(env.sim.addr(), "/api/v1/generation?id=gen-long").await?;
    assert!(
        body.contains(r#""total_cost":0.00012345678901234567"#),
        "{body}"
    );

    let running = env.spawn_reconciler(fast_config());
    let now = Utc::now();
    for id in ["gen-tiny", "gen-long", "gen-byok"] {
        env.publish_completed(&completed(id, now)).await?;
    }
    let mut costs = env.costs().await?;
    let ids: Vec<String> = ["gen-tiny", "gen-long", "gen-byok"]
        .map(String::from)
        .to_vec();
    costs.wait_settled(&ids, SETTLE).await?;

    let tiny = costs.reconciled("gen-tiny");
    assert_eq!(tiny.actual_cost_usd.to_string(), "0.0000001425");
    assert_eq!(tiny.total_cost_usd, usd!("0.0000001425"));
    assert!(!tiny.is_byok);
    assert_eq!(tiny.upstream_inference_cost_usd, None);

    let long = costs.reconciled("gen-long");
    assert_eq!(long.actual_cost_usd.to_string(), "0.00012345678901234567");

    let byok = costs.reconciled("gen-byok");
    assert!(byok.is_byok);
    assert_eq!(byok.total_cost_usd, usd!("0.0000015"));
    assert_eq!(
        byok.upstream_inference_cost_usd,
        Some(cost!("0.00042000000000000001"))
    );
    assert_eq!(byok.actual_cost_usd.to_string(), "0.00042150000000000001");

    // Ids, subjects and the wire form.
    let (ev, subject, _) = &costs.reconciled["gen-long"];
    assert_eq!(ev.id, "reconciled-gen-long");
    assert_eq!(subject, &format!("tally.cost.reconciled.{ORG}"));
    assert_eq!(ev.source, tally_reconciler::SOURCE);
    assert!(costs.ids.contains(&"reconciled-gen-long".to_owned()));
    let json = String::from_utf8(ev.to_json())?;
    assert!(
        json.contains(r#""actual_cost_usd":"0.00012345678901234567""#),
        "{json}"
    );
    for id in &ids {
        assert!(costs.reconciled(id).attempts >= 1);
    }

    let metrics = running.stop().await?;
    assert_eq!(metrics.reconciled.get(), 3);
    assert_eq!(metrics.estimate_drift.get_sample_count(), 3);
    assert!(metrics.completion_to_reconciled.get_sample_count() == 3);
    wait_consumer_drained(&env, Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_yet_rate_limited_server_errors_and_malformed_replies_all_end_reconciled(
) -> anyhow::Result<()> {
    // Retry-After: 1 s on 429 and 503.
    let env = Env::start(SimConfig::ephemeral()).await?;
    let cases: Vec<(&str, Vec<ScriptedReply>)> = vec![
        (
            "gen-404",
            vec![ScriptedReply::NotFound, ScriptedReply::NotFound],
        ),
        ("gen-429", vec![ScriptedReply::RateLimited]),
        (
            "gen-500",
            vec![ScriptedReply::ServerError, ScriptedReply::ServerError],
        ),
        ("gen-503", vec![ScriptedReply::Unavailable]),
        ("gen-malformed", vec![ScriptedReply::Malformed]),
        (
            "gen-bad-cost",
            vec![
                ScriptedReply::CostAsString,
                ScriptedReply::NegativeCost,
                ScriptedReply::Html,
            ],
        ),
    ];
    for (id, script) in &cases {
        env.sim()
            .register_generation(SimGeneration::new(*id, usd!("0.000285")).script(script.clone()));
    }
    // Stats that appear only 700 ms after completion: 404s on their own.
    env.sim().register_generation(
        SimGeneration::new("gen-late", usd!("0.5")).ready_after(Duration::from_millis(700)),
    );

    let running = env.spawn_reconciler(fast_config());
    let now = Utc::now();
    let mut ids = Vec::new();
    for (id, _) in &cases {
        env.publish_completed(&completed(id, now)).await?;
        ids.push(id.to_string());
    }
    env.publish_completed(&completed("gen-late", now)).await?;
    ids.push("gen-late".to_owned());

    let mut costs = env.costs().await?;
    costs.wait_settled(&ids, SETTLE).await?;
    for (id, script) in &cases {
        let r = costs.reconciled(id);
        assert_eq!(r.actual_cost_usd, usd!("0.000285"), "{id}");
        // One lookup per scripted fault, then the answer.
        assert_eq!(env.sim().calls(id), script.len() as u64 + 1, "{id}");
        assert!(
            r.attempts as usize > script.len(),
            "{id}: {} attempts",
            r.attempts
        );
    }
    assert_eq!(costs.reconciled("gen-late").actual_cost_usd, usd!("0.5"));
    assert!(env.sim().calls("gen-late") >= 2);

    // Retry-After (1 s) was honoured: the second lookup came at least 1 s
    // after the first (at ~100 ms).
    for id in ["gen-429", "gen-503"] {
        let r = costs.reconciled(id);
        let took = (r.reconciled_at - now).to_std()?;
        assert!(
            took >= Duration::from_millis(1100),
            "{id} reconciled after {took:?}"
        );
    }
    assert!(costs.unresolved.is_empty());

    let metrics = running.stop().await?;
    let outcome = |o: &str| count(&metrics.fetch_attempts, o);
    assert_eq!(outcome("ok"), 7);
    assert_eq!(outcome("rate_limited"), 1);
    assert_eq!(outcome("server_error"), 2);
    assert_eq!(outcome("unavailable"), 1);
    assert_eq!(outcome("malformed_reply"), 4);
    assert!(outcome("not_yet") >= 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_never_ready_generation_ends_unresolved_without_delaying_the_others() -> anyhow::Result<()>
{
    let env = Env::start(SimConfig::ephemeral()).await?;
    env.sim()
        .register_generation(SimGeneration::new("gen-never", usd!("1")).never_ready());
    env.sim().register_generation(
        SimGeneration::new("gen-garbled", usd!("1")).script([ScriptedReply::Malformed; 1000]),
    );
    env.sim()
        .register_generation(SimGeneration::new("gen-byok-no-upstream", usd!("0.001")).byok(None));
    let cfg = ReconcilerConfig {
        deadline: Duration::from_secs(3),
        ..fast_config()
    };
    let running = env.spawn_reconciler(cfg);
    let start = Utc::now();
    for id in ["gen-never", "gen-garbled", "gen-byok-no-upstream"] {
        env.publish_completed(&completed(id, start)).await?;
    }

    // Others keep arriving while those wait, and are reconciled promptly.
    let mut costs = env.costs().await?;
    let mut quick = Vec::new();
    let mut published_at = std::collections::HashMap::new();
    for round in 0..5 {
        let at = Utc::now();
        let id = format!("gen-ok-{round}");
        env.sim()
            .register_generation(SimGeneration::new(&id, usd!("0.002")));
        env.publish_completed(&completed(&id, at)).await?;
        published_at.insert(id.clone(), at);
        quick.push(id);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all: Vec<String> = quick
        .iter()
        .cloned()
        .chain(["gen-never", "gen-garbled", "gen-byok-no-upstream"].map(String::from))
        .collect();
    costs.wait_settled(&all, SETTLE).await?;

    // Not held behind the stuck ones: each was reconciled sooner after its
    // own publication than the deadline the stuck ones ran into (first
    // lookup at 100 ms; a queue behind them would take the full 3 s).
    for id in &quick {
        let r = costs.reconciled(id);
        let took = (r.reconciled_at - published_at[id])
            .to_std()
            .unwrap_or_default();
        assert!(took < Duration::from_secs(3), "{id} took {took:?}");
    }

    let never = &costs.unresolved["gen-never"].0;
    assert_eq!(never.id, "unresolved-gen-never");
    assert_eq!(never.data.reason, "deadline_exceeded");
    assert_eq!(never.data.last_status, Some(404));
    assert!(never.data.attempts >= 3, "{} attempts", never.data.attempts);
    let gave_up_after = (never.data.gave_up_at - start).to_std()?;
    assert!(
        gave_up_after >= Duration::from_secs(3) && gave_up_after < Duration::from_secs(10),
        "gave up after {gave_up_after:?}"
    );
    assert_eq!(
        costs.unresolved["gen-never"].1,
        format!("tally.cost.unresolved.{ORG}")
    );

    let garbled = &costs.unresolved["gen-garbled"].0.data;
    assert_eq!(garbled.reason, "malformed_reply");
    assert_eq!(garbled.last_status, Some(200));

    let byok = &costs.unresolved["gen-byok-no-upstream"].0.data;
    assert_eq!(byok.reason, "missing_upstream_cost");
    assert!(!costs.reconciled.contains_key("gen-byok-no-upstream"));

    // Lookups of the stuck generation followed the schedule, not a tight loop:
    // 0.1, 0.2, 0.4, 0.8, 1.6, 2.6 (1 s cap), 3.0 (deadline) → about 7.
    let calls = env.sim().calls("gen-never");
    assert!((4..=10).contains(&calls), "{calls} lookups");

    let metrics = running.stop().await?;
    assert_eq!(count(&metrics.unresolved, "deadline_exceeded"), 1);
    wait_consumer_drained(&env, Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_midway_loses_no_pending_generation() -> anyhow::Result<()> {
    let env = Env::start(SimConfig::ephemeral()).await?;
    let now = Utc::now();
    let mut ids = Vec::new();
    for i in 0..40 {
        let id = format!("gen-r{i}");
        // Half ready soon, half only after the restart.
        let ready = Duration::from_millis(if i % 2 == 0 { 300 } else { 2500 });
        env.sim().register_generation(
            SimGeneration::new(
                &id,
                usd!("0.0001")
                    .try_add(tally_money::Usd::new(i, 10))
                    .unwrap(),
            )
            .ready_after(ready),
        );
        env.publish_completed(&completed(&id, now)).await?;
        ids.push(id);
    }
    let first = env.spawn_reconciler(fast_config());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let first_metrics = first.stop().await?;
    let done_by_first = first_metrics.reconciled.get();
    assert!(done_by_first >= 1, "the first instance reconciled nothing");
    assert!(done_by_first < 40, "the first instance finished everything");
    let still_pending = env.bus.pending(ConsumerName::Reconciler).await?;
    assert_eq!(
        still_pending,
        40 - done_by_first,
        "pending set after the stop"
    );

    let second = env.spawn_reconciler(fast_config());
    let mut costs = env.costs().await?;
    costs.wait_settled(&ids, SETTLE).await?;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            costs.reconciled(id).actual_cost_usd,
            usd!("0.0001")
                .try_add(tally_money::Usd::new(i as i64, 10))
                .unwrap()
        );
    }
    let second_metrics = second.stop().await?;
    assert_eq!(done_by_first + second_metrics.reconciled.get(), 40);
    // Exactly one event per generation on the stream.
    costs.poll(Duration::from_millis(300)).await?;
    assert_eq!(costs.messages, 40);
    wait_consumer_drained(&env, Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_that_already_have_a_cost_cause_no_lookup() -> anyhow::Result<()> {
    let env = Env::start(SimConfig::ephemeral()).await?;
    env.sim()
        .register_generation(SimGeneration::new("gen-missing", usd!("0.25")));
    let running = env.spawn_reconciler(fast_config());
    let now = Utc::now() - chrono::Duration::seconds(1);
    for i in 0..10 {
        let id = format!("gen-priced-{i}");
        // Registered too, so a lookup would succeed and be visible.
        env.sim()
            .register_generation(SimGeneration::new(&id, usd!("0.25")));
        let mut ev = completed(&id, now);
        ev.data.actual_cost_usd = Some(cost!("0.25"));
        env.publish_completed(&ev).await?;
    }
    env.publish_completed(&completed("gen-missing", now))
        .await?;
    let mut costs = env.costs().await?;
    costs
        .wait_settled(&["gen-missing".to_owned()], SETTLE)
        .await?;
    wait_consumer_drained(&env, Duration::from_secs(5)).await?;

    assert_eq!(env.sim().total_calls(), env.sim().calls("gen-missing"));
    for i in 0..10 {
        assert_eq!(env.sim().calls(&format!("gen-priced-{i}")), 0);
    }
    costs.poll(Duration::from_millis(300)).await?;
    assert_eq!(costs.messages, 1, "only the missing cost was published");
    let metrics = running.stop().await?;
    assert_eq!(metrics.skipped.get(), 10);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_event_is_dead_lettered_and_the_next_is_reconciled() -> anyhow::Result<()> {
    let env = Env::start(SimConfig::ephemeral()).await?;
    env.sim()
        .register_generation(SimGeneration::new("gen-after", usd!("0.000001")));
    let running = env.spawn_reconciler(fast_config());

    let subject = format!("tally.generation.completed.{ORG}");
    env.bus
        .publish(&subject, "bad-1", bytes::Bytes::from_static(b"{not json"))
        .await?;
    // A well-formed event on another org's subject: refused, booked to neither.
    let wrong_org = completed("gen-wrong-org", Utc::now());
    env.bus
        .publish(
            "tally.generation.completed.other",
            &wrong_org.id,
            wrong_org.to_json().into(),
        )
        .await?;
    env.publish_completed(&completed("gen-after", Utc::now()))
        .await?;

    let mut costs = env.costs().await?;
    costs
        .wait_settled(&["gen-after".to_owned()], SETTLE)
        .await?;
    assert_eq!(
        costs.reconciled("gen-after").actual_cost_usd,
        usd!("0.000001")
    );

    let dead = env
        .bus
        .replay_consumer(StreamKind::DeadLetter, "tally.deadletter.reconciler")
        .await?;
    let mut reasons = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while reasons.len() < 2 && Instant::now() < deadline {
        for m in dead.fetch(10, Duration::from_millis(200)).await? {
            let reason = m
                .headers()
                .and_then(|h| h.get(HEADER_DEAD_LETTER_REASON))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            reasons.push((reason, m.payload().to_vec()));
            m.ack().await?;
        }
    }
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!(reasons[0].0, "malformed_json");
    assert_eq!(reasons[0].1, b"{not json");
    assert_eq!(reasons[1].0, "subject_mismatch");
    assert_eq!(env.sim().calls("gen-wrong-org"), 0);

    let metrics = running.stop().await?;
    assert_eq!(count(&metrics.dead_letters, "malformed_json"), 1);
    wait_consumer_drained(&env, Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_key_never_gives_a_generation_up() -> anyhow::Result<()> {
    let env = Env::start(SimConfig::ephemeral()).await?;
    env.sim()
        .register_generation(SimGeneration::new("gen-keyless", usd!("0.01")));
    let cfg = ReconcilerConfig {
        deadline: Duration::from_millis(500),
        ..fast_config()
    };
    // No API key: the simulator answers 401.
    let running = env.spawn_reconciler_with(cfg, env.client(None));
    env.publish_completed(&completed("gen-keyless", Utc::now()))
        .await?;
    tokio::time::sleep(Duration::from_millis(2000)).await;

    let mut costs = env.costs().await?;
    costs.poll(Duration::from_millis(300)).await?;
    assert_eq!(costs.messages, 0, "a key problem must not resolve anything");
    assert_eq!(
        env.sim().calls("gen-keyless"),
        1,
        "one lookup, then a long wait"
    );
    let metrics = running.stop().await?;
    assert_eq!(count(&metrics.auth_failures, "auth"), 1);
    assert_eq!(count(&metrics.unresolved, "deadline_exceeded"), 0);
    // Still pending: it will be asked about again once the key works.
    assert_eq!(env.bus.pending(ConsumerName::Reconciler).await?, 1);
    Ok(())
}
