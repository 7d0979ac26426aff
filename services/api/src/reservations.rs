//! `GET /v1/reservations?org_id=…[&state=held|settled|released|refused][&cursor=&limit=]`:
//! the holds of generation requests (newest first, cursor-paginated), and
//! `GET /v1/reservations/{request_id}` for one.
//!
//! Each reservation shows its worst-case `amount_usd` (null when the model's
//! price is dynamic), `state`, the OpenRouter `generation_id` once its
//! headers arrived, `expires_at`, what was debited at settlement
//! (`settled_usd`), the reason of a release, refusal or failure, and its
//! `holds` (one per budget, with the period it counts in).

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tally_money::{Cost, Usd};
use tally_store::{Reservation, ReservationState};

use crate::auth::Caller;
use crate::error::{or_not_found, ApiError};
use crate::extract::{ApiPath, Params};
use crate::openapi::{OrgQuery, UsdDoc};
use crate::pagination;
use crate::AppState;

/// Where a reservation stands.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ReservationState)]
#[allow(dead_code)]
pub(crate) enum ReservationStateDoc {
    Held,
    Settled,
    Released,
    Refused,
}

/// Filters and page of a reservation listing.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct ListQuery {
    /// Only reservations in this state.
    #[param(value_type = Option<ReservationStateDoc>)]
    state: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// What a reservation holds on one budget period.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Hold)]
pub(crate) struct HoldBody {
    budget_id: String,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    #[schema(value_type = UsdDoc)]
    amount_usd: Cost,
}

/// A reservation (the hold of a generation that is running).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Reservation)]
pub(crate) struct ReservationBody {
    request_id: String,
    org_id: String,
    agent_id: Option<String>,
    session_id: Option<String>,
    user_id: Option<String>,
    model: String,
    #[schema(value_type = Option<UsdDoc>)]
    amount_usd: Option<Cost>,
    max_output_tokens: u32,
    #[schema(value_type = ReservationStateDoc)]
    state: &'static str,
    generation_id: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    settled_at: Option<DateTime<Utc>>,
    #[serde(with = "tally_money::serde_usd::opt")]
    #[schema(value_type = Option<UsdDoc>)]
    settled_usd: Option<Usd>,
    released_at: Option<DateTime<Utc>>,
    release_reason: Option<String>,
    failure_reason: Option<String>,
    failure_message: Option<String>,
    refused_by: Option<String>,
    holds: Vec<HoldBody>,
}

impl From<Reservation> for ReservationBody {
    fn from(r: Reservation) -> Self {
        ReservationBody {
            request_id: r.request_id,
            org_id: r.org_id,
            agent_id: r.agent_id,
            session_id: r.session_id,
            user_id: r.user_id,
            model: r.model,
            amount_usd: r.amount_usd,
            max_output_tokens: r.max_output_tokens,
            state: r.state.as_str(),
            generation_id: r.generation_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
            expires_at: r.expires_at,
            settled_at: r.settled_at,
            settled_usd: r.settled_usd,
            released_at: r.released_at,
            release_reason: r.release_reason,
            failure_reason: r.failure_reason,
            failure_message: r.failure_message,
            refused_by: r.refused_by,
            holds: r
                .holds
                .into_iter()
                .map(|h| HoldBody {
                    budget_id: h.budget_id,
                    period_start: h.period_start,
                    period_end: h.period_end,
                    amount_usd: h.amount_usd,
                })
                .collect(),
        }
    }
}

/// One page of reservations.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ReservationList)]
pub(crate) struct ListBody {
    reservations: Vec<ReservationBody>,
    next_cursor: Option<String>,
}

/// `GET /v1/reservations`.
#[utoipa::path(
    get,
    path = "/v1/reservations",
    tag = "reservations",
    summary = "The organisation's reservations, newest first",
    params(OrgQuery, ListQuery),
    responses(
        (status = 200, description = "one page of reservations", body = ListBody),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`invalid_id`, `invalid_field` (`state`, `cursor`, `limit`)"),
    ),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Params,
) -> Result<Json<ListBody>, ApiError> {
    let params = params.only(&["org_id", "state", "cursor", "limit"])?;
    let org_id = caller.read_org(&state.store, params.get("org_id")).await?;
    let org_id = org_id.as_str();
    let wanted = match params.get("state") {
        None => None,
        Some(s) => Some(ReservationState::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "state",
                format!("state must be held, settled, released or refused, not {s:?}"),
            )
        })?),
    };
    let cursor = pagination::cursor(&params)?;
    if cursor
        .as_deref()
        .is_some_and(|c| c.chars().count() > tally_store::reservations::MAX_REQUEST_ID_LEN)
    {
        return Err(pagination::bad_cursor());
    }
    let limit = pagination::limit(&params)?;
    let (rows, next) = state
        .store
        .list_reservations(org_id, wanted, cursor.as_deref(), limit)
        .await?;
    Ok(Json(ListBody {
        reservations: rows.into_iter().map(ReservationBody::from).collect(),
        next_cursor: next,
    }))
}

/// `GET /v1/reservations/{request_id}`.
#[utoipa::path(
    get,
    path = "/v1/reservations/{request_id}",
    tag = "reservations",
    summary = "One reservation",
    params(("request_id" = String, Path, min_length = 1, max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$", description = "the generation.requested request id")),
    responses(
        (status = 200, description = "the reservation", body = ReservationBody),
        (status = 404, description = "`reservation_not_found`"),
        (status = 422, description = "`invalid_id`"),
    ),
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ReservationBody>, ApiError> {
    if id.is_empty()
        || id.chars().count() > tally_store::reservations::MAX_REQUEST_ID_LEN
        || id.chars().any(char::is_control)
    {
        return Err(ApiError::field(
            "invalid_id",
            "request_id",
            "request_id must be 1 to 256 characters without control characters",
        ));
    }
    let not_found = || {
        ApiError::not_found(
            "reservation_not_found",
            format!(
                "no reservation for request {:?}",
                tally_events::strict::excerpt(&id)
            ),
        )
    };
    let r = state
        .store
        .reservation(&id)
        .await
        .map_err(or_not_found(not_found))?;
    // Another organisation's reservation is 404, as if it did not exist.
    if !caller.sees(&r.org_id) {
        return Err(not_found());
    }
    Ok(Json(r.into()))
}
