//! Webhooks driven only from outside: `tally run` and `tally api` as
//! processes, the webhook registered over HTTP, generations published on
//! NATS as any producer publishes them, an HTTP receiver run by this test,
//! signatures checked by the Standard Webhooks reference library
//! (`standardwebhooks` from PyPI, installed by `deploy/setup.sh`).
//!
//! * A receiver on 127.0.0.1 is refused by an API without
//!   `TALLY_WEBHOOK_ALLOW_PRIVATE` (422 `webhook_target_forbidden`) and
//!   accepted by one with it.
//! * The receiver is down for two minutes (first its port is closed, then
//!   it answers 503) while generations cross six budget thresholds; then it
//!   comes up. Every alert a plain NATS subscriber saw arrives, each
//!   acknowledged once: after its 2xx a `webhook-id` never comes again,
//!   and every request's signature verifies with the reference library.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use common::{completed_json, get, publish, wait_ready};
use futures::StreamExt as _;
use serde_json::{json, Value};
use tally_sim::{SimConfig, Simulator};
use tally_tests::Harness;

const ORG: &str = "acme";
/// How long the receiver is down.
const DOWN: Duration = Duration::from_secs(120);

/// Short retries, so a receiver back from two minutes down is reached
/// within seconds.
const SETTINGS: &[(&str, &str)] = &[
    ("TALLY_WEBHOOK_RETRY_INTERVAL", "1s"),
    ("TALLY_WEBHOOK_RETRY_MAX_INTERVAL", "8s"),
    ("TALLY_RECONCILE_DEADLINE", "10m"),
];

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Request {
    at: Instant,
    headers: BTreeMap<String, String>,
    body: String,
    answered: u16,
}

#[derive(Default)]
struct Receiver {
    requests: Mutex<Vec<Request>>,
    up: AtomicBool,
}

/// Serves the receiver on `port`: 503 until `up`, then 204.
async fn serve_receiver(port: u16, state: Arc<Receiver>) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let up = state.up.load(Ordering::SeqCst);
                let answered = if up { 204 } else { 503 };
                state.requests.lock().unwrap().push(Request {
                    at: Instant::now(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect(),
                    body,
                    answered,
                });
                StatusCode::from_u16(answered).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}

/// The venv's Python with the reference library (see `deploy/setup.sh`).
fn reference_python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py = root.join("deploy/.local/venv/bin/python3");
    assert!(
        py.exists(),
        "{} is missing: run `bash deploy/setup.sh` (it installs standardwebhooks)",
        py.display()
    );
    py
}

