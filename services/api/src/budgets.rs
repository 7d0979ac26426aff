//! Budget endpoints: create, list, get, change, archive, past periods,
//! the journal, and the pre-flight check.
//!
//! | route | success |
//! |---|---|
//! | `POST /v1/budgets` | 201 + `Location`, the budget with `current_period` and `booked_generations` |
//! | `GET /v1/budgets[?org_id=…][&include_archived=true][&cursor=&limit=]` | 200 `{budgets: [...], next_cursor}` |
//! | `GET /v1/budgets/{id}` | 200 the budget with `current_period` |
//! | `GET /v1/budgets/{id}/periods/{start}` | 200 the period starting at `start` |
//! | `PATCH /v1/budgets/{id}` | 200 the changed budget |
//! | `DELETE /v1/budgets/{id}` | 200 the archived budget (`archived_at` set) |
//! | `GET /v1/budgets/{id}/entries?cursor=&limit=` | 200 `{entries, next_cursor}` |
//! | `POST /v1/budgets/check[?cursor=&limit=]` | 200 `{allowed, blocking_budget, budgets, next_cursor}` |
//!
//! Lists are pages (see the pagination module); `allowed` and
//! `blocking_budget` of a check always count every matching budget, only
//! its `budgets` details are paged. Past `TALLY_MAX_BUDGETS_PER_ORG` live
//! budgets a creation is 409 `limit_exceeded`; a `PATCH` of an archived
//! budget is 409 `budget_archived`; a repeated `DELETE` changes nothing.
//!
//! The organisation is the caller's (see `auth`): `org_id` in a body or
//! query is optional, and a budget of another organisation is 404
//! `budget_not_found` on every route, exactly as an unknown id.
//!
//! # Decisions
//!
//! * **Enforcement defaults to `hard`.** The contract names no default; a budget
//!   exists to cap spend, so one created without saying otherwise blocks
//!   when exhausted. Alert-only budgets say `"enforcement": "soft"`.
//! * **`scope` is required** (`{}` for the whole organisation): a forgotten
//!   scope would silently make a budget count every generation of the
//!   organisation.
//! * **Scope, period, time zone and organisation are immutable.** Changing
//!   them would move money already booked between budgets and periods, and a
//!   replay could not reproduce the result; `PATCH` refuses them with
//!   `immutable_field` (create a new budget and archive the old one).
//! * **Only hard budgets block, and holds count.** The check reports every
//!   matching budget; a hard budget blocks when its spend plus the holds of
//!   the generations running now (`reserved_usd`) reach its limit (nothing
//!   is available); an exhausted soft budget shows `exhausted: true` but
//!   leaves `allowed` true. A check that omits a scope field is not matched by budgets that
//!   set it (see `tally_store::queries`).

use std::str::FromStr;

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use chrono::Utc;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};
use tally_budget::{
    parse_timezone, period_starting_at, validate_thresholds, Enforcement, PeriodKind, Scope,
    DEFAULT_THRESHOLDS,
};
use tally_money::Cost;
use tally_store::ledger::PostingOptions;
use tally_store::queries::CheckScope;
use tally_store::{Budget, BudgetPatch, NewBudget};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{or_not_found, ApiError};
use crate::extract::{ApiJson, ApiPath, Params};
use crate::openapi::{
    BoolTextDoc, EnforcementDoc, IdDoc, OrgQuery, PageQuery, PeriodKindDoc, ScopeDoc, UsdAmountDoc,
    UsdDoc,
};
use crate::pagination::{self, Page};
use crate::respond;
use crate::wire::{
    check_id, check_text, parse_money, parse_time, wholes, BudgetBody, EntryBody, PeriodBody, Whole,
};
use crate::AppState;

/// Longest budget name, in characters.
const MAX_NAME_CHARS: usize = 200;

fn default_timezone() -> String {
    "UTC".to_owned()
}

