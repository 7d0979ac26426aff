//! Hostile input against real processes: `tally api`, `tally projector` and
//! `tally worker` run as child processes of the built `tally` binary, on a
//! NATS server and a Postgres database of the test's own; requests go over
//! real HTTP (and raw TCP where an HTTP client would refuse to send them),
//! events over real NATS. Every case asserts its specific outcome (status
//! and problem `code`, or dead-letter reason).
//!
//! The slow-header flood opens 1 500 loopback connections that dribble
//! their headers, checks that the server closes them within the header
//! timeout (5 s here), that one connection over the cap is answered 503,
//! and that the API process's resident memory comes back near its level
//! before the flood.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{TimeDelta, Utc};
use futures::StreamExt;
use serde_json::{json, Value};
use tally_tests::{Completed, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ORG: &str = "hostile";

/// The `tally` binary next to this test's executable (built by
/// `cargo test --workspace`; built here when missing).
fn tally_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("test executable has no target directory")?;
    let bin = dir.join("tally");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "tally", "--bin", "tally"])
            .status()?;
        anyhow::ensure!(status.success(), "cargo build -p tally failed");
    }
    Ok(bin)
}

/// A child `tally` process, killed on drop.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(tally_bin()?);
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(Proc {
            child: cmd.spawn()?,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, from /proc, in KiB.
    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse()?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Env {
    h: Harness,
    api: Proc,
    _others: Vec<Proc>,
    addr: String,
    http: reqwest::Client,
}

fn base_env(h: &Harness) -> Vec<(&'static str, String)> {
    vec![
        ("TALLY_DATABASE_URL", h.db.url().to_owned()),
        ("TALLY_NATS_URL", h.nats.url()),
        ("TALLY_OPENROUTER_BASE_URL", "http://127.0.0.1:9".to_owned()),
    ]
}

impl Env {
    async fn start(extra: &[(&str, String)], services: &[&str]) -> anyhow::Result<Env> {
        let h = Harness::start().await?;
        let port = tally_testkit::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut env = base_env(&h);
        env.push(("TALLY_HTTP_ADDR", addr.clone()));
        env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        // The organisation and its first admin key, as an operator makes
        // them: one JSON line from `tally org create`.
        let out = Command::new(tally_bin()?)
            .args(["org", "create", ORG])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "tally org create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let org: Value = serde_json::from_slice(&out.stdout)?;
        let admin_key = org["key"].as_str().context("org create prints the key")?;
        let api = Proc::spawn(&["api"], &env)?;
        let mut others = Vec::new();
        for s in services {
            others.push(Proc::spawn(&[s], &env)?);
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {admin_key}"))?,
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .default_headers(headers)
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("http://{addr}/healthz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "tally api did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Env {
            h,
            api,
            _others: others,
            addr,
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, Value, reqwest::header::HeaderMap)> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value, headers))
    }

    async fn post(&self, path: &str, body: &str) -> anyhow::Result<(u16, Value)> {
        let (s, v, _) = self.send(reqwest::Method::POST, path, Some(body)).await?;
        Ok((s, v))
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let (s, v, _) = self.send(reqwest::Method::GET, path, None).await?;
        Ok((s, v))
    }

    async fn budget(&self, name: &str, extra: Value) -> anyhow::Result<Value> {
        let mut b = json!({"org_id": ORG, "name": name, "scope": {}, "period": "daily",
                           "limit_usd": "100"});
        if let (Value::Object(m), Value::Object(e)) = (&mut b, extra) {
            m.extend(e);
        }
        let (s, v) = self.post("/v1/budgets", &b.to_string()).await?;
        anyhow::ensure!(s == 201, "budget creation: {s} {v}");
        Ok(v)
    }
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("<no code>")
}

/// Sends raw bytes on a fresh connection and reads the whole answer (the
/// server closes or the read times out).
async fn raw(addr: &str, request: &[u8]) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn status_and_body(resp: &str) -> (u16, Value, String) {
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::Null),
        head.to_ascii_lowercase(),
    )
}

