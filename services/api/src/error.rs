//! Errors as RFC 9457 problem details (`application/problem+json`).
//!
//! Every error the API returns — bad input, unknown ids, an unavailable
//! database, an unknown route, a timed-out request — is a [`Problem`] with a
//! stable `code` (snake_case) and a `type` URI derived from it
//! (`https://tally.dev/problems/<code with - for _>`), so clients branch on
//! `code` (or `type`) and show `detail` to people.
//!
//! | status | codes |
//! |---|---|
//! | 400 | `malformed_json`, `invalid_request`, `invalid_host`, `malformed_request` |
//! | 401 | `missing_api_key`, `malformed_api_key`, `invalid_api_key` (with `WWW-Authenticate: Bearer`) |
//! | 403 | `forbidden_role`, `org_mismatch` |
//! | 404 | `budget_not_found`, `generation_not_found`, `key_not_found`, `org_not_found`, `route_not_found`, `routing_profile_not_found`, `provider_not_connected` (DELETE), `webhook_not_found` |
//! | 405 | `method_not_allowed` |
//! | 409 | `conflict`, `org_exists`, `limit_exceeded` (naming the limit in `field`), `budget_archived`, `provider_not_connected` |
//! | 502 | `provider_unreachable` |
//! | 413 | `payload_too_large` |
//! | 414 | `uri_too_long` |
//! | 431 | `headers_too_large` |
//! | 415 | `unsupported_media_type` |
//! | 422 | `duplicate_key`, `control_character`, `time_out_of_range`, `unknown_field`, `missing_field`, `invalid_field`, `invalid_body`, `immutable_field`, `invalid_id`, `invalid_time`, `invalid_range`, `range_too_large`, the money codes of `tally_money::MoneyError` (`amount_not_string`, `invalid_amount`, `amount_too_precise`, `negative_amount`, `amount_out_of_range`) and the budget codes of `tally_budget::BudgetError` (`unknown_timezone`, `invalid_period_kind`, `invalid_enforcement`, `invalid_threshold`, `too_many_thresholds`, `not_a_period_start`, `invalid_scope`, `instant_out_of_range`) and the webhook codes (`webhook_url_invalid`, `webhook_url_scheme`, `webhook_url_credentials`, `webhook_url_too_long`, `webhook_host_unresolvable`, `webhook_target_forbidden`, `webhook_events_empty`, `unknown_webhook_event`, `duplicate_webhook_event`) |
//! | 500 | `internal_error`; `amount_overflow` (and the other money codes) when a stored figure cannot be given exactly — never rounded |
//! | 503 | `database_unavailable`, `transient_conflict`, `request_timeout`, `too_many_connections`, `secrets_key_missing`, `public_url_missing`, `provider_unavailable` |
//!
//! Input errors name the offending `field` (a JSON path such as
//! `scope.agent_id` or `thresholds_percent[2]`, or a query parameter).
//!
//! # Decisions
//!
//! * **Bounded answers.** A problem's `detail` is at most
//!   [`MAX_DETAIL_CHARS`] characters and its `field` at most 64: a
//!   10 000-character id gets a short 422, not a 10 KB echo.
//! * **Internal details stay in the logs.** A database or data error is
//!   logged with its cause; the client gets `internal_error` and no SQL.
//! * **Unavailable is 503 with `Retry-After`.** A lost database or a
//!   serialization conflict is temporary; clients should retry.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tally_store::StoreError;

/// Media type of problem responses.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Longest `detail` of a problem, in characters.
pub const MAX_DETAIL_CHARS: usize = 300;

/// Base of the problem `type` URIs.
pub const PROBLEM_TYPE_BASE: &str = "https://tally.dev/problems/";

/// An RFC 9457 problem details body, with tally's `code` and `field`
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// URI identifying the problem type (stable per `code`).
    #[serde(rename = "type")]
    #[schema(format = "uri")]
    pub type_: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// Explanation of this occurrence.
    #[schema(max_length = 301)]
    pub detail: String,
    /// Stable machine-readable code (snake_case).
    #[schema(pattern = "^[a-z0-9_]+$")]
    pub code: String,
    /// The offending input field or query parameter, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The `type` URI of a problem code.
pub fn problem_type(code: &str) -> String {
    format!("{PROBLEM_TYPE_BASE}{}", code.replace('_', "-"))
}

