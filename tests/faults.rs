//! The fault suite: tally as separate processes (the built `tally` binary)
//! against a real NATS server and a private PostgreSQL server, while
//! generations flow and everything around it fails:
//!
//! * the projector and the reconciler are SIGKILLed again and again;
//! * NATS is SIGKILLed and restarted on the same file store mid-stream;
//! * PostgreSQL is crashed (`pg_ctl stop -m immediate`) and restarted
//!   mid-stream (a private server: the machine's shared one is left alone);
//! * OpenRouter answers garbage (malformed JSON, HTML, unreadable costs)
//!   for a while;
//! * the webhook delivery process (`tally alerts`) is SIGKILLed too, and
//!   the webhook receiver answers 503 for a while.
//!
//! Then the ledger equals, to the last digit, an independent sum of the
//! costs the test published; each budget threshold was announced exactly
//! once, on the bus and to the webhook receiver (each alert acknowledged
//! once under one `webhook-id`); and nothing is stuck (no pending message,
//! no unpublished outbox row, no pending webhook delivery, no dead letter,
//! every generation settled at its actual cost).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tally_bus::{Bus, BusConfig, ConsumerName, StreamKind};
use tally_money::Usd;
use tally_store::ledger::PostingOptions;
use tally_store::Store;
use tally_testkit::{free_port, NatsServer};
use tally_tests::pg::PrivatePostgres;
use tally_tests::procs::{tally_output, wait_http, TallyProcess, TEST_SECRETS_KEY};
use tally_tests::{budget, publish_retrying, Completed};

const ORG: &str = "acme";
/// Generations published.
const N: u64 = 1200;
/// Publishing rate (per second): the stream lasts about 30 s.
const RATE: u64 = 40;

/// Sits between the reconciler and the simulator; answers garbage while
/// `garbage` is set.
struct Proxy {
    upstream: String,
    garbage: AtomicBool,
    garbage_served: AtomicU64,
    client: reqwest::Client,
}

