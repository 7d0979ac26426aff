//! Tenancy on the bus, as an operator deploys it and producers use it: a
//! `nats-server` started with `deploy/nats-authorization.conf`, tally's
//! services as separate `tally` processes connecting with their own
//! credentials, organisations' producers as plain NATS clients, and the
//! results read back over HTTP with each organisation's API key.
//!
//! * tally's services connect with credentials (user/password here; a
//!   token over TLS and an nkey seed file in the last test) and work; a
//!   connection without them, or with wrong ones, is refused.
//! * An organisation's producer may publish only its own subjects: NATS
//!   refuses a publish into another organisation's subject, and nothing of
//!   that organisation changes.
//! * A generation id belongs to the organisation that booked it first: the
//!   same id completed for another organisation is a dead letter
//!   `generation_org_mismatch` and neither organisation's money moves.
//! * With every service at `RUST_LOG=debug`, no API key, operator token,
//!   OpenRouter key, secrets key or NATS password appears in any log line
//!   or response body.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use serde_json::{json, Value};
use tally_testkit::{free_port, NatsOptions, NatsServer, TestDb};
use tally_tests::procs::{tally_output, wait_http, workspace_root, TallyProcess};
use tally_tests::Completed;
use tokio::sync::mpsc;

const SERVICE_PASSWORD: &str = "svc-pw-Jf83kQp2Lw9xZr41";
const ACME_PASSWORD: &str = "acme-pw-Hq72mNc5Vb0tYe33";
const GLOBEX_PASSWORD: &str = "globex-pw-Tz19pLs6Kd4rWu87";
const OPERATOR_TOKEN: &str = "op-9fK2mQ7xL4vB8nC1zR6tY3wE5uH0jA2sD";
const OPENROUTER_KEY: &str = "sk-or-v1-5b1e0c7d9a2f4e6b8c3d1a0f9e8d7c6b";
/// A key-encryption key (`<id>:<base64>`); its base64 part is the secret.
const SECRETS_KEY_B64: &str = "ZWZnaGlqa2xtbm9wcXJzdHV2d3h5ent8fX5/gIGCg4Q=";

/// A NATS server with the shipped authorization configuration.
async fn secured_nats() -> anyhow::Result<NatsServer> {
    NatsServer::start_with(NatsOptions {
        extra_config: "include \"nats-authorization.conf\"\n".into(),
        files: vec![workspace_root().join("deploy/nats-authorization.conf")],
        env: vec![
            (
                "TALLY_NATS_SERVICE_PASSWORD".into(),
                SERVICE_PASSWORD.into(),
            ),
            (
                "TALLY_NATS_PRODUCER_ACME_PASSWORD".into(),
                ACME_PASSWORD.into(),
            ),
            (
                "TALLY_NATS_PRODUCER_GLOBEX_PASSWORD".into(),
                GLOBEX_PASSWORD.into(),
            ),
        ],
    })
    .await
}

