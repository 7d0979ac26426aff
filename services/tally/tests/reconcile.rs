//! Reconciliation driven only from outside: events published on NATS as
//! any producer would, `tally projector`, `tally reconciler` and `tally api`
//! as processes, the OpenRouter simulator over HTTP, answers read from the
//! HTTP API and the `tally reconcile sweep` command line.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{completed_json, dec, get, publish, wait_ready};
use serde_json::{json, Value};
use tally_money::Usd;
use tally_sim::{ScriptedReply, SimConfig, SimGeneration, Simulator};
use tally_tests::{usd, Harness};
use tokio::process::{Child, Command};

const ORG: &str = "acme";

/// Short deadlines, so patience and giving up happen within a test.
const SETTINGS: &[(&str, &str)] = &[
    ("TALLY_ACK_WAIT", "3s"),
    ("TALLY_RECONCILE_DEADLINE", "2s"),
    ("TALLY_RECONCILE_MIN_WINDOW", "1s"),
];

fn tally(h: &Harness, sim_url: &str) -> Command {
    common::tally(h, sim_url, SETTINGS)
}

fn spawn(
    h: &Harness,
    sim_url: &str,
    args: &[&str],
    extra: &[(&str, String)],
) -> anyhow::Result<Child> {
    common::spawn(h, sim_url, SETTINGS, args, extra)
}