/// A new budget.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BudgetCreate)]
pub(crate) struct CreateBody {
    /// Must be the caller's organisation when given (the operator names it here).
    #[serde(default)]
    #[schema(value_type = Option<IdDoc>)]
    org_id: Option<String>,
    /// 1 to 200 characters, not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    #[serde(deserialize_with = "tally_events::strict::object_only")]
    #[schema(value_type = ScopeDoc)]
    scope: Scope,
    #[schema(value_type = PeriodKindDoc)]
    period: String,
    /// IANA time zone of the periods (default `UTC`).
    #[serde(default = "default_timezone")]
    #[schema(value_type = crate::openapi::TimezoneDoc)]
    timezone: String,
    #[schema(value_type = UsdAmountDoc)]
    limit_usd: serde_json::Value,
    /// Alert thresholds, percent of the limit, each 1 to 1000, at most 10
    /// distinct (default `[50, 80, 100]`).
    #[serde(default)]
    #[schema(max_items = 10, value_type = Option<Vec<crate::openapi::ThresholdDoc>>)]
    thresholds_percent: Option<Vec<Whole>>,
    /// Default `hard`.
    #[serde(default)]
    #[schema(value_type = Option<EnforcementDoc>)]
    enforcement: Option<String>,
    /// Whether generations of models without a price are admitted (default false).
    #[serde(default)]
    allow_unpriced_models: Option<bool>,
}

/// Whether a field was present in the body, whatever its value.
#[derive(Debug, Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Present, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(Present(true))
    }
}

/// A change to a budget: the fields given change. `id`, `org_id`,
/// `scope`, `period` and `timezone` cannot change (422 `immutable_field`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BudgetPatch)]
pub(crate) struct PatchBody {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<UsdAmountDoc>)]
    limit_usd: Option<serde_json::Value>,
    #[serde(default)]
    #[schema(max_items = 10, value_type = Option<Vec<crate::openapi::ThresholdDoc>>)]
    thresholds_percent: Option<Vec<Whole>>,
    #[serde(default)]
    #[schema(value_type = Option<EnforcementDoc>)]
    enforcement: Option<String>,
    #[serde(default)]
    allow_unpriced_models: Option<bool>,
    // Immutable: recognised only to refuse them by name.
    #[serde(default)]
    #[schema(ignore)]
    id: Present,
    #[serde(default)]
    #[schema(ignore)]
    org_id: Present,
    #[serde(default)]
    #[schema(ignore)]
    scope: Present,
    #[serde(default)]
    #[schema(ignore)]
    period: Present,
    #[serde(default)]
    #[schema(ignore)]
    timezone: Present,
}

/// The scope of a generation about to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BudgetCheck)]
pub(crate) struct CheckBody {
    #[serde(default)]
    #[schema(value_type = Option<IdDoc>)]
    org_id: Option<String>,
    #[serde(default)]
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    agent_id: Option<String>,
    #[serde(default)]
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    session_id: Option<String>,
    #[serde(default)]
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    user_id: Option<String>,
    #[serde(default)]
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    model: Option<String>,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    check_text("name", name)?;
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid(
            "name",
            format!("name must be 1 to {MAX_NAME_CHARS} characters, not blank"),
        ));
    }
    Ok(())
}

fn parse_enforcement(s: &str) -> Result<Enforcement, ApiError> {
    Enforcement::from_str(s).map_err(|e| ApiError::field(e.code(), "enforcement", e.to_string()))
}

fn check_thresholds(t: &[u32]) -> Result<Vec<u32>, ApiError> {
    // The list as given is bounded too (the document says at most 10
    // items): eleven entries with a repeat are refused, not deduplicated.
    if t.len() > tally_budget::MAX_THRESHOLDS {
        return Err(ApiError::field(
            "too_many_thresholds",
            "thresholds_percent",
            format!(
                "{} thresholds given; at most {} are allowed",
                t.len(),
                tally_budget::MAX_THRESHOLDS
            ),
        ));
    }
    validate_thresholds(t)
        .map_err(|e| ApiError::field(e.code(), "thresholds_percent", e.to_string()))
}

