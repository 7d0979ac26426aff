//! Organisations and API keys over HTTP.
//!
//! | route | access | success |
//! |---|---|---|
//! | `POST /v1/orgs {org_id, name?}` | operator | 201 `{org_id, name, created_at, key_id, key, prefix, role: "admin"}` |
//! | `POST /v1/keys {role, name?, org_id?}` | admin | 201 `{id, key, prefix, role, name, created_at}` |
//! | `GET /v1/keys[?org_id=]` | admin | 200 `{keys: [{id, prefix, role, name, created_at, last_used_at}]}` |
//! | `DELETE /v1/keys/{id}` | admin | 200 the key with `revoked_at` |
//!
//! The secret (`key`) appears only in the 201 answers that issue it; a
//! listing never shows it. Revoking takes effect at once on this instance
//! and within `auth::KEY_CACHE_TTL` on every other one. A key of another
//! organisation is 404 `key_not_found`, as if it did not exist.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tally_store::tenancy::{KeyInfo, Role};
use tally_store::{IssuedKey, StoreError};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{or_not_found, ApiError};
use crate::extract::{ApiJson, ApiPath};
use crate::openapi::{IdDoc, OrgQuery, RoleDoc};
use crate::org_query::{OrgScope, ReadOrg};
use crate::respond;
use crate::wire::check_id;
use crate::AppState;

/// A new organisation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = OrgCreate)]
pub(crate) struct CreateOrgBody {
    #[schema(value_type = IdDoc)]
    org_id: String,
    /// Display name: 1 to 200 characters, not blank, no control characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: Option<String>,
}

/// A new API key of the caller's organisation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = KeyCreate)]
pub(crate) struct CreateKeyBody {
    #[schema(value_type = RoleDoc)]
    role: String,
    /// Display name: 1 to 200 characters, not blank, no control characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: Option<String>,
    /// Must be the caller's organisation when given (the operator names it here).
    #[serde(default)]
    #[schema(value_type = Option<IdDoc>)]
    org_id: Option<String>,
}

/// A key as listed (never the secret).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Key)]
pub(crate) struct KeyBody {
    id: Uuid,
    org_id: String,
    prefix: String,
    #[schema(value_type = RoleDoc)]
    role: &'static str,
    name: Option<String>,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<DateTime<Utc>>,
}

impl From<KeyInfo> for KeyBody {
    fn from(k: KeyInfo) -> KeyBody {
        KeyBody {
            id: k.id,
            org_id: k.org_id,
            prefix: k.prefix,
            role: k.role.as_str(),
            name: k.name,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// A key just issued, with its secret (shown once).
#[derive(Serialize, ToSchema)]
#[schema(as = KeyIssued)]
pub(crate) struct IssuedBody {
    id: Uuid,
    org_id: String,
    /// The secret: shown only here, never again.
    key: String,
    prefix: String,
    #[schema(value_type = RoleDoc)]
    role: &'static str,
    name: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<&IssuedKey> for IssuedBody {
    fn from(k: &IssuedKey) -> IssuedBody {
        IssuedBody {
            id: k.info.id,
            org_id: k.info.org_id.clone(),
            key: k.secret.expose_secret().to_owned(),
            prefix: k.info.prefix.clone(),
            role: k.info.role.as_str(),
            name: k.info.name.clone(),
            created_at: k.info.created_at,
        }
    }
}

/// A new organisation and its first admin key (shown once).
#[derive(Serialize, ToSchema)]
#[schema(as = OrgCreated)]
pub(crate) struct OrgCreatedBody {
    org_id: String,
    name: Option<String>,
    created_at: DateTime<Utc>,
    key_id: Uuid,
    /// The admin key's secret: shown only here, never again.
    key: String,
    prefix: String,
    #[schema(value_type = RoleDoc)]
    role: &'static str,
}

fn name_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid { field, reason } => ApiError::invalid(field, reason),
        e => e.into(),
    }
}

/// A key just issued: 201 at the key's URL, never cached.
fn issued(body: impl Serialize, key_id: Uuid) -> Response {
    respond::no_store(respond::created(body, &format!("/v1/keys/{key_id}")))
}

/// `POST /v1/orgs` (operator).
#[utoipa::path(
    post,
    path = "/v1/orgs",
    tag = "keys",
    summary = "Create an organisation and its first admin key",
    request_body = CreateOrgBody,
    responses(
        (status = 201, description = "the organisation and its first admin key (shown once)", body = OrgCreatedBody,
         headers(("Location" = String, description = "the key's URL"))),
        (status = 409, description = "`org_exists`"),
        (status = 422, description = "`invalid_id`"),
    ),
)]
pub(crate) async fn create_org(
    State(state): State<AppState>,
    _caller: Caller,
    ApiJson(body): ApiJson<CreateOrgBody>,
) -> Result<Response, ApiError> {
    check_id("org_id", &body.org_id)?;
    let (org, key) = state
        .store
        .create_org(&body.org_id, body.name.as_deref())
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                "org_exists",
                format!("organisation {:?} exists already", body.org_id),
            )
            .with_field("org_id"),
            e => name_error(e),
        })?;
    tracing::info!(org_id = %org.org_id, key_id = %key.info.id, "organisation created");
    Ok(issued(
        OrgCreatedBody {
            org_id: org.org_id,
            name: org.name,
            created_at: org.created_at,
            key_id: key.info.id,
            key: key.secret.expose_secret().to_owned(),
            prefix: key.info.prefix.clone(),
            role: Role::Admin.as_str(),
        },
        key.info.id,
    ))
}

