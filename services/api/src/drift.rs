//! `GET /v1/providers/openrouter/drift`: tally's books held against
//! OpenRouter's own figures.
//!
//! OpenRouter's `GET /api/v1/key` reports what the key spent in the current
//! UTC day, week (from Monday) and month: `usage_*` (OpenRouter's charge;
//! for BYOK generations only its fee) and `byok_usage_*` (what upstream
//! providers billed BYOK generations directly). tally's actual cost of a
//! generation is the sum of both (money rule 8), so for every window the
//! drift is
//!
//! ```text
//! drift_usd = usage + byok_usage − Σ debited_usd of the generations completed in the window
//! ```
//!
//! Zero when every generation made with the key flowed through tally and is
//! booked at its actual cost; positive when spend happened outside tally's
//! sight (or is still booked below its actual); negative when tally booked
//! more (estimates above the actual). Each answer also sets the gauge
//! `tally_api_provider_drift_usd{provider="openrouter", org_id, window}`.
//!
//! Answers 200 `{provider, org_id, key_label, key_source, checked_at,
//! windows: [{window, start, end, provider_usage_usd,
//! provider_byok_usage_usd, provider_total_usd, booked_usd,
//! booked_actual_usd, booked_estimated_usd, generations,
//! generations_without_actual, drift_usd}]}`; 409 `provider_not_connected`
//! when the organisation has no OpenRouter connection; 502
//! `provider_key_rejected` (401/403 from OpenRouter) or
//! `provider_unavailable` (anything else that is not an answer); 503
//! `provider_unavailable` when the API runs without provider access.
//!
//! # Decisions
//!
//! * **Per organisation, with its own key.** Every generation of an
//!   organisation is made with the OpenRouter key it connected, so the
//!   comparison is that key's usage against that organisation's
//!   generations (`key_source: "connection"`). A key used outside tally
//!   (another app, a script) shows up as positive drift.
//! * **`org_id` is a label of the gauge.** Organisations are created by an
//!   operator, so their number is bounded by the deployment; the alert must
//!   say whose books disagree.
//! * **Windows by `completed_at`.** OpenRouter counts a generation when it
//!   ran; tally's closest instant is its `completed_at`. A generation that
//!   straddles midnight can move a cent between two daily windows for a
//!   moment; the weekly and monthly windows absorb it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tally_money::{Cost, Usd};
use tally_openrouter::{OpenRouterError, UsageWindow};

use crate::error::ApiError;
use crate::openapi::{OrgQuery, UsdDoc};
use crate::org_query::{OrgScope, ReadOrg};
use crate::AppState;

/// The drift of one window.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WindowDrift {
    /// `daily`, `weekly` or `monthly`.
    pub window: &'static str,
    /// Start of the window (UTC).
    pub start: DateTime<Utc>,
    /// End of the comparison: the instant of the check.
    pub end: DateTime<Utc>,
    /// OpenRouter's `usage_<window>`.
    #[schema(value_type = UsdDoc)]
    pub provider_usage_usd: Cost,
    /// OpenRouter's `byok_usage_<window>`.
    #[schema(value_type = UsdDoc)]
    pub provider_byok_usage_usd: Cost,
    /// Their sum: the actual cost of everything the key ran.
    #[schema(value_type = UsdDoc)]
    pub provider_total_usd: Cost,
    /// What tally booked for the generations completed in the window.
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    pub booked_usd: Usd,
    /// The part of it booked at actual cost.
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    pub booked_actual_usd: Usd,
    /// The part of it booked at the estimate.
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    pub booked_estimated_usd: Usd,
    /// Generations tally booked in the window.
    pub generations: i64,
    /// Of those, without an actual cost yet.
    pub generations_without_actual: i64,
    /// `provider_total_usd − booked_usd`.
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    pub drift_usd: Usd,
}

/// The answer of `GET /v1/providers/openrouter/drift`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DriftReport {
    /// Always `openrouter`.
    pub provider: &'static str,
    /// The organisation compared.
    pub org_id: String,
    /// OpenRouter's masked label of the key compared.
    pub key_label: Option<String>,
    /// Where the key comes from: `connection` (the organisation's own).
    pub key_source: &'static str,
    /// When the comparison was made.
    pub checked_at: DateTime<Utc>,
    /// One entry per window, shortest first.
    pub windows: Vec<WindowDrift>,
}

