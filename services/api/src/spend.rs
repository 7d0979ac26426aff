//! `GET /v1/spend?[org_id=…&]from=…&to=…&group_by=model|agent|user|day`:
//! the caller's organisation's spend, aggregated.
//!
//! Counts the generations whose `completed_at` lies in `[from, to)` (event
//! time, [money rule 5](tally_budget#money-rules)) at their net debit, split into the parts booked
//! at actual and at estimated cost. Answers 200 with `total` and `groups`
//! (ordered by key; generations without an agent or user form the group
//! with key `null`; `day` keys are UTC dates `YYYY-MM-DD`).
//!
//! # Decisions
//!
//! * **`from`, `to` and `group_by` are required** (`org_id` defaults to
//!   the key's organisation) and `from < to`; the range may
//!   span at most [`MAX_RANGE_DAYS`] days, which bounds the work of one
//!   request (422 `invalid_range` / `range_too_large` naming `to`).
//! * **`from` lies in the event-time window** `[2020-01-01, now + 1 day]`
//!   (422 `time_out_of_range`); `to` is bounded by the range limit.
//! * **Groups are paged** (`cursor`, `limit`, `next_cursor`, in key order);
//!   `total` always covers every group of the range.
//! * **Days are UTC days.** Budgets have time zones, spend reports do not:
//!   one report, one calendar. Callers wanting local days query per day
//!   with local boundaries in `from`/`to`.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use tally_money::Usd;
use tally_store::queries::{GroupBy, SpendRow};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Params;
use crate::openapi::{OrgQuery, PageQuery, UsdDoc};
use crate::pagination::{decode_key, encode_key, Page};
use crate::wire::{parse_instant, parse_time};

/// The cursor after the group of generations without the grouped field
/// (it sorts last).
const NULL_GROUP_CURSOR: &str = "null";
use crate::AppState;

/// How spend is grouped.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = GroupBy)]
#[allow(dead_code)]
pub(crate) enum GroupByDoc {
    Model,
    Agent,
    User,
    Day,
}

/// The range and grouping of a spend query.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct SpendQuery {
    /// Start (inclusive), RFC 3339, not before 2020-01-01 (encode `+` as `%2B`).
    #[param(format = DateTime)]
    from: String,
    /// End (exclusive), RFC 3339, later than `from`, at most 400 days after it.
    #[param(format = DateTime)]
    to: String,
    #[param(value_type = GroupByDoc)]
    group_by: String,
}

/// Longest range one spend request may cover, in days.
pub const MAX_RANGE_DAYS: i64 = 400;

/// Spend figures.
#[derive(Serialize, Default, utoipa::ToSchema)]
pub(crate) struct SpendTotals {
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    spent_usd: Usd,
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    spent_actual_usd: Usd,
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    spent_estimated_usd: Usd,
    generations: i64,
}

/// One group's spend.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SpendGroup {
    /// The model, agent, user or day (`YYYY-MM-DD`, UTC); null for generations without one.
    key: Option<String>,
    #[serde(flatten)]
    totals: SpendTotals,
}

/// Aggregated spend.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Spend)]
pub(crate) struct SpendBody {
    org_id: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    #[schema(value_type = GroupByDoc)]
    group_by: &'static str,
    total: SpendTotals,
    groups: Vec<SpendGroup>,
    next_cursor: Option<String>,
}

fn add(total: &mut SpendTotals, r: &SpendRow) -> Option<()> {
    total.spent_usd = total.spent_usd.checked_add(r.spent_usd)?;
    total.spent_actual_usd = total.spent_actual_usd.checked_add(r.spent_actual_usd)?;
    total.spent_estimated_usd = total
        .spent_estimated_usd
        .checked_add(r.spent_estimated_usd)?;
    total.generations = total.generations.checked_add(r.generations)?;
    Some(())
}

/// `GET /v1/spend`.
#[utoipa::path(
    get,
    path = "/v1/spend",
    tag = "spend",
    summary = "Spend between two instants, grouped by model, agent, user or day",
    params(OrgQuery, SpendQuery, PageQuery),
    responses(
        (status = 200, description = "the totals and one page of groups", body = SpendBody),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`invalid_time`, `time_out_of_range`, `invalid_range`, `range_too_large`, `invalid_field` (`group_by`, `cursor`, `limit`)"),
    ),
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    params: Params,
) -> Result<Json<SpendBody>, ApiError> {
    let params = params.only(&["org_id", "from", "to", "group_by", "cursor", "limit"])?;
    let page = Page::from_params(&params)?;
    let after = match page.cursor.as_deref() {
        None => None,
        Some(NULL_GROUP_CURSOR) => Some(None),
        Some(c) => Some(Some(decode_key(c)?)),
    };
    let org_id = caller.read_org(&state.store, params.get("org_id")).await?;
    let org_id = org_id.as_str();
    let from = parse_instant("from", params.require("from")?)?;
    let to = parse_time("to", params.require("to")?)?;
    let group_by_text = params.require("group_by")?;
    let group_by = GroupBy::parse(group_by_text).ok_or_else(|| {
        ApiError::invalid(
            "group_by",
            format!(
                "group_by must be one of model, agent, user, day, not {:?}",
                tally_events::strict::excerpt(group_by_text)
            ),
        )
    })?;
    if from >= to {
        return Err(ApiError::field(
            "invalid_range",
            "to",
            "to must be later than from",
        ));
    }
    if to - from > TimeDelta::days(MAX_RANGE_DAYS) {
        return Err(ApiError::field(
            "range_too_large",
            "to",
            format!("from..to may span at most {MAX_RANGE_DAYS} days"),
        ));
    }
    let after_ref = after.as_ref().map(|a| a.as_deref());
    let (rows, all, more) = state
        .store
        .spend_page(org_id, from, to, group_by, after_ref, page.limit)
        .await?;
    let mut total = SpendTotals::default();
    add(&mut total, &all).ok_or_else(|| ApiError::internal("spend total overflows"))?;
    let next_cursor = if more {
        rows.last().map(|r| match &r.key {
            Some(k) => encode_key(k),
            None => NULL_GROUP_CURSOR.to_owned(),
        })
    } else {
        None
    };
    Ok(Json(SpendBody {
        org_id: org_id.to_owned(),
        from,
        to,
        group_by: group_by.as_str(),
        total,
        groups: rows
            .into_iter()
            .map(|r| SpendGroup {
                key: r.key,
                totals: SpendTotals {
                    spent_usd: r.spent_usd,
                    spent_actual_usd: r.spent_actual_usd,
                    spent_estimated_usd: r.spent_estimated_usd,
                    generations: r.generations,
                },
            })
            .collect(),
        next_cursor,
    }))
}
