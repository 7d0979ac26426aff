//! Routing profiles over HTTP: the organisation default and one per agent.
//!
//! | route | access | success | errors |
//! |---|---|---|---|
//! | `PUT /v1/routing[?org_id=]` | admin | 200 the profile | 422 (`unknown_field`, `byok_no_providers`, `unknown_preset`, `invalid_preset`, `invalid_server_tool`, `invalid_profile`, `invalid_byok_providers`) |
//! | `GET /v1/routing[?org_id=]` | member | 200 the profile | 404 `routing_profile_not_found` |
//! | `DELETE /v1/routing[?org_id=]` | admin | 200 `{org_id, agent_id, deleted: true}` | 404 `routing_profile_not_found` |
//! | `PUT`/`GET`/`DELETE /v1/agents/{agent_id}/routing` | admin / member / admin | as above | as above, 422 `invalid_id` for the agent |
//!
//! A profile is `{models, provider {order, allow_fallbacks, only, ignore,
//! data_collection, zdr, sort, max_price}, capacity, presets, server_tools,
//! byok_providers, max_output_tokens}` (every field optional, unknown
//! fields refused; `org_id` may be given in the body and must be the
//! key's). It is answered with `org_id`, `agent_id` (null for the
//! default), `risk` (`high` when it grants any server tool, else `low`)
//! and `updated_at` beside its fields.
//!
//! # Invariants
//!
//! * **Validated on write with the worker's own routing compiler**, with
//!   the BYOK providers the worker would use (the profile's, else the
//!   connection's): a profile the worker would refuse for every request
//!   (`byok_only` without a BYOK provider, an unknown or invalid preset)
//!   is never stored.
//! * **The profile is authoritative** for `capacity` and `server_tools`
//!   (see `tally_provider::profile`); granting any server tool is shown as
//!   `risk: "high"`.

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde_json::{Map, Value};
use tally_provider::{RoutingProfile, OPENROUTER};
use tally_worker::routing::{compile, RoutingInput, Target};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{decode, ApiJson, ApiPath, Params};
use crate::openapi::{IdDoc, OrgQuery, RoutingDeletedDoc, RoutingDoc, RoutingInputDoc};
use crate::wire::check_id;
use crate::AppState;

fn not_found(agent: Option<&str>) -> ApiError {
    ApiError::not_found(
        "routing_profile_not_found",
        match agent {
            Some(a) => format!("agent {a:?} has no routing profile"),
            None => "the organisation has no default routing profile".to_owned(),
        },
    )
}

/// The answer: the profile's fields with `org_id`, `agent_id`, `risk`,
/// `updated_at`.
fn shown(
    org_id: &str,
    agent: Option<&str>,
    profile: &RoutingProfile,
    updated_at: chrono::DateTime<chrono::Utc>,
) -> Result<Json<Value>, ApiError> {
    let mut v = match serde_json::to_value(profile).map_err(ApiError::internal)? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    v.insert("org_id".into(), Value::from(org_id));
    v.insert("agent_id".into(), agent.map_or(Value::Null, Value::from));
    v.insert("risk".into(), Value::from(profile.risk()));
    v.insert(
        "updated_at".into(),
        serde_json::to_value(updated_at).map_err(ApiError::internal)?,
    );
    Ok(Json(Value::Object(v)))
}

/// Checks a profile as the worker would compile it.
async fn validate(state: &AppState, org_id: &str, p: &RoutingProfile) -> Result<(), ApiError> {
    p.validate_shape()
        .map_err(|(code, reason)| ApiError::field(code, field_of(code), reason))?;
    for (i, m) in p.models.iter().flatten().enumerate() {
        if m.trim().is_empty() || m.len() > 256 || m.chars().any(char::is_control) {
            return Err(ApiError::field(
                "invalid_profile",
                format!("models[{i}]"),
                "a fallback model id must be 1 to 256 printable characters",
            ));
        }
    }
    let byok = match &p.byok_providers {
        Some(list) => tally_provider::validate_byok_providers(list)
            .map_err(|e| ApiError::field(e.code(), "byok_providers", e.to_string()))?,
        None => state
            .store
            .connection(org_id, OPENROUTER)
            .await?
            .map(|c| c.byok_providers)
            .unwrap_or_default(),
    };
    let routing = p.routing();
    compile(&RoutingInput {
        model: "",
        fallback_models: p.models.as_deref(),
        routing: Some(&routing),
        capabilities: None,
        byok: &byok,
        target: Target::OpenRouter,
    })
    .map_err(|e| {
        let field = match e.code() {
            "byok_no_providers" => "capacity",
            _ => "presets",
        };
        ApiError::field(e.code(), field, e.to_string())
    })?;
    Ok(())
}

