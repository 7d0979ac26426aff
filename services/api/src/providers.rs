//! An organisation's OpenRouter connection over HTTP: paste a key, connect
//! with OpenRouter (OAuth PKCE), status, disconnect, model discovery.
//!
//! | route | access | success | errors |
//! |---|---|---|---|
//! | `PUT /v1/providers/openrouter {api_key, byok_providers?, org_id?}` | admin | 200 the status | 422 `provider_key_rejected`, `invalid_api_key`, `invalid_byok_providers`; 502 `provider_unreachable`; 503 `secrets_key_missing` |
//! | `GET /v1/providers/openrouter[?org_id=]` | member | 200 the status | 404 `org_not_found` |
//! | `DELETE /v1/providers/openrouter[?org_id=]` | admin | 200 the status (disconnected) | 404 `provider_not_connected` |
//! | `POST /v1/providers/openrouter/oauth/start {byok_providers?, org_id?}` (body optional) | admin | 200 `{authorize_url, expires_at}` | 422 `invalid_byok_providers`; 503 `secrets_key_missing`, `public_url_missing` |
//! | `GET /v1/providers/openrouter/oauth/callback?state=&code=` | the state (no bearer key) | 200 HTML page | 400 page (`oauth_state_unknown`, `oauth_state_used`, `oauth_state_expired`, `oauth_state_missing`, `oauth_code_missing`, `oauth_denied`, `oauth_admin_revoked`, `oauth_exchange_refused`), 502 page, 503 page |
//! | `POST /v1/providers/openrouter/models/sync[?org_id=]` | admin | 200 `{count, synced_at, error}` | 409 `provider_not_connected` |
//! | `GET /v1/providers/openrouter/models[?org_id=]` | member | 200 `{models, synced_at}` | 404 `org_not_found` |
//!
//! The status is `{connected, connected_via, connected_at, key_label,
//! limit_remaining_usd, is_free_tier, byok_providers, models: {count,
//! synced_at, error}}` and never holds the key. Without
//! `TALLY_SECRETS_KEY` nothing secret is stored (503 `secrets_key_missing`,
//! nothing written).
//!
//! # Invariants
//!
//! * **The callback trusts only the server-side state.** The organisation a
//!   callback connects is the one the state was issued to by an admin's
//!   `oauth/start`; nothing in the callback's query names an organisation.
//!   A state is taken exactly once — by a successful exchange, a refused
//!   one, or a denial coming back — so a replayed link stores nothing.
//! * **Answers carry no secret**: the key goes in, only OpenRouter's masked
//!   label comes out; every answer here is `Cache-Control: no-store`.
//!
//! # Decisions
//!
//! * **The callback answers a page, not a problem.** It is reached by the
//!   admin's browser, redirected from OpenRouter; a person reads the answer.
//!   The page names the problem code too (for support). It is sent with
//!   `Referrer-Policy: no-referrer` (its URL held a single-use code).
//! * **The callback ignores query parameters it does not know**: OpenRouter
//!   owns the redirect and may add some; only `state`, `code` and `error`
//!   mean anything here.
//! * **DELETE of nothing is 404 `provider_not_connected`**, so a client can
//!   tell a disconnection from a no-op.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tally_provider::catalog::WireModel;
use tally_provider::connections::OAuthStart;
use tally_provider::{ConnectionStatus, Connections, ModelsStatus, ProviderError};
use tally_store::providers::ConnectedVia;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{decode, ApiJson};
use crate::openapi::{
    ConnectionStatusDoc, IdDoc, ModelDoc, ModelsStatusDoc, OAuthStartDoc, OrgQuery,
};
use crate::org_query::{OrgScope, ReadOrg, WriteOrg};
use crate::respond;
use crate::AppState;

/// The problem of a provider error.
pub(crate) fn provider_error(e: ProviderError) -> ApiError {
    let code = e.code();
    match e {
        ProviderError::SecretsKeyMissing => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            "TALLY_SECRETS_KEY is not set on this server: provider credentials cannot be \
             stored; nothing was stored",
        ),
        ProviderError::PublicUrlMissing => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            "TALLY_PUBLIC_URL is not set on this server: OpenRouter has no callback address; \
             paste a key with PUT /v1/providers/openrouter instead",
        ),
        ProviderError::KeyRejected(m) => ApiError::field(
            code,
            "api_key",
            format!("OpenRouter rejected the key ({m}); nothing was stored"),
        ),
        ProviderError::Unreachable(m) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            code,
            format!("OpenRouter could not be reached ({m}); nothing was stored"),
        ),
        ProviderError::NotConnected => ApiError::new(
            StatusCode::CONFLICT,
            code,
            "the organisation has not connected OpenRouter; connect it first",
        ),
        e @ (ProviderError::State(_)
        | ProviderError::ExchangeRefused(_)
        | ProviderError::StarterRevoked) => {
            ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
        }
        ProviderError::Invalid { field, reason, .. } => ApiError::field(code, field, reason),
        ProviderError::Secret(e) => {
            tracing::error!(code, error = %e, "stored provider credential unusable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                "the stored credential cannot be opened with this server's TALLY_SECRETS_KEY",
            )
        }
        ProviderError::Store(s) => s.into(),
    }
}