fn check_scope(scope: &Scope) -> Result<(), ApiError> {
    for (field, value) in [
        ("scope.agent_id", &scope.agent_id),
        ("scope.session_id", &scope.session_id),
        ("scope.user_id", &scope.user_id),
        ("scope.model", &scope.model),
    ] {
        if let Some(v) = value {
            check_text(field, v)?;
        }
    }
    scope.validate().map_err(|e| {
        let field = match &e {
            tally_budget::BudgetError::InvalidScope { field, .. } => format!("scope.{field}"),
            _ => "scope".to_owned(),
        };
        ApiError::field(e.code(), field, e.to_string())
    })
}

/// Loads the budget and its current period.
async fn budget_body(state: &AppState, b: Budget) -> Result<BudgetBody, ApiError> {
    let mut periods = state
        .store
        .periods_at(std::slice::from_ref(&b), Utc::now())
        .await?;
    let (period, totals) = periods
        .pop()
        .ok_or_else(|| ApiError::internal("no period for a budget"))?;
    BudgetBody::new(b, period, totals)
}

/// Loads a budget the caller may see; another organisation's is 404 as
/// if it did not exist.
async fn load(state: &AppState, caller: &Caller, id: &str) -> Result<Budget, ApiError> {
    check_id("id", id)?;
    let b = state
        .store
        .get_budget(id)
        .await
        .map_err(or_not_found(|| ApiError::budget_not_found(id)))?;
    if !caller.sees(&b.org_id) {
        return Err(ApiError::budget_not_found(id));
    }
    Ok(b)
}

/// `POST /v1/budgets`.
#[utoipa::path(
    post,
    path = "/v1/budgets",
    tag = "budgets",
    summary = "Create a budget (books the recorded generations in its scope)",
    request_body = CreateBody,
    responses(
        (status = 201, description = "the budget with its current period and `booked_generations`", body = BudgetBody,
         headers(("Location" = String, description = "the budget's URL"))),
        (status = 404, description = "`org_not_found`"),
        (status = 409, description = "`limit_exceeded` (`field`: `max_budgets`)"),
        (status = 422, description = "`invalid_id`, `amount_not_string`, `invalid_amount`, `amount_too_precise`, `negative_amount`, `amount_out_of_range`, `unknown_timezone`, `invalid_period_kind`, `invalid_enforcement`, `invalid_threshold`, `too_many_thresholds`, `invalid_scope`"),
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
    check_name(&body.name)?;
    check_scope(&body.scope)?;
    let period = PeriodKind::from_str(&body.period)
        .map_err(|e| ApiError::field(e.code(), "period", e.to_string()))?;
    parse_timezone(&body.timezone)
        .map_err(|e| ApiError::field(e.code(), "timezone", e.to_string()))?;
    let limit_usd = parse_money("limit_usd", &body.limit_usd)?;
    let thresholds = check_thresholds(
        &body
            .thresholds_percent
            .as_deref()
            .map_or_else(|| DEFAULT_THRESHOLDS.to_vec(), wholes),
    )?;
    let enforcement = match &body.enforcement {
        Some(e) => parse_enforcement(e)?,
        None => Enforcement::Hard,
    };
    let nb = NewBudget {
        org_id,
        name: body.name,
        scope: body.scope,
        period,
        timezone: body.timezone,
        limit_usd,
        thresholds,
        enforcement,
        allow_unpriced_models: body.allow_unpriced_models.unwrap_or(false),
    };
    let opts = PostingOptions {
        prefix: state.prefix.clone(),
        source: "tally/api".to_owned(),
        publish: true,
    };
    let (budget, booked) = state
        .store
        .create_budget_within(nb, &opts, Some(state.org_limits.max_budgets))
        .await?;
    tracing::info!(budget_id = %budget.id, org_id = %budget.org_id, booked, "budget created");
    let location = format!("/v1/budgets/{}", budget.id);
    let mut body = budget_body(&state, budget).await?;
    body.booked_generations = Some(booked);
    Ok(respond::created(body, &location))
}

/// One page of budgets.
#[derive(Serialize, ToSchema)]
#[schema(as = BudgetList)]
pub(crate) struct ListBody {
    budgets: Vec<BudgetBody>,
    /// Give it as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// `include_archived` of a budget listing.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct ArchivedQuery {
    /// Whether archived budgets are listed too (default false).
    #[param(value_type = Option<BoolTextDoc>)]
    include_archived: Option<String>,
}