/// A `POST /v1/budgets` body: a daily budget of $1 for `org`, unscoped.
fn daily_budget(org: &str, name: &str) -> String {
    json!({"org_id": org, "name": name, "scope": {}, "period": "daily", "limit_usd": "1"})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_http_requests_get_specific_problems() -> anyhow::Result<()> {
    let env = Env::start(
        &[
            ("TALLY_MAX_BUDGETS_PER_ORG", "3".into()),
            ("TALLY_HTTP_IDLE_TIMEOUT", "1s".into()),
        ],
        &[],
    )
    .await?;

    // Bodies of POST /v1/budgets and the problem each gets: status, code and,
    // where checked, the field it names.
    let cases: Vec<(&str, String, u16, &str, Option<&str>)> = vec![
        // NUL and other control characters: 422 naming the field, never a 500.
        (
            "NUL in the name",
            daily_budget(ORG, "a\u{0}b"),
            422,
            "control_character",
            Some("name"),
        ),
        (
            "control character in the scope",
            json!({"org_id": ORG, "name": "n", "scope": {"agent_id": "a\u{1}"},
                    "period": "daily", "limit_usd": "1"})
            .to_string(),
            422,
            "control_character",
            Some("scope.agent_id"),
        ),
        // Positional scope: refused.
        (
            "positional scope",
            r#"{"org_id":"hostile","name":"n","scope":["agentA","sess","user","model"],"period":"daily","limit_usd":"1"}"#.into(),
            422,
            "invalid_field",
            Some("scope"),
        ),
        // Duplicate keys: refused as on the bus.
        (
            "duplicate key",
            r#"{"org_id":"hostile","name":"n","name":"m","scope":{},"period":"daily","limit_usd":"1"}"#.into(),
            422,
            "duplicate_key",
            Some("name"),
        ),
        // Held before, kept as regressions: body limit, nesting.
        (
            "70 KiB body",
            format!(
                r#"{{"org_id":"hostile","name":"{}"}}"#,
                "x".repeat(70 * 1024)
            ),
            413,
            "payload_too_large",
            None,
        ),
        (
            "nested org_id",
            format!("{{\"org_id\":{}{}}}", "[".repeat(5000), "]".repeat(5000)),
            422,
            "invalid_field",
            Some("org_id"),
        ),
        (
            "nested body",
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
            422,
            "invalid_body",
            None,
        ),
    ];
    for (what, body, status, problem, field) in cases {
        let (s, v) = env.post("/v1/budgets", &body).await?;
        assert_eq!((s, code(&v)), (status, problem), "{what}: {v}");
        if field.is_some() {
            assert_eq!(v["field"].as_str(), field, "{what}: {v}");
        }
    }
    let nested = format!(
        "{{\"org_id\":\"x\",\"scope\":{}1{}}}",
        "{\"a\":".repeat(3000),
        "}".repeat(3000)
    );
    let (s, v) = env.post("/v1/budgets", &nested).await?;
    assert!(s == 400 || s == 422, "{s} {v}");
    // SQL injection in the query.
    let (s, v) = env.get("/v1/budgets?org_id=x'%20OR%201=1--").await?;
    assert_eq!((s, code(&v)), (422, "invalid_id"));

    // A 10 000-character id: a short 422, not an echo.
    let long = "a".repeat(10_000);
    let (status, v, _) = env
        .send(
            reqwest::Method::GET,
            &format!("/v1/budgets?org_id={long}"),
            None,
        )
        .await?;
    assert_eq!((status, code(&v)), (422, "invalid_id"));
    assert!(v.to_string().len() < 1024, "{} bytes", v.to_string().len());
    let (s, v) = env.post("/v1/budgets", &daily_budget(&long, "n")).await?;
    assert_eq!((s, code(&v)), (422, "invalid_id"));
    assert!(v.to_string().len() < 1024, "{} bytes", v.to_string().len());

    // Per-organisation budget limit (3 here): the 4th is 409 limit_exceeded.
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            env.budget(&format!("b{i}"), json!({})).await?["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let (s, v) = env
        .post("/v1/budgets", &daily_budget(ORG, "one too many"))
        .await?;
    assert_eq!(
        (s, code(&v), v["field"].as_str()),
        (409, "limit_exceeded", Some("budgets_per_org"))
    );

    // Pagination: pages of 2, followed by their cursor; limits bounded.
    let (s, v) = env
        .get(&format!("/v1/budgets?org_id={ORG}&limit=2"))
        .await?;
    assert_eq!(s, 200);
    assert_eq!(v["budgets"].as_array().unwrap().len(), 2);
    let cursor = v["next_cursor"].as_str().expect("a next page").to_owned();
    let (_, v) = env
        .get(&format!("/v1/budgets?org_id={ORG}&limit=2&cursor={cursor}"))
        .await?;
    assert_eq!(v["budgets"].as_array().unwrap().len(), 1);
    assert!(v["next_cursor"].is_null());
    let (s, v) = env
        .get(&format!("/v1/budgets?org_id={ORG}&limit=1001"))
        .await?;
    assert_eq!(
        (s, code(&v), v["field"].as_str()),
        (422, "invalid_field", Some("limit"))
    );
    let (s, v) = env
        .post(
            "/v1/budgets/check?limit=1",
            &json!({"org_id": ORG}).to_string(),
        )
        .await?;
    assert_eq!(s, 200);
    assert_eq!(v["budgets"].as_array().unwrap().len(), 1);
    assert!(v["next_cursor"].is_string());

    // Archived budgets: PATCH refused, a repeated DELETE changes nothing.
    let id = &ids[0];
    let (s, first, _) = env
        .send(reqwest::Method::DELETE, &format!("/v1/budgets/{id}"), None)
        .await?;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, second, _) = env
        .send(reqwest::Method::DELETE, &format!("/v1/budgets/{id}"), None)
        .await?;
    assert_eq!(first["updated_at"], second["updated_at"]);
    assert_eq!(first["archived_at"], second["archived_at"]);
    let (s, v, _) = env
        .send(
            reqwest::Method::PATCH,
            &format!("/v1/budgets/{id}"),
            Some(r#"{"name":"renamed"}"#),
        )
        .await?;
    assert_eq!((s, code(&v)), (409, "budget_archived"));
    let (s, v, _) = env
        .send(
            reqwest::Method::PATCH,
            &format!("/v1/budgets/{}", ids[1]),
            Some("{\"name\":\"x\\u0000\"}"),
        )
        .await?;
    assert_eq!((s, code(&v)), (422, "control_character"));

    // Times outside the window in query parameters.
    for from in [
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
    ] {
        let (s, v) = env
            .get(&format!(
                "/v1/spend?org_id={ORG}&from={from}&to=2026-01-02T00:00:00Z&group_by=day"
            ))
            .await?;
        assert_eq!(
            (s, code(&v), v["field"].as_str()),
            (422, "time_out_of_range", Some("from")),
            "{from}"
        );
    }

    // X-Request-Id: short printable ASCII is echoed, anything else replaced.
    let (_, _, h) = {
        let r = env
            .http
            .get(env.url("/healthz"))
            .header("x-request-id", "req-123")
            .send()
            .await?;
        (r.status(), (), r.headers().clone())
    };
    assert_eq!(h["x-request-id"], "req-123");
    for bad in ["x".repeat(8000), "caf\u{e9}".to_owned()] {
        let r = env
            .http
            .get(env.url("/healthz"))
            .header(
                "x-request-id",
                reqwest::header::HeaderValue::from_bytes(bad.as_bytes())?,
            )
            .send()
            .await?;
        let echoed = r.headers()["x-request-id"]
            .to_str()
            .unwrap_or("")
            .to_owned();
        assert_ne!(echoed, bad);
        assert!(!echoed.is_empty() && echoed.len() <= 128, "{echoed}");
    }

    // Protocol errors from the HTTP layer carry problem bodies.
    let addr = env.addr.as_str();
    for (req, status, want) in [
        (
            b"GET /healthz HTTP/1.1\r\n\r\n".to_vec(),
            400,
            "invalid_host",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            400,
            "invalid_host",
        ),
        (
            b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            format!(
                "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
                "y".repeat(40_000)
            )
            .into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            format!(
                "GET /healthz?{} HTTP/1.1\r\nHost: a\r\n\r\n",
                "q".repeat(20_000)
            )
            .into_bytes(),
            414,
            "uri_too_long",
        ),
    ] {
        let resp = raw(addr, &req).await?;
        let (s, body, head) = status_and_body(&resp);
        assert_eq!(
            (s, code(&body)),
            (status, want),
            "{:?} -> {resp}",
            String::from_utf8_lossy(&req[..req.len().min(60)])
        );
        assert!(
            head.contains("content-type: application/problem+json"),
            "{head}"
        );
    }

    // An idle keep-alive connection is closed after the idle timeout (1 s).
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await?;
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await??;
    assert_eq!(n, 0, "the server closed the idle connection");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(4),
        "{idle:?}"
    );
    drop(env);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_header_flood_is_closed_within_the_header_timeout_and_memory_returns(
) -> anyhow::Result<()> {
    const FLOOD: usize = 1500;
    let env = Env::start(
        &[
            ("TALLY_HTTP_HEADER_TIMEOUT", "5s".into()),
            ("TALLY_HTTP_MAX_CONNECTIONS", FLOOD.to_string()),
        ],
        &[],
    )
    .await?;
    for _ in 0..20 {
        env.get("/healthz").await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = env.api.rss_kib()?;

    // Open the flood: each connection sends the start of a head and then
    // one byte every 200 ms, never finishing it. Bounded in count and time.
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(FLOOD);
    let mut conns = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let mut s = TcpStream::connect(&env.addr).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            .await?;
        conns.push(s);
    }
    let opened = started.elapsed();
    eprintln!("opened {FLOOD} slow connections in {opened:?}");
    // One more is over the cap: 503 at once.
    let over = raw(&env.addr, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await?;
    let (s, body, _) = status_and_body(&over);
    assert_eq!((s, code(&body)), (503, "too_many_connections"), "{over}");
    let peak = env.api.rss_kib()?;
    for mut s in conns {
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let mut buf = [0u8; 512];
            loop {
                if t0.elapsed() > Duration::from_secs(20) {
                    return None; // never closed by the server
                }
                if s.write_all(b"x").await.is_err() {
                    return Some(Instant::now());
                }
                match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
                    _ => {}
                }
            }
        }));
    }
    let mut closed_after = Vec::new();
    for t in tasks {
        let when = t.await?.context("a slow connection stayed open for 20 s")?;
        closed_after.push(when.duration_since(started));
    }
    let latest = closed_after.iter().max().copied().unwrap_or_default();
    // Every connection closed within the header timeout (5 s) of its own
    // accept, plus the watchdog's tick and the time it took to open them all.
    assert!(
        latest <= opened + Duration::from_millis(6500),
        "the last slow connection closed after {latest:?} (opening took {opened:?})"
    );
    // The server still answers.
    let (s, _) = env.get("/healthz").await?;
    assert_eq!(s, 200);
    // The allocator's background threads return freed pages within
    // seconds: poll for up to 30 s.
    let calm = Instant::now();
    let mut after = env.api.rss_kib()?;
    while after > before + 8 * 1024 && calm.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = env.api.rss_kib()?;
    }
    let returned_in = calm.elapsed();
    eprintln!(
        "slow-header flood: {FLOOD} connections opened in {opened:?}, all closed by {latest:?}; \
         API RSS before {before} KiB, at the peak {peak} KiB, {after} KiB {returned_in:?} later"
    );
    assert!(
        after <= before + 8 * 1024,
        "RSS did not come back: before {before} KiB, peak {peak} KiB, after {after} KiB"
    );
    Ok(())
}

