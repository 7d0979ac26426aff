//! Webhooks over HTTP: receivers of an organisation's budget alerts and
//! ledger postings (delivered by `tally alerts`, see `tally-alerts`).
//!
//! | route | access | success | errors |
//! |---|---|---|---|
//! | `POST /v1/webhooks {url, events, description?, org_id?}` | admin | 201 `{id, org_id, url, events, description, created_at, secret}` | 409 `limit_exceeded`; 422 `webhook_url_invalid`, `webhook_url_scheme`, `webhook_url_credentials`, `webhook_url_too_long`, `webhook_host_unresolvable`, `webhook_target_forbidden`, `webhook_events_empty`, `unknown_webhook_event`, `duplicate_webhook_event`, `invalid_field` (description); 503 `secrets_key_missing` |
//! | `GET /v1/webhooks[?org_id&cursor&limit]` | admin | 200 `{webhooks, next_cursor}` (oldest first, never a secret) | 422 |
//! | `GET /v1/webhooks/{id}` | admin | 200 the webhook | 404 `webhook_not_found` |
//! | `DELETE /v1/webhooks/{id}` | admin | 200 the webhook with `deleted_at` | 404 `webhook_not_found` |
//! | `GET /v1/webhooks/{id}/deliveries[?cursor&limit]` | admin | 200 `{deliveries, next_cursor}` (newest first) | 404 `webhook_not_found`, 422 |
//!
//! The signing secret (`whsec_<base64 of 32 random bytes>`) appears only in
//! the 201 answer; it is stored sealed under `TALLY_SECRETS_KEY`. A
//! receiver URL is `http(s)`, without credentials, at most 2 048 bytes, and
//! (unless `TALLY_WEBHOOK_ALLOW_PRIVATE` is set) its host must resolve to
//! public addresses only. Another organisation's webhook is 404
//! `webhook_not_found`, as if it did not exist. Deleting fails the
//! webhook's pending deliveries and destroys its secret; its log stays in
//! the database but is no longer served.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tally_store::webhooks::{NewWebhook, Webhook, WebhookDelivery, EVENT_KINDS};
use tally_store::StoreError;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, Params};
use crate::openapi::{IdDoc, OrgQuery, UuidPageQuery};
use crate::pagination::Page;
use crate::respond;
use crate::AppState;

/// What the API needs to register webhooks.
#[derive(Debug, Clone, Default)]
pub struct WebhookSettings {
    /// Seals signing secrets (`None`: registration answers 503
    /// `secrets_key_missing`).
    pub keyring: Option<Arc<tally_secrets::Keyring>>,
    /// Accept receivers on private and loopback addresses
    /// (`TALLY_WEBHOOK_ALLOW_PRIVATE`).
    pub allow_private: bool,
}

/// An event kind a webhook can ask for.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = WebhookEvent)]
#[allow(dead_code)]
pub(crate) enum WebhookEventDoc {
    /// `tally.budget.threshold_crossed.v1`: a budget crossed a threshold.
    #[serde(rename = "budget.threshold_crossed")]
    BudgetThresholdCrossed,
    /// `tally.ledger.posted.v1`: a committed projector batch of one organisation.
    #[serde(rename = "ledger.posted")]
    LedgerPosted,
}

/// Where a delivery stands.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = WebhookDeliveryState)]
#[allow(dead_code)]
pub(crate) enum DeliveryStateDoc {
    /// Not yet acknowledged; attempts go on.
    Pending,
    /// The receiver answered 2xx: never sent again.
    Delivered,
    /// Given up (retry horizon passed, forbidden target, webhook deleted).
    Failed,
}

/// A new webhook of the caller's organisation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = WebhookCreate)]
pub(crate) struct CreateBody {
    /// The receiver: `http` or `https`, no credentials or fragment, at
    /// most 2 048 bytes; its host must resolve to public addresses unless
    /// `TALLY_WEBHOOK_ALLOW_PRIVATE` is set.
    #[schema(max_length = 2048)]
    url: String,
    /// The event kinds to deliver: at least one, each once.
    #[schema(value_type = Vec<WebhookEventDoc>, min_items = 1)]
    events: Vec<String>,
    /// For people: 1 to 500 characters, not blank, no control characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 500)]
    description: Option<String>,
    /// Must be the caller's organisation when given (the operator names it here).
    #[serde(default)]
    #[schema(value_type = Option<IdDoc>)]
    org_id: Option<String>,
}

/// A webhook as shown (never the secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Webhook)]
pub(crate) struct WebhookBody {
    id: Uuid,
    org_id: String,
    url: String,
    #[schema(value_type = Vec<WebhookEventDoc>)]
    events: Vec<String>,
    description: Option<String>,
    created_at: DateTime<Utc>,
    /// Only in the answer to `DELETE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<DateTime<Utc>>,
}

impl From<Webhook> for WebhookBody {
    fn from(w: Webhook) -> WebhookBody {
        WebhookBody {
            id: w.id,
            org_id: w.org_id,
            url: w.url,
            events: w.events,
            description: w.description,
            created_at: w.created_at,
            deleted_at: w.deleted_at,
        }
    }
}