fn field_of(code: &str) -> &'static str {
    match code {
        "invalid_server_tool" => "server_tools",
        _ => "profile",
    }
}

/// Decodes a profile body: `org_id` is taken out, the rest must be a
/// profile (unknown fields refused, naming them).
fn profile_body(bytes: &Bytes) -> Result<(Option<String>, RoutingProfile), ApiError> {
    let mut obj: Map<String, Value> = decode(bytes)?;
    let org = match obj.remove("org_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            return Err(ApiError::invalid(
                "org_id",
                "org_id must be a string naming the organisation",
            ))
        }
    };
    let rest = serde_json::to_vec(&obj).map_err(ApiError::internal)?;
    Ok((org, decode(&rest)?))
}

/// The query (`org_id` only) and the agent id of a request, checked in
/// that order.
fn checked(params: Params, agent: Option<&str>) -> Result<Params, ApiError> {
    let params = params.only(&["org_id"])?;
    if let Some(a) = agent {
        check_id("agent_id", a)?;
    }
    Ok(params)
}

async fn put(
    state: AppState,
    caller: Caller,
    params: Params,
    agent: Option<String>,
    body: Value,
) -> Result<Json<Value>, ApiError> {
    let params = checked(params, agent.as_deref())?;
    let bytes = Bytes::from(serde_json::to_vec(&body).map_err(ApiError::internal)?);
    let (body_org, profile) = profile_body(&bytes)?;
    if let (Some(b), Some(q)) = (&body_org, params.get("org_id")) {
        if b != q {
            return Err(ApiError::invalid(
                "org_id",
                "org_id in the body and the query differ",
            ));
        }
    }
    let given = body_org.as_deref().or(params.get("org_id"));
    let org_id = caller.write_org(&state.store, given).await?;
    validate(&state, &org_id, &profile).await?;
    let stored = serde_json::to_value(&profile).map_err(ApiError::internal)?;
    let at = state
        .store
        .put_routing_profile(&org_id, agent.as_deref(), &stored)
        .await?;
    tracing::info!(
        org_id = %org_id,
        agent_id = agent.as_deref().unwrap_or(""),
        risk = profile.risk(),
        "routing profile stored"
    );
    shown(&org_id, agent.as_deref(), &profile, at)
}

async fn get(
    state: AppState,
    caller: Caller,
    params: Params,
    agent: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let params = checked(params, agent.as_deref())?;
    let org_id = caller.read_org(&state.store, params.get("org_id")).await?;
    let Some((v, at)) = state
        .store
        .routing_profile(&org_id, agent.as_deref())
        .await?
    else {
        return Err(not_found(agent.as_deref()));
    };
    let profile: RoutingProfile = serde_json::from_value(v)
        .map_err(|e| ApiError::internal(format!("stored routing profile unreadable: {e}")))?;
    shown(&org_id, agent.as_deref(), &profile, at)
}

async fn delete(
    state: AppState,
    caller: Caller,
    params: Params,
    agent: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let params = checked(params, agent.as_deref())?;
    let org_id = caller.write_org(&state.store, params.get("org_id")).await?;
    if !state
        .store
        .delete_routing_profile(&org_id, agent.as_deref())
        .await?
    {
        return Err(not_found(agent.as_deref()));
    }
    tracing::info!(org_id = %org_id, agent_id = agent.as_deref().unwrap_or(""), "routing profile deleted");
    Ok(Json(serde_json::json!({
        "org_id": org_id,
        "agent_id": agent,
        "deleted": true,
    })))
}