fn tempdir(kind: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tally-{kind}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// tally's services on a secured bus: NATS, Postgres, migrations, the
/// organisations `acme` and `globex`, and the running processes.
struct Stack {
    nats: NatsServer,
    _db: TestDb,
    logs: PathBuf,
    env: Vec<(&'static str, String)>,
    api: String,
    procs: Vec<TallyProcess>,
    /// Base URL (health, metrics) of every started service.
    bases: Vec<String>,
    acme_key: String,
    globex_key: String,
    /// Every stdout/stderr of a `tally` command run to completion.
    outputs: Vec<String>,
}

impl Stack {
    /// `extra` is added to every process's environment; `services` are
    /// started after the organisations exist (the API always).
    async fn start(
        extra: &[(&'static str, String)],
        services: &[&str],
        log_level: &str,
    ) -> anyhow::Result<Stack> {
        Stack::start_after(extra, &[], services, log_level).await
    }

    /// Like [`Stack::start`], running `tally <setup…>` commands after the
    /// organisations exist and before the services start.
    async fn start_after(
        extra: &[(&'static str, String)],
        setup: &[&[&str]],
        services: &[&str],
        log_level: &str,
    ) -> anyhow::Result<Stack> {
        let nats = secured_nats().await?;
        let db = TestDb::create().await?;
        let logs = tempdir("tenancy")?;
        let api_port = free_port()?;
        let mut env = vec![
            ("TALLY_NATS_URL", nats.url()),
            ("TALLY_DATABASE_URL", db.url().to_owned()),
            ("TALLY_NATS_USER", "tally".to_owned()),
            ("TALLY_NATS_PASSWORD", SERVICE_PASSWORD.to_owned()),
            ("TALLY_ACK_WAIT", "5s".to_owned()),
            ("TALLY_OPERATOR_TOKEN", OPERATOR_TOKEN.to_owned()),
            ("TALLY_HTTP_ADDR", format!("127.0.0.1:{api_port}")),
            ("RUST_LOG", log_level.to_owned()),
        ];
        env.extend(extra.iter().cloned());
        let mut stack = Stack {
            nats,
            _db: db,
            logs,
            env,
            api: format!("http://127.0.0.1:{api_port}"),
            procs: Vec::new(),
            bases: Vec::new(),
            acme_key: String::new(),
            globex_key: String::new(),
            outputs: Vec::new(),
        };
        stack.run_ok(&["migrate"]).await?;
        stack.acme_key = stack.org_key("acme").await?;
        stack.globex_key = stack.org_key("globex").await?;
        for args in setup {
            stack.run_ok(args).await?;
        }
        let mut names: Vec<&str> = services.to_vec();
        names.push("api");
        for name in names {
            let port = free_port()?;
            let mut env = stack.env.clone();
            if name != "api" {
                env.push(("TALLY_METRICS_ADDR", format!("127.0.0.1:{port}")));
            }
            stack
                .procs
                .push(TallyProcess::start(name, &[name], &env, &stack.logs)?);
            let base = if name == "api" {
                stack.api.clone()
            } else {
                format!("http://127.0.0.1:{port}")
            };
            if let Err(e) = wait_http(&format!("{base}/healthz"), Duration::from_secs(60)).await {
                let log = stack.procs.last().map(|p| p.log_text()).unwrap_or_default();
                bail!("{name} did not come up: {e:#}\n{log}");
            }
            stack.bases.push(base);
        }
        Ok(stack)
    }

    /// Runs `tally <args>` with the stack's environment (plus `extra`).
    async fn run(
        &mut self,
        args: &[&str],
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<(i32, String, String)> {
        let mut env = self.env.clone();
        env.extend(extra.iter().cloned());
        let (code, out, err) = tally_output(args, &env).await?;
        self.outputs.push(format!("{out}\n{err}"));
        Ok((code, out, err))
    }

    async fn run_ok(&mut self, args: &[&str]) -> anyhow::Result<String> {
        let (code, out, err) = self.run(args, &[]).await?;
        if code != 0 {
            bail!("tally {args:?} exited with {code}: {out}{err}");
        }
        Ok(out)
    }

    async fn org_key(&mut self, org: &str) -> anyhow::Result<String> {
        let out = self.run_ok(&["org", "create", org]).await?;
        let v: Value = serde_json::from_str(out.trim())?;
        Ok(v["key"].as_str().context("no key")?.to_owned())
    }

    /// The text of every service log.
    fn log_files(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.logs)? {
            let path = entry?.path();
            out.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&path)?,
            ));
        }
        Ok(out)
    }

    fn assert_running(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            p.assert_running()?;
        }
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}

/// One HTTP call; (status, body text).
async fn call(
    http: &reqwest::Client,
    base: &str,
    key: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, String)> {
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

fn code_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// An organisation's producer: a plain NATS client with that
/// organisation's user, its inbox under `_INBOX.<org>`, and the server's
/// errors (permission violations) collected.
async fn producer(
    url: &str,
    org: &str,
    password: &str,
) -> anyhow::Result<(async_nats::Client, mpsc::UnboundedReceiver<String>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .user_and_password(format!("producer-{org}"), password.to_owned())
        .custom_inbox_prefix(format!("_INBOX.{org}"))
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.to_string());
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("producer-{org} connecting"))?;
    Ok((client, rx))
}

/// A JetStream publish with a message id, waiting for the stream's ack.
async fn js_publish(
    client: &async_nats::Client,
    subject: &str,
    id: &str,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(3))
        .build(client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    js.publish_with_headers(subject.to_owned(), headers, payload.into())
        .await?
        .await?;
    Ok(())
}

/// Publishes `c` by `client` on the completed subject of the event's own
/// organisation.
async fn publish_completed(client: &async_nats::Client, c: &Completed) -> anyhow::Result<()> {
    let subject = format!("tally.generation.completed.{}", c.data.attribution.org_id);
    js_publish(client, &subject, &c.id, completed_json(c)).await
}

fn completed_json(c: &Completed) -> Vec<u8> {
    serde_json::to_vec(&c.event()).expect("an event serializes")
}

/// `GET /v1/generations/<id>` with `key` answers 404 generation_not_found.
async fn assert_no_generation(base: &str, key: &str, id: &str) -> anyhow::Result<()> {
    let (s, body) = call(
        &reqwest::Client::new(),
        base,
        Some(key),
        reqwest::Method::GET,
        &format!("/v1/generations/{id}"),
        None,
    )
    .await?;
    assert_eq!(
        (s, code_of(&body).as_str()),
        (404, "generation_not_found"),
        "{id}: {body}"
    );
    Ok(())
}

/// Waits until `GET path` with `key` answers 200; returns the body.
async fn wait_200(base: &str, key: &str, path: &str) -> anyhow::Result<String> {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (s, body) = call(&http, base, Some(key), reqwest::Method::GET, path, None).await?;
        if s == 200 {
            return Ok(body);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("GET {path}: {s} {body} after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn spend_path() -> String {
    let now = chrono::Utc::now();
    format!(
        "/v1/spend?from={}&to={}&group_by=model",
        (now - chrono::TimeDelta::days(10)).format("%Y-%m-%dT%H:%M:%SZ"),
        (now + chrono::TimeDelta::days(1)).format("%Y-%m-%dT%H:%M:%SZ"),
    )
}

/// Waits for a server error containing `needle` among a producer's events.
async fn expect_server_error(
    events: &mut mpsc::UnboundedReceiver<String>,
    needle: &str,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) if e.contains(needle) => return Ok(e),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => bail!("no server error containing {needle:?} within 10 s"),
        }
    }
}

#[tokio::test]
async fn services_connect_with_credentials_and_producers_stay_in_their_org() -> anyhow::Result<()> {
    let mut stack = Stack::start(&[], &["projector"], "warn").await?;
    let url = stack.nats.url();

    // Without credentials, or with wrong ones, NATS refuses the connection:
    // a plain client and a tally service alike.
    let err = async_nats::connect(&url).await.unwrap_err();
    assert!(
        format!("{err}").to_lowercase().contains("authorization"),
        "{err}"
    );
    let wrong = async_nats::ConnectOptions::new()
        .user_and_password("tally".into(), "not-the-password".into())
        .connect(&url)
        .await;
    assert!(wrong.is_err(), "a wrong password is refused");
    for (extra, what) in [
        (
            vec![
                ("TALLY_NATS_USER", String::new()),
                ("TALLY_NATS_PASSWORD", String::new()),
            ],
            "no credentials",
        ),
        (
            vec![("TALLY_NATS_PASSWORD", "not-the-password".to_owned())],
            "a wrong password",
        ),
    ] {
        let (code, out, err) = stack.run(&["projector"], &extra).await?;
        assert_ne!(code, 0, "{what}: {out}{err}");
        assert!(
            err.contains("TALLY_NATS_URL") && err.to_lowercase().contains("authorization"),
            "{what}: {err}"
        );
        assert!(!err.contains("not-the-password"), "{err}");
    }

    // Each organisation's producer publishes its own completed events.
    let (acme, mut acme_events) = producer(&url, "acme", ACME_PASSWORD).await?;
    let (globex, _globex_events) = producer(&url, "globex", GLOBEX_PASSWORD).await?;
    let now = chrono::Utc::now().to_rfc3339();
    let own = Completed::new("g-acme-own", "acme", &now).actual("0.25");
    publish_completed(&acme, &own).await?;

    // acme cannot publish into globex's subject: NATS refuses it (the
    // stream never acks it and the server reports a permissions violation).
    let forged = Completed::new("g-forged", "globex", &now).actual("7");
    let refused = publish_completed(&acme, &forged).await;
    assert!(refused.is_err(), "a publish into globex's subject is acked");
    let e = expect_server_error(&mut acme_events, "Permissions Violation for Publish").await?;
    assert!(e.contains("tally.generation.completed.globex"), "{e}");
    // Nor requests on its behalf, nor reading its results and postings.
    acme.publish("tally.generation.requested.globex", "{}".into())
        .await?;
    expect_server_error(&mut acme_events, "Permissions Violation for Publish").await?;
    let _sub = acme.subscribe("tally.ledger.posted.globex").await?;
    let e = expect_server_error(&mut acme_events, "Permissions Violation for Subscription").await?;
    assert!(e.contains("tally.ledger.posted.globex"), "{e}");
    // Nor the JetStream API (reading the streams).
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(acme.clone());
    assert!(js.get_stream("TALLY_GENERATIONS").await.is_err());

    // globex's own event goes through; tally's services book both.
    let theirs = Completed::new("g-globex-own", "globex", &now).actual("0.5");
    publish_completed(&globex, &theirs).await?;
    let body = wait_200(&stack.api, &stack.acme_key, "/v1/generations/g-acme-own").await?;
    assert!(body.contains("\"org_id\":\"acme\""), "{body}");
    wait_200(
        &stack.api,
        &stack.globex_key,
        "/v1/generations/g-globex-own",
    )
    .await?;
    // The refused event was never booked, for anyone.
    for key in [&stack.globex_key, &stack.acme_key] {
        assert_no_generation(&stack.api, key, "g-forged").await?;
    }
    let spend = wait_200(&stack.api, &stack.globex_key, &spend_path()).await?;
    let spend: Value = serde_json::from_str(&spend)?;
    assert_eq!(spend["total"]["generations"], 1, "{spend}");
    stack.assert_running()?;
    Ok(())
}

/// Dead letters of the projector with `reason`, read as tally's service
/// user.
async fn dead_letters(url: &str, reason: &str) -> anyhow::Result<Vec<async_nats::Message>> {
    let client = async_nats::ConnectOptions::new()
        .user_and_password("tally".into(), SERVICE_PASSWORD.into())
        .connect(url)
        .await?;
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("TALLY_DEADLETTER").await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: "tally.deadletter.>".into(),
            ..Default::default()
        })
        .await?;
    let mut batch = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_millis(500))
        .messages()
        .await?;
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        let r = m
            .headers
            .as_ref()
            .and_then(|h| h.get(tally_bus::HEADER_DEAD_LETTER_REASON))
            .map(|v| v.as_str().to_owned());
        if r.as_deref() == Some(reason) {
            out.push(m.message.clone());
        }
    }
    Ok(out)
}

