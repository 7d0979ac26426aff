//! Webhooks and their delivery queue against a real Postgres: the limit per
//! organisation, sealed secrets only, one delivery per event and webhook
//! however often it is queued, disjoint claims under concurrency, fenced
//! outcome records, final states, deletion.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use tally_secrets::{ExposeSecret, Keyring, SecretString};
use tally_store::webhooks::{
    secret_context, AttemptOutcome, DeliveryState, NewWebhook, WebhookEvent,
};
use tally_store::{Store, StoreError};
use tally_testkit::{TestDb, TestOrg};
use uuid::Uuid;

const ORG: &str = "acme";
const OTHER: &str = "globex";

/// A fresh database with the organisations [`ORG`] and [`OTHER`], and a
/// keyring to seal webhook secrets with.
async fn setup() -> anyhow::Result<(TestDb, Store, Keyring)> {
    let (db, store) = tally_testkit::TestDb::migrated(16).await?;
    TestOrg::create(&db.pool(), ORG).await?;
    TestOrg::create(&db.pool(), OTHER).await?;
    let k = tally_secrets::generate_key_setting("k1");
    let kr = Keyring::from_settings(Some(&k), None).unwrap();
    Ok((db, store, kr))
}

/// What was not found, when `r` is [`StoreError::NotFound`].
fn not_found<T>(r: Result<T, StoreError>) -> Option<&'static str> {
    match r {
        Err(StoreError::NotFound { what }) => Some(what),
        _ => None,
    }
}

fn new_webhook(kr: &Keyring, org: &str, events: &[&str]) -> (NewWebhook, SecretString) {
    let id = Uuid::now_v7();
    let secret = SecretString::from(format!("whsec_{}", Uuid::new_v4().simple()));
    let sealed = kr.seal(&secret_context(org, &id.to_string()), &secret);
    (
        NewWebhook {
            id,
            org_id: org.into(),
            url: "https://hooks.example.com/tally".into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            description: Some("ops".into()),
            sealed_secret: sealed,
        },
        secret,
    )
}

