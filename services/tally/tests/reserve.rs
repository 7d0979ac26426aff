//! Hard budgets and "never run twice", driven only from outside: requests
//! published on NATS as any requester would, `tally worker`, `tally
//! projector`, `tally reconciler` and `tally api` as processes, the
//! OpenRouter simulator over HTTP, answers read from the HTTP API.
//!
//! * 50 requests at once against a hard budget with room for three worst
//!   cases: the budget never passes its limit, at least one generation
//!   runs, every refusal is `budget_exhausted`, every hold ends settled or
//!   released.
//! * A worker SIGKILLed after OpenRouter's headers (the simulator holds the
//!   body back) and before its events are stored, then restarted: the
//!   simulator served exactly one generation for the request, and the books
//!   equal its cost.

mod common;

use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use common::{dec, get, publish, wait_for, wait_ready};
use serde_json::{json, Value};
use tally_money::Usd;
use tally_sim::{SimConfig, Simulator};
use tally_tests::Harness;
use tokio::process::Child;

const ORG: &str = "acme";
const MODEL: &str = "openai/gpt-4o-mini";

/// A short redelivery, a reconcile deadline far beyond the test.
const SETTINGS: &[(&str, &str)] = &[
    ("TALLY_ACK_WAIT", "2s"),
    ("TALLY_RECONCILE_DEADLINE", "60s"),
];

fn spawn(h: &Harness, sim_url: &str, args: &[&str], extra: &[(&str, String)]) -> Child {
    common::spawn(h, sim_url, SETTINGS, args, extra).expect("tally starts")
}

async fn run(h: &Harness, sim_url: &str, args: &[&str]) -> anyhow::Result<Value> {
    common::run(h, sim_url, SETTINGS, args).await
}

/// A `generation.requested` event as a requester writes it.
fn requested(request_id: &str, agent: &str) -> Value {
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let data = json!({
        "request_id": request_id,
        "org_id": ORG,
        "agent_id": agent,
        "model": MODEL,
        "input": "Say hello to the budget.",
        "requested_at": now
    });
    common::event_json(
        "generation.requested",
        &format!("requested-{request_id}"),
        "/outside/requester",
        ORG,
        &now,
        data,
    )
}

struct Deployment {
    h: Harness,
    sim: tally_sim::RunningSim,
    api: String,
    http: reqwest::Client,
    _services: Vec<Child>,
}

/// The organisation created and connected as an operator does it, then
/// the API, projector and reconciler running (the worker is the test's).
async fn deploy(cfg: SimConfig) -> anyhow::Result<Deployment> {
    let h = Harness::start().await?;
    let sim = Simulator::start(cfg).await?;
    let sim_url = sim.base_url();
    let org = run(&h, &sim_url, &["org", "create", ORG]).await?;
    let key = org["key"].as_str().expect("org create prints the key");
    run(&h, &sim_url, &["provider", "connect", "--org", ORG]).await?;
    let port = tally_testkit::free_port()?;
    let api = format!("http://127.0.0.1:{port}");
    let services = vec![
        spawn(&h, &sim_url, &["projector"], &[]),
        spawn(&h, &sim_url, &["reconciler"], &[]),
        spawn(
            &h,
            &sim_url,
            &["api"],
            &[("TALLY_HTTP_ADDR", format!("127.0.0.1:{port}"))],
        ),
    ];
    wait_ready(&api).await?;
    let http = tally_testkit::authed_client(key)?;
    Ok(Deployment {
        h,
        sim,
        api,
        http,
        _services: services,
    })
}

impl Deployment {
    fn sim_url(&self) -> String {
        self.sim.base_url()
    }

    fn worker(&self) -> Child {
        spawn(&self.h, &self.sim_url(), &["worker"], &[])
    }

