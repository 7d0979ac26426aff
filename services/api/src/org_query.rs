//! Extractors for the routes whose whole query is an optional `org_id`:
//! the organisation the request is about, resolved for the caller.
//!
//! [`ReadOrg`] resolves it as a read (another organisation's id is 404
//! `org_not_found`), [`WriteOrg`] as a write (403 `org_mismatch`); see
//! [`Caller::read_org`]. Any other query parameter is 422 `unknown_field`,
//! checked before the organisation.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::Params;
use crate::AppState;

/// The organisation a read is about (`?org_id=` optional).
#[derive(Debug, Clone)]
pub(crate) struct ReadOrg(pub String);

/// The organisation a write acts on (`?org_id=` optional).
#[derive(Debug, Clone)]
pub(crate) struct WriteOrg(pub String);

/// The caller and the `org_id` of a query that may hold nothing else.
async fn org_param(
    parts: &mut Parts,
    state: &AppState,
) -> Result<(Caller, Option<String>), ApiError> {
    let caller = Caller::from_request_parts(parts, state).await?;
    let params = Params::from_request_parts(parts, state)
        .await?
        .only(&["org_id"])?;
    Ok((caller, params.get("org_id").map(str::to_owned)))
}

impl FromRequestParts<AppState> for ReadOrg {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (caller, given) = org_param(parts, state).await?;
        caller
            .read_org(&state.store, given.as_deref())
            .await
            .map(ReadOrg)
    }
}

impl FromRequestParts<AppState> for WriteOrg {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (caller, given) = org_param(parts, state).await?;
        caller
            .write_org(&state.store, given.as_deref())
            .await
            .map(WriteOrg)
    }
}