fn alert(id: &str, org: &str) -> WebhookEvent {
    WebhookEvent {
        event_id: id.into(),
        org_id: org.into(),
        kind: "budget.threshold_crossed",
        payload: format!(r#"{{"id":"{id}"}}"#),
    }
}

#[tokio::test]
async fn webhooks_are_limited_per_org_and_hold_only_sealed_secrets() -> anyhow::Result<()> {
    let (_db, store, kr) = setup().await?;
    let mut secrets = Vec::new();
    for _ in 0..3 {
        let (w, secret) = new_webhook(&kr, ORG, &["budget.threshold_crossed"]);
        store.create_webhook_within(&w, 3).await?;
        secrets.push(secret);
    }
    let (w, _) = new_webhook(&kr, ORG, &["ledger.posted"]);
    match store.create_webhook_within(&w, 3).await {
        Err(StoreError::LimitExceeded { limit, max }) => {
            assert_eq!((limit, max), ("webhooks_per_org", 3))
        }
        other => panic!("{other:?}"),
    }
    // Another organisation has its own count.
    let (g, _) = new_webhook(&kr, OTHER, &["ledger.posted"]);
    store.create_webhook_within(&g, 3).await?;
    // Unknown organisation.
    let (mut u, _) = new_webhook(&kr, "nobody", &["ledger.posted"]);
    u.org_id = "nobody".into();
    assert_eq!(
        not_found(store.create_webhook_within(&u, 3).await),
        Some("org")
    );
    // Bad event lists are refused by the store too.
    for events in [
        &[][..],
        &["budget.alert"][..],
        &["ledger.posted", "ledger.posted"][..],
    ] {
        let (w, _) = new_webhook(&kr, OTHER, events);
        assert!(
            matches!(
                store.create_webhook_within(&w, 10).await,
                Err(StoreError::Invalid {
                    field: "events",
                    ..
                })
            ),
            "{events:?}"
        );
    }

    // No plaintext secret anywhere in the table.
    let dump: Vec<String> = sqlx::query_scalar("SELECT row_to_json(w)::text FROM webhooks w")
        .fetch_all(store.pool())
        .await?;
    for s in &secrets {
        let body = &s.expose_secret()["whsec_".len()..];
        assert!(dump.iter().all(|row| !row.contains(body)), "{dump:?}");
    }
    // The sealed secret opens only in its own context.
    let hooks = store.webhook_secrets().await?;
    assert_eq!(hooks.len(), 4);
    let first = hooks.iter().find(|h| h.org_id == ORG).unwrap();
    let opened = kr.open(&secret_context(ORG, &first.id.to_string()), &first.sealed)?;
    assert!(secrets
        .iter()
        .any(|s| s.expose_secret() == opened.expose_secret()));
    let other_id = Uuid::now_v7().to_string();
    assert!(kr
        .open(&secret_context(ORG, &other_id), &first.sealed)
        .is_err());
    assert!(kr
        .open(&secret_context(OTHER, &first.id.to_string()), &first.sealed)
        .is_err());

    // Listing pages through every webhook exactly once, oldest first.
    let (p1, next) = store.list_webhooks(ORG, None, 2).await?;
    assert_eq!(p1.len(), 2);
    let (p2, end) = store.list_webhooks(ORG, next, 2).await?;
    assert_eq!(p2.len(), 1);
    assert!(end.is_none());
    assert!(p1[0].id < p1[1].id && p1[1].id < p2[0].id);
    // Another organisation's webhook is not found by id.
    assert_eq!(
        not_found(store.webhook(p1[0].id, Some(OTHER)).await),
        Some("webhook")
    );
    assert_eq!(store.webhook(p1[0].id, Some(ORG)).await?.url, p1[0].url);
    Ok(())
}

#[tokio::test]
async fn each_event_is_one_delivery_per_matching_webhook() -> anyhow::Result<()> {
    let (_db, store, kr) = setup().await?;
    let (alerts, _) = new_webhook(&kr, ORG, &["budget.threshold_crossed"]);
    let (both, _) = new_webhook(&kr, ORG, &["ledger.posted", "budget.threshold_crossed"]);
    let (ledger, _) = new_webhook(&kr, ORG, &["ledger.posted"]);
    let (foreign, _) = new_webhook(&kr, OTHER, &["budget.threshold_crossed"]);
    for w in [&alerts, &both, &ledger, &foreign] {
        store.create_webhook_within(w, 100).await?;
    }
    let batch = vec![alert("a1", ORG), alert("a2", ORG), alert("g1", OTHER)];
    // Two webhooks of acme want alerts, one of globex.
    assert_eq!(store.enqueue_webhook_events(&batch).await?, 5);
    // A redelivered batch, alone or in any mix, queues nothing new.
    assert_eq!(store.enqueue_webhook_events(&batch).await?, 0);
    assert_eq!(
        store
            .enqueue_webhook_events(&[alert("a2", ORG), alert("a3", ORG)])
            .await?,
        2
    );
    let posted = WebhookEvent {
        event_id: "p1".into(),
        org_id: ORG.into(),
        kind: "ledger.posted",
        payload: "{}".into(),
    };
    assert_eq!(store.enqueue_webhook_events(&[posted]).await?, 2);
    assert_eq!(store.pending_webhook_deliveries().await?, 9);
    let (log, _) = store.webhook_deliveries(alerts.id, None, 100).await?;
    let ids: Vec<&str> = log.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(ids, ["a3", "a2", "a1"], "newest first");
    assert!(log
        .iter()
        .all(|d| d.state == DeliveryState::Pending && d.attempts == 0));
    // A deleted webhook gets nothing new, and its pending deliveries fail.
    store.delete_webhook(both.id, Some(ORG)).await?;
    assert_eq!(store.enqueue_webhook_events(&[alert("a4", ORG)]).await?, 1);
    let (log, _) = store.webhook_deliveries(both.id, None, 100).await?;
    assert!(log.iter().all(|d| d.state == DeliveryState::Failed
        && d.last_error
            .as_deref()
            .unwrap()
            .starts_with("webhook_deleted")));
    assert_eq!(
        not_found(store.webhook(both.id, None).await),
        Some("webhook")
    );
    assert_eq!(
        not_found(store.delete_webhook(both.id, None).await),
        Some("webhook")
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_claims_are_disjoint_and_outcomes_are_fenced() -> anyhow::Result<()> {
    let (_db, store, kr) = setup().await?;
    let (w, _) = new_webhook(&kr, ORG, &["budget.threshold_crossed"]);
    store.create_webhook_within(&w, 100).await?;
    let events: Vec<WebhookEvent> = (0..200).map(|i| alert(&format!("e{i}"), ORG)).collect();
    assert_eq!(store.enqueue_webhook_events(&events).await?, 200);

    // Eight claimers at once: every delivery is claimed exactly once.
    let claims = futures::future::join_all((0..8).map(|_| {
        let store = store.clone();
        async move {
            store
                .claim_webhook_deliveries(40, Duration::from_secs(60))
                .await
        }
    }))
    .await;
    let mut seen = HashSet::new();
    let mut total = 0;
    for c in claims {
        for d in c? {
            assert_eq!(d.attempt, 1);
            assert!(d.sealed_secret.is_some());
            assert!(seen.insert(d.id), "claimed twice: {}", d.id);
            total += 1;
        }
    }
    assert_eq!(total, 200);
    // Leased: nothing is due now.
    assert!(store
        .claim_webhook_deliveries(10, Duration::from_secs(60))
        .await?
        .is_empty());

    // Outcomes: delivered is final; a stale attempt number changes nothing.
    let ids: Vec<Uuid> = seen.into_iter().collect();
    let ok = AttemptOutcome::Delivered {
        status: 204,
        response: None,
    };
    assert!(store.record_webhook_attempt(ids[0], 1, &ok).await?);
    assert!(!store.record_webhook_attempt(ids[0], 1, &ok).await?);
    let retry = AttemptOutcome::Retry {
        status: Some(503),
        error: "http_status: the receiver answered 503".into(),
        response: Some("x".repeat(5000)),
        next_attempt_at: Utc::now() - chrono::Duration::seconds(1),
    };
    assert!(!store.record_webhook_attempt(ids[0], 1, &retry).await?);
    assert!(!store.record_webhook_attempt(ids[1], 2, &retry).await?);
    assert!(store.record_webhook_attempt(ids[1], 1, &retry).await?);
    let later = AttemptOutcome::Retry {
        status: Some(500),
        error: "e".repeat(5000),
        response: Some("y".repeat(5000)),
        next_attempt_at: Utc::now() + chrono::Duration::hours(1),
    };
    assert!(store.record_webhook_attempt(ids[2], 1, &later).await?);
    // Retried and due again: the next claim is attempt 2 of the same id.
    let again = store
        .claim_webhook_deliveries(10, Duration::from_millis(1))
        .await?;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempt), (ids[1], 2));
    // A lease that ran out hands the row to the next claim: the first
    // claimer's late record is refused.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let third = store
        .claim_webhook_deliveries(10, Duration::from_secs(60))
        .await?;
    assert_eq!((third[0].id, third[0].attempt), (ids[1], 3));
    assert!(!store.record_webhook_attempt(ids[1], 2, &ok).await?);
    let failed = AttemptOutcome::Failed {
        status: None,
        error: "retry_horizon_passed: timeout".into(),
        response: None,
    };
    assert!(store.record_webhook_attempt(ids[1], 3, &failed).await?);

    let (log, _) = store.webhook_deliveries(w.id, None, 1000).await?;
    let d0 = log.iter().find(|d| d.id == ids[0]).unwrap();
    assert_eq!(d0.state, DeliveryState::Delivered);
    assert_eq!(d0.last_status, Some(204));
    assert!(d0.delivered_at.is_some() && d0.next_attempt_at.is_none());
    let d1 = log.iter().find(|d| d.id == ids[1]).unwrap();
    assert_eq!(d1.state, DeliveryState::Failed);
    assert_eq!(d1.attempts, 3);
    assert!(d1.failed_at.is_some());
    assert_eq!(store.pending_webhook_deliveries().await?, 198);
    // The stored excerpt of a long body is bounded.
    let d2 = log.iter().find(|d| d.id == ids[2]).unwrap();
    assert_eq!(d2.state, DeliveryState::Pending);
    assert_eq!(d2.last_response.as_ref().unwrap().chars().count(), 257);
    assert_eq!(d2.last_error.as_ref().unwrap().chars().count(), 257);
    assert!(d2.next_attempt_at.unwrap() > Utc::now());
    // Pagination of the log: every delivery once, newest first.
    let mut cursor = None;
    let mut all = Vec::new();
    loop {
        let (page, next) = store.webhook_deliveries(w.id, cursor, 64).await?;
        all.extend(page.into_iter().map(|d| d.id));
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(all.len(), 200);
    assert!(all.windows(2).all(|p| p[0] > p[1]));
    Ok(())
}