/// `POST /v1/keys` (admin).
#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "keys",
    summary = "Issue an API key",
    request_body = CreateKeyBody,
    responses(
        (status = 201, description = "the key with its secret (shown once)", body = IssuedBody,
         headers(("Location" = String, description = "the key's URL"))),
        (status = 404, description = "`org_not_found`"),
        (status = 409, description = "`limit_exceeded` (`field`: `max_keys`)"),
        (status = 422, description = "`invalid_role`, `invalid_field`, `invalid_id`"),
    ),
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateKeyBody>,
) -> Result<Response, ApiError> {
    let org_id = caller
        .write_org(&state.store, body.org_id.as_deref())
        .await?;
    let role = Role::parse(&body.role).ok_or_else(|| {
        ApiError::field(
            "invalid_role",
            "role",
            format!("role must be admin or member, not {:?}", body.role),
        )
    })?;
    let key = state
        .store
        .create_key_within(
            &org_id,
            role,
            body.name.as_deref(),
            state.org_limits.max_keys,
        )
        .await
        .map_err(name_error)?;
    tracing::info!(org_id = %org_id, key_id = %key.info.id, role = %role, "API key issued");
    Ok(issued(IssuedBody::from(&key), key.info.id))
}

/// The organisation's keys.
#[derive(Serialize, ToSchema)]
#[schema(as = KeyList)]
pub(crate) struct ListBody {
    keys: Vec<KeyBody>,
}

/// `GET /v1/keys` (admin).
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    summary = "List the organisation's API keys (never a secret)",
    params(OrgQuery),
    responses(
        (status = 200, description = "the keys", body = ListBody),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`invalid_id`"),
    ),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    OrgScope(org_id): ReadOrg,
) -> Result<Json<ListBody>, ApiError> {
    let keys = state.store.list_keys(&org_id).await?;
    Ok(Json(ListBody {
        keys: keys.into_iter().map(KeyBody::from).collect(),
    }))
}

/// `DELETE /v1/keys/{id}` (admin): revokes.
#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    tag = "keys",
    summary = "Revoke an API key at once",
    params(("id" = String, Path, description = "the key's id (a UUID)")),
    responses(
        (status = 200, description = "the revoked key", body = KeyBody),
        (status = 404, description = "`key_not_found`"),
    ),
)]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<KeyBody>, ApiError> {
    let not_found = || ApiError::not_found("key_not_found", format!("no API key with id {id:?}"));
    let key_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let info = state
        .store
        .revoke_key(key_id, caller.org())
        .await
        .map_err(or_not_found(not_found))?;
    state.auth.forget(&info.prefix);
    tracing::info!(org_id = %info.org_id, key_id = %info.id, "API key revoked");
    Ok(Json(KeyBody::from(info)))
}