/// Compares OpenRouter's usage of `org_id`'s own key with its books, and
/// sets the drift gauge.
pub async fn check(state: &AppState, org_id: &str) -> Result<DriftReport, ApiError> {
    let Some(providers) = state.providers.as_ref() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_unavailable",
            "this API instance runs without provider access; drift cannot be checked",
        ));
    };
    let provider = providers.get(org_id).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_unavailable",
            format!(
                "the organisation's connection could not be read ({})",
                e.code()
            ),
        )
    })?;
    let Some(client) = provider.client.as_ref() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "provider_not_connected",
            format!("organisation {org_id} has no OpenRouter connection; connect one first"),
        ));
    };
    let usage = client.key_usage().await.map_err(|e| match e {
        OpenRouterError::Auth { .. } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "provider_key_rejected",
            format!("OpenRouter refused the organisation's key: {e}"),
        ),
        other => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "provider_unavailable",
            format!(
                "OpenRouter's key usage could not be read ({}): {other}",
                other.code()
            ),
        ),
    })?;
    let now = Utc::now();
    let mut windows = Vec::with_capacity(UsageWindow::ALL.len());
    for w in UsageWindow::ALL {
        let start = w.start(now);
        let booked = state.store.booked_between(org_id, start, now).await?;
        let provider = usage.window(w);
        let total = provider
            .usage
            .try_add(provider.byok_usage)
            .map_err(|_| ApiError::internal("provider usage overflows"))?;
        let drift = total
            .usd()
            .checked_sub(booked.booked_usd)
            .ok_or_else(|| ApiError::internal("drift overflows"))?;
        {
            let sample = drift.to_f64_lossy();
            state
                .metrics
                .provider_drift
                .with_label_values(&["openrouter", org_id, w.as_str()])
                .set(sample);
        }
        windows.push(WindowDrift {
            window: w.as_str(),
            start,
            end: now,
            provider_usage_usd: provider.usage,
            provider_byok_usage_usd: provider.byok_usage,
            provider_total_usd: total,
            booked_usd: booked.booked_usd,
            booked_actual_usd: booked.booked_actual_usd,
            booked_estimated_usd: booked.booked_estimated_usd,
            generations: booked.generations,
            generations_without_actual: booked.without_actual,
            drift_usd: drift,
        });
    }
    Ok(DriftReport {
        provider: "openrouter",
        org_id: org_id.to_owned(),
        key_label: usage.label,
        key_source: "connection",
        checked_at: now,
        windows,
    })
}

/// `GET /v1/providers/openrouter/drift`.
#[utoipa::path(
    get,
    path = "/v1/providers/openrouter/drift",
    tag = "providers",
    summary = "OpenRouter's usage of the organisation's key against tally's books, per window",
    params(OrgQuery),
    responses(
        (status = 200, description = "the drift per window", body = DriftReport),
        (status = 404, description = "`org_not_found`"),
        (status = 409, description = "`provider_not_connected`"),
        (status = 422, description = "`invalid_id`"),
        (status = 502, description = "`provider_key_rejected`, `provider_unavailable` (OpenRouter refused or failed)"),
        (status = 503, description = "`provider_unavailable` (this instance has no provider access)"),
    ),
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    OrgScope(org_id): ReadOrg,
) -> Result<Json<DriftReport>, ApiError> {
    check(&state, &org_id).await.map(Json)
}

/// Checks the drift of every connected organisation every `interval` so
/// the gauge stays current without requests, until `shutdown` turns true.
/// Failures are logged.
pub async fn refresh_periodically(
    state: AppState,
    interval: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match state.store.connections().await {
            Ok(conns) => {
                for org in conns
                    .into_iter()
                    .filter(|c| c.provider == tally_provider::OPENROUTER)
                    .map(|c| c.org_id)
                {
                    if let Err(e) = check(&state, &org).await {
                        tracing::warn!(org_id = %org, code = e.code(), "provider drift check failed");
                    }
                }
            }
            Err(e) => tracing::warn!(
                code = e.code(),
                "provider drift check: connections unreadable"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
