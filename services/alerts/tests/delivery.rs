//! The alert delivery against a real NATS JetStream, a real Postgres and a
//! real HTTP receiver: an alert reaches a receiver that refuses it twice,
//! signed, under one `webhook-id`, and is never sent again after the 2xx;
//! a redelivered event queues nothing new; an unreadable message is
//! dead-lettered; private targets are refused at delivery and the refusal
//! is in the log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use tally_alerts::{Alerts, AlertsConfig, Metrics};
use tally_bus::{Bus, BusConfig};
use tally_secrets::{ExposeSecret, Keyring, SecretString};
use tally_store::webhooks::{secret_context, DeliveryState, NewWebhook, WebhookDelivery};
use tally_store::Store;
use tally_testkit::{NatsServer, TestDb, TestOrg};
use tokio::sync::watch;
use uuid::Uuid;

const ORG: &str = "acme";

/// What the receiver got: headers and body of every request.
#[derive(Default)]
struct Received {
    requests: Mutex<Vec<(HeaderMap, Vec<u8>)>>,
    /// Requests to refuse (503) before answering 204.
    refuse_first: AtomicUsize,
}

async fn receiver(state: Arc<Received>) -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let n = {
                    let mut r = state.requests.lock().unwrap();
                    r.push((headers, body.to_vec()));
                    r.len()
                };
                if n <= state.refuse_first.load(Ordering::SeqCst) {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "down for maintenance".repeat(100),
                    )
                } else {
                    (StatusCode::NO_CONTENT, String::new())
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/hook"))
}

fn alert(id: &str, budget: &str, percent: u32) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "/tally/projector",
        "type": "tally.budget.threshold_crossed.v1",
        "time": "2026-12-01T12:00:10Z",
        "subject": format!("tally.budget.alert.{ORG}.{budget}"),
        "datacontenttype": "application/json",
        "data": {
            "alert_id": id,
            "budget_id": budget,
            "org_id": ORG,
            "budget_name": "Support bot",
            "threshold_percent": percent,
            "limit_usd": "10",
            "spent_usd": "8.5",
            "period_start": "2026-12-01T00:00:00Z",
            "period_end": "2027-01-01T00:00:00Z",
            "generation_id": "gen-1",
            "crossed_at": "2026-12-01T12:00:10Z"
        }
    })
}

struct Env {
    _nats: NatsServer,
    _db: TestDb,
    bus: Bus,
    store: Store,
    keyring: Arc<Keyring>,
}

impl Env {
    async fn start() -> anyhow::Result<Env> {
        let nats = NatsServer::start().await?;
        let (db, store) = tally_testkit::TestDb::migrated(8).await?;
        TestOrg::create(&db.pool(), ORG).await?;
        let bus = Bus::connect(&BusConfig::new(nats.url())).await?;
        bus.ensure_topology().await?;
        let kek = tally_secrets::generate_key_setting("k1");
        let keyring = Arc::new(Keyring::from_settings(Some(&kek), None)?);
        Ok(Env {
            _nats: nats,
            _db: db,
            bus,
            store,
            keyring,
        })
    }

    async fn webhook(&self, url: &str) -> anyhow::Result<(Uuid, SecretString)> {
        let id = Uuid::now_v7();
        let secret = tally_alerts::signature::new_secret();
        let sealed = self
            .keyring
            .seal(&secret_context(ORG, &id.to_string()), &secret);
        self.store
            .create_webhook_within(
                &NewWebhook {
                    id,
                    org_id: ORG.into(),
                    url: url.into(),
                    events: vec!["budget.threshold_crossed".into()],
                    description: None,
                    sealed_secret: sealed,
                },
                100,
            )
            .await?;
        Ok((id, secret))
    }

    fn start_alerts(&self, allow_private: bool) -> anyhow::Result<watch::Sender<bool>> {
        let (tx, rx) = watch::channel(false);
        let svc = Alerts::new(
            self.bus.clone(),
            self.store.clone(),
            Some(self.keyring.clone()),
            AlertsConfig {
                allow_private,
                retry_base: Duration::from_millis(200),
                retry_cap: Duration::from_millis(400),
                poll_interval: Duration::from_millis(50),
                timeout: Duration::from_secs(2),
                ..AlertsConfig::default()
            },
            Arc::new(Metrics::register(&tally_telemetry::Registry::new())?),
        );
        tokio::spawn(svc.run(rx));
        Ok(tx)
    }

    async fn publish(&self, doc: &Value, msg_id: &str) -> anyhow::Result<()> {
        self.bus
            .publish(
                doc["subject"].as_str().unwrap(),
                msg_id,
                serde_json::to_vec(doc)?.into(),
            )
            .await?;
        Ok(())
    }