#[tokio::test]
async fn a_generation_id_booked_by_one_org_is_refused_for_another() -> anyhow::Result<()> {
    let stack = Stack::start(&[], &["projector"], "warn").await?;
    let url = stack.nats.url();
    let (acme, _) = producer(&url, "acme", ACME_PASSWORD).await?;
    let (globex, _) = producer(&url, "globex", GLOBEX_PASSWORD).await?;
    let now = chrono::Utc::now().to_rfc3339();
    // One range for every spend read, so the answers compare equal.
    let spend = spend_path();

    let first = Completed::new("gen-shared-1", "acme", &now).actual("0.25");
    publish_completed(&acme, &first).await?;
    let theirs = Completed::new("gen-globex-1", "globex", &now).actual("0.5");
    publish_completed(&globex, &theirs).await?;
    let acme_gen = wait_200(&stack.api, &stack.acme_key, "/v1/generations/gen-shared-1").await?;
    wait_200(
        &stack.api,
        &stack.globex_key,
        "/v1/generations/gen-globex-1",
    )
    .await?;
    let acme_spend = wait_200(&stack.api, &stack.acme_key, &spend).await?;
    let globex_spend = wait_200(&stack.api, &stack.globex_key, &spend).await?;
    let globex_gen = wait_200(
        &stack.api,
        &stack.globex_key,
        "/v1/generations/gen-globex-1",
    )
    .await?;
    assert!(dead_letters(&url, "generation_org_mismatch")
        .await?
        .is_empty());

    // globex completes the same generation id on its own (allowed) subject.
    let second = Completed::new("gen-shared-1", "globex", &now)
        .actual("9.75")
        .with_id("completed-gen-shared-1-globex");
    publish_completed(&globex, &second).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let letters = loop {
        let l = dead_letters(&url, "generation_org_mismatch").await?;
        if !l.is_empty() {
            break l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no generation_org_mismatch dead letter within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(letters.len(), 1);
    let letter: Value = serde_json::from_slice(&letters[0].payload)?;
    assert_eq!(letter["data"]["org_id"], "globex", "{letter}");
    assert_eq!(letter["data"]["generation_id"], "gen-shared-1", "{letter}");

    // Only the first is booked; nothing of either organisation changed.
    assert_eq!(
        wait_200(&stack.api, &stack.acme_key, "/v1/generations/gen-shared-1").await?,
        acme_gen
    );
    assert_no_generation(&stack.api, &stack.globex_key, "gen-shared-1").await?;
    assert_eq!(
        wait_200(&stack.api, &stack.acme_key, &spend).await?,
        acme_spend
    );
    assert_eq!(
        wait_200(&stack.api, &stack.globex_key, &spend).await?,
        globex_spend
    );
    assert_eq!(
        wait_200(
            &stack.api,
            &stack.globex_key,
            "/v1/generations/gen-globex-1"
        )
        .await?,
        globex_gen
    );
    let v: Value = serde_json::from_str(&acme_spend)?;
    assert_eq!(v["total"]["spent_usd"], "0.25", "{v}");
    let v: Value = serde_json::from_str(&globex_spend)?;
    assert_eq!(v["total"]["spent_usd"], "0.5", "{v}");
    Ok(())
}

/// A CA and a server certificate for 127.0.0.1 (openssl), in `dir`.
async fn certificates(dir: &Path) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: Vec<Vec<&str>> = vec![
        [
            &["req", "-x509"][..],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=tally-test-ca",
            ][..],
        ]
        .concat(),
        [
            &["req"][..],
            &ec[..],
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ][..],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    ];
    for args in steps {
        let out = tokio::process::Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .output()
            .await
            .context("running openssl (needed to make test certificates)")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

async fn migrate_with(env: &[(&str, String)]) -> anyhow::Result<(i32, String)> {
    let (code, out, err) = tally_output(&["migrate"], env).await?;
    Ok((code, format!("{out}{err}")))
}

#[tokio::test]
async fn tls_with_a_token_and_an_nkey_seed_file_connect_and_bad_settings_are_named(
) -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let dir = tempdir("tls")?;
    certificates(&dir).await?;
    let token = "tok-Rr5uN8pQ2wX7cV1bZ9";
    let nats = NatsServer::start_with(NatsOptions {
        extra_config: format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\nauthorization {{ token: $TEST_TOKEN }}\n",
            dir.join("server.pem").display().to_string(),
            dir.join("server.key").display().to_string(),
        ),
        files: vec![],
        env: vec![("TEST_TOKEN".into(), token.into())],
    })
    .await?;
    let tls_url = format!("tls://127.0.0.1:{}", nats.port());
    let ca = dir.join("ca.pem").display().to_string();
    let base = |url: &str| {
        vec![
            ("TALLY_NATS_URL", url.to_owned()),
            ("TALLY_DATABASE_URL", db.url().to_owned()),
        ]
    };
    let with = |url: &str, extra: &[(&'static str, &str)]| {
        let mut v = base(url);
        v.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        v
    };

    // TLS with the CA and the token: connected, the streams are made.
    let (code, out) = migrate_with(&with(
        &tls_url,
        &[("TALLY_NATS_TLS_CA", &ca), ("TALLY_NATS_TOKEN", token)],
    ))
    .await?;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("jetstream: streams and consumers are up to date"),
        "{out}"
    );
    // A nats:// URL to a server that requires TLS, with the CA: upgraded.
    let (code, out) = migrate_with(&with(
        &nats.url(),
        &[("TALLY_NATS_TLS_CA", &ca), ("TALLY_NATS_TOKEN", token)],
    ))
    .await?;
    assert_eq!(code, 0, "{out}");
    // Without the CA the server's certificate is not trusted; a wrong
    // token is refused; no token is refused.
    for (extra, what) in [
        (vec![("TALLY_NATS_TOKEN", token)], "no CA"),
        (
            vec![
                ("TALLY_NATS_TLS_CA", ca.as_str()),
                ("TALLY_NATS_TOKEN", "tok-wrong-0000000000"),
            ],
            "a wrong token",
        ),
        (vec![("TALLY_NATS_TLS_CA", ca.as_str())], "no token"),
    ] {
        let (code, out) = migrate_with(&with(&tls_url, &extra)).await?;
        assert_ne!(code, 0, "{what}: {out}");
        assert!(out.contains("TALLY_NATS_URL"), "{what}: {out}");
        assert!(
            !out.contains("tok-wrong") && !out.contains(token),
            "{what}: {out}"
        );
    }

    // Settings that cannot work: one line naming the setting, exit 2, the
    // secret never repeated.
    let not_pem = dir.join("server.csr").display().to_string();
    let missing = dir.join("nothing.creds").display().to_string();
    let junk = dir.join("ext.cnf").display().to_string();
    for (extra, setting) in [
        (vec![("TALLY_NATS_USER", "tally")], "TALLY_NATS_PASSWORD"),
        (
            vec![("TALLY_NATS_PASSWORD", "pw-secret-123456")],
            "TALLY_NATS_USER",
        ),
        (
            vec![
                ("TALLY_NATS_TOKEN", token),
                ("TALLY_NATS_USER", "u"),
                ("TALLY_NATS_PASSWORD", "pw-secret-123456"),
            ],
            "TALLY_NATS_TOKEN",
        ),
        (
            vec![("TALLY_NATS_CREDS", missing.as_str())],
            "TALLY_NATS_CREDS",
        ),
        (
            vec![("TALLY_NATS_CREDS", junk.as_str())],
            "TALLY_NATS_CREDS",
        ),
        (
            vec![("TALLY_NATS_TLS_CA", not_pem.as_str())],
            "TALLY_NATS_TLS_CA",
        ),
        (
            vec![(
                "TALLY_NATS_URL",
                "nats://tally:pw-secret-123456@127.0.0.1:4222",
            )],
            "TALLY_NATS_URL",
        ),
    ] {
        let (code, out, err) = tally_output(&["migrate"], &with(&tls_url, &extra)).await?;
        assert_eq!(code, 2, "{extra:?}: {out}{err}");
        assert!(out.is_empty(), "{extra:?}: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: {err}");
        assert!(err.contains(setting), "{extra:?}: {err}");
        assert!(!err.contains("pw-secret") && !err.contains(token), "{err}");
    }
    drop(nats);

    // An nkey user: TALLY_NATS_CREDS names a file holding its seed.
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed()?;
    let nats = NatsServer::start_with(NatsOptions {
        extra_config: format!(
            "authorization {{ users: [ {{ nkey: {:?} }} ] }}\n",
            user.public_key()
        ),
        ..NatsOptions::default()
    })
    .await?;
    let seed_file = dir.join("tally.nk");
    std::fs::write(&seed_file, format!("{seed}\n"))?;
    let creds = seed_file.display().to_string();
    let (code, out) = migrate_with(&with(&nats.url(), &[("TALLY_NATS_CREDS", &creds)])).await?;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains(&seed), "{out}");
    let other = nkeys::KeyPair::new_user().seed()?;
    std::fs::write(&seed_file, &other)?;
    let (code, out) = migrate_with(&with(&nats.url(), &[("TALLY_NATS_CREDS", &creds)])).await?;
    assert_ne!(code, 0, "another user's seed is refused: {out}");
    assert!(!out.contains(&other), "{out}");
    let (code, out) = migrate_with(&base(&nats.url())).await?;
    assert_ne!(code, 0, "no credentials are refused: {out}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Where any of `secrets` occurs in `text` (`what` names the text).
fn leaks(what: &str, text: &str, secrets: &[(&str, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for (name, secret) in secrets {
            if line.contains(secret.as_str()) {
                found.push(format!("{what}:{}: {name}: {line}", n + 1));
            }
        }
    }
    found
}

#[tokio::test]
async fn no_key_token_or_secret_appears_in_debug_logs_or_responses() -> anyhow::Result<()> {
    // The OpenRouter stand-in (its own log is not tally's).
    let sim_logs = tempdir("sim")?;
    let sim_port = free_port()?;
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let _sim = TallyProcess::start(
        "sim",
        &["sim", "openrouter"],
        &[
            ("TALLY_SIM_ADDR", format!("127.0.0.1:{sim_port}")),
            ("TALLY_SIM_KEYS", OPENROUTER_KEY.to_owned()),
        ],
        &sim_logs,
    )?;
    wait_http(&format!("{sim_url}/sim/stats"), Duration::from_secs(30)).await?;

    let extra = [
        ("TALLY_OPENROUTER_BASE_URL", format!("{sim_url}/api/v1")),
        ("TALLY_OPENROUTER_API_KEY", OPENROUTER_KEY.to_owned()),
        ("TALLY_SECRETS_KEY", format!("test:{SECRETS_KEY_B64}")),
        ("TALLY_RECONCILE_DEADLINE", "10m".to_owned()),
    ];
    let mut stack = Stack::start_after(
        &extra,
        &[&["provider", "connect", "--org", "acme"]],
        &["worker", "projector", "reconciler"],
        "debug",
    )
    .await?;
    let url = stack.nats.url();
    let api = stack.api.clone();
    let http = reqwest::Client::new();
    // (what, body) of every answer and output to scan.
    let mut bodies: Vec<(String, String)> = Vec::new();

    // A generation request over NATS, run by the worker against the
    // simulator, booked by the projector, looked at by the reconciler.
    let (acme, _) = producer(&url, "acme", ACME_PASSWORD).await?;
    let mut results = acme.subscribe("tally.generation.result.acme").await?;
    acme.flush().await?;
    let now = chrono::Utc::now().to_rfc3339();
    let request = json!({
        "specversion": "1.0", "id": "req-leak-1", "source": "tests",
        "type": "tally.generation.requested.v1", "time": now,
        "subject": "tally.generation.requested.acme", "datacontenttype": "application/json",
        "data": {"request_id": "req-leak-1", "org_id": "acme", "model": "openai/gpt-4o-mini",
                 "input": "Say hello.", "requested_at": now}
    });
    js_publish(
        &acme,
        "tally.generation.requested.acme",
        "req-leak-1",
        serde_json::to_vec(&request)?,
    )
    .await?;
    let result = tokio::time::timeout(Duration::from_secs(60), results.next())
        .await
        .context("no generation result within 60 s")?
        .context("result subscription ended")?;
    let result: Value = serde_json::from_slice(&result.payload)?;
    assert_eq!(result["data"]["status"], "completed", "{result}");
    bodies.push(("generation result".into(), result.to_string()));
    let generation_id = result["data"]["generation_id"]
        .as_str()
        .with_context(|| format!("no generation id: {result}"))?
        .to_owned();
    let booked = wait_200(
        &api,
        &stack.acme_key,
        &format!("/v1/generations/{generation_id}"),
    )
    .await?;
    bodies.push(("GET generation".into(), booked));

    // API calls with keys, good and bad, and operator calls.
    let admin = stack.acme_key.clone();
    let budget = json!({"name": "team", "scope": {}, "period": "monthly", "limit_usd": "50"});
    let (s, created) = call(
        &http,
        &api,
        Some(&admin),
        reqwest::Method::POST,
        "/v1/keys",
        Some(json!({"role": "member", "name": "dash"})),
    )
    .await?;
    assert_eq!(s, 201, "{created}");
    let member: Value = serde_json::from_str(&created)?;
    let member_key = member["key"].as_str().context("no key")?.to_owned();
    let member_id = member["id"].as_str().context("no id")?.to_owned();
    let (s, org) = call(
        &http,
        &api,
        Some(OPERATOR_TOKEN),
        reqwest::Method::POST,
        "/v1/orgs",
        Some(json!({"org_id": "initech"})),
    )
    .await?;
    assert_eq!(s, 201, "{org}");
    let initech_key = serde_json::from_str::<Value>(&org)?["key"]
        .as_str()
        .context("no key")?
        .to_owned();
    let spend = spend_path();
    use reqwest::Method;
    type Call<'a> = (Option<&'a str>, Method, String, Option<Value>, u16);
    let calls: Vec<Call> = vec![
        (
            Some(&admin),
            Method::POST,
            "/v1/budgets".into(),
            Some(budget.clone()),
            201,
        ),
        (Some(&admin), Method::GET, "/v1/budgets".into(), None, 200),
        (Some(&admin), Method::GET, "/v1/keys".into(), None, 200),
        (Some(&member_key), Method::GET, spend.clone(), None, 200),
        (
            Some(&member_key),
            Method::GET,
            "/v1/providers/openrouter/drift".into(),
            None,
            200,
        ),
        (
            Some(&member_key),
            Method::POST,
            "/v1/budgets".into(),
            Some(budget.clone()),
            403,
        ),
        (
            Some(&initech_key),
            Method::GET,
            format!("/v1/generations/{generation_id}"),
            None,
            404,
        ),
        (
            Some(OPERATOR_TOKEN),
            Method::GET,
            "/v1/budgets?org_id=acme".into(),
            None,
            200,
        ),
        (
            Some(OPENROUTER_KEY),
            Method::GET,
            "/v1/budgets".into(),
            None,
            401,
        ),
        (
            Some("tly_0000000000000000000000000000000000000000"),
            Method::GET,
            "/v1/budgets".into(),
            None,
            401,
        ),
        (None, Method::GET, "/v1/budgets".into(), None, 401),
        (
            Some(&admin),
            Method::DELETE,
            format!("/v1/keys/{member_id}"),
            None,
            200,
        ),
    ];
    for (key, method, path, body, want) in calls {
        let what = format!("{method} {path}");
        let (s, text) = call(&http, &api, key, method, &path, body).await?;
        assert_eq!(s, want, "{what}: {text}");
        bodies.push((what, text));
    }
    // The revoked key, and every service's metrics.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, text) = call(
        &http,
        &api,
        Some(&member_key),
        reqwest::Method::GET,
        "/v1/budgets",
        None,
    )
    .await?;
    assert_eq!(s, 401, "{text}");
    bodies.push(("revoked key".into(), text));
    for base in stack.bases.clone() {
        let m = format!("{base}/metrics");
        bodies.push((format!("GET {m}"), tally_tests::procs::get_text(&m).await?));
    }
    // Give the services a moment to log what they did.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.assert_running()?;

    let all = [
        ("acme admin key", stack.acme_key.clone()),
        ("globex admin key", stack.globex_key.clone()),
        ("acme member key", member_key.clone()),
        ("initech admin key", initech_key.clone()),
        ("operator token", OPERATOR_TOKEN.to_owned()),
        ("OpenRouter key", OPENROUTER_KEY.to_owned()),
        ("secrets key", SECRETS_KEY_B64.to_owned()),
        ("NATS service password", SERVICE_PASSWORD.to_owned()),
        ("NATS producer password", ACME_PASSWORD.to_owned()),
    ];
    let mut found = Vec::new();
    let logs = stack.log_files()?;
    for name in ["api.log", "worker.log", "projector.log", "reconciler.log"] {
        let text = &logs
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("no {name}"))?
            .1;
        let debug = text.lines().filter(|l| l.contains("DEBUG")).count();
        assert!(debug > 0, "{name} has no debug line:\n{text}");
        found.extend(leaks(name, text, &all));
        // The request log saw the traffic (its path names the generation).
        if name == "api.log" {
            assert!(text.contains(&generation_id), "{name}:\n{text}");
        }
    }
    for (what, text) in &bodies {
        found.extend(leaks(what, text, &all));
    }
    for (n, out) in stack.outputs.iter().enumerate() {
        // `org create` prints its own new key, once: nothing else.
        found.extend(leaks(&format!("tally command #{n}"), out, &all[4..]));
    }
    // The scanner finds a key where there is one.
    assert_eq!(leaks("self-check", &created, &all).len(), 1);
    // The creation answers show their own new key and no other secret.
    let others: Vec<_> = all
        .iter()
        .filter(|(_, k)| *k != member_key)
        .cloned()
        .collect();
    found.extend(leaks("POST /v1/keys", &created, &others));
    assert!(created.contains(&member_key));
    let others: Vec<_> = all
        .iter()
        .filter(|(_, k)| *k != initech_key)
        .cloned()
        .collect();
    found.extend(leaks("POST /v1/orgs", &org, &others));
    assert!(
        found.is_empty(),
        "secrets leaked ({}):\n{}",
        found.len(),
        found.join("\n")
    );
    let _ = std::fs::remove_dir_all(&sim_logs);
    Ok(())
}