/// `GET /v1/budgets?org_id=…&include_archived=…`.
#[utoipa::path(
    get,
    path = "/v1/budgets",
    tag = "budgets",
    summary = "List the organisation's budgets",
    params(OrgQuery, ArchivedQuery, PageQuery),
    responses(
        (status = 200, description = "one page of budgets, each with its current period", body = ListBody),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`invalid_id`"),
    ),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Params,
) -> Result<Json<ListBody>, ApiError> {
    let params = params.only(&["org_id", "include_archived", "cursor", "limit"])?;
    let page = Page::from_params(&params)?;
    let org_id = caller.read_org(&state.store, params.get("org_id")).await?;
    let org_id = org_id.as_str();
    let include_archived = match params.get("include_archived") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "include_archived",
                format!("include_archived must be true or false, not {other:?}"),
            ))
        }
    };
    let (budgets, next_cursor) = state
        .store
        .list_budgets_page(org_id, include_archived, page.cursor.as_deref(), page.limit)
        .await?;
    let periods = state.store.periods_at(&budgets, Utc::now()).await?;
    Ok(Json(ListBody {
        next_cursor,
        budgets: budgets
            .into_iter()
            .zip(periods)
            .map(|(b, (p, t))| BudgetBody::new(b, p, t))
            .collect::<Result<_, _>>()?,
    }))
}

/// `GET /v1/budgets/{id}`.
#[utoipa::path(
    get,
    path = "/v1/budgets/{id}",
    tag = "budgets",
    summary = "A budget with its current period",
    params(("id" = IdDoc, Path, description = "the budget's id")),
    responses(
        (status = 200, description = "the budget", body = BudgetBody),
        (status = 404, description = "`budget_not_found`"),
        (status = 422, description = "`invalid_id`"),
    ),
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BudgetBody>, ApiError> {
    let b = load(&state, &caller, &id).await?;
    Ok(Json(budget_body(&state, b).await?))
}

/// One period of a budget.
#[derive(Serialize, ToSchema)]
#[schema(as = BudgetPeriod)]
pub(crate) struct PeriodResponse {
    budget_id: String,
    #[schema(value_type = UsdDoc)]
    limit_usd: Cost,
    current: bool,
    #[serde(flatten)]
    period: PeriodBody,
}

/// `GET /v1/budgets/{id}/periods/{start}`.
#[utoipa::path(
    get,
    path = "/v1/budgets/{id}/periods/{start}",
    tag = "budgets",
    summary = "A past (or the current) period of a budget",
    params(
        ("id" = IdDoc, Path, description = "the budget's id"),
        ("start" = String, Path, format = DateTime, description = "the period's start (RFC 3339)"),
    ),
    responses(
        (status = 200, description = "the period's figures", body = PeriodResponse),
        (status = 404, description = "`budget_not_found`"),
        (status = 422, description = "`invalid_id`, `invalid_time`, `not_a_period_start`, `instant_out_of_range`"),
    ),
)]
pub(crate) async fn period(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, start)): ApiPath<(String, String)>,
) -> Result<Json<PeriodResponse>, ApiError> {
    let b = load(&state, &caller, &id).await?;
    let start = parse_time("start", &start)?;
    let period = period_starting_at(b.period, b.tz, start)
        .map_err(|e| ApiError::field(e.code(), "start", e.to_string()))?;
    let totals = state.store.budget_period(&b, period).await?;
    Ok(Json(PeriodResponse {
        current: period.contains(Utc::now()),
        period: PeriodBody::new(b.limit_usd, period, totals)?,
        limit_usd: b.limit_usd,
        budget_id: b.id,
    }))
}

