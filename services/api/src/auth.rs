//! Authentication and roles: who is calling, for which organisation, and
//! whether the route lets them.
//!
//! Every `/v1/*` route is declared in one table (`routes` in the crate
//! root) with the [`Access`] it needs; the router is built from that table
//! only, and each route gets the [`require`] layer for its access level.
//! [`require`] reads `Authorization: Bearer <secret>`, resolves it to a
//! [`Caller`] and refuses:
//!
//! | situation | status | code |
//! |---|---|---|
//! | no `Authorization` header, or not `Bearer` | 401 | `missing_api_key` |
//! | a secret that is neither a well-formed `tly_` key nor the operator token | 401 | `malformed_api_key` |
//! | a well-formed key that is unknown or revoked | 401 | `invalid_api_key` |
//! | a member on an admin route, a key on an operator route | 403 | `forbidden_role` |
//!
//! Every 401 carries `WWW-Authenticate: Bearer realm="tally"`. Handlers
//! take the [`Caller`] extractor; it exists only behind [`require`], so a
//! handler mounted outside the table answers 500 instead of serving anyone.
//!
//! The organisation of a request is the key's. An `org_id` in a query or
//! body may still be given and must equal it: in a write a different one
//! is 403 `org_mismatch` ([`Caller::write_org`]); in a read it is 404
//! `org_not_found`, exactly as for an organisation that does not exist
//! ([`Caller::read_org`]). A resource of another organisation is 404 as if
//! it did not exist ([`Caller::sees`]). The operator token
//! (`TALLY_OPERATOR_TOKEN`) acts as admin of every organisation and names
//! the organisation with `org_id` where the route needs one.
//!
//! # Invariants
//!
//! * Secrets are compared only as SHA-256 digests, in constant time; the
//!   presented secret is never logged, stored, put in an error or a metric.
//! * A revoked key stops working on every API instance within
//!   [`KEY_CACHE_TTL`] (and at once on the instance that revoked it).
//!
//! # Decisions
//!
//! * **A short cache, not a long one.** Looking a key up in Postgres costs a
//!   round trip per request; the answer (including "no such key") is kept
//!   for [`KEY_CACHE_TTL`] (500 ms) per display prefix, which keeps
//!   authentication off the database for busy clients while revocation
//!   still reaches every instance in under a second without any
//!   cross-instance messaging. At most [`KEY_CACHE_MAX`] prefixes are
//!   cached; beyond that lookups simply go to the database.
//! * **Unknown and revoked keys get the same answer** (`invalid_api_key`):
//!   a caller learns nothing about keys it does not hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tally_store::tenancy::{self, KeyCandidate, Role};
use tally_store::Store;
use uuid::Uuid;

use crate::error::ApiError;
use crate::wire::check_id;
use crate::AppState;

/// How long a key lookup is reused (see the module docs).
pub const KEY_CACHE_TTL: Duration = Duration::from_millis(500);
/// Most display prefixes whose lookups are cached at once.
pub const KEY_CACHE_MAX: usize = 10_000;
/// Fewest characters an operator token must have.
pub const MIN_OPERATOR_TOKEN_CHARS: usize = 32;
/// The `WWW-Authenticate` challenge of every 401.
pub const CHALLENGE: &str = "Bearer realm=\"tally\"";

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// Any key of the organisation (member or admin), or the operator.
    Member,
    /// An admin key of the organisation, or the operator.
    Admin,
    /// Only the operator token.
    Operator,
    /// No bearer key: the request is authorised by the single-use OAuth
    /// state it carries (the OAuth callback, reached by the admin's
    /// browser coming back from OpenRouter). Handlers of such a route get
    /// no [`Caller`].
    OAuthState,
}

impl Access {
    /// `member`, `admin` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Member => "member",
            Access::Admin => "admin",
            Access::Operator => "operator",
            Access::OAuthState => "oauth_state",
        }
    }
}

/// Who is calling (put into the request by [`require`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    kind: CallerKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CallerKind {
    Key {
        id: Uuid,
        org_id: String,
        role: Role,
    },
    Operator,
}

impl Caller {
    /// A caller holding a key of `org_id`.
    pub fn key(id: Uuid, org_id: impl Into<String>, role: Role) -> Caller {
        Caller {
            kind: CallerKind::Key {
                id,
                org_id: org_id.into(),
                role,
            },
        }
    }

    /// The operator.
    pub fn operator() -> Caller {
        Caller {
            kind: CallerKind::Operator,
        }
    }