fn connections(state: &AppState) -> Result<&Connections, ApiError> {
    state.connections.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_unavailable",
            "this API instance runs without provider connections",
        )
    })
}

fn no_store(body: impl Serialize) -> Response {
    respond::no_store(Json(body).into_response())
}

/// An OpenRouter key to store for the organisation.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ProviderConnect)]
pub(crate) struct ConnectBody {
    /// The OpenRouter API key (verified with OpenRouter, stored encrypted, never shown again).
    #[schema(min_length = 1)]
    api_key: String,
    /// Providers whose own keys the organisation has added to OpenRouter (BYOK).
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::ByokListDoc>)]
    byok_providers: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<IdDoc>)]
    org_id: Option<String>,
}

impl std::fmt::Debug for ConnectBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectBody")
            .field("api_key", &"[redacted]")
            .field("byok_providers", &self.byok_providers)
            .field("org_id", &self.org_id)
            .finish()
    }
}

/// `PUT /v1/providers/openrouter` (admin): paste a key.
#[utoipa::path(
    put,
    path = "/v1/providers/openrouter",
    tag = "providers",
    summary = "Connect OpenRouter by pasting a key (verified, stored encrypted)",
    request_body = ConnectBody,
    responses(
        (status = 200, description = "the connection status, never the key", body = ConnectionStatusDoc),
        (status = 422, description = "`provider_key_rejected` (`field`: `api_key`), `invalid_byok_providers`, `invalid_id`"),
        (status = 502, description = "`provider_unreachable`"),
        (status = 503, description = "`secrets_key_missing`, `provider_unavailable`, a secrets code (the stored credential cannot be opened)"),
    ),
)]
pub(crate) async fn connect(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ConnectBody>,
) -> Result<Response, ApiError> {
    let ConnectBody {
        api_key,
        byok_providers,
        org_id,
    } = body;
    let api_key = SecretString::from(api_key);
    let org_id = caller.write_org(&state.store, org_id.as_deref()).await?;
    let status = connections(&state)?
        .connect_key(&org_id, api_key, ConnectedVia::ApiKey, byok_providers)
        .await
        .map_err(provider_error)?;
    Ok(no_store(status))
}

/// `GET /v1/providers/openrouter` (member): the status, never the key.
#[utoipa::path(
    get,
    path = "/v1/providers/openrouter",
    tag = "providers",
    summary = "The organisation's OpenRouter connection (never the key)",
    params(OrgQuery),
    responses(
        (status = 200, description = "the connection status", body = ConnectionStatusDoc),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`invalid_id`"),
        (status = 503, description = "`provider_unavailable`"),
    ),
)]
pub(crate) async fn status(
    State(state): State<AppState>,
    OrgScope(org_id): ReadOrg,
) -> Result<Response, ApiError> {
    let status: ConnectionStatus = connections(&state)?
        .status(&org_id)
        .await
        .map_err(provider_error)?;
    Ok(no_store(status))
}

/// `DELETE /v1/providers/openrouter` (admin): disconnects, destroying the
/// ciphertext and the catalog.
#[utoipa::path(
    delete,
    path = "/v1/providers/openrouter",
    tag = "providers",
    summary = "Disconnect OpenRouter, destroying the stored key",
    params(OrgQuery),
    responses(
        (status = 200, description = "the (now disconnected) status", body = ConnectionStatusDoc),
        (status = 404, description = "`provider_not_connected`, `org_not_found`"),
        (status = 422, description = "`invalid_id`"),
        (status = 503, description = "`provider_unavailable`"),
    ),
)]
pub(crate) async fn disconnect(
    State(state): State<AppState>,
    OrgScope(org_id): WriteOrg,
) -> Result<Response, ApiError> {
    let c = connections(&state)?;
    if !c.disconnect(&org_id).await.map_err(provider_error)? {
        return Err(ApiError::not_found(
            "provider_not_connected",
            "the organisation has no OpenRouter connection to disconnect",
        ));
    }
    Ok(no_store(c.status(&org_id).await.map_err(provider_error)?))
}

