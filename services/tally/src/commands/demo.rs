//! `tally demo`: everything on one machine, with a live summary.
//!
//! Starts the OpenRouter simulator in this process, runs every service
//! (`tally run`) against the local NATS and Postgres, creates its own
//! organisation (as `tally org create` does) and prints the admin key it
//! uses, creates a few budgets through the HTTP API with that key, drives a stream of generations (a share of them
//! without an actual cost, as after an aborted stream, so the reconciler
//! has to fetch it), shows a live progress line, and ends with a spend
//! summary per budget and per model, read back from the API.

use std::io::Write;
use std::time::{Duration, Instant};
use tally_events::Attribution;

use anyhow::{bail, Context};
use futures::StreamExt;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tally_money::Usd;
use tally_sim::load::{Generator, LoadArgs};
use tally_sim::{Fraction, SimConfig, Simulator};

use crate::config::Config;

/// Options of `tally demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// How many generations to drive.
    #[arg(long, default_value_t = 400)]
    pub generations: u64,
    /// Generations per second.
    #[arg(long, default_value_t = 40)]
    pub rate: u32,
    /// Fraction (0..1) of generations whose cost must be reconciled
    /// (aborted streams through the worker; cost-less events with --direct).
    #[arg(long, default_value = "0.3")]
    pub missing_cost: Fraction,
    /// Keep the services (and the API) running after the summary, until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// Publish generation.completed events directly (as "any other
    /// producer") instead of generation requests through the worker.
    #[arg(long)]
    pub direct: bool,
}

/// Connects the demo organisation to the simulated OpenRouter through the
/// OAuth PKCE flow: start, follow the authorize URL (the simulator approves
/// and redirects to the callback with a code), exchange the code.
async fn connect_with_oauth(cfg: &Config, org: &str) -> anyhow::Result<()> {
    let store = super::connect_store(cfg, 2).await?;
    let connections = super::provider::connections(cfg, store)?;
    let start = connections
        .start_oauth(org, None, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))?;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let resp = browser.get(&start.authorize_url).send().await?;
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("the OAuth page did not redirect to the callback")?;
    let callback = url::Url::parse(location)?;
    let param = |k: &str| {
        callback
            .query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    let (Some(state), Some(code)) = (param("state"), param("code")) else {
        bail!("the OAuth callback carried no state or code: access was denied");
    };
    let (_, status) = connections
        .finish_oauth(&state, &code)
        .await
        .map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))?;
    println!(
        "  OpenRouter            connected with OAuth (PKCE): key {}, {} models",
        status.key_label.as_deref().unwrap_or("?"),
        status.models.count
    );
    Ok(())
}

const DEFAULT_DEMO_DATABASE_URL: &str = "postgres://tally:tally@127.0.0.1:5432/tally";