    async fn budget(&self, body: Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}/v1/budgets", self.api))
            .json(&body)
            .send()
            .await?;
        let status = r.status().as_u16();
        let v: Value = r.json().await?;
        anyhow::ensure!(status == 201, "budget: {status} {v}");
        Ok(v)
    }

    async fn reservation(&self, request_id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(
            &self.http,
            &format!("{}/v1/reservations/{request_id}", self.api),
            Duration::from_secs(60),
            pred,
        )
        .await
        .expect("reservation reaches the expected state")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_requests_at_once_never_pass_a_hard_budget() -> anyhow::Result<()> {
    let d = deploy(SimConfig::ephemeral()).await?;
    let _worker = d.worker();

    // One probe request outside the budget's scope shows the worst case a
    // request of this shape holds.
    publish(&d.h, &requested("probe", "probe")).await?;
    let probe = d.reservation("probe", |r| r["state"] == "settled").await;
    let worst = dec(&probe["amount_usd"]);
    assert!(worst.is_positive(), "{probe}");
    // Room for three worst cases (and a half).
    let limit = worst.try_mul_int(7)?;
    let limit = Usd::from_units(limit.units() / 2)?;
    let b = d
        .budget(
            json!({"name": "swarm", "scope": {"agent_id": "swarm"}, "period": "monthly",
                       "limit_usd": limit.to_string(), "enforcement": "hard"}),
        )
        .await?;
    let budget_url = format!("{}/v1/budgets/{}", d.api, b["id"].as_str().unwrap());

    let ids: Vec<String> = (0..50).map(|i| format!("swarm-{i}")).collect();
    let docs: Vec<Value> = ids.iter().map(|id| requested(id, "swarm")).collect();
    let publishes = docs.iter().map(|doc| publish(&d.h, doc));
    for p in futures::future::join_all(publishes).await {
        p?;
    }
    // While they run, the budget's spent + reserved never passes the limit.
    let mut peak = Usd::ZERO;
    let mut finals = Vec::new();
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, b) = get(&d.http, &budget_url).await?;
        let p = &b["current_period"];
        let committed = dec(&p["spent_usd"]).try_add(dec(&p["reserved_usd"]))?;
        peak = peak.max(committed);
        finals.clear();
        for id in &ids {
            let (s, r) = get(&d.http, &format!("{}/v1/reservations/{id}", d.api)).await?;
            if s == 200 && r["state"] != "held" {
                finals.push(r);
            }
        }
        if finals.len() == ids.len() || Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(finals.len(), 50, "every hold ends settled or released");
    assert!(peak <= limit, "spent + reserved reached {peak} > {limit}");
    let settled = finals.iter().filter(|r| r["state"] == "settled").count();
    assert!(settled >= 1, "at least one generation runs");
    for r in &finals {
        match r["state"].as_str() {
            Some("settled") => {}
            Some("refused") => {
                assert_eq!(r["failure_reason"], "budget_exhausted", "{r}");
                assert_eq!(r["refused_by"], b["id"], "{r}");
            }
            other => panic!("unexpected final state {other:?}: {r}"),
        }
    }
    // Once the costs are booked the budget is within its limit and holds
    // nothing.
    let b = wait_for(&d.http, &budget_url, Duration::from_secs(30), |b| {
        b["current_period"]["reserved_usd"] == "0"
            && b["current_period"]["generations"].as_u64() == Some(settled as u64)
    })
    .await?;
    assert!(dec(&b["current_period"]["spent_usd"]) <= limit, "{b}");
    // The simulator ran exactly the settled ones (and the probe).
    let served = d
        .sim
        .simulator()
        .key_activity(tally_sim::TEST_KEY)
        .expect("the key is known")
        .generations
        .len();
    assert_eq!(served, settled + 1);
    eprintln!(
        "reservations: worst case {worst}, limit {limit}: {settled} ran, {} refused, peak spent+reserved {peak}",
        50 - settled
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_after_the_headers_never_runs_the_generation_twice() -> anyhow::Result<()> {
    // The body comes 4 s after the headers: the worker knows the generation
    // id and has no cost yet when it is killed.
    let d = deploy(SimConfig {
        gen_body_delay: Duration::from_secs(4),
        ..SimConfig::ephemeral()
    })
    .await?;
    let b = d
        .budget(json!({"name": "all", "scope": {}, "period": "monthly",
                       "limit_usd": "10", "enforcement": "hard"}))
        .await?;
    let mut worker = d.worker();
    publish(&d.h, &requested("kill-me", "victim")).await?;

    // Headers out: the simulator has run the generation once.
    let end = Instant::now() + Duration::from_secs(30);
    let generation_id = loop {
        let act = d.sim.simulator().key_activity(tally_sim::TEST_KEY).unwrap();
        if let Some(g) = act.generations.first() {
            break g.id.clone();
        }
        anyhow::ensure!(Instant::now() < end, "the worker never called OpenRouter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The reservation records the generation id from the headers.
    let r = d
        .reservation("kill-me", |r| r["generation_id"].is_string())
        .await;
    assert_eq!(r["generation_id"], generation_id.as_str(), "{r}");
    assert_eq!(r["state"], "held", "{r}");
    worker.start_kill()?; // SIGKILL: nothing is flushed, nothing acked.
    worker.wait().await?;

    // Restarted, the worker gets the redelivered request and does not run
    // it again; the reconciler finds the cost and the projector books it.
    let _worker = d.worker();
    let r = d.reservation("kill-me", |r| r["state"] == "settled").await;
    assert_eq!(r["generation_id"], generation_id.as_str(), "{r}");
    let g = wait_for(
        &d.http,
        &format!("{}/v1/generations/{generation_id}", d.api),
        Duration::from_secs(60),
        |g| g["basis"] == "actual",
    )
    .await?;
    let act = d.sim.simulator().key_activity(tally_sim::TEST_KEY).unwrap();
    assert_eq!(
        act.generations.len(),
        1,
        "the simulator served one generation"
    );
    let charged = act.generations[0].charged;
    assert_eq!(dec(&g["debited_usd"]), charged, "{g}");
    let budget = wait_for(
        &d.http,
        &format!("{}/v1/budgets/{}", d.api, b["id"].as_str().unwrap()),
        Duration::from_secs(30),
        |b| b["current_period"]["reserved_usd"] == "0",
    )
    .await?;
    assert_eq!(
        dec(&budget["current_period"]["spent_usd"]),
        charged,
        "{budget}"
    );
    assert_eq!(budget["current_period"]["generations"], 1, "{budget}");
    Ok(())
}