/// Polls the generation until `pred` holds (or fails after `timeout`).
async fn wait_generation(
    http: &reqwest::Client,
    api: &str,
    id: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let end = Instant::now() + timeout;
    loop {
        let (status, body) = get(http, &format!("{api}/v1/generations/{id}")).await?;
        if status == 200 && pred(&body) {
            return Ok(body);
        }
        anyhow::ensure!(Instant::now() < end, "{id}: last answer {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_events_transient_answers_the_sweep_and_the_drift_seen_from_outside(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = Simulator::start(SimConfig::ephemeral()).await?;
    let sim_url = sim.base_url();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let api = format!("http://127.0.0.1:{port}");

    // An operator creates the organisation (its first admin key comes back
    // as one JSON line), then connects OpenRouter with the key the
    // simulator knows; the reconciler looks its generations up with it.
    let org = common::run(&h, &sim_url, SETTINGS, &["org", "create", ORG]).await?;
    let admin_key = org["key"]
        .as_str()
        .expect("org create prints the key")
        .to_owned();
    common::run(
        &h,
        &sim_url,
        SETTINGS,
        &["provider", "connect", "--org", ORG],
    )
    .await?;
    let _projector = spawn(&h, &sim_url, &["projector"], &[])?;
    let _reconciler = spawn(&h, &sim_url, &["reconciler"], &[])?;
    let _api = spawn(
        &h,
        &sim_url,
        &["api"],
        &[("TALLY_HTTP_ADDR", format!("127.0.0.1:{port}"))],
    )?;
    wait_ready(&api).await?;
    let http = tally_testkit::authed_client(&admin_key)?;
    let r = http
        .post(format!("{api}/v1/budgets"))
        .json(&json!({"org_id": ORG, "name": "all", "scope": {}, "period": "monthly", "limit_usd": "1000"}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await?);

    let now = Utc::now();
    let twenty_ago = now - chrono::Duration::minutes(20);
    // Completed 20 minutes ago (the deadline is 2 s), first lookup 429 or 500.
    let mut late = Vec::new();
    for (i, fault) in [ScriptedReply::RateLimited, ScriptedReply::ServerError]
        .into_iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        let id = format!("gen-late-{i}");
        let cost = usd("0.00012345678901234567").try_add(Usd::new(i as i64, 9))?;
        sim.simulator().serve_generation(
            tally_sim::TEST_KEY,
            SimGeneration::new(&id, cost).script([fault]),
            twenty_ago,
        );
        late.push((id, cost));
    }
    // Stats that appear only well after the deadline: unresolved first.
    let slow = "gen-after-deadline";
    let slow_actual = usd("0.000285");
    sim.simulator().serve_generation(
        tally_sim::TEST_KEY,
        SimGeneration::new(slow, slow_actual).ready_after(Duration::from_secs(6)),
        now,
    );
    for (id, _) in &late {
        publish(
            &h,
            &completed_json(
                id,
                ORG,
                twenty_ago,
                (10, 5),
                &[("estimated_cost_usd", "0.0001")],
            ),
        )
        .await?;
    }
    publish(
        &h,
        &completed_json(slow, ORG, now, (10, 5), &[("estimated_cost_usd", "0.0001")]),
    )
    .await?;

    for (id, cost) in &late {
        let g = wait_generation(&http, &api, id, Duration::from_secs(30), |g| {
            g["state"] == "settled"
        })
        .await?;
        assert_eq!(dec(&g["actual_cost_usd"]), *cost, "{id}");
        assert_eq!(dec(&g["debited_usd"]), *cost, "{id}");
        // No status on the wire: booked as completed.
        assert_eq!(g["status"], "completed", "{id}");
        assert_eq!(
            sim.simulator().calls(id),
            2,
            "{id}: one fault, then the answer"
        );
    }
    let g = wait_generation(&http, &api, slow, Duration::from_secs(30), |g| {
        g["state"] == "unresolved"
    })
    .await?;
    assert_eq!(dec(&g["debited_usd"]), usd("0.0001"));

    // Once OpenRouter has it, the sweep finds it and the ledger trues up.
    let elapsed = (Utc::now() - now).to_std().unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(elapsed)).await;
    let mut c = tally(&h, &sim_url);
    c.args(["reconcile", "sweep", "--since", "1h"]);
    let out = tokio::time::timeout(Duration::from_secs(60), c.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sweep done: 1 asked, 1 reconciled, 0 still missing"),
        "{stdout}"
    );
    let g = wait_generation(&http, &api, slow, Duration::from_secs(30), |g| {
        g["state"] == "settled"
    })
    .await?;
    assert_eq!(dec(&g["debited_usd"]), slow_actual);
    let entries = g["entries"].as_array().cloned().unwrap_or_default();
    let mut story: Vec<(String, String, Usd)> = entries
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_owned(),
                e["basis"].as_str().unwrap_or_default().to_owned(),
                dec(&e["amount_usd"]),
            )
        })
        .collect();
    story.sort_by(|a, b| b.0.cmp(&a.0)); // debit, then adjustment
    assert_eq!(
        story,
        vec![
            ("debit".to_owned(), "estimate".to_owned(), usd("0.0001")),
            (
                "adjustment".to_owned(),
                "actual".to_owned(),
                usd("0.000185")
            ),
        ],
        "{entries:?}"
    );

    // Every generation went through tally: no drift in any window.
    let (status, drift) = get(&http, &format!("{api}/v1/providers/openrouter/drift")).await?;
    assert_eq!(status, 200, "{drift}");
    for w in drift["windows"].as_array().cloned().unwrap_or_default() {
        assert_eq!(dec(&w["drift_usd"]), Usd::ZERO, "{w}");
    }
    // Generations served with the key that tally never saw: the drift is
    // their cost, to the digit.
    let unseen = sim.simulator().serve_unseen(tally_sim::TEST_KEY, 5);
    let unseen_cost = Usd::try_sum(unseen.iter().map(SimGeneration::actual_cost))?;
    assert!(unseen_cost > Usd::ZERO);
    let (_, drift) = get(&http, &format!("{api}/v1/providers/openrouter/drift")).await?;
    let windows = drift["windows"].as_array().cloned().unwrap_or_default();
    assert_eq!(windows.len(), 3, "{drift}");
    for w in windows {
        assert_eq!(dec(&w["drift_usd"]), unseen_cost, "{w}");
    }
    let metrics = http
        .get(format!("{api}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains(
            "tally_api_provider_drift_usd{org_id=\"acme\",provider=\"openrouter\",window=\"daily\"}"
        ),
        "{metrics}"
    );
    Ok(())
}