async fn proxy(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    if p.garbage.load(Ordering::SeqCst) {
        let n = p.garbage_served.fetch_add(1, Ordering::SeqCst);
        let body = match n % 3 {
            0 => r#"{"data": {"id": "x", "total_cost": 0.0001"#.to_owned(),
            1 => "<html><body>502 Bad Gateway</body></html>".to_owned(),
            _ => r#"{"data": {"total_cost": "lots", "usage": null}}"#.to_owned(),
        };
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    let mut forward = p
        .client
        .request(req.method().clone(), format!("{}{path}", p.upstream));
    if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        forward = forward.header(header::AUTHORIZATION, auth);
    }
    match forward.send().await {
        Ok(resp) => {
            let status = resp.status();
            let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
            let ctype = resp.headers().get(header::CONTENT_TYPE).cloned();
            let body = resp.bytes().await.unwrap_or_default();
            let mut out = (status, body).into_response();
            if let Some(v) = retry_after {
                out.headers_mut().insert(header::RETRY_AFTER, v);
            }
            if let Some(v) = ctype {
                out.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            out
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// The webhook receiver: every request's `webhook-id`, threshold and the
/// status it answered; 503 while `down`.
#[derive(Default)]
struct Receiver {
    down: AtomicBool,
    seen: std::sync::Mutex<Vec<(String, i64, u16)>>,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let threshold = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["data"]["threshold_percent"].as_i64())
        .unwrap_or(-1);
    let status = if r.down.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    };
    r.seen
        .lock()
        .expect("receiver")
        .push((id, threshold, status.as_u16()));
    status
}

/// The cost of generation `i`: many significant digits, all distinct.
fn cost(i: u64) -> Usd {
    tally_tests::usd(&format!("0.000{:017}", 12345678901234567u64 + i * 7919))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tally_survives_crashes_restarts_and_garbage_with_an_exact_ledger() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut nats = NatsServer::start().await?;
    let pg = PrivatePostgres::start()?;
    {
        let mut admin =
            <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url("postgres")).await?;
        sqlx::query("CREATE DATABASE tally")
            .execute(&mut admin)
            .await?;
    }
    let db_url = pg.url("tally");
    let logs = std::env::temp_dir().join(format!("tally-faults-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&logs)?;

    // The OpenRouter simulator, and the garbage proxy in front of it.
    let sim_port = free_port()?;
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let base_env = vec![
        ("TALLY_NATS_URL", nats.url()),
        ("TALLY_DATABASE_URL", db_url.clone()),
        ("TALLY_ACK_WAIT", "3s".to_owned()),
        ("TALLY_OPENROUTER_API_KEY", "sk-or-v1-faults".to_owned()),
        ("TALLY_RECONCILE_DEADLINE", "30m".to_owned()),
        ("TALLY_SECRETS_KEY", TEST_SECRETS_KEY.to_owned()),
    ];
    let env = |extra: &[(&'static str, String)]| {
        let mut v = base_env.clone();
        v.extend(extra.iter().cloned());
        v
    };
    let mut sim = TallyProcess::start(
        "sim",
        &["sim", "openrouter"],
        &env(&[
            ("TALLY_SIM_ADDR", format!("127.0.0.1:{sim_port}")),
            // The simulator accepts only keys it issued or was given.
            ("TALLY_SIM_KEYS", "sk-or-v1-faults".to_owned()),
            ("TALLY_SIM_STATS_DELAY", "500ms".to_owned()),
        ]),
        &logs,
    )?;
    wait_http(&format!("{sim_url}/sim/stats"), Duration::from_secs(30)).await?;
    let proxy_state = Arc::new(Proxy {
        upstream: sim_url.clone(),
        garbage: AtomicBool::new(false),
        garbage_served: AtomicU64::new(0),
        client: reqwest::Client::new(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy_url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new()
        .fallback(proxy)
        .with_state(proxy_state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // Schema, streams, a budget whose thresholds the stream crosses.
    let mut migrate = TallyProcess::start("migrate", &["migrate"], &env(&[]), &logs)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while migrate.assert_running().is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tally migrate hangs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = migrate.log_text();
    assert!(
        log.contains("streams and consumers are up to date"),
        "{log}"
    );
    // The organisation and its admin key, as an operator creates them.
    let (code, out, err) = tally_output(&["org", "create", ORG], &env(&[])).await?;
    assert_eq!(code, 0, "tally org create: {out}{err}");
    let admin: serde_json::Value = serde_json::from_str(out.trim())?;
    let admin = admin["key"].as_str().unwrap_or_default().to_owned();

    // A webhook for the budget alerts, registered over the API, to a
    // receiver on loopback (allowed by TALLY_WEBHOOK_ALLOW_PRIVATE).
    let receiver = Arc::new(Receiver::default());
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_url = format!("http://{}/hook", hook_listener.local_addr()?);
    let hook_app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move {
        let _ = axum::serve(hook_listener, hook_app).await;
    });
    let webhook_env = [
        ("TALLY_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
        ("TALLY_WEBHOOK_RETRY_INTERVAL", "1s".to_owned()),
        ("TALLY_WEBHOOK_RETRY_MAX_INTERVAL", "4s".to_owned()),
    ];
    let api_port = free_port()?;
    let mut api_env = webhook_env.to_vec();
    api_env.push(("TALLY_HTTP_ADDR", format!("127.0.0.1:{api_port}")));
    let mut api = TallyProcess::start("api", &["api"], &env(&api_env), &logs)?;
    let api_url = format!("http://127.0.0.1:{api_port}");
    wait_http(&format!("{api_url}/readyz"), Duration::from_secs(60)).await?;
    let created = reqwest::Client::new()
        .post(format!("{api_url}/v1/webhooks"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"url": hook_url, "events": ["budget.threshold_crossed"]}))
        .send()
        .await?;
    assert_eq!(created.status().as_u16(), 201, "{}", created.text().await?);
    api.kill().await?;
    let mut delivery = TallyProcess::start("alerts", &["alerts"], &env(&webhook_env), &logs)?;

    // The organisation's OpenRouter key, as an operator connects it.
    let (code, out, err) = tally_output(
        &["provider", "connect", "--org", ORG],
        &env(&[("TALLY_OPENROUTER_BASE_URL", format!("{sim_url}/api/v1"))]),
    )
    .await?;
    assert_eq!(code, 0, "tally provider connect: {out}{err}");
    let store = Store::connect(&db_url, 4).await?;
    let expected = Usd::try_sum((0..N).map(cost))?;
    // 90 % of the final total: 50, 80 and 100 % are each crossed once.
    let limit = Usd::from_units(expected.units() / 10 * 9)?;
    let (b, _) = store
        .create_budget(
            budget(ORG, "everything", &limit.to_string()),
            &PostingOptions::default(),
        )
        .await?;

    // Every third generation arrives without its cost: the simulator knows
    // it and the reconciler has to fetch it (through the proxy).
    let http = reqwest::Client::new();
    let specs: Vec<serde_json::Value> = (0..N)
        .filter(|i| i % 3 == 0)
        .map(|i| serde_json::json!({"id": format!("g{i}"), "total_cost": cost(i).to_string()}))
        .collect();
    let reg = http
        .post(format!("{sim_url}/sim/generations/batch"))
        .json(&specs)
        .send()
        .await?;
    assert!(reg.status().is_success(), "{}", reg.text().await?);

    let metrics_port = free_port()?;
    let mut projector = TallyProcess::start(
        "projector",
        &["projector"],
        &env(&[("TALLY_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))]),
        &logs,
    )?;
    let mut reconciler = TallyProcess::start(
        "reconciler",
        &["reconciler"],
        &env(&[("TALLY_OPENROUTER_BASE_URL", format!("{proxy_url}/api/v1"))]),
        &logs,
    )?;

    // The producer: its own connection, retrying through the NATS restart.
    let producer = Bus::connect(&BusConfig {
        ack_wait: Duration::from_secs(3),
        ..BusConfig::new(nats.url())
    })
    .await?;
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let published = published.clone();
        tokio::spawn(async move {
            let now = chrono::Utc::now().to_rfc3339();
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
            for i in 0..N {
                tick.tick().await;
                let mut c = Completed::new(&format!("g{i}"), ORG, &now)
                    .estimate(&cost(i).try_mul_int(2)?.to_string());
                if i % 3 != 0 {
                    c = c.actual(&cost(i).to_string());
                }
                publish_retrying(&producer, &c, Duration::from_millis(200)).await?;
                published.fetch_add(1, Ordering::SeqCst);
            }
            anyhow::Ok(())
        })
    };

    // The faults, one every 1.5 s while the stream flows.
    let mut step = 0u32;
    let mut kills = (0u32, 0u32, 0u32);
    let (mut nats_restarted, mut pg_restarted) = (false, false);
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        step += 1;
        // Nothing but this test may have stopped them: no fault makes a
        // service exit on its own (a kill below would hide that).
        projector.assert_running()?;
        reconciler.assert_running()?;
        delivery.assert_running()?;
        match step {
            // From here to the end of the stream (the thresholds are
            // crossed in its second half) the receiver answers 503.
            8 => receiver.down.store(true, Ordering::SeqCst),
            3 => proxy_state.garbage.store(true, Ordering::SeqCst),
            6 => {
                nats.restart().await?;
                nats_restarted = true;
            }
            9 => proxy_state.garbage.store(false, Ordering::SeqCst),
            11 => {
                pg.restart()?;
                pg_restarted = true;
            }
            _ if step % 4 == 1 => {
                delivery.kill().await?;
                kills.2 += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
                delivery.restart().await?;
            }
            _ if step % 2 == 0 => {
                projector.kill().await?;
                kills.0 += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
                projector.restart().await?;
            }
            _ => {
                reconciler.kill().await?;
                kills.1 += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
                reconciler.restart().await?;
            }
        }
    }
    publisher.await??;
    proxy_state.garbage.store(false, Ordering::SeqCst);
    assert!(
        nats_restarted && pg_restarted,
        "the stream ended before every fault ran ({step} steps)"
    );
    receiver.down.store(false, Ordering::SeqCst);
    assert!(
        kills.0 >= 3 && kills.1 >= 2 && kills.2 >= 2,
        "kills: {kills:?}"
    );
    assert!(
        proxy_state.garbage_served.load(Ordering::SeqCst) > 0,
        "no garbage was served"
    );
    assert_eq!(published.load(Ordering::SeqCst), N);

    // Everything settles: every generation at its actual cost.
    let bus = Bus::connect(&BusConfig::new(nats.url())).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        projector.assert_running()?;
        reconciler.assert_running()?;
        let settled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM generations WHERE state = 'settled' AND basis = 'actual'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap_or(0);
        let mut pending = 0;
        for c in [
            ConsumerName::ProjectorCompleted,
            ConsumerName::ProjectorCosts,
            ConsumerName::Reconciler,
        ] {
            pending += bus.pending(c).await.unwrap_or(u64::MAX / 4);
        }
        let outbox = store.outbox_backlog().await.unwrap_or(-1);
        if settled == N as i64 && pending == 0 && outbox == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled after the faults: {settled}/{N} settled, {pending} pending, outbox {outbox}\n\
             projector log:\n{}\nreconciler log:\n{}",
            projector.log_text(),
            reconciler.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Exact to the digit: the budget, the journal and the generations all
    // equal the independent sum.
    let spent: Option<Usd> =
        sqlx::query_scalar("SELECT sum(spent_usd) FROM budget_periods WHERE budget_id = $1")
            .bind(&b.id)
            .fetch_one(store.pool())
            .await?;
    let journal: Option<Usd> =
        sqlx::query_scalar("SELECT sum(amount_usd) FROM ledger_entries WHERE budget_id = $1")
            .bind(&b.id)
            .fetch_one(store.pool())
            .await?;
    let debited: Option<Usd> = sqlx::query_scalar("SELECT sum(debited_usd) FROM generations")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(spent, Some(expected), "budget total");
    assert_eq!(journal, Some(expected), "journal");
    assert_eq!(debited, Some(expected), "generations");
    // One debit per generation; one adjustment per generation booked on
    // its estimate first (never more).
    let debits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ledger_entries WHERE budget_id = $1 AND kind = 'debit'",
    )
    .bind(&b.id)
    .fetch_one(store.pool())
    .await?;
    assert_eq!(debits, N as i64);

    // Each threshold announced once: in Postgres and on the alert stream.
    let thresholds: Vec<i32> =
        sqlx::query_scalar("SELECT threshold_percent FROM alerts WHERE budget_id = $1 ORDER BY 1")
            .bind(&b.id)
            .fetch_all(store.pool())
            .await?;
    assert_eq!(thresholds, [50, 80, 100]);
    let alerts = bus
        .jetstream()
        .get_stream(bus.stream_name(StreamKind::Alerts))
        .await?;
    let n_alerts = alerts.get_info().await?.state.messages;
    let mut seen = Vec::new();
    for seq in 1..=n_alerts {
        let m = alerts.get_raw_message(seq).await?;
        let v: serde_json::Value = serde_json::from_slice(&m.payload)?;
        seen.push(v["data"]["threshold_percent"].as_i64().unwrap_or(-1));
    }
    seen.sort();
    assert_eq!(seen, [50, 80, 100], "alerts on the stream");

    // Each alert reached the webhook receiver and was acknowledged exactly
    // once, under one webhook-id per alert; no delivery is left pending.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        delivery.assert_running()?;
        let acked: Vec<(String, i64)> = receiver
            .seen
            .lock()
            .expect("receiver")
            .iter()
            .filter(|r| r.2 == 204)
            .map(|r| (r.0.clone(), r.1))
            .collect();
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap_or(-1);
        if acked.len() >= 3 && pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhooks not delivered: {acked:?} acknowledged, {pending} not delivered\n{}",
            delivery.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A little longer: an acknowledged alert must never come again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let requests = receiver.seen.lock().expect("receiver").clone();
    let mut acked: Vec<(String, i64)> = requests
        .iter()
        .filter(|r| r.2 == 204)
        .map(|r| (r.0.clone(), r.1))
        .collect();
    acked.sort_by_key(|a| a.1);
    let thresholds: Vec<i64> = acked.iter().map(|a| a.1).collect();
    assert_eq!(
        thresholds,
        [50, 80, 100],
        "acknowledged webhooks: {requests:?}"
    );
    let ids: std::collections::BTreeSet<&str> = acked.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(ids.len(), 3, "one webhook-id per alert: {requests:?}");
    let refused = requests.iter().filter(|r| r.2 == 503).count();

    // Nothing dead-lettered: garbage answers are retried, not given up on.
    let dead = bus
        .jetstream()
        .get_stream(bus.stream_name(StreamKind::DeadLetter))
        .await?
        .get_info()
        .await?
        .state
        .messages;
    assert_eq!(dead, 0, "dead letters");

    // The projector's metrics still answer after all of it, and show the
    // budget past its limit (within the gauge's 30 s refresh).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let metrics =
            tally_tests::procs::get_text(&format!("http://127.0.0.1:{metrics_port}/metrics"))
                .await?;
        if metrics.contains("tally_projector_budgets{utilisation=\"ge_100\"} 1") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    eprintln!(
        "faults: {N} generations, projector killed {} times, reconciler {} times, alerts {} \
         times, NATS and Postgres restarted once, {} garbage answers, {refused} webhook \
         attempts refused by the receiver; settled exactly in {:.1?}",
        kills.0,
        kills.1,
        kills.2,
        proxy_state.garbage_served.load(Ordering::SeqCst),
        started.elapsed()
    );
    sim.kill().await?;
    projector.kill().await?;
    reconciler.kill().await?;
    delivery.kill().await?;
    let _ = std::fs::remove_dir_all(&logs);
    Ok(())
}