/// The title of a problem code (the same for every occurrence).
fn title(code: &str, status: StatusCode) -> &'static str {
    match code {
        "malformed_json" => "Malformed JSON body",
        "invalid_request" => "Invalid request",
        "unsupported_media_type" => "Unsupported media type",
        "payload_too_large" => "Request body too large",
        "unknown_field" => "Unknown field",
        "missing_field" => "Missing field",
        "immutable_field" => "Field cannot be changed",
        "invalid_body" => "Invalid request body",
        "invalid_id" => "Invalid identifier",
        "invalid_time" => "Invalid time",
        "invalid_range" => "Invalid time range",
        "range_too_large" => "Time range too large",
        "amount_not_string" => "Money must be a decimal string",
        "not_a_period_start" => "Not the start of a period",
        "budget_not_found" => "Budget not found",
        "key_not_found" => "API key not found",
        "org_not_found" => "Organisation not found",
        "org_exists" => "Organisation exists",
        "missing_api_key" => "API key required",
        "malformed_api_key" => "Malformed API key",
        "invalid_api_key" => "Invalid API key",
        "forbidden_role" => "Role not allowed",
        "org_mismatch" => "Organisation mismatch",
        "generation_not_found" => "Generation not found",
        "route_not_found" => "Not found",
        "method_not_allowed" => "Method not allowed",
        "conflict" => "Conflict",
        "database_unavailable" => "Database unavailable",
        "transient_conflict" => "Temporary conflict, retry",
        "request_timeout" => "Request timed out",
        "internal_error" => "Internal error",
        "duplicate_key" => "Duplicate field",
        "control_character" => "Control character in text",
        "time_out_of_range" => "Time outside the accepted window",
        "limit_exceeded" => "Limit reached",
        "budget_archived" => "Budget is archived",
        "invalid_host" => "Missing or repeated Host header",
        "uri_too_long" => "Request target too long",
        "headers_too_large" => "Request headers too large",
        "malformed_request" => "Malformed HTTP request",
        "too_many_connections" => "Too many connections",
        "secrets_key_missing" => "Secrets key not configured",
        "public_url_missing" => "Public URL not configured",
        "provider_key_rejected" => "Provider rejected the key",
        "provider_unreachable" => "Provider unreachable",
        "provider_not_connected" => "Provider not connected",
        "routing_profile_not_found" => "Routing profile not found",
        "webhook_not_found" => "Webhook not found",
        "webhook_url_invalid" => "Invalid webhook URL",
        "webhook_url_scheme" => "Webhook URL must be http or https",
        "webhook_url_credentials" => "Webhook URL must not carry credentials",
        "webhook_url_too_long" => "Webhook URL too long",
        "webhook_host_unresolvable" => "Webhook host does not resolve",
        "webhook_target_forbidden" => "Webhook target not allowed",
        "webhook_events_empty" => "No webhook events",
        "unknown_webhook_event" => "Unknown webhook event",
        "duplicate_webhook_event" => "Webhook event given twice",
        _ if status == StatusCode::UNPROCESSABLE_ENTITY => "Invalid field",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
}

/// An error answered as a problem response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    field: Option<String>,
    retry_after_secs: Option<u32>,
    challenge: Option<&'static str>,
}