/// Options of an OAuth connection (the body may be empty).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = OAuthStartRequest)]
pub(crate) struct StartBody {
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::ByokListDoc>)]
    byok_providers: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<IdDoc>)]
    org_id: Option<String>,
}

/// An optional JSON body: empty is the default, anything else must be JSON.
fn optional_body<T: Default + serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|e| {
            e == "application/json" || (e.starts_with("application/") && e.ends_with("+json"))
        });
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must be JSON: send Content-Type: application/json",
        ));
    }
    decode(bytes)
}

/// `POST /v1/providers/openrouter/oauth/start` (admin).
#[utoipa::path(
    post,
    path = "/v1/providers/openrouter/oauth/start",
    tag = "providers",
    summary = "Start connecting OpenRouter with OAuth (PKCE)",
    request_body(content = Option<StartBody>, description = "optional: an empty body (without Content-Type) is the same as `{}`"),
    responses(
        (status = 200, description = "where to send the admin's browser", body = OAuthStartDoc),
        (status = 422, description = "`invalid_byok_providers`, `invalid_id`"),
        (status = 503, description = "`secrets_key_missing`, `public_url_missing`, `provider_unavailable`"),
    ),
)]
pub(crate) async fn oauth_start(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let body: StartBody = optional_body(&headers, &bytes)?;
    let org_id = caller
        .write_org(&state.store, body.org_id.as_deref())
        .await?;
    let key_id = caller.key_id().map(|id| id.to_string());
    let start: OAuthStart = connections(&state)?
        .start_oauth(&org_id, key_id.as_deref(), body.byok_providers)
        .await
        .map_err(provider_error)?;
    tracing::info!(org_id = %org_id, "OAuth connection started");
    Ok(no_store(start))
}

/// `POST /v1/providers/openrouter/models/sync` (admin).
#[utoipa::path(
    post,
    path = "/v1/providers/openrouter/models/sync",
    tag = "providers",
    summary = "Discover the organisation's models from OpenRouter now",
    params(OrgQuery),
    responses(
        (status = 200, description = "the catalog status", body = ModelsStatusDoc),
        (status = 409, description = "`provider_not_connected`"),
        (status = 422, description = "`invalid_id`"),
        (status = 502, description = "`provider_unreachable`"),
        (status = 503, description = "`provider_unavailable`, a secrets code (the stored credential cannot be opened)"),
    ),
)]
pub(crate) async fn sync_models(
    State(state): State<AppState>,
    OrgScope(org_id): WriteOrg,
) -> Result<Json<ModelsStatus>, ApiError> {
    connections(&state)?
        .sync_models(&org_id)
        .await
        .map(Json)
        .map_err(provider_error)
}

/// The organisation's model catalog.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ModelList)]
pub(crate) struct ModelsBody {
    #[schema(value_type = Vec<ModelDoc>)]
    models: Vec<WireModel>,
    synced_at: Option<DateTime<Utc>>,
}

/// `GET /v1/providers/openrouter/models` (member).
#[utoipa::path(
    get,
    path = "/v1/providers/openrouter/models",
    tag = "providers",
    summary = "The organisation's model catalog",
    params(OrgQuery),
    responses(
        (status = 200, description = "the models", body = ModelsBody),
        (status = 404, description = "`org_not_found`"),
        (status = 422, description = "`invalid_id`"),
        (status = 503, description = "`provider_unavailable`"),
    ),
)]
pub(crate) async fn models(
    State(state): State<AppState>,
    OrgScope(org_id): ReadOrg,
) -> Result<Json<ModelsBody>, ApiError> {
    let (models, synced_at) = connections(&state)?
        .models(&org_id)
        .await
        .map_err(provider_error)?;
    Ok(Json(ModelsBody { models, synced_at }))
}

/// Marks a response as a page the problems middleware leaves alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Page;

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, paragraphs: &[String]) -> Response {
    let body: String = paragraphs
        .iter()
        .map(|p| format!("<p>{}</p>\n", escape(p)))
        .collect();
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>tally: {t}</title></head>\n<body>\n<h1>{t}</h1>\n{body}</body></html>\n",
        t = escape(title)
    );
    let mut resp = (status, Html(html)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp.extensions_mut().insert(Page);
    resp
}

fn failure_page(status: StatusCode, code: &str, detail: &str) -> Response {
    page(
        status,
        "OpenRouter is not connected",
        &[
            detail.to_owned(),
            "Nothing was stored. Start connecting again from tally.".to_owned(),
            format!("Problem code: {code}"),
        ],
    )
}