    /// The key's organisation (`None` for the operator).
    pub fn org(&self) -> Option<&str> {
        match &self.kind {
            CallerKind::Key { org_id, .. } => Some(org_id),
            CallerKind::Operator => None,
        }
    }

    /// The key id (`None` for the operator).
    pub fn key_id(&self) -> Option<Uuid> {
        match &self.kind {
            CallerKind::Key { id, .. } => Some(*id),
            CallerKind::Operator => None,
        }
    }

    /// Whether this is the operator token.
    pub fn is_operator(&self) -> bool {
        matches!(self.kind, CallerKind::Operator)
    }

    /// Whether the caller may use a route needing `access`.
    pub fn may(&self, access: Access) -> bool {
        match (&self.kind, access) {
            (CallerKind::Operator, _) => true,
            (CallerKind::Key { .. }, Access::Operator) => false,
            (CallerKind::Key { .. }, Access::OAuthState) => true,
            (CallerKind::Key { role, .. }, Access::Admin) => *role == Role::Admin,
            (CallerKind::Key { .. }, Access::Member) => true,
        }
    }

    /// Whether a resource of `org_id` is visible to the caller (the
    /// operator sees every organisation).
    pub fn sees(&self, org_id: &str) -> bool {
        match &self.kind {
            CallerKind::Key { org_id: own, .. } => own == org_id,
            CallerKind::Operator => true,
        }
    }

    /// The organisation a write acts on: the key's, or `given` when it
    /// equals it (else 403 `org_mismatch`). The operator must name an
    /// existing organisation (422 `missing_field` / 404 `org_not_found`).
    pub(crate) async fn write_org(
        &self,
        store: &Store,
        given: Option<&str>,
    ) -> Result<String, ApiError> {
        self.resolve(store, given, true).await
    }

    /// The organisation a read is about: like [`Caller::write_org`], but
    /// another organisation's id is 404 `org_not_found`, as if it did not
    /// exist.
    pub(crate) async fn read_org(
        &self,
        store: &Store,
        given: Option<&str>,
    ) -> Result<String, ApiError> {
        self.resolve(store, given, false).await
    }

    async fn resolve(
        &self,
        store: &Store,
        given: Option<&str>,
        write: bool,
    ) -> Result<String, ApiError> {
        if let Some(g) = given {
            check_id("org_id", g)?;
        }
        match (&self.kind, given) {
            (CallerKind::Key { org_id, .. }, None) => Ok(org_id.clone()),
            (CallerKind::Key { org_id, .. }, Some(g)) if g == org_id => Ok(org_id.clone()),
            (CallerKind::Key { .. }, Some(_)) if write => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "org_mismatch",
                "org_id names another organisation than the API key's",
            )
            .with_field("org_id")),
            (CallerKind::Key { .. }, Some(g)) => Err(org_not_found(g)),
            (CallerKind::Operator, None) => Err(ApiError::field(
                "missing_field",
                "org_id",
                "the operator token acts for every organisation: name one with org_id",
            )),
            (CallerKind::Operator, Some(g)) => match store.org(g).await? {
                Some(o) => Ok(o.org_id),
                None => Err(org_not_found(g)),
            },
        }
    }
}

/// 404 `org_not_found`.
pub(crate) fn org_not_found(org_id: &str) -> ApiError {
    ApiError::not_found("org_not_found", format!("no organisation {org_id:?}")).with_field("org_id")
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::internal("a handler needs a caller but its route declares no access")
        })
    }
}

#[derive(Debug)]
struct CacheEntry {
    fetched: Instant,
    keys: Vec<KeyCandidate>,
}

/// Resolves bearer secrets to callers (see the module docs).
#[derive(Debug, Clone)]
pub struct Authenticator {
    operator: Option<[u8; 32]>,
    cache: Arc<Mutex<HashMap<String, CacheEntry>>>,
}

/// Why authentication failed (each one answered by [`AuthError::into_response`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No bearer credentials.
    Missing,
    /// Not a key and not the operator token.
    Malformed,
    /// A well-formed key that is unknown or revoked.
    Invalid,
}

impl AuthError {
    /// The problem code.
    pub fn code(self) -> &'static str {
        match self {
            AuthError::Missing => "missing_api_key",
            AuthError::Malformed => "malformed_api_key",
            AuthError::Invalid => "invalid_api_key",
        }
    }

    /// The 401 problem.
    pub fn error(self) -> ApiError {
        let detail = match self {
            AuthError::Missing => "send an API key as Authorization: Bearer tly_…",
            AuthError::Malformed => "the bearer credential is not a tally API key (tly_…)",
            AuthError::Invalid => "the API key is unknown or revoked",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, self.code(), detail).with_challenge(CHALLENGE)
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        self.error().into_response()
    }
}

