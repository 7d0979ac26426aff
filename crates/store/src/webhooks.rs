//! Webhooks of an organisation and the durable queue and log of their
//! deliveries.
//!
//! A webhook is a receiver URL, the event kinds it wants
//! ([`EVENT_KINDS`]), an optional description and a signing secret that is
//! stored only sealed (see [`secret_context`]). Each event the delivery
//! service takes from the bus becomes one row per matching webhook
//! ([`Store::enqueue_webhook_events`]); the delivery loop claims due rows
//! ([`Store::claim_webhook_deliveries`]), makes one HTTP attempt per claim
//! and records its outcome ([`Store::record_webhook_attempt`]).
//!
//! # Invariants
//!
//! * **One delivery per event and webhook.** `UNIQUE (event_id,
//!   webhook_id)`: a redelivered bus message inserts nothing new, so a
//!   receiver is never sent the same event under two delivery ids.
//! * **A delivery id never changes.** The row's id is the Standard Webhooks
//!   `webhook-id` of every attempt, so receivers can drop repeats.
//! * **Delivered and failed are final.** Only a `pending` row is claimed or
//!   updated; an attempt's outcome is recorded only by the claim that made
//!   it (its attempt number fences a stale claim whose lease ran out).
//! * **Several delivery instances are safe.** Claims take rows `FOR UPDATE
//!   SKIP LOCKED` and move `next_attempt_at` forward by a lease in the same
//!   statement, so two instances never attempt one row at once; a row whose
//!   instance died is due again when its lease ends.
//! * **No plaintext secret is stored.** Rows hold [`Sealed`] values only;
//!   deleting a webhook destroys its ciphertext and fails its pending
//!   deliveries (`webhook_deleted`).
//! * At most the organisation's limit of live webhooks (counted under a
//!   lock on the organisation's row).

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};
use tally_secrets::{Context, Sealed};
use uuid::Uuid;

use crate::found::FetchFound;
use crate::page::next_cursor;
use crate::sealed::{sealed_from_nullable, BindSealed};
use crate::tenancy::lock_org_below_limit;
use crate::{Store, StoreError};

/// The event kinds a webhook may ask for.
pub const EVENT_KINDS: [&str; 2] = ["budget.threshold_crossed", "ledger.posted"];
/// Longest webhook URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Longest stored error or response excerpt, in characters.
pub const MAX_EXCERPT_CHARS: usize = 256;

/// The provider part of a webhook secret's sealing context.
pub const SECRET_PROVIDER: &str = "webhook";

/// Where a webhook's signing secret belongs: its organisation, `webhook`
/// and the webhook's id (as text, `field`), so a ciphertext copied to
/// another webhook or organisation does not decrypt.
pub fn secret_context<'a>(org_id: &'a str, webhook_id_text: &'a str) -> Context<'a> {
    Context {
        org_id,
        provider: SECRET_PROVIDER,
        field: webhook_id_text,
    }
}

/// The event kind of a CloudEvent type (`tally.ledger.posted.v1` →
/// `ledger.posted`), if webhooks can ask for it.
pub fn event_kind(cloudevent_type: &str) -> Option<&'static str> {
    match cloudevent_type {
        "tally.budget.threshold_crossed.v1" => Some(EVENT_KINDS[0]),
        "tally.ledger.posted.v1" => Some(EVENT_KINDS[1]),
        _ => None,
    }
}

/// A webhook to register (validated by the caller; the store checks the
/// event kinds and lengths again).
#[derive(Debug, Clone)]
pub struct NewWebhook {
    /// Its id (also part of the secret's sealing context).
    pub id: Uuid,
    /// Organisation.
    pub org_id: String,
    /// Receiver URL.
    pub url: String,
    /// Event kinds, each of [`EVENT_KINDS`], no duplicates.
    pub events: Vec<String>,
    /// A description for people.
    pub description: Option<String>,
    /// The sealed signing secret.
    pub sealed_secret: Sealed,
}

/// A stored webhook (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Webhook {
    /// Id.
    pub id: Uuid,
    /// Organisation.
    pub org_id: String,
    /// Receiver URL.
    pub url: String,
    /// Event kinds.
    pub events: Vec<String>,
    /// Description.
    pub description: Option<String>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When it was deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// State of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not yet acknowledged by the receiver; attempts go on.
    Pending,
    /// The receiver answered 2xx: never sent again.
    Delivered,
    /// Given up (retry horizon passed, refused target, webhook deleted).
    Failed,
}