fn provider_failure_page(e: &ProviderError) -> Response {
    let status = match e {
        ProviderError::State(_)
        | ProviderError::ExchangeRefused(_)
        | ProviderError::StarterRevoked => StatusCode::BAD_REQUEST,
        ProviderError::KeyRejected(_) => StatusCode::BAD_REQUEST,
        ProviderError::Unreachable(_) => StatusCode::BAD_GATEWAY,
        ProviderError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        ProviderError::SecretsKeyMissing | ProviderError::Secret(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::BAD_REQUEST,
    };
    let detail = match e {
        ProviderError::Store(_) => "tally's database could not be reached; retry later".to_owned(),
        ProviderError::Secret(_) => {
            "this server cannot open the stored connection secret".to_owned()
        }
        e => e.to_string(),
    };
    tracing::info!(code = e.code(), "OAuth callback refused");
    failure_page(status, e.code(), &detail)
}

/// `GET /v1/providers/openrouter/oauth/callback?state=&code=` (no bearer
/// key; the state authorises it).
#[utoipa::path(
    get,
    path = "/v1/providers/openrouter/oauth/callback",
    tag = "providers",
    summary = "Where OpenRouter sends the admin's browser back (authorised by the single-use state, no key)",
    params(
        ("state" = String, Query, min_length = 1, description = "the state tally issued with the authorize URL"),
        ("code" = Option<String>, Query, description = "OpenRouter's authorization code"),
        ("error" = Option<String>, Query, description = "set by OpenRouter when access was not granted"),
    ),
    responses(
        (status = 200, description = "a page saying OpenRouter is connected", content_type = "text/html", body = String),
        (status = 400, description = "a page naming the problem: `oauth_state_missing`, `oauth_state_unknown`, `oauth_state_used`, `oauth_state_expired`, `oauth_denied`, `oauth_code_missing`, `oauth_exchange_refused`, `invalid_request`", content_type = "text/html", body = String),
        (status = 502, description = "a page: OpenRouter could not be reached", content_type = "text/html", body = String),
        (status = 503, description = "a page: the database or the secrets key is unavailable", content_type = "text/html", body = String),
    ),
)]
pub(crate) async fn oauth_callback(
    State(state): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let mut st: Option<String> = None;
    let mut code: Option<String> = None;
    let mut error: Option<String> = None;
    for (k, v) in pairs {
        let slot = match k.as_str() {
            "state" => &mut st,
            "code" => &mut code,
            "error" => &mut error,
            _ => continue,
        };
        if slot.is_some() {
            return failure_page(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("the parameter {k:?} is given more than once"),
            );
        }
        *slot = Some(v);
    }
    let Some(st) = st.filter(|s| !s.is_empty()) else {
        return failure_page(
            StatusCode::BAD_REQUEST,
            "oauth_state_missing",
            "this connection link carries no state",
        );
    };
    let Some(c) = state.connections.as_ref() else {
        return failure_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_unavailable",
            "this server runs without provider connections",
        );
    };
    if let Some(err) = error {
        // The admin denied access (or OpenRouter failed): use the state up.
        return match c.abandon_oauth(&st).await {
            Ok(_) => failure_page(
                StatusCode::BAD_REQUEST,
                "oauth_denied",
                &format!(
                    "OpenRouter did not grant access ({}).",
                    tally_events::strict::excerpt(&err)
                ),
            ),
            Err(e) => provider_failure_page(&e),
        };
    }
    let Some(code) = code.filter(|s| !s.is_empty()) else {
        return failure_page(
            StatusCode::BAD_REQUEST,
            "oauth_code_missing",
            "OpenRouter sent no authorization code",
        );
    };
    match c.finish_oauth(&st, &code).await {
        Ok((org_id, status)) => {
            tracing::info!(org_id = %org_id, "OAuth connection finished");
            let mut lines = vec![format!(
                "OpenRouter is connected for organisation {org_id}: its agents now run on this key."
            )];
            if let Some(label) = &status.key_label {
                lines.push(format!("Key: {label}"));
            }
            lines.push(match &status.models.error {
                None => format!("Models discovered: {}.", status.models.count),
                Some(e) => format!("Model discovery did not finish ({e}); it is retried later."),
            });
            lines.push("You can close this page.".to_owned());
            page(StatusCode::OK, "OpenRouter connected", &lines)
        }
        Err(e) => provider_failure_page(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_show() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn connect_body_never_prints_the_key() {
        let b: ConnectBody = serde_json::from_str(r#"{"api_key":"sk-or-v1-secret"}"#).unwrap();
        assert!(!format!("{b:?}").contains("secret"));
    }
}
