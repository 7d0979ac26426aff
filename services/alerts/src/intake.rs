//! From the bus to the delivery queue: the durable consumers
//! `webhooks-alerts` (`<p>.budget.alert.>`) and `webhooks-ledger`
//! (`<p>.ledger.posted.>`).
//!
//! Each fetched batch is decoded with the event contract's strict decoder;
//! the readable events become delivery rows of every matching webhook in
//! **one** Postgres transaction ([`Store::enqueue_webhook_events`]), and only
//! after it committed is every message of the batch acked. An unreadable
//! message is dead-lettered on `<p>.deadletter.alerts` with its reason code
//! and then acked, so it never blocks the messages behind it. A failed
//! commit acks nothing: the batch comes back and, being idempotent on
//! `(event_id, webhook_id)`, is queued once.

use std::sync::Arc;
use std::time::Duration;

use tally_bus::{Bus, ConsumerName, DeadLetterReason, DeadLetterService, Delivery};
use tally_store::webhooks::{event_kind, WebhookEvent};
use tally_store::Store;
use tokio::sync::watch;

use crate::{AlertsConfig, AlertsError, Metrics};

/// The dead-letter service name (`<p>.deadletter.alerts`).
pub const DEAD_LETTER_SERVICE: DeadLetterService = DeadLetterService::Alerts;

/// Pause after a failed fetch or commit before trying again.
const BACKOFF: Duration = Duration::from_secs(1);

/// Runs one consumer until `shutdown`.
pub async fn run(
    bus: Bus,
    store: Store,
    name: ConsumerName,
    config: AlertsConfig,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AlertsError> {
    let consumer = loop {
        match bus.consumer(name).await {
            Ok(c) => break c,
            Err(e) => {
                metrics.errors.with_label_values(&[e.code()]).inc();
                tracing::warn!(consumer = %name, error = %e, "cannot open the consumer; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(BACKOFF) => {}
                    _ = shutdown.wait_for(|v| *v) => return Ok(()),
                }
            }
        }
    };
    tracing::info!(consumer = %name, "taking events for webhooks");
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let batch = tokio::select! {
            b = consumer.fetch(config.batch, Duration::from_secs(1)) => b,
            _ = shutdown.wait_for(|v| *v) => return Ok(()),
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                metrics.errors.with_label_values(&[e.code()]).inc();
                tracing::warn!(consumer = %name, error = %e, "fetch failed; retrying");
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        if let Err(e) = apply(&bus, &store, &config, &metrics, &batch).await {
            metrics.errors.with_label_values(&[e.code()]).inc();
            tracing::warn!(consumer = %name, error = %e, code = e.code(),
                "batch not queued; it comes back after the ack wait");
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

/// Queues one batch, then acks it.
async fn apply(
    bus: &Bus,
    store: &Store,
    config: &AlertsConfig,
    metrics: &Metrics,
    batch: &[Delivery],
) -> Result<(), AlertsError> {
    let mut events = Vec::with_capacity(batch.len());
    let mut poison = Vec::new();
    for msg in batch {
        match read(&config.prefix, msg) {
            Ok(Some(e)) => events.push(e),
            Ok(None) => {}
            Err((reason, detail)) => poison.push((msg, reason, detail)),
        }
    }
    let queued = store.enqueue_webhook_events(&events).await?;
    metrics.events.inc_by(events.len() as u64);
    metrics.queued.inc_by(queued);
    if queued > 0 {
        tracing::debug!(events = events.len(), queued, "webhook deliveries queued");
    }
    for (msg, reason, detail) in poison {
        bus.dead_letter(
            DEAD_LETTER_SERVICE,
            msg,
            &DeadLetterReason::new(reason, detail),
        )
        .await?;
        metrics.dead_letters.with_label_values(&[reason]).inc();
    }
    for msg in batch {
        msg.ack().await?;
    }
    Ok(())
}

/// The event of a message; `Ok(None)` for a readable event no webhook can
/// ask for; `Err((reason, detail))` for an unreadable one.
fn read(prefix: &str, msg: &Delivery) -> Result<Option<WebhookEvent>, (&'static str, String)> {
    let event = tally_events::decode(prefix, msg.subject(), msg.payload())
        .map_err(|e| (e.code(), e.to_string()))?;
    let Some(kind) = event_kind(event.event_type().as_str()) else {
        return Ok(None);
    };
    let payload = std::str::from_utf8(msg.payload())
        .map_err(|_| ("invalid_utf8", "the body is not UTF-8".to_owned()))?
        .to_owned();
    Ok(Some(WebhookEvent {
        event_id: event.id().to_owned(),
        org_id: event.org_id().to_owned(),
        kind,
        payload,
    }))
}