/// Runs the demo.
pub async fn demo(cfg: &Config, args: DemoArgs) -> anyhow::Result<()> {
    let mut cfg = cfg.clone();
    if cfg.database_url.is_none() {
        cfg.database_url = Some(DEFAULT_DEMO_DATABASE_URL.into());
    }
    // The simulator stands in for OpenRouter: stats appear after 2 s, and a
    // few replies are rate limits and server errors, as in real life.
    let sim = Simulator::start(SimConfig {
        addr: "127.0.0.1:0".parse()?,
        stats_delay: Duration::from_secs(2),
        rate_429: Fraction::from_ppm(20_000),
        rate_500: Fraction::from_ppm(20_000),
        retry_after: Duration::from_secs(1),
        // Through the worker: part of the streams abort before their usage
        // arrives, so the reconciler must fetch the cost.
        gen_abort_rate: args.missing_cost,
        gen_latency: Duration::from_millis(20),
        provisioned_keys: vec!["sk-or-demo".to_owned()],
        ..SimConfig::default()
    })
    .await
    .context("starting the OpenRouter simulator")?;
    cfg.openrouter_base_url = sim.base_url();
    cfg.openrouter_api_key = Some("sk-or-demo".into());
    if cfg.keyring.is_none() {
        // The demo's own key-encryption key, for this run only.
        let k = tally_secrets::generate_key_setting("demo");
        cfg.keyring = Some(std::sync::Arc::new(tally_secrets::Keyring::from_settings(
            Some(&k),
            None,
        )?));
    }
    if cfg.public_url.is_none() {
        cfg.public_url = Some(
            tally_provider::oauth::validate_public_url(&format!("http://{}", cfg.http_addr))
                .map_err(anyhow::Error::msg)?,
        );
    }
    cfg.openrouter_auth_url = format!("{}/auth", sim.root_url());
    cfg.reconcile_deadline = cfg.reconcile_deadline.min(Duration::from_secs(120));
    println!("tally demo");
    println!("  OpenRouter simulator  {}", sim.base_url());
    println!("  NATS                  {}", cfg.nats_url);
    println!("  HTTP API              http://{}", cfg.http_addr);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let services = {
        let cfg = cfg.clone();
        tokio::spawn(async move { super::run_all(&cfg, stop_rx).await })
    };
    let api = format!("http://{}", cfg.http_addr);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    if let Err(e) = wait_ready(&http, &api, &services).await {
        if services.is_finished() {
            if let Ok(Err(cause)) = services.await {
                return Err(cause.context("the services failed to start"));
            }
        }
        return Err(e);
    }

    let org = format!("demo-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let store = super::connect_store(&cfg, 2).await?;
    let (_, admin) = store
        .create_org(&org, Some("tally demo"))
        .await
        .context("creating the demo organisation")?;
    println!("  organisation          {org}");
    println!(
        "  admin API key         {} (key id {})\n",
        admin.secret.expose_secret(),
        admin.info.id
    );
    let http = authed_client(admin.secret.expose_secret())?;
    connect_with_oauth(&cfg, &org).await?;
    let budgets = create_budgets(&http, &api, &org).await?;

    let bus = super::connect_bus(&cfg).await?;
    let mut alerts_sub = bus
        .client()
        .subscribe(format!("{}.budget.alert.{org}.>", cfg.prefix))
        .await
        .context("subscribing to budget alerts")?;
    let (alert_tx, mut alert_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(m) = alerts_sub.next().await {
            let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            let d = &v["data"];
            let _ = alert_tx.send(format!(
                "alert: budget {:?} crossed {}% ({} of {} USD)",
                d["budget_name"].as_str().unwrap_or("?"),
                d["threshold_percent"],
                d["spent_usd"].as_str().unwrap_or("?"),
                d["limit_usd"].as_str().unwrap_or("?"),
            ));
        }
    });

    let mut failed_sub = bus
        .client()
        .subscribe(format!("{}.generation.failed.{org}", cfg.prefix))
        .await
        .context("subscribing to failed generations")?;
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let refused = refused.clone();
        tokio::spawn(async move {
            while failed_sub.next().await.is_some() {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    let mut producer = if args.direct {
        Producer::Direct(Box::new(Generator::new(
            LoadArgs {
                org: org.clone(),
                missing_cost: args.missing_cost,
                ..Default::default()
            },
            &cfg.prefix,
        )?))
    } else {
        Producer::Requests {
            org: org.clone(),
            run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            next: 0,
        }
    };
    let started = Instant::now();
    let interval = Duration::from_micros(1_000_000 / u64::from(args.rate.max(1)));
    let mut tick = tokio::time::interval(interval);
    let mut published = 0u64;
    let mut true_total = Usd::ZERO;
    let mut last_line = Instant::now() - Duration::from_secs(1);
    let mut alerts = 0u64;
    let reconcile_deadline = cfg.reconcile_deadline + Duration::from_secs(30);
    let mut drained_since: Option<Instant> = None;
    loop {
        if published < args.generations {
            tick.tick().await;
            let (subject, id, body, truth) = producer.next(&cfg.prefix, &sim)?;
            bus.publish(&subject, &id, body.into())
                .await
                .context("publishing an event")?;
            true_total = true_total.try_add(truth)?;
            published += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        while let Ok(line) = alert_rx.try_recv() {
            alerts += 1;
            print!("\r\x1b[2K");
            println!("  {line}");
        }
        if services.is_finished() {
            bail!("the services stopped unexpectedly (see the log above)");
        }
        if last_line.elapsed() >= Duration::from_millis(500) {
            last_line = Instant::now();
            let counts = store.state_counts(&org).await?;
            let get = |s: &str| counts.iter().find(|c| c.0 == s).map(|c| c.1).unwrap_or(0);
            let booked: i64 = counts
                .iter()
                .filter(|c| c.0 != "pending")
                .map(|c| c.1)
                .sum();
            let spent = budget_spent(&http, &api, &budgets[0].0)
                .await
                .unwrap_or_default();
            let refused_now = refused.load(std::sync::atomic::Ordering::Relaxed);
            print!(
                "\r\x1b[2K  {} {published}/{} | booked {booked} | refused {refused_now} | spent {} USD | awaiting actual cost {} | alerts {alerts}",
                if args.direct { "generations" } else { "requests" },
                args.generations,
                short_usd(&spent),
                get("provisional"),
            );
            let _ = std::io::stdout().flush();
            if published == args.generations
                && booked as u64 + refused_now >= published
                && get("provisional") == 0
            {
                // Give the last alerts a moment to arrive.
                let since = *drained_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    break;
                }
            }
            if started.elapsed()
                > reconcile_deadline
                    + Duration::from_secs(args.generations / u64::from(args.rate.max(1)))
            {
                println!("\n  (stopping: not everything was reconciled in time)");
                break;
            }
        }
    }
    println!("\n");
    if !args.direct {
        true_total = producer.truth(&store, &org, &sim).await?;
    }
    summary(&http, &api, &org, &budgets, true_total, &store).await?;
    let refused_total = refused.load(std::sync::atomic::Ordering::Relaxed);
    if refused_total > 0 {
        println!("Requests refused before reaching OpenRouter (budget holds, bad requests): {refused_total}");
    }

    if args.keep_running {
        println!("\nservices keep running; API at {api} (Ctrl-C to stop)");
        let mut stop = super::shutdown_signal();
        let _ = stop.wait_for(|v| *v).await;
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), services).await;
    let _ = sim.shutdown().await;
    Ok(())
}

/// What the demo publishes.
enum Producer {
    /// Completed events, as any producer would send them.
    Direct(Box<Generator>),
    /// Generation requests for the worker.
    Requests { org: String, run: String, next: u64 },
}

impl Producer {
    /// The next message: subject, id, body, and (direct mode) its true cost.
    fn next(
        &mut self,
        prefix: &str,
        sim: &tally_sim::RunningSim,
    ) -> anyhow::Result<(String, String, Vec<u8>, Usd)> {
        match self {
            Producer::Direct(generator) => {
                let g = generator.generate();
                if let Some(spec) = g.sim_spec.clone() {
                    sim.simulator()
                        .register_spec(spec)
                        .map_err(|e| anyhow::anyhow!("simulator refused a generation: {e}"))?;
                }
                Ok((
                    g.event.subject.clone(),
                    g.event.id.clone(),
                    g.event.to_json(),
                    g.true_cost,
                ))
            }
            Producer::Requests { org, run, next } => {
                let i = *next;
                *next += 1;
                const AGENTS: [&str; 3] = ["researcher", "writer", "coder"];
                const MODELS: [&str; 2] = ["openai/gpt-4o-mini", "deepseek/deepseek-r1"];
                let request_id = format!("req-{run}-{i}");
                let data = tally_events::GenerationRequested {
                    request_id: request_id.clone(),
                    attribution: Attribution {
                        org_id: org.clone(),
                        agent_id: Some(AGENTS[(i % 3) as usize].into()),
                        session_id: Some(format!("sess-{run}-{}", i / 10)),
                        user_id: Some(format!("user-{}", i % 7)),
                        model: MODELS[(i % 5 % 2) as usize].into(),
                    },
                    models: None,
                    input: tally_events::Input::Text(format!(
                        "Summarise finding #{i} for the weekly report in three sentences."
                    )),
                    instructions: Some("Be concise.".into()),
                    max_output_tokens: Some(400),
                    stream: i % 2 == 0,
                    routing: None,
                    server_tools: None,
                    reply_subject: None,
                    requested_at: chrono::Utc::now(),
                };
                let subject =
                    tally_events::EventType::GenerationRequested.subject(prefix, org, None);
                let id = format!("requested-{request_id}");
                let ev = tally_events::CloudEvent::new(
                    id.clone(),
                    "tally/demo",
                    subject.clone(),
                    data.requested_at,
                    data,
                );
                Ok((subject, id, ev.to_json(), Usd::ZERO))
            }
        }
    }

    /// Through the worker, the truth is what the simulator charged for the
    /// generations the ledger recorded.
    async fn truth(
        &self,
        store: &tally_store::Store,
        org: &str,
        sim: &tally_sim::RunningSim,
    ) -> anyhow::Result<Usd> {
        let mut total = Usd::ZERO;
        for id in store.generation_ids(org).await? {
            if let Some(g) = sim.simulator().generation(&id) {
                total = total.try_add(g.total_cost)?;
                if g.is_byok {
                    total = total.try_add(g.upstream_inference_cost.unwrap_or_default())?;
                }
            }
        }
        Ok(total)
    }
}

/// An HTTP client sending `key` as the bearer credential of every request.
fn authed_client(key: &str) -> anyhow::Result<reqwest::Client> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()?)
}