/// Verifies every request with `standardwebhooks.Webhook(secret).verify`;
/// the number of requests that verified and the ids of those that did not.
async fn verify_with_reference(secret: &str, requests: &[Request]) -> anyhow::Result<Value> {
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
job = json.load(sys.stdin)
hook = Webhook(job["secret"])
ok, bad = 0, []
for r in job["requests"]:
    try:
        hook.verify(r["body"], r["headers"])
        ok += 1
    except WebhookVerificationError as e:
        bad.append([r["headers"].get("webhook-id"), str(e)])
print(json.dumps({"ok": ok, "bad": bad}))
"#;
    let job = json!({
        "secret": secret,
        "requests": requests.iter().map(|r| json!({"headers": r.headers, "body": r.body})).collect::<Vec<_>>(),
    });
    let mut child = tokio::process::Command::new(reference_python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    use tokio::io::AsyncWriteExt as _;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(job.to_string().as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    anyhow::ensure!(
        out.status.success(),
        "the reference verifier failed (is standardwebhooks installed? run deploy/setup.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Starts `tally <command>` serving HTTP on a free port, with the `extra`
/// settings; the process (killed when dropped) and its base URL.
fn serve(
    h: &Harness,
    sim_url: &str,
    command: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<(tokio::process::Child, String)> {
    let port = tally_testkit::free_port()?;
    let mut settings = vec![("TALLY_HTTP_ADDR", format!("127.0.0.1:{port}"))];
    settings.extend_from_slice(extra);
    let child = common::spawn(h, sim_url, SETTINGS, &[command], &settings)?;
    Ok((child, format!("http://127.0.0.1:{port}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_down_for_two_minutes_gets_every_alert_once_signed() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let sim = Simulator::start(SimConfig::ephemeral()).await?;
    let sim_url = sim.base_url();
    let org = common::run(&h, &sim_url, SETTINGS, &["org", "create", ORG]).await?;
    let key = org["key"]
        .as_str()
        .expect("org create prints the key")
        .to_owned();
    let http = tally_testkit::authed_client(&key)?;

    // A plain NATS subscriber of the organisation's alerts, as before
    // webhooks existed.
    let mut plain = h
        .bus
        .client()
        .subscribe(format!("tally.budget.alert.{ORG}.>"))
        .await?;

    // `tally run` allows private receivers; a separate `tally api` does not.
    let private = [("TALLY_WEBHOOK_ALLOW_PRIVATE", "true".to_owned())];
    let (_run, run_api) = serve(&h, &sim_url, "run", &private)?;
    let (_strict, strict_api) = serve(&h, &sim_url, "api", &[])?;
    wait_ready(&run_api).await?;
    wait_ready(&strict_api).await?;

    let hook_port = tally_testkit::free_port()?;
    let hook_url = format!("http://127.0.0.1:{hook_port}/hook");
    let register = json!({"url": hook_url, "events": ["budget.threshold_crossed"],
                          "description": "outside receiver"});
    let r = http
        .post(format!("{strict_api}/v1/webhooks"))
        .json(&register)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 422);
    let refused: Value = r.json().await?;
    assert_eq!(refused["code"], "webhook_target_forbidden", "{refused}");
    assert_eq!(refused["field"], "url", "{refused}");
    assert!(refused.get("secret").is_none());

    let r = http
        .post(format!("{run_api}/v1/webhooks"))
        .json(&register)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 201);
    let hook: Value = r.json().await?;
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{hook}");
    let (_, shown) = get(&http, &format!("{run_api}/v1/webhooks/{hook_id}")).await?;
    assert!(shown.get("secret").is_none(), "{shown}");

    // Two budgets: 1 USD and 2 USD, thresholds 50/80/100.
    for (name, limit) in [("small", "1"), ("large", "2")] {
        let r = http
            .post(format!("{run_api}/v1/budgets"))
            .json(&json!({"name": name, "scope": {}, "period": "monthly", "limit_usd": limit}))
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await?);
    }

    // Down: the port is closed for the first half, then 503s.
    let receiver = Arc::new(Receiver::default());
    let started = Instant::now();
    // Eight generations of 0.25 USD while the receiver is down:
    // small crosses 50 % at 0.5, 80 % and 100 % at 1.0; large 50 % at 1.0,
    // 80 % at 1.75, 100 % at 2.0 — six alerts.
    for i in 0..8 {
        publish(
            &h,
            &completed_json(
                &format!("gen-{i}"),
                ORG,
                Utc::now(),
                (100, 20),
                &[("actual_cost_usd", "0.25")],
            ),
        )
        .await?;
        if i == 3 {
            tokio::time::sleep(DOWN / 2 - started.elapsed().min(DOWN / 2)).await;
            serve_receiver(hook_port, receiver.clone()).await?;
        } else {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
    let mut alert_ids = BTreeSet::new();
    let end = Instant::now() + Duration::from_secs(30);
    while alert_ids.len() < 6 && Instant::now() < end {
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), plain.next()).await {
            let doc: Value = serde_json::from_slice(&msg.payload)?;
            alert_ids.insert(doc["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(alert_ids.len(), 6, "{alert_ids:?}");
    tokio::time::sleep(DOWN.saturating_sub(started.elapsed())).await;
    let refused_while_down = receiver.requests.lock().unwrap().len();
    assert!(
        refused_while_down > 0,
        "attempts reached the receiver while it answered 503"
    );
    // During the outage the log shows attempts and nothing delivered.
    let (_, log) = get(
        &http,
        &format!("{run_api}/v1/webhooks/{hook_id}/deliveries"),
    )
    .await?;
    let deliveries = log["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 6, "{log}");
    for d in deliveries {
        assert_eq!(d["state"], "pending", "{d}");
        assert!(d["attempts"].as_i64().unwrap() >= 2, "{d}");
        assert!(d["last_error"].is_string(), "{d}");
    }

    // Up.
    receiver.up.store(true, Ordering::SeqCst);
    let up_at = Instant::now();
    let log = common::wait_for(
        &http,
        &format!("{run_api}/v1/webhooks/{hook_id}/deliveries"),
        Duration::from_secs(60),
        |l| {
            l["deliveries"]
                .as_array()
                .is_some_and(|d| d.len() == 6 && d.iter().all(|d| d["state"] == "delivered"))
        },
    )
    .await?;
    let caught_up = up_at.elapsed();
    // Nothing more comes once every delivery is acknowledged.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let requests = receiver.requests.lock().unwrap().clone();

    // Every alert arrived, each acknowledged exactly once, and no
    // webhook-id came again after its 2xx.
    let mut acked: BTreeMap<String, Instant> = BTreeMap::new();
    let mut event_of: BTreeMap<String, String> = BTreeMap::new();
    for r in &requests {
        let id = r.headers["webhook-id"].clone();
        let body: Value = serde_json::from_str(&r.body)?;
        let event_id = body["id"].as_str().unwrap().to_owned();
        assert_eq!(body["type"], "tally.budget.threshold_crossed.v1");
        if let Some(prev) = event_of.insert(id.clone(), event_id.clone()) {
            assert_eq!(prev, event_id, "one webhook-id, one event");
        }
        if let Some(first_ack) = acked.get(&id) {
            panic!("{id} sent again {:?} after its 2xx", r.at - *first_ack);
        }
        if r.answered == 204 {
            acked.insert(id, r.at);
        }
        assert_eq!(r.headers["content-type"], "application/json");
    }
    let delivered_events: BTreeSet<String> = acked.keys().map(|id| event_of[id].clone()).collect();
    assert_eq!(delivered_events, alert_ids, "every alert, once");
    assert_eq!(acked.len(), 6);
    // The log's ids are the webhook-ids the receiver saw.
    let logged: BTreeSet<String> = log["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(logged, acked.keys().cloned().collect());

    // Every signature verifies with the reference implementation...
    let verdict = verify_with_reference(&secret, &requests).await?;
    assert_eq!(verdict["ok"], requests.len(), "{verdict}");
    assert_eq!(verdict["bad"], json!([]), "{verdict}");
    // ...which does refuse a tampered body or a wrong secret.
    let mut tampered = requests[..1].to_vec();
    tampered[0].body = tampered[0].body.replacen("threshold", "thresh0ld", 1);
    let verdict = verify_with_reference(&secret, &tampered).await?;
    assert_eq!(verdict["ok"], 0, "{verdict}");
    let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let verdict = verify_with_reference(other, &requests[..1]).await?;
    assert_eq!(verdict["ok"], 0, "{verdict}");

    eprintln!(
        "webhooks: {} requests ({refused_while_down} while down), 6 alerts delivered \
         {:.1} s after the receiver came up",
        requests.len(),
        caught_up.as_secs_f64()
    );
    Ok(())
}