/// A webhook just registered, with its signing secret (shown once).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = WebhookCreated)]
pub(crate) struct CreatedBody {
    #[serde(flatten)]
    webhook: WebhookBody,
    /// `whsec_` + base64 of 32 random bytes: the HMAC-SHA256 key (after
    /// base64-decoding the part after `whsec_`) of every delivery's
    /// `webhook-signature`. Shown only here, never again.
    #[schema(pattern = r"^whsec_[A-Za-z0-9+/]{43}=$")]
    secret: String,
}

/// One page of webhooks.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = WebhookList)]
pub(crate) struct ListBody {
    webhooks: Vec<WebhookBody>,
    next_cursor: Option<String>,
}

/// One delivery of the log: one event to one webhook.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = WebhookDelivery)]
pub(crate) struct DeliveryBody {
    /// The `webhook-id` header of every attempt.
    id: Uuid,
    /// The CloudEvent id of the event.
    event_id: String,
    #[schema(value_type = WebhookEventDoc)]
    event_type: String,
    #[schema(value_type = DeliveryStateDoc)]
    state: &'static str,
    attempts: i32,
    accepted_at: DateTime<Utc>,
    next_attempt_at: Option<DateTime<Utc>>,
    last_attempt_at: Option<DateTime<Utc>>,
    last_status: Option<i32>,
    last_error: Option<String>,
    last_response: Option<String>,
    delivered_at: Option<DateTime<Utc>>,
    failed_at: Option<DateTime<Utc>>,
}

impl From<WebhookDelivery> for DeliveryBody {
    fn from(d: WebhookDelivery) -> DeliveryBody {
        DeliveryBody {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            state: d.state.as_str(),
            attempts: d.attempts,
            accepted_at: d.accepted_at,
            next_attempt_at: d.next_attempt_at,
            last_attempt_at: d.last_attempt_at,
            last_status: d.last_status,
            last_error: d.last_error,
            last_response: d.last_response,
            delivered_at: d.delivered_at,
            failed_at: d.failed_at,
        }
    }
}

/// One page of a webhook's deliveries.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = WebhookDeliveryList)]
pub(crate) struct DeliveriesBody {
    deliveries: Vec<DeliveryBody>,
    next_cursor: Option<String>,
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "webhook_not_found",
        format!("no webhook with id {:?}", tally_events::strict::excerpt(id)),
    )
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| not_found(id))
}

fn store_error(id: &str) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound { what: "webhook" } => not_found(id),
        e => e.into(),
    }
}

/// The caller's webhook `id` (another organisation's is not found).
async fn load(state: &AppState, caller: &Caller, id: &str) -> Result<Webhook, ApiError> {
    state
        .store
        .webhook(parse_id(id)?, caller.org())
        .await
        .map_err(store_error(id))
}

/// Checks the event kinds: at least one, each known, none twice.
fn check_events(events: &[String]) -> Result<(), ApiError> {
    if events.is_empty() {
        return Err(ApiError::field(
            "webhook_events_empty",
            "events",
            format!(
                "events must name at least one of {}",
                EVENT_KINDS.join(", ")
            ),
        ));
    }
    for (i, e) in events.iter().enumerate() {
        if !EVENT_KINDS.contains(&e.as_str()) {
            return Err(ApiError::field(
                "unknown_webhook_event",
                format!("events[{i}]"),
                format!(
                    "unknown event {:?}; expected one of {}",
                    tally_events::strict::excerpt(e),
                    EVENT_KINDS.join(", ")
                ),
            ));
        }
        if events[..i].contains(e) {
            return Err(ApiError::field(
                "duplicate_webhook_event",
                format!("events[{i}]"),
                format!("event {e:?} is given twice"),
            ));
        }
    }
    Ok(())
}

/// The problem of a refused URL (422 naming `url`).
fn url_error(e: tally_alerts::AlertsError) -> ApiError {
    ApiError::field(e.code(), "url", e.to_string())
}

fn page_cursor(params: &Params) -> Result<(Page, Option<Uuid>), ApiError> {
    let page = Page::from_params(params)?;
    let cursor = page.uuid_cursor()?;
    Ok((page, cursor))
}