impl DeliveryState {
    /// `pending`, `delivered`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "failed" => Ok(DeliveryState::Failed),
            other => Err(StoreError::Corrupt(format!("delivery state {other:?}"))),
        }
    }
}

/// One delivery as the log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// The `webhook-id` of every attempt.
    pub id: Uuid,
    /// Webhook.
    pub webhook_id: Uuid,
    /// The event's CloudEvent id.
    pub event_id: String,
    /// Its kind (`budget.threshold_crossed`, `ledger.posted`).
    pub event_type: String,
    /// State.
    pub state: DeliveryState,
    /// Attempts made (or started).
    pub attempts: i32,
    /// When the event was taken from the bus (the retry horizon's origin).
    pub accepted_at: DateTime<Utc>,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the last attempt started.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// HTTP status of the last answer.
    pub last_status: Option<i32>,
    /// Why the last attempt did not deliver (a code and a short detail).
    pub last_error: Option<String>,
    /// A short excerpt of the last response body.
    pub last_response: Option<String>,
    /// When the receiver acknowledged it.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When it was given up.
    pub failed_at: Option<DateTime<Utc>>,
}

/// An event to deliver to the matching webhooks of its organisation.
#[derive(Debug, Clone)]
pub struct WebhookEvent {
    /// Its CloudEvent id.
    pub event_id: String,
    /// Organisation.
    pub org_id: String,
    /// Its kind (one of [`EVENT_KINDS`]).
    pub kind: &'static str,
    /// The CloudEvent JSON as on the bus (the body that is signed and sent).
    pub payload: String,
}

/// A delivery claimed for one attempt.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    /// The `webhook-id`.
    pub id: Uuid,
    /// Webhook.
    pub webhook_id: Uuid,
    /// Organisation.
    pub org_id: String,
    /// Event kind.
    pub event_type: String,
    /// Body.
    pub payload: String,
    /// This attempt's number (1 for the first).
    pub attempt: i32,
    /// When the event was accepted.
    pub accepted_at: DateTime<Utc>,
    /// The receiver URL.
    pub url: String,
    /// The sealed secret; `None` when the webhook was deleted meanwhile.
    pub sealed_secret: Option<Sealed>,
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub enum AttemptOutcome {
    /// 2xx.
    Delivered {
        /// The status.
        status: i32,
        /// A short excerpt of the body.
        response: Option<String>,
    },
    /// Not delivered; try again at `next_attempt_at`.
    Retry {
        /// The status, if the receiver answered.
        status: Option<i32>,
        /// Why (code and detail).
        error: String,
        /// A short excerpt of the body.
        response: Option<String>,
        /// When to try again.
        next_attempt_at: DateTime<Utc>,
    },
    /// Not delivered, and never will be.
    Failed {
        /// The status, if the receiver answered.
        status: Option<i32>,
        /// Why (code and detail).
        error: String,
        /// A short excerpt of the body.
        response: Option<String>,
    },
}

/// A live webhook's sealed secret (for `tally secrets rotate`).
#[derive(Debug, Clone)]
pub struct SealedWebhookSecret {
    /// Webhook.
    pub id: Uuid,
    /// Organisation.
    pub org_id: String,
    /// The sealed secret.
    pub sealed: Sealed,
}

fn excerpt(s: Option<&str>) -> Option<String> {
    s.map(|s| {
        let mut out: String = s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_EXCERPT_CHARS)
            .collect();
        if s.chars().count() > MAX_EXCERPT_CHARS {
            out.push('…');
        }
        out
    })
}

const WEBHOOK_COLUMNS: &str = "id, org_id, url, events, description, created_at, deleted_at";

fn webhook(row: &PgRow) -> Result<Webhook, StoreError> {
    Ok(Webhook::from_row(row)?)
}

const DELIVERY_COLUMNS: &str = "id, webhook_id, event_id, event_type, state, attempts, \
     accepted_at, next_attempt_at, last_attempt_at, last_status, last_error, last_response, \
     delivered_at, failed_at";