impl ApiError {
    /// A problem with the given status, stable code and detail.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            field: None,
            retry_after_secs: None,
            challenge: None,
        }
    }

    /// Adds a `WWW-Authenticate` challenge (401 responses).
    pub fn with_challenge(mut self, challenge: &'static str) -> ApiError {
        self.challenge = Some(challenge);
        self
    }

    /// Names the offending field.
    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    /// A 422 naming `field`.
    pub fn field(
        code: &'static str,
        field: impl Into<String>,
        detail: impl Into<String>,
    ) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail).with_field(field)
    }

    /// A 422 `invalid_field`.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError::field("invalid_field", field, detail)
    }

    /// A 404: the resource does not exist (or is another organisation's).
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, detail)
    }

    /// A 404 for an unknown budget.
    pub fn budget_not_found(id: &str) -> ApiError {
        ApiError::not_found("budget_not_found", format!("no budget with id {id:?}"))
    }

    /// A 500 naming why a figure cannot be given exactly (a stored total
    /// past 10^10 USD, or a difference past it): the money code
    /// (`amount_overflow`, `amount_out_of_range`, `amount_too_precise`),
    /// never a rounded figure.
    pub fn money_not_exact(e: &tally_money::MoneyError) -> ApiError {
        tracing::error!(error = %e, code = e.code(), "money cannot be exact");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.code(),
            format!("the amount cannot be given exactly: {e}"),
        )
    }

    /// A 500 whose cause is logged, not returned.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; the cause is in the server log",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The problem body; `detail` and `field` are cut to a bounded length
    /// ([`MAX_DETAIL_CHARS`], [`tally_events::strict::EXCERPT_CHARS`]), so
    /// no answer repeats more than a short prefix of what a client sent.
    pub fn problem(&self) -> Problem {
        let detail = if self.detail.chars().count() > MAX_DETAIL_CHARS {
            let mut d: String = self.detail.chars().take(MAX_DETAIL_CHARS).collect();
            d.push('…');
            d
        } else {
            self.detail.clone()
        };
        Problem {
            type_: problem_type(self.code),
            title: title(self.code, self.status).to_owned(),
            status: self.status.as_u16(),
            detail,
            code: self.code.to_owned(),
            field: self.field.as_deref().map(tally_events::strict::excerpt),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl std::error::Error for ApiError {}

/// Maps a store error for a lookup by id: any `NotFound` becomes
/// `not_found()` (the problem naming the id), anything else converts as
/// usual.
pub(crate) fn or_not_found(
    not_found: impl FnOnce() -> ApiError,
) -> impl FnOnce(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound { .. } => not_found(),
        e => e.into(),
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let unavailable = |code, detail: String| {
            tracing::warn!(error = %detail, code, "store unavailable");
            let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, detail);
            err.retry_after_secs = Some(1);
            err
        };
        match e {
            StoreError::NotFound { what: "budget" } => ApiError::new(
                StatusCode::NOT_FOUND,
                "budget_not_found",
                "budget not found",
            ),
            StoreError::NotFound { what: "generation" } => ApiError::new(
                StatusCode::NOT_FOUND,
                "generation_not_found",
                "generation not found",
            ),
            StoreError::NotFound { what: "key" } => {
                ApiError::new(StatusCode::NOT_FOUND, "key_not_found", "API key not found")
            }
            StoreError::NotFound { what: "org" } => ApiError::new(
                StatusCode::NOT_FOUND,
                "org_not_found",
                "organisation not found",
            ),
            StoreError::Invalid { field, reason } => ApiError::invalid(field, reason),
            StoreError::Conflict(detail) => {
                tracing::info!(%detail, "store conflict");
                ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "the request conflicts with stored state",
                )
            }
            StoreError::LimitExceeded { limit, max } => ApiError::new(
                StatusCode::CONFLICT,
                "limit_exceeded",
                format!(
                    "the organisation already has {max} (the {limit} limit); \
                     archive, delete or revoke some first"
                ),
            )
            .with_field(limit),
            StoreError::Archived { what } => ApiError::new(
                StatusCode::CONFLICT,
                "budget_archived",
                format!("the {what} is archived and can no longer be changed"),
            ),
            StoreError::Unavailable(_) => unavailable(
                "database_unavailable",
                "the database is unavailable; retry later".to_owned(),
            ),
            StoreError::Transient(_) => unavailable(
                "transient_conflict",
                "a concurrent change conflicted; retry".to_owned(),
            ),
            StoreError::Money(m) => ApiError::money_not_exact(&m),
            other => ApiError::internal(other),
        }
    }
}

/// A problem response for `err`.
pub fn problem_response(err: &ApiError) -> Response {
    let body = serde_json::to_vec(&err.problem()).unwrap_or_default();
    let mut resp = (err.status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
    );
    if let Some(secs) = err.retry_after_secs {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(challenge) = err.challenge {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem_response(&self)
    }
}

/// Whether a response already carries a problem body.
pub(crate) fn is_problem(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_CONTENT_TYPE))
}

/// Middleware: turns every error response that is not yet a problem (axum's
/// 404/405, the body limit's 413, the timeout's 503, ...) into one, keeping
/// its status, headers (such as `Allow`) and extensions. No plain-text
/// error reaches a client; the OAuth callback's HTML pages (meant for a
/// person's browser) are left as they are.
pub(crate) async fn problems_only(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || is_problem(&resp)
        || resp.extensions().get::<crate::providers::Page>().is_some()
    {
        return resp;
    }
    let (code, detail): (&'static str, &str) = match status {
        StatusCode::NOT_FOUND => ("route_not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "the route does not support this method (see the Allow header)",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "the request body must be application/json",
        ),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => (
            "request_timeout",
            "the request took too long and was abandoned; retry later",
        ),
        s if s.is_server_error() => ("internal_error", "internal error"),
        _ => ("invalid_request", "the request is invalid"),
    };
    let (parts, _) = resp.into_parts();
    let mut fresh = problem_response(&ApiError::new(status, code, detail));
    // Keep the extensions (the matched route for the metrics, among others).
    *fresh.extensions_mut() = parts.extensions;
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fresh.headers_mut().append(name.clone(), value.clone());
        }
    }
    fresh
}