impl Authenticator {
    /// An authenticator; with `operator_token`, that token acts as admin of
    /// every organisation.
    pub fn new(operator_token: Option<&SecretString>) -> Authenticator {
        Authenticator {
            operator: operator_token.map(|t| tenancy::digest(t.expose_secret())),
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The bearer secret of a request, if any.
    fn bearer(headers: &HeaderMap) -> Option<&str> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, rest) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim())
            .filter(|s| !s.is_empty())
    }

    /// Resolves the request's credentials: an [`AuthError`] as a 401
    /// problem, or 503 when the keys cannot be read.
    pub async fn authenticate(
        &self,
        store: &Store,
        headers: &HeaderMap,
    ) -> Result<Caller, ApiError> {
        let secret = Self::bearer(headers).ok_or(AuthError::Missing.error())?;
        let presented = match tenancy::parse_key(secret) {
            Ok(p) => p,
            Err(_) => {
                if let Some(op) = &self.operator {
                    if bool::from(tenancy::digest(secret).ct_eq(op)) {
                        return Ok(Caller::operator());
                    }
                }
                return Err(AuthError::Malformed.error());
            }
        };
        let now = Instant::now();
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(presented.prefix)
                .filter(|e| now.duration_since(e.fetched) < KEY_CACHE_TTL)
                .map(|e| find(&e.keys, &presented.digest))
        };
        let found = match cached {
            Some(found) => found,
            None => {
                let keys = store.key_candidates(presented.prefix).await?;
                let found = find(&keys, &presented.digest);
                if let Some(k) = keys.iter().find(|k| k.matches(&presented.digest)) {
                    let stale = k
                        .last_used_at
                        .is_none_or(|t| chrono::Utc::now() - t > chrono::TimeDelta::minutes(1));
                    if stale {
                        let store = store.clone();
                        let id = k.id;
                        tokio::spawn(async move {
                            if let Err(e) = store.touch_key(id).await {
                                tracing::debug!(key_id = %id, code = e.code(), "last_used_at not updated");
                            }
                        });
                    }
                }
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= KEY_CACHE_MAX {
                    cache.retain(|_, e| now.duration_since(e.fetched) < KEY_CACHE_TTL);
                }
                if cache.len() < KEY_CACHE_MAX {
                    cache.insert(
                        presented.prefix.to_owned(),
                        CacheEntry { fetched: now, keys },
                    );
                }
                found
            }
        };
        found.ok_or_else(|| AuthError::Invalid.error())
    }

    /// Drops the cached lookups of a display prefix (after a revocation on
    /// this instance).
    pub fn forget(&self, prefix: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(prefix);
    }
}

fn find(keys: &[KeyCandidate], digest: &[u8; 32]) -> Option<Caller> {
    // Compare every candidate, so the time does not depend on which matched.
    let mut found = None;
    for k in keys {
        if k.matches(digest) {
            found = Some(Caller::key(k.id, k.org_id.clone(), k.role));
        }
    }
    found
}

/// Route layer: authenticates the request and checks the route's access
/// level; the [`Caller`] goes into the request's extensions.
pub(crate) async fn require(
    State((state, access)): State<(AppState, Access)>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = match state.auth.authenticate(&state.store, req.headers()).await {
        Ok(c) => c,
        Err(e) => {
            state
                .metrics
                .auth_failures
                .with_label_values(&[e.code()])
                .inc();
            return e.into_response();
        }
    };
    if !caller.may(access) {
        state
            .metrics
            .auth_failures
            .with_label_values(&["forbidden_role"])
            .inc();
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_role",
            format!("this route needs the {} role", access.as_str()),
        )
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_access() {
        let member = Caller::key(Uuid::nil(), "a", Role::Member);
        let admin = Caller::key(Uuid::nil(), "a", Role::Admin);
        let op = Caller::operator();
        assert!(member.may(Access::Member) && !member.may(Access::Admin));
        assert!(admin.may(Access::Admin) && !admin.may(Access::Operator));
        assert!(op.may(Access::Operator) && op.sees("anyone"));
        assert!(admin.sees("a") && !admin.sees("b"));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(Authenticator::bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(Authenticator::bearer(&h), None);
        h.insert(header::AUTHORIZATION, "bearer  tly_x ".parse().unwrap());
        assert_eq!(Authenticator::bearer(&h), Some("tly_x"));
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(Authenticator::bearer(&h), None);
    }
}
