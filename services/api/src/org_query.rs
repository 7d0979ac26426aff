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

/// The organisation named by `?org_id=` (optional), resolved as a write
/// when `WRITE`, else as a read.
#[derive(Debug, Clone)]
pub(crate) struct OrgScope<const WRITE: bool>(pub String);

/// The organisation a read is about.
pub(crate) type ReadOrg = OrgScope<false>;

/// The organisation a write acts on.
pub(crate) type WriteOrg = OrgScope<true>;

impl<const WRITE: bool> FromRequestParts<AppState> for OrgScope<WRITE> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let params = Params::from_request_parts(parts, state)
            .await?
            .only(&["org_id"])?;
        let given = params.get("org_id");
        let org_id = if WRITE {
            caller.write_org(&state.store, given).await?
        } else {
            caller.read_org(&state.store, given).await?
        };
        Ok(OrgScope(org_id))
    }
}