async fn dead_letters(client: &async_nats::Client) -> anyhow::Result<async_nats::Subscriber> {
    Ok(client.subscribe("tally.deadletter.>").await?)
}

/// Collects dead-letter reasons by CloudEvent `generation_id` until `want`
/// are in, or 20 s pass.
async fn reasons(sub: &mut async_nats::Subscriber, want: usize) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < want {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await else {
            break;
        };
        let reason = m
            .headers
            .as_ref()
            .and_then(|h| h.get(tally_bus::HEADER_DEAD_LETTER_REASON))
            .map(|v| v.to_string())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&m.payload);
        let key = text
            .split("\"generation_id\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_owned();
        out.insert(key, reason);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_events_are_dead_lettered_at_decode_with_their_reason() -> anyhow::Result<()> {
    let env = Env::start(&[], &["projector", "worker"]).await?;
    let client = env.h.bus.client();
    let mut dl = dead_letters(client).await?;
    let yesterday = (Utc::now() - TimeDelta::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let daily = env.budget("daily", json!({"period": "daily"})).await?;
    let subject = format!("tally.generation.completed.{ORG}");

    let good = Completed::new("gen-good", ORG, &format!("{yesterday}T12:00:00Z")).actual("0.25");
    let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
    let template = serde_json::to_value(good.event())?;
    let with = |id: &str, field: &str, value: Value| {
        let mut v = template.clone();
        v["id"] = json!(format!("ev-{id}"));
        v["data"]["generation_id"] = json!(id);
        v["data"][field] = value;
        (id.to_owned(), serde_json::to_vec(&v).unwrap())
    };
    bodies.push(with("gen-nul-agent", "agent_id", json!("a\u{0}b")));
    bodies.push(with("gen-nul-model", "model", json!("m\u{0}")));
    bodies.push(with(
        "gen-year-0",
        "completed_at",
        json!("0000-01-01T00:00:00Z"),
    ));
    bodies.push(with(
        "gen-year-1",
        "completed_at",
        json!("0001-01-01T00:00:00Z"),
    ));
    bodies.push(with(
        "gen-year-9999",
        "completed_at",
        json!("9999-12-31T23:59:59.999999Z"),
    ));
    let dup = String::from_utf8(with("gen-dup", "model", json!("m")).1)?;
    let repeats = "\"prompt_tokens\":1,".repeat(9_999);
    let dup = dup.replacen(
        "\"prompt_tokens\":",
        &format!("{repeats}\"prompt_tokens\":"),
        1,
    );
    bodies.push(("gen-dup".into(), dup.into_bytes()));
    bodies.push(with(
        "gen-leap",
        "completed_at",
        json!(format!("{yesterday}T23:59:60Z")),
    ));
    for (id, body) in &bodies {
        env.h
            .publish_raw(&subject, &format!("ev-{id}"), body)
            .await?;
    }
    env.h.publish(&good.event()).await?;

    let got = reasons(&mut dl, 6).await;
    for (id, reason) in [
        ("gen-nul-agent", "control_character"),
        ("gen-nul-model", "control_character"),
        ("gen-year-0", "time_out_of_range"),
        ("gen-year-1", "time_out_of_range"),
        ("gen-year-9999", "time_out_of_range"),
        ("gen-dup", "duplicate_key"),
    ] {
        assert_eq!(
            got.get(id).map(String::as_str),
            Some(reason),
            "{id}: {got:?}"
        );
    }
    assert!(!got.contains_key("gen-leap"), "{got:?}");

    // The good event and the leap-second event were booked; the leap second
    // counts on the same day for the budget and for /v1/spend.
    let id = daily["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (period, spend) = loop {
        let (_, p) = env
            .get(&format!("/v1/budgets/{id}/periods/{yesterday}T00:00:00Z"))
            .await?;
        let (_, s) = env
            .get(&format!(
                "/v1/spend?org_id={ORG}&from={yesterday}T00:00:00Z&to={}&group_by=day",
                (Utc::now() + TimeDelta::days(1)).format("%Y-%m-%dT00:00:00Z")
            ))
            .await?;
        if p["generations"] == 2 || Instant::now() > deadline {
            break (p, s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(period["generations"], 2, "{period}");
    assert_eq!(
        period["spent_usd"].as_str().map(tally_tests::usd),
        Some(tally_tests::usd("0.5")),
        "{period}"
    );
    let groups = spend["groups"].as_array().cloned().unwrap_or_default();
    assert_eq!(groups.len(), 1, "{spend}");
    assert_eq!(groups[0]["key"], yesterday.as_str(), "{spend}");
    assert_eq!(groups[0]["generations"], 2, "{spend}");
    for k in ["start", "end"] {
        let t = period[k].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(t).is_ok() && t.len() <= 30,
            "{t}"
        );
    }

    // A reply subject inside tally: the request fails, nothing lands there.
    let target = format!("tally.generation.completed.{ORG}");
    let mut spy = client.subscribe(target.clone()).await?;
    let mut failed = client
        .subscribe(format!("tally.generation.failed.{ORG}"))
        .await?;
    let req = json!({
        "specversion": "1.0", "id": "req-hostile", "source": "/tests", "type": "tally.generation.requested.v1",
        "time": Utc::now().to_rfc3339(), "subject": format!("tally.generation.requested.{ORG}"),
        "datacontenttype": "application/json",
        "data": {"request_id": "r-hostile", "org_id": ORG, "model": "openai/gpt-4o-mini",
                 "input": "hi", "reply_subject": target, "requested_at": Utc::now().to_rfc3339()}
    });
    env.h
        .publish_raw(
            &format!("tally.generation.requested.{ORG}"),
            "req-hostile",
            &serde_json::to_vec(&req)?,
        )
        .await?;
    let m = tokio::time::timeout(Duration::from_secs(20), failed.next())
        .await?
        .context("no failed event")?;
    let f: Value = serde_json::from_slice(&m.payload)?;
    assert_eq!(f["data"]["reason"], "reply_subject_forbidden", "{f}");
    assert!(
        tokio::time::timeout(Duration::from_secs(1), spy.next())
            .await
            .is_err(),
        "a message was published on {target}"
    );
    Ok(())
}