/// `PUT /v1/routing` (admin).
#[utoipa::path(
    put,
    path = "/v1/routing",
    tag = "routing",
    summary = "Store the organisation's default routing profile",
    params(OrgQuery),
    request_body = RoutingInputDoc,
    responses(
        (status = 200, description = "the stored profile with its `risk`", body = RoutingDoc),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`invalid_profile`, `invalid_server_tool`, `invalid_byok_providers`, `byok_no_providers`, `unknown_preset` and the other routing codes, `invalid_id`, `invalid_field` (`org_id`)"),
    ),
)]
pub(crate) async fn put_default(
    State(state): State<AppState>,
    caller: Caller,
    params: Params,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    put(state, caller, params, None, body).await
}

/// `GET /v1/routing` (member).
#[utoipa::path(
    get,
    path = "/v1/routing",
    tag = "routing",
    summary = "The organisation's default routing profile",
    params(OrgQuery),
    responses(
        (status = 200, description = "the profile with its `risk`", body = RoutingDoc),
        (status = 404, description = "`routing_profile_not_found`, `org_not_found`"),
        (status = 422, description = "`invalid_id`"),
    ),
)]
pub(crate) async fn get_default(
    State(state): State<AppState>,
    caller: Caller,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    get(state, caller, params, None).await
}

/// `DELETE /v1/routing` (admin).
#[utoipa::path(
    delete,
    path = "/v1/routing",
    tag = "routing",
    summary = "Delete the organisation's default routing profile",
    params(OrgQuery),
    responses(
        (status = 200, description = "the profile is deleted", body = RoutingDeletedDoc),
        (status = 404, description = "`routing_profile_not_found`"),
        (status = 422, description = "`invalid_id`"),
    ),
)]
pub(crate) async fn delete_default(
    State(state): State<AppState>,
    caller: Caller,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    delete(state, caller, params, None).await
}

/// `PUT /v1/agents/{agent_id}/routing` (admin).
#[utoipa::path(
    put,
    path = "/v1/agents/{agent_id}/routing",
    tag = "routing",
    summary = "Store an agent's routing profile",
    params(("agent_id" = IdDoc, Path, description = "the agent"), OrgQuery),
    request_body = RoutingInputDoc,
    responses(
        (status = 200, description = "the stored profile with its `risk`", body = RoutingDoc),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`invalid_profile`, `invalid_server_tool`, `invalid_byok_providers`, `byok_no_providers`, `unknown_preset` and the other routing codes, `invalid_id`, `invalid_field` (`org_id`)"),
    ),
)]
pub(crate) async fn put_agent(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(agent): ApiPath<String>,
    params: Params,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    put(state, caller, params, Some(agent), body).await
}

/// `GET /v1/agents/{agent_id}/routing` (member).
#[utoipa::path(
    get,
    path = "/v1/agents/{agent_id}/routing",
    tag = "routing",
    summary = "An agent's routing profile",
    params(("agent_id" = IdDoc, Path, description = "the agent"), OrgQuery),
    responses(
        (status = 200, description = "the profile with its `risk`", body = RoutingDoc),
        (status = 404, description = "`routing_profile_not_found`, `org_not_found`"),
        (status = 422, description = "`invalid_id`"),
    ),
)]
pub(crate) async fn get_agent(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(agent): ApiPath<String>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    get(state, caller, params, Some(agent)).await
}

/// `DELETE /v1/agents/{agent_id}/routing` (admin).
#[utoipa::path(
    delete,
    path = "/v1/agents/{agent_id}/routing",
    tag = "routing",
    summary = "Delete an agent's routing profile",
    params(("agent_id" = IdDoc, Path, description = "the agent"), OrgQuery),
    responses(
        (status = 200, description = "the profile is deleted", body = RoutingDeletedDoc),
        (status = 404, description = "`routing_profile_not_found`"),
        (status = 422, description = "`invalid_id`"),
    ),
)]
pub(crate) async fn delete_agent(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(agent): ApiPath<String>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    delete(state, caller, params, Some(agent)).await
}
