//! `GET /v1/generations/{generation_id}`: what a generation cost and how it
//! was booked.
//!
//! Answers 200 with `estimated_cost_usd`, `actual_cost_usd`, `debited_usd`
//! (what every matching budget carries), `basis` (`actual` | `estimate` |
//! `none`), `state` (`settled` | `provisional` | `unresolved` | `unpriced`,
//! or `pending` while only a cost fact arrived and the completed event has
//! not), and its journal `entries` in every budget (a page of them:
//! `?cursor=&limit=`, `next_cursor`); 404 `generation_not_found` for an id
//! the ledger has never seen, or one of another organisation
//! (indistinguishable).
//!
//! # Decisions
//!
//! * **`pending` is reported, not hidden.** A reconciled cost can arrive
//!   before the completed event (order does not matter, [money rule 4](tally_ledger#money-rules));
//!   such a generation exists but is not booked yet: `debited_usd` and
//!   `basis` are `null` and there are no entries.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tally_money::Cost;

use crate::auth::Caller;
use crate::error::{or_not_found, ApiError};
use crate::extract::{ApiPath, Params};
use crate::openapi::{BasisDoc, UsdDoc, UuidPageQuery};
use crate::pagination::Page;
use crate::wire::{basis_str, check_generation_id, EntryBody};
use crate::AppState;

/// Where a generation's booking stands.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = GenerationState)]
#[allow(dead_code)]
pub(crate) enum GenerationStateDoc {
    Settled,
    Provisional,
    Unresolved,
    Unpriced,
}

/// A generation as booked.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Generation)]
pub(crate) struct GenerationBody {
    generation_id: String,
    org_id: String,
    agent_id: Option<String>,
    session_id: Option<String>,
    user_id: Option<String>,
    model: Option<String>,
    provider: Option<String>,
    status: Option<String>,
    is_byok: bool,
    completed_at: Option<DateTime<Utc>>,
    #[schema(value_type = Option<UsdDoc>)]
    estimated_cost_usd: Option<Cost>,
    #[schema(value_type = Option<UsdDoc>)]
    actual_cost_usd: Option<Cost>,
    #[schema(value_type = Option<UsdDoc>)]
    debited_usd: Option<Cost>,
    #[schema(value_type = Option<BasisDoc>)]
    basis: Option<&'static str>,
    #[schema(value_type = GenerationStateDoc)]
    state: &'static str,
    unresolved_reason: Option<String>,
    updated_at: DateTime<Utc>,
    entries: Vec<EntryBody>,
    next_cursor: Option<String>,
}

/// `GET /v1/generations/{generation_id}`.
#[utoipa::path(
    get,
    path = "/v1/generations/{generation_id}",
    tag = "generations",
    summary = "A generation's costs, basis, state and (a page of) its ledger entries",
    params(
        ("generation_id" = String, Path, min_length = 1, max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$", description = "OpenRouter's generation id"),
        UuidPageQuery,
    ),
    responses(
        (status = 200, description = "the generation", body = GenerationBody),
        (status = 404, description = "`generation_not_found`"),
        (status = 422, description = "`invalid_id`, `invalid_field` (`cursor`, `limit`)"),
    ),
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    params: Params,
) -> Result<Json<GenerationBody>, ApiError> {
    let page = Page::from_params(&params.only(&["cursor", "limit"])?)?;
    let after = page.uuid_cursor()?;
    check_generation_id(&id)?;
    let not_found = || {
        ApiError::not_found(
            "generation_not_found",
            format!(
                "no generation with id {:?} is recorded",
                tally_events::strict::excerpt(&id)
            ),
        )
    };
    let g = state
        .store
        .generation_page(&id, after, page.limit)
        .await
        .map_err(or_not_found(not_found))?;
    if !caller.sees(&g.org_id) {
        return Err(not_found());
    }
    Ok(Json(GenerationBody {
        generation_id: g.generation_id,
        org_id: g.org_id,
        agent_id: g.agent_id,
        session_id: g.session_id,
        user_id: g.user_id,
        model: g.model,
        provider: g.provider,
        status: g.status,
        is_byok: g.is_byok,
        completed_at: g.completed_at,
        estimated_cost_usd: g.estimated_cost_usd,
        actual_cost_usd: g.actual_cost_usd,
        debited_usd: g.debited_usd,
        basis: basis_str(g.basis),
        state: g.state.as_str(),
        unresolved_reason: g.unresolved_reason,
        updated_at: g.updated_at,
        entries: g.entries.into_iter().map(EntryBody::from).collect(),
        next_cursor: g.next_entries_cursor.map(|c| c.to_string()),
    }))
}