async fn wait_ready(
    http: &reqwest::Client,
    api: &str,
    services: &tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if services.is_finished() {
            bail!("the services failed to start");
        }
        if let Ok(r) = http.get(format!("{api}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the API did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_budgets(
    http: &reqwest::Client,
    api: &str,
    org: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let defs = [
        json!({"org_id": org, "name": "Whole organisation (daily)", "scope": {}, "period": "daily",
               "timezone": "Europe/Berlin", "limit_usd": "0.012", "enforcement": "soft"}),
        json!({"org_id": org, "name": "Researcher agent", "scope": {"agent_id": "researcher"},
               "period": "total", "limit_usd": "0.003", "thresholds_percent": [50, 80, 100],
               "enforcement": "hard"}),
        json!({"org_id": org, "name": "DeepSeek R1 (monthly)", "scope": {"model": "deepseek/deepseek-r1"},
               "period": "monthly", "limit_usd": "0.008", "enforcement": "soft"}),
    ];
    let mut out = Vec::new();
    for d in defs {
        let r = http
            .post(format!("{api}/v1/budgets"))
            .json(&d)
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("creating budget failed: HTTP {status}: {body}");
        }
        let id = body["id"].as_str().unwrap_or_default().to_owned();
        let name = body["name"].as_str().unwrap_or_default().to_owned();
        println!(
            "  budget {name:<28} limit {:>5} USD  ({})",
            d["limit_usd"].as_str().unwrap_or("?"),
            d["period"].as_str().unwrap_or("?")
        );
        out.push((id, name));
    }
    println!();
    Ok(out)
}

/// `GET /v1/budgets/{id}`, as JSON.
async fn get_budget(http: &reqwest::Client, api: &str, id: &str) -> anyhow::Result<Value> {
    Ok(http
        .get(format!("{api}/v1/budgets/{id}"))
        .send()
        .await?
        .json()
        .await?)
}

async fn budget_spent(http: &reqwest::Client, api: &str, id: &str) -> anyhow::Result<Usd> {
    let v = get_budget(http, api, id).await?;
    Ok(tally_money::parse_decimal_str(
        v["current_period"]["spent_usd"].as_str().unwrap_or("0"),
    )?)
}

async fn summary(
    http: &reqwest::Client,
    api: &str,
    org: &str,
    budgets: &[(String, String)],
    true_total: Usd,
    store: &tally_store::Store,
) -> anyhow::Result<()> {
    println!("Spend per budget (current period, from GET /v1/budgets/{{id}}):");
    println!(
        "  {:<28} {:>24} {:>24} {:>24} {:>10}",
        "budget", "spent USD", "actual part", "estimated part", "limit"
    );
    for (id, name) in budgets {
        let v = get_budget(http, api, id).await?;
        let p = &v["current_period"];
        println!(
            "  {:<28} {:>24} {:>24} {:>24} {:>10}",
            name,
            p["spent_usd"].as_str().unwrap_or("?"),
            p["spent_actual_usd"].as_str().unwrap_or("?"),
            p["spent_estimated_usd"].as_str().unwrap_or("?"),
            v["limit_usd"].as_str().unwrap_or("?"),
        );
    }
    let now = chrono::Utc::now();
    let from = (now - chrono::Duration::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = (now + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let v: Value = http
        .get(format!("{api}/v1/spend"))
        .query(&[
            ("org_id", org),
            ("from", &from),
            ("to", &to),
            ("group_by", "model"),
        ])
        .send()
        .await?
        .json()
        .await?;
    println!("\nSpend per model (GET /v1/spend?group_by=model):");
    for g in v["groups"].as_array().cloned().unwrap_or_default() {
        println!(
            "  {:<32} {:>24} USD  {:>5} generations",
            g["key"].as_str().unwrap_or("-"),
            g["spent_usd"].as_str().unwrap_or("?"),
            g["generations"]
        );
    }
    let total = &v["total"];
    println!(
        "  {:<32} {:>24} USD  {:>5} generations",
        "total",
        total["spent_usd"].as_str().unwrap_or("?"),
        total["generations"]
    );
    let counts = store.state_counts(org).await?;
    println!(
        "\nGeneration states: {}",
        counts
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "What the generations really cost (simulator's truth): {} USD",
        tally_money::to_decimal_string(&true_total)
    );
    Ok(())
}

/// An amount for the live summary line: at most 8 fractional digits, cut
/// (never rounded) and marked with `…` when digits were left out.
fn short_usd(amount: &Usd) -> String {
    let text = tally_money::to_decimal_string(amount);
    match text.split_once('.') {
        Some((int, frac)) if frac.len() > 8 => format!("{int}.{}…", &frac[..8]),
        _ => text,
    }
}