fn delivery(row: &PgRow) -> Result<WebhookDelivery, StoreError> {
    let state = DeliveryState::parse(row.try_get::<&str, _>("state")?)?;
    Ok(WebhookDelivery {
        id: row.try_get("id")?,
        webhook_id: row.try_get("webhook_id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        state,
        attempts: row.try_get("attempts")?,
        accepted_at: row.try_get("accepted_at")?,
        next_attempt_at: match state {
            DeliveryState::Pending => Some(row.try_get("next_attempt_at")?),
            _ => None,
        },
        last_attempt_at: row.try_get("last_attempt_at")?,
        last_status: row.try_get("last_status")?,
        last_error: row.try_get("last_error")?,
        last_response: row.try_get("last_response")?,
        delivered_at: row.try_get("delivered_at")?,
        failed_at: row.try_get("failed_at")?,
    })
}

fn invalid(field: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn check_new(w: &NewWebhook) -> Result<(), StoreError> {
    if w.url.is_empty() || w.url.len() > MAX_URL_BYTES {
        return Err(invalid(
            "url",
            format!("url must be 1 to {MAX_URL_BYTES} bytes"),
        ));
    }
    if w.events.is_empty() {
        return Err(invalid(
            "events",
            "events must name at least one event kind",
        ));
    }
    for (i, e) in w.events.iter().enumerate() {
        if !EVENT_KINDS.contains(&e.as_str()) {
            return Err(invalid("events", format!("unknown event kind {e:?}")));
        }
        if w.events[..i].contains(e) {
            return Err(invalid("events", format!("event kind {e:?} given twice")));
        }
    }
    if let Some(d) = &w.description {
        if d.trim().is_empty()
            || d.chars().count() > MAX_DESCRIPTION_CHARS
            || d.chars().any(char::is_control)
        {
            return Err(invalid(
                "description",
                format!(
                    "description must be 1 to {MAX_DESCRIPTION_CHARS} characters, not blank, \
                     without control characters"
                ),
            ));
        }
    }
    Ok(())
}

impl Store {
    /// Registers a webhook. Unknown organisation → [`StoreError::NotFound`]
    /// (`org`); `max` live webhooks already → [`StoreError::LimitExceeded`]
    /// (`webhooks_per_org`). The organisation's row is locked, so
    /// concurrent registrations never pass the limit.
    pub async fn create_webhook_within(
        &self,
        new: &NewWebhook,
        max: u32,
    ) -> Result<Webhook, StoreError> {
        check_new(new)?;
        let mut tx = self.pool().begin().await?;
        lock_org_below_limit(
            &mut tx,
            &new.org_id,
            "SELECT count(*) FROM webhooks WHERE org_id = $1 AND deleted_at IS NULL",
            "webhooks_per_org",
            max,
        )
        .await?;
        let row = sqlx::query(&format!(
            "INSERT INTO webhooks (id, org_id, url, events, description, kek_id, wrap_nonce, \
             wrapped_key, nonce, ciphertext) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             RETURNING {WEBHOOK_COLUMNS}"
        ))
        .bind(new.id)
        .bind(&new.org_id)
        .bind(&new.url)
        .bind(&new.events)
        .bind(&new.description)
        .bind_sealed(&new.sealed_secret)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        webhook(&row)
    }

    /// The live webhooks of an organisation, oldest first (ids are time
    /// ordered), at most `limit` after the id `after`; and the cursor of
    /// the next page, if there is one.
    pub async fn list_webhooks(
        &self,
        org_id: &str,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<(Vec<Webhook>, Option<Uuid>), StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE org_id = $1 AND deleted_at IS NULL \
             AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"
        ))
        .bind(org_id)
        .bind(after)
        .bind(limit.saturating_add(1))
        .fetch_all(self.pool())
        .await?;
        let mut out = rows.iter().map(webhook).collect::<Result<Vec<_>, _>>()?;
        let next = next_cursor(&mut out, limit, |w| w.id);
        Ok((out, next))
    }

    /// A live webhook; with `org_id`, only one of that organisation.
    /// Otherwise (or deleted) [`StoreError::NotFound`] (`webhook`).
    pub async fn webhook(&self, id: Uuid, org_id: Option<&str>) -> Result<Webhook, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND deleted_at IS NULL \
             AND ($2::text IS NULL OR org_id = $2)"
        ))
        .bind(id)
        .bind(org_id)
        .fetch_found(self.pool(), "webhook")
        .await?;
        webhook(&row)
    }

    /// Deletes a webhook: destroys its sealed secret, keeps the row for its
    /// delivery log, and fails its pending deliveries (`webhook_deleted`),
    /// in one transaction. Unknown, another organisation's or already
    /// deleted → [`StoreError::NotFound`] (`webhook`).
    pub async fn delete_webhook(
        &self,
        id: Uuid,
        org_id: Option<&str>,
    ) -> Result<Webhook, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE webhooks SET deleted_at = now(), kek_id = NULL, wrap_nonce = NULL, \
             wrapped_key = NULL, nonce = NULL, ciphertext = NULL \
             WHERE id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR org_id = $2) \
             RETURNING {WEBHOOK_COLUMNS}"
        ))
        .bind(id)
        .bind(org_id)
        .fetch_found(&mut *tx, "webhook")
        .await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET state = 'failed', failed_at = now(), \
             last_error = 'webhook_deleted: the webhook was deleted' \
             WHERE webhook_id = $1 AND state = 'pending'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        webhook(&row)
    }

    /// A webhook's deliveries, newest first, at most `limit` older than the
    /// delivery `before`; and the cursor of the next page.
    pub async fn webhook_deliveries(
        &self,
        webhook_id: Uuid,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<(Vec<WebhookDelivery>, Option<Uuid>), StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 \
             AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        ))
        .bind(webhook_id)
        .bind(before)
        .bind(limit.saturating_add(1))
        .fetch_all(self.pool())
        .await?;
        let mut out = rows.iter().map(delivery).collect::<Result<Vec<_>, _>>()?;
        let next = next_cursor(&mut out, limit, |d| d.id);
        Ok((out, next))
    }

    /// Queues every event for each live webhook of its organisation that
    /// asks for its kind, in one transaction; an event already queued for a
    /// webhook (a redelivered message) adds nothing. Returns the number of
    /// deliveries created.
    pub async fn enqueue_webhook_events(&self, events: &[WebhookEvent]) -> Result<u64, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut orgs: Vec<&str> = events.iter().map(|e| e.org_id.as_str()).collect();
        orgs.sort_unstable();
        orgs.dedup();
        let mut tx = self.pool().begin().await?;
        let hooks = sqlx::query(
            "SELECT id, org_id, events FROM webhooks \
             WHERE org_id = ANY($1) AND deleted_at IS NULL ORDER BY id",
        )
        .bind(&orgs)
        .fetch_all(&mut *tx)
        .await?;
        let mut ids = Vec::new();
        let mut hook_ids = Vec::new();
        let mut org_ids = Vec::new();
        let mut event_ids = Vec::new();
        let mut kinds = Vec::new();
        let mut payloads = Vec::new();
        for e in events {
            for h in &hooks {
                let org: &str = h.try_get("org_id")?;
                let wanted: Vec<String> = h.try_get("events")?;
                if org != e.org_id || !wanted.iter().any(|k| k == e.kind) {
                    continue;
                }
                ids.push(Uuid::now_v7());
                hook_ids.push(h.try_get::<Uuid, _>("id")?);
                org_ids.push(e.org_id.as_str());
                event_ids.push(e.event_id.as_str());
                kinds.push(e.kind);
                payloads.push(e.payload.as_str());
            }
        }
        if ids.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let done = sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, org_id, event_id, event_type, payload) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[]) \
             ON CONFLICT (event_id, webhook_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&hook_ids)
        .bind(&org_ids)
        .bind(&event_ids)
        .bind(&kinds)
        .bind(&payloads)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Claims at most `limit` due pending deliveries for one attempt each:
    /// their attempt count goes up and they are not due again for `lease`
    /// (the attempt's own time budget), in one statement with `FOR UPDATE
    /// SKIP LOCKED`, so concurrent claimers never take the same row.
    pub async fn claim_webhook_deliveries(
        &self,
        limit: i64,
        lease: std::time::Duration,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "WITH due AS ( \
                 SELECT id FROM webhook_deliveries \
                 WHERE state = 'pending' AND next_attempt_at <= now() \
                 ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             UPDATE webhook_deliveries d SET attempts = d.attempts + 1, \
                 last_attempt_at = now(), \
                 next_attempt_at = now() + $2::bigint * interval '1 millisecond' \
             FROM due, webhooks w \
             WHERE d.id = due.id AND w.id = d.webhook_id \
             RETURNING d.id, d.webhook_id, d.org_id, d.event_type, d.payload, d.attempts, \
                 d.accepted_at, w.url, w.kek_id, w.wrap_nonce, w.wrapped_key, w.nonce, \
                 w.ciphertext",
        )
        .bind(limit)
        .bind(lease_ms)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ClaimedDelivery {
                    id: row.try_get("id")?,
                    webhook_id: row.try_get("webhook_id")?,
                    org_id: row.try_get("org_id")?,
                    event_type: row.try_get("event_type")?,
                    payload: row.try_get("payload")?,
                    attempt: row.try_get("attempts")?,
                    accepted_at: row.try_get("accepted_at")?,
                    url: row.try_get("url")?,
                    sealed_secret: sealed_from_nullable(row)?,
                })
            })
            .collect()
    }

    /// Records the outcome of attempt `attempt` of a delivery. Returns
    /// `false` (and changes nothing) when the delivery is no longer pending
    /// or another claim has started a later attempt meanwhile.
    pub async fn record_webhook_attempt(
        &self,
        id: Uuid,
        attempt: i32,
        outcome: &AttemptOutcome,
    ) -> Result<bool, StoreError> {
        let (state, status, error, response, next) = match outcome {
            AttemptOutcome::Delivered { status, response } => (
                DeliveryState::Delivered,
                Some(*status),
                None,
                response.as_deref(),
                None,
            ),
            AttemptOutcome::Retry {
                status,
                error,
                response,
                next_attempt_at,
            } => (
                DeliveryState::Pending,
                *status,
                Some(error.as_str()),
                response.as_deref(),
                Some(*next_attempt_at),
            ),
            AttemptOutcome::Failed {
                status,
                error,
                response,
            } => (
                DeliveryState::Failed,
                *status,
                Some(error.as_str()),
                response.as_deref(),
                None,
            ),
        };
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET state = $3, last_status = $4, last_error = $5, \
             last_response = $6, next_attempt_at = COALESCE($7, next_attempt_at), \
             delivered_at = CASE WHEN $3 = 'delivered' THEN now() END, \
             failed_at = CASE WHEN $3 = 'failed' THEN now() END \
             WHERE id = $1 AND attempts = $2 AND state = 'pending'",
        )
        .bind(id)
        .bind(attempt)
        .bind(state.as_str())
        .bind(status)
        .bind(excerpt(error))
        .bind(excerpt(response))
        .bind(next)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deliveries not yet delivered or given up.
    pub async fn pending_webhook_deliveries(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'")
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// Every live webhook's sealed secret (for re-wrapping).
    pub async fn webhook_secrets(&self) -> Result<Vec<SealedWebhookSecret>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, org_id, kek_id, wrap_nonce, wrapped_key, nonce, ciphertext \
             FROM webhooks WHERE deleted_at IS NULL ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SealedWebhookSecret {
                    id: row.try_get("id")?,
                    org_id: row.try_get("org_id")?,
                    sealed: sealed_from_nullable(row)?
                        .ok_or_else(|| StoreError::Corrupt("live webhook without secret".into()))?,
                })
            })
            .collect()
    }

    /// Replaces a live webhook's sealed secret by `sealed` (the same secret
    /// re-wrapped), only if it is still `old`.
    pub async fn rewrap_webhook_secret(
        &self,
        id: Uuid,
        old: &Sealed,
        sealed: &Sealed,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE webhooks SET kek_id = $2, wrap_nonce = $3, wrapped_key = $4 \
             WHERE id = $1 AND deleted_at IS NULL AND kek_id = $5 AND wrapped_key = $6",
        )
        .bind(id)
        .bind(&sealed.kek_id)
        .bind(&sealed.wrap_nonce)
        .bind(&sealed.wrapped_key)
        .bind(&old.kek_id)
        .bind(&old.wrapped_key)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_of_cloudevent_types() {
        assert_eq!(
            event_kind("tally.budget.threshold_crossed.v1"),
            Some("budget.threshold_crossed")
        );
        assert_eq!(event_kind("tally.ledger.posted.v1"), Some("ledger.posted"));
        assert_eq!(event_kind("tally.generation.completed.v1"), None);
    }

    #[test]
    fn excerpts_are_bounded_and_one_line() {
        let long = "x\n".repeat(1000);
        let e = excerpt(Some(&long)).unwrap();
        assert_eq!(e.chars().count(), MAX_EXCERPT_CHARS + 1);
        assert!(!e.contains('\n'));
        assert_eq!(excerpt(Some("ok")).as_deref(), Some("ok"));
    }
}