/// `PATCH /v1/budgets/{id}`.
#[utoipa::path(
    patch,
    path = "/v1/budgets/{id}",
    tag = "budgets",
    summary = "Change a budget's name, limit, thresholds or enforcement",
    params(("id" = IdDoc, Path, description = "the budget's id")),
    request_body = PatchBody,
    responses(
        (status = 200, description = "the changed budget", body = BudgetBody),
        (status = 404, description = "`budget_not_found`"),
        (status = 409, description = "`budget_archived`"),
        (status = 422, description = "`immutable_field`, `invalid_id`, the money codes, `invalid_enforcement`, `invalid_threshold`, `too_many_thresholds`"),
    ),
)]
pub(crate) async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PatchBody>,
) -> Result<Json<BudgetBody>, ApiError> {
    // A budget's organisation never changes, so checking it first is safe.
    load(&state, &caller, &id).await?;
    for (field, present) in [
        ("id", &body.id),
        ("org_id", &body.org_id),
        ("scope", &body.scope),
        ("period", &body.period),
        ("timezone", &body.timezone),
    ] {
        if present.0 {
            return Err(ApiError::field(
                "immutable_field",
                field,
                format!(
                    "{field} cannot be changed after creation (it would move booked money); \
                     create a new budget and archive this one"
                ),
            ));
        }
    }
    if let Some(name) = &body.name {
        check_name(name)?;
    }
    let patch = BudgetPatch {
        name: body.name,
        limit_usd: match &body.limit_usd {
            Some(v) => Some(parse_money("limit_usd", v)?),
            None => None,
        },
        thresholds: match &body.thresholds_percent {
            Some(t) => Some(check_thresholds(&wholes(t))?),
            None => None,
        },
        enforcement: match &body.enforcement {
            Some(e) => Some(parse_enforcement(e)?),
            None => None,
        },
        allow_unpriced_models: body.allow_unpriced_models,
    };
    let b = state
        .store
        .update_budget(&id, patch)
        .await
        .map_err(or_not_found(|| ApiError::budget_not_found(&id)))?;
    tracing::info!(budget_id = %b.id, "budget changed");
    Ok(Json(budget_body(&state, b).await?))
}

/// `DELETE /v1/budgets/{id}`: archives.
#[utoipa::path(
    delete,
    path = "/v1/budgets/{id}",
    tag = "budgets",
    summary = "Archive a budget (its history stays; repeating changes nothing)",
    params(("id" = IdDoc, Path, description = "the budget's id")),
    responses(
        (status = 200, description = "the archived budget (`archived_at` set)", body = BudgetBody),
        (status = 404, description = "`budget_not_found`"),
        (status = 422, description = "`invalid_id`"),
    ),
)]
pub(crate) async fn archive(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BudgetBody>, ApiError> {
    load(&state, &caller, &id).await?;
    let b = state
        .store
        .archive_budget(&id)
        .await
        .map_err(or_not_found(|| ApiError::budget_not_found(&id)))?;
    tracing::info!(budget_id = %b.id, "budget archived");
    Ok(Json(budget_body(&state, b).await?))
}

/// One page of a budget's ledger entries.
#[derive(Serialize, ToSchema)]
#[schema(as = EntryList)]
pub(crate) struct EntriesBody {
    budget_id: String,
    entries: Vec<EntryBody>,
    next_cursor: Option<String>,
}

/// `GET /v1/budgets/{id}/entries?cursor=&limit=`.
#[utoipa::path(
    get,
    path = "/v1/budgets/{id}/entries",
    tag = "budgets",
    summary = "A budget's ledger entries, newest first",
    params(("id" = IdDoc, Path, description = "the budget's id"), crate::openapi::UuidPageQuery),
    responses(
        (status = 200, description = "one page of entries", body = EntriesBody),
        (status = 404, description = "`budget_not_found`"),
        (status = 422, description = "`invalid_id`, `invalid_field` (`cursor`, `limit`)"),
    ),
)]
pub(crate) async fn entries(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    params: Params,
) -> Result<Json<EntriesBody>, ApiError> {
    let params = params.only(&["cursor", "limit"])?;
    let cursor = pagination::uuid_cursor(&params)?;
    let limit = pagination::limit(&params)?;
    let b = load(&state, &caller, &id).await?;
    let (rows, next) = state.store.budget_entries(&b.id, cursor, limit).await?;
    Ok(Json(EntriesBody {
        budget_id: b.id,
        entries: rows.into_iter().map(EntryBody::from).collect(),
        next_cursor: next.map(|c| c.to_string()),
    }))
}

