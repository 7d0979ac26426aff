//! What the outside tests of the `tally` binary share: a `tally` command on
//! a harness's NATS and Postgres and a simulator, child processes, events
//! published raw as a foreign producer publishes them, and HTTP polling.
//! Nothing here reaches into tally's internals.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_money::Usd;
use tally_tests::{usd, Harness};
use tokio::process::{Child, Command};

/// The key-encryption key every outside test gives tally.
pub const SECRETS_KEY: &str = "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// A completed event as a foreign producer writes it, raw JSON: org `org`,
/// model `openai/gpt-4o-mini`, no status, and `costs` (e.g.
/// `[("actual_cost_usd", "0.25")]`) as the only money fields.
pub fn completed_json(
    id: &str,
    org: &str,
    completed_at: chrono::DateTime<chrono::Utc>,
    usage: (u64, u64),
    costs: &[(&str, &str)],
) -> Value {
    let t = completed_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut data = serde_json::json!({
        "generation_id": id,
        "org_id": org,
        "model": "openai/gpt-4o-mini",
        "completed_at": t,
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1},
    });
    for (field, amount) in costs {
        data[*field] = Value::from(*amount);
    }
    event_json(
        "generation.completed",
        &format!("completed-{id}"),
        "/outside/producer",
        org,
        &t,
        data,
    )
}

/// A CloudEvent of type `tally.<kind>.v1` on `tally.<kind>.<org>`, raw
/// JSON, as an outside producer writes it.
pub fn event_json(kind: &str, id: &str, source: &str, org: &str, time: &str, data: Value) -> Value {
    serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": format!("tally.{kind}.v1"),
        "time": time,
        "subject": format!("tally.{kind}.{org}"),
        "datacontenttype": "application/json",
        "data": data,
    })
}

/// `tally` with a clean environment: only the harness's NATS and Postgres
/// (and `RUST_LOG=warn`), then `settings`.
pub fn bare(h: &Harness, settings: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TALLY_NATS_URL", h.nats.url())
        .env("TALLY_DATABASE_URL", h.db.url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in settings {
        c.env(k, v);
    }
    c
}

/// `tally` with a clean environment: the harness's NATS and Postgres, the
/// simulator at `sim_url` (and its test key), then `settings`.
pub fn tally(h: &Harness, sim_url: &str, settings: &[(&str, &str)]) -> Command {
    let mut c = bare(
        h,
        &[
            ("TALLY_OPENROUTER_BASE_URL", sim_url),
            ("TALLY_OPENROUTER_API_KEY", tally_sim::TEST_KEY),
            ("TALLY_SECRETS_KEY", SECRETS_KEY),
        ],
    );
    for (k, v) in settings {
        c.env(k, v);
    }
    c
}

/// Runs a command to the end (at most two minutes): exit code, stdout,
/// stderr.
pub async fn output(mut c: Command) -> anyhow::Result<(i32, String, String)> {
    let out = tokio::time::timeout(Duration::from_secs(120), c.output()).await??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Starts `tally <args>` as a child process (killed when dropped).
pub fn spawn(
    h: &Harness,
    sim_url: &str,
    settings: &[(&str, &str)],
    args: &[&str],
    extra: &[(&str, String)],
) -> anyhow::Result<Child> {
    let mut c = tally(h, sim_url, settings);
    c.args(args).stdout(Stdio::null()).stderr(Stdio::inherit());
    for (k, v) in extra {
        c.env(k, v);
    }
    Ok(c.spawn()?)
}

/// Runs `tally <args>` to the end; its stdout as JSON (`Null` if it is
/// not JSON). Fails naming the command and its stderr if it fails.
pub async fn run(
    h: &Harness,
    sim_url: &str,
    settings: &[(&str, &str)],
    args: &[&str],
) -> anyhow::Result<Value> {
    let mut c = tally(h, sim_url, settings);
    c.args(args);
    let out = tokio::time::timeout(Duration::from_secs(60), c.output()).await??;
    anyhow::ensure!(
        out.status.success(),
        "tally {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

/// Publishes a CloudEvent document on NATS JetStream as a foreign
/// producer does: its `subject`, `Nats-Msg-Id` = its `id`.
pub async fn publish(h: &Harness, doc: &Value) -> anyhow::Result<()> {
    h.publish_raw(
        doc["subject"].as_str().unwrap_or_default(),
        doc["id"].as_str().unwrap_or_default(),
        &serde_json::to_vec(doc)?,
    )
    .await
}

/// `GET url`: the status and the JSON body (`Null` if not JSON).
pub async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<(u16, Value)> {
    let r = http.get(url).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json::<Value>().await.unwrap_or(Value::Null)))
}

/// Polls `url` until a 200 answer satisfies `pred`; fails after `timeout`
/// with the last answer.
pub async fn wait_for(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let end = Instant::now() + timeout;
    loop {
        let (status, body) = get(http, url).await?;
        if status == 200 && pred(&body) {
            return Ok(body);
        }
        anyhow::ensure!(Instant::now() < end, "{url}: last answer {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the API at `base` answers `/readyz` with 200.
pub async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let end = Instant::now() + Duration::from_secs(30);
    while get(&http, &format!("{base}/readyz"))
        .await
        .map_or(0, |r| r.0)
        != 200
    {
        anyhow::ensure!(Instant::now() < end, "the API at {base} never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// A decimal-string amount of an answer.
pub fn dec(v: &Value) -> Usd {
    usd(v
        .as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}")))
}