/// `POST /v1/webhooks` (admin).
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    summary = "Register a webhook; its signing secret is shown once",
    request_body = CreateBody,
    responses(
        (status = 201, description = "the webhook with its signing secret (shown once)", body = CreatedBody,
         headers(("Location" = String, description = "the webhook's URL"))),
        (status = 404, description = "`org_not_found`"),
        (status = 409, description = "`limit_exceeded` (`field`: `webhooks_per_org`)"),
        (status = 422, description = "`webhook_url_invalid`, `webhook_url_scheme`, `webhook_url_credentials`, `webhook_url_too_long`, `webhook_host_unresolvable`, `webhook_target_forbidden`, `webhook_events_empty`, `unknown_webhook_event`, `duplicate_webhook_event`, `invalid_field`, `invalid_id`"),
        (status = 503, description = "`secrets_key_missing`"),
    ),
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let org_id = caller
        .write_org(&state.store, body.org_id.as_deref())
        .await?;
    check_events(&body.events)?;
    let settings = &state.webhooks;
    let url = tally_alerts::target::check_target(&body.url, settings.allow_private)
        .await
        .map_err(url_error)?;
    let keyring = settings.keyring.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "secrets_key_missing",
            "TALLY_SECRETS_KEY is not set: webhook signing secrets cannot be stored",
        )
    })?;
    let id = Uuid::now_v7();
    let id_text = id.to_string();
    let secret = tally_alerts::signature::new_secret();
    let sealed = keyring.seal(
        &tally_store::webhooks::secret_context(&org_id, &id_text),
        &secret,
    );
    let webhook = state
        .store
        .create_webhook_within(
            &NewWebhook {
                id,
                org_id: org_id.clone(),
                url: url.to_string(),
                events: body.events,
                description: body.description,
                sealed_secret: sealed,
            },
            state.org_limits.max_webhooks,
        )
        .await?;
    tracing::info!(org_id = %org_id, webhook = %id, "webhook registered");
    let body = CreatedBody {
        webhook: webhook.into(),
        secret: secret.expose_secret().to_owned(),
    };
    Ok(respond::no_store(respond::created(
        body,
        &format!("/v1/webhooks/{id}"),
    )))
}

/// `GET /v1/webhooks` (admin).
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    summary = "The organisation's webhooks, oldest first (never a secret)",
    params(OrgQuery, UuidPageQuery),
    responses(
        (status = 200, description = "one page of webhooks", body = ListBody),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`invalid_id`, `invalid_field` (`cursor`, `limit`)"),
    ),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Params,
) -> Result<Json<ListBody>, ApiError> {
    let params = params.only(&["org_id", "cursor", "limit"])?;
    let org_id = caller.read_org(&state.store, params.get("org_id")).await?;
    let (page, after) = page_cursor(&params)?;
    let (hooks, next) = state
        .store
        .list_webhooks(&org_id, after, page.limit)
        .await?;
    Ok(Json(ListBody {
        webhooks: hooks.into_iter().map(WebhookBody::from).collect(),
        next_cursor: next.map(|n| n.to_string()),
    }))
}

/// `GET /v1/webhooks/{id}` (admin).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "One webhook (never its secret)",
    params(("id" = String, Path, description = "the webhook's id (a UUID)")),
    responses(
        (status = 200, description = "the webhook", body = WebhookBody),
        (status = 404, description = "`webhook_not_found`"),
    ),
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookBody>, ApiError> {
    Ok(Json(load(&state, &caller, &id).await?.into()))
}

/// `DELETE /v1/webhooks/{id}` (admin).
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    summary = "Delete a webhook: its pending deliveries fail, its secret is destroyed",
    params(("id" = String, Path, description = "the webhook's id (a UUID)")),
    responses(
        (status = 200, description = "the deleted webhook with `deleted_at`", body = WebhookBody),
        (status = 404, description = "`webhook_not_found`"),
    ),
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookBody>, ApiError> {
    let wid = parse_id(&id)?;
    let w = state
        .store
        .delete_webhook(wid, caller.org())
        .await
        .map_err(store_error(&id))?;
    tracing::info!(org_id = %w.org_id, webhook = %w.id, "webhook deleted");
    Ok(Json(w.into()))
}

/// `GET /v1/webhooks/{id}/deliveries` (admin).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    summary = "A webhook's deliveries, newest first: state, attempts, last answer",
    params(("id" = String, Path, description = "the webhook's id (a UUID)"), UuidPageQuery),
    responses(
        (status = 200, description = "one page of deliveries", body = DeliveriesBody),
        (status = 404, description = "`webhook_not_found`"),
        (status = 422, description = "`invalid_field` (`cursor`, `limit`)"),
    ),
)]
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    params: Params,
) -> Result<Json<DeliveriesBody>, ApiError> {
    let params = params.only(&["cursor", "limit"])?;
    let w = load(&state, &caller, &id).await?;
    let (page, before) = page_cursor(&params)?;
    let (rows, next) = state
        .store
        .webhook_deliveries(w.id, before, page.limit)
        .await?;
    Ok(Json(DeliveriesBody {
        deliveries: rows.into_iter().map(DeliveryBody::from).collect(),
        next_cursor: next.map(|n| n.to_string()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lists_are_checked() {
        let ev = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_events(&ev(&["budget.threshold_crossed"])).is_ok());
        assert!(check_events(&ev(&["ledger.posted", "budget.threshold_crossed"])).is_ok());
        assert_eq!(
            check_events(&[]).unwrap_err().code(),
            "webhook_events_empty"
        );
        assert_eq!(
            check_events(&ev(&["budget.alert"])).unwrap_err().code(),
            "unknown_webhook_event"
        );
        assert_eq!(
            check_events(&ev(&["ledger.posted", "ledger.posted"]))
                .unwrap_err()
                .code(),
            "duplicate_webhook_event"
        );
    }
}