/// A matching budget in a check.
#[derive(Clone, Serialize, ToSchema)]
pub(crate) struct BudgetStatus {
    id: String,
    name: String,
    #[schema(value_type = ScopeDoc)]
    scope: Scope,
    #[schema(value_type = EnforcementDoc)]
    enforcement: Enforcement,
    #[schema(value_type = UsdDoc)]
    limit_usd: Cost,
    blocks: bool,
    period: PeriodBody,
}

/// Whether a generation in the scope may run now.
#[derive(Serialize, ToSchema)]
#[schema(as = BudgetCheckResult)]
pub(crate) struct CheckResponse {
    allowed: bool,
    blocking_budget: Option<BudgetStatus>,
    budgets: Vec<BudgetStatus>,
    next_cursor: Option<String>,
}

/// `POST /v1/budgets/check`.
#[utoipa::path(
    post,
    path = "/v1/budgets/check",
    tag = "budgets",
    summary = "Whether a new generation in a scope is allowed, and which budget blocks it",
    params(PageQuery),
    request_body = CheckBody,
    responses(
        (status = 200, description = "the decision and one page of matching budgets", body = CheckResponse),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`invalid_id`, `control_character`, `invalid_field` (`cursor`, `limit`)"),
    ),
)]
pub(crate) async fn check(
    State(state): State<AppState>,
    caller: Caller,
    params: Params,
    ApiJson(body): ApiJson<CheckBody>,
) -> Result<Json<CheckResponse>, ApiError> {
    let page = Page::from_params(&params.only(&["cursor", "limit"])?)?;
    for (field, value) in [
        ("agent_id", &body.agent_id),
        ("session_id", &body.session_id),
        ("user_id", &body.user_id),
        ("model", &body.model),
    ] {
        if let Some(v) = value {
            check_text(field, v)?;
        }
    }
    let org_id = caller
        .read_org(&state.store, body.org_id.as_deref())
        .await?;
    let scope = CheckScope {
        agent_id: body.agent_id,
        session_id: body.session_id,
        user_id: body.user_id,
        model: body.model,
    };
    let matching = state
        .store
        .check_budgets(&org_id, &scope, Utc::now())
        .await?;
    let budgets: Vec<BudgetStatus> = matching
        .into_iter()
        .map(|(b, totals, period)| {
            let committed = totals
                .spent_usd
                .try_add(totals.reserved_usd)
                .map_err(|e| ApiError::money_not_exact(&e))?;
            Ok(BudgetStatus {
                blocks: b.enforcement.blocks(b.limit_usd, committed),
                period: PeriodBody::new(b.limit_usd, period, totals)?,
                id: b.id,
                name: b.name,
                scope: b.scope,
                enforcement: b.enforcement,
                limit_usd: b.limit_usd,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    let blocking_budget = budgets.iter().find(|s| s.blocks).cloned();
    // The decision counts every matching budget; the details are one page
    // of them, in id order.
    let mut details: Vec<BudgetStatus> = budgets
        .into_iter()
        .filter(|b| page.cursor.as_deref().is_none_or(|c| b.id.as_str() > c))
        .take(
            usize::try_from(page.limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        )
        .collect();
    let next_cursor = if details.len() as i64 > page.limit {
        details.truncate(usize::try_from(page.limit).unwrap_or(usize::MAX));
        details.last().map(|b| b.id.clone())
    } else {
        None
    };
    Ok(Json(CheckResponse {
        allowed: blocking_budget.is_none(),
        blocking_budget,
        budgets: details,
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_bounded_as_given() {
        assert_eq!(check_thresholds(&[80, 50, 80]).unwrap(), vec![50, 80]);
        let eleven = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10];
        assert_eq!(
            check_thresholds(&eleven).unwrap_err().code(),
            "too_many_thresholds"
        );
        assert_eq!(
            check_thresholds(&[0]).unwrap_err().code(),
            "invalid_threshold"
        );
    }
}