    async fn log(&self, webhook: Uuid) -> Vec<WebhookDelivery> {
        self.store
            .webhook_deliveries(webhook, None, 100)
            .await
            .unwrap()
            .0
    }

    async fn wait_log(
        &self,
        webhook: Uuid,
        pred: impl Fn(&[WebhookDelivery]) -> bool,
    ) -> Vec<WebhookDelivery> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log(webhook).await;
            if pred(&log) {
                return log;
            }
            assert!(Instant::now() < end, "delivery log never matched: {log:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The signature as the Standard Webhooks specification defines it,
/// computed here from the specification, not with the crate's signer.
fn expected_signature(secret: &SecretString, id: &str, ts: &str, body: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64
        .decode(secret.expose_secret().strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn an_alert_reaches_a_receiver_that_refuses_it_twice_once_and_signed() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let received = Arc::new(Received::default());
    received.refuse_first.store(2, Ordering::SeqCst);
    let url = receiver(received.clone()).await?;
    let (hook, secret) = env.webhook(&url).await?;
    let _stop = env.start_alerts(true)?;

    let doc = alert("alert-b1-80", "b1", 80);
    env.publish(&doc, "alert-b1-80").await?;
    // Unreadable: dead-lettered, never queued, never blocks the alert.
    env.bus
        .publish("tally.budget.alert.acme.b1", "garbage", "{not json".into())
        .await?;

    let log = env
        .wait_log(hook, |l| {
            l.len() == 1 && l[0].state == DeliveryState::Delivered
        })
        .await;
    let d = &log[0];
    assert_eq!(d.attempts, 3, "{d:?}");
    assert_eq!(d.last_status, Some(204));
    assert_eq!(d.event_id, "alert-b1-80");
    assert!(d.delivered_at.is_some());

    // The same event again (another message id: past the duplicate
    // window's reach) queues nothing and sends nothing.
    env.publish(&doc, "alert-b1-80-again").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.log(hook).await.len(), 1);

    let requests = received.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3, "two refusals and one 2xx, nothing after");
    let body = serde_json::to_vec(&doc)?;
    for (headers, got) in &requests {
        assert_eq!(got, &body, "the body is the CloudEvent as on the bus");
        let id = headers["webhook-id"].to_str()?;
        assert_eq!(id, d.id.to_string(), "one webhook-id for every attempt");
        let ts = headers["webhook-timestamp"].to_str()?;
        let ts_n: i64 = ts.parse()?;
        assert!((chrono::Utc::now().timestamp() - ts_n).abs() < 60);
        assert_eq!(
            headers["webhook-signature"].to_str()?,
            expected_signature(&secret, id, ts, got)
        );
        assert_eq!(headers["content-type"], "application/json");
    }
    // The refusals were logged with a bounded excerpt; the dead letter
    // carries its reason.
    let dl = env
        .bus
        .replay_consumer(tally_bus::StreamKind::DeadLetter, "tally.deadletter.alerts")
        .await?;
    let got = dl.fetch(10, Duration::from_secs(2)).await?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload(), b"{not json");
    assert_eq!(
        got[0]
            .headers()
            .and_then(|h| h.get(tally_bus::HEADER_DEAD_LETTER_REASON))
            .map(|v| v.as_str().to_owned())
            .as_deref(),
        Some("malformed_json")
    );
    Ok(())
}

#[tokio::test]
async fn private_targets_are_refused_at_delivery_and_logged() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let received = Arc::new(Received::default());
    let url = receiver(received.clone()).await?;
    // Registered behind the API's back (or when private targets were
    // allowed): an IP literal and a name that resolves to loopback.
    let (literal, _) = env.webhook(&url).await?;
    let by_name = url.replace("127.0.0.1", "localhost");
    let (named, _) = env.webhook(&by_name).await?;
    let _stop = env.start_alerts(false)?;
    env.publish(&alert("alert-b9-50", "b9", 50), "alert-b9-50")
        .await?;

    let log = env
        .wait_log(literal, |l| {
            l.len() == 1 && l[0].state == DeliveryState::Failed
        })
        .await;
    let err = log[0].last_error.clone().unwrap();
    assert!(err.starts_with("webhook_target_forbidden"), "{err}");
    // A name can resolve elsewhere later: refused now, retried.
    let log = env
        .wait_log(named, |l| {
            l.len() == 1
                && l[0].attempts >= 2
                && l[0]
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("loopback"))
        })
        .await;
    assert_eq!(log[0].state, DeliveryState::Pending);
    assert!(
        received.requests.lock().unwrap().is_empty(),
        "no request reached the private receiver"
    );
    Ok(())
}
