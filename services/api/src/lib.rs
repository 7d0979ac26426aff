//! tally's HTTP API (`tally api`): manages budgets and answers questions
//! about spend, over the Postgres ledger.
//!
//! JSON in and out, money as decimal strings, errors as RFC 9457
//! `application/problem+json` (see [`error`]). Endpoints:
//!
//! | route | access | success | errors |
//! |---|---|---|---|
//! | `POST /v1/orgs` | operator | 201 + the first admin key | 400, 409 (`org_exists`), 415, 422 |
//! | `POST /v1/keys` | admin | 201 + the key, shown once | 400, 409 (`limit_exceeded`), 415, 422 |
//! | `GET /v1/keys[?org_id=…]` | admin | 200 (never a secret) | 404, 422 |
//! | `DELETE /v1/keys/{id}` (revokes) | admin | 200 | 404 |
//! | `POST /v1/budgets` | admin | 201 + `Location` | 400, 413, 415, 422, 503 |
//! | `GET /v1/budgets[?org_id=…][&include_archived=true]` | member | 200 | 404, 422, 503 |
//! | `GET /v1/budgets/{id}` | member | 200 | 404, 422, 503 |
//! | `GET /v1/budgets/{id}/periods/{start}` | member | 200 | 404, 422 (`not_a_period_start`), 503 |
//! | `PATCH /v1/budgets/{id}` | admin | 200 | 400, 404, 415, 422 (`immutable_field`), 503 |
//! | `DELETE /v1/budgets/{id}` (archives) | admin | 200 | 404, 422, 503 |
//! | `GET /v1/budgets/{id}/entries?cursor=&limit=` | member | 200 | 404, 422, 503 |
//! | `POST /v1/budgets/check` | member | 200 | 400, 404, 415, 422, 503 |
//! | `GET /v1/generations/{generation_id}` | member | 200 | 404, 422, 503 |
//! | `GET /v1/spend?[org_id&]from&to&group_by` | member | 200 | 404, 422, 503 |
//! | `GET /v1/providers/openrouter/drift` | member | 200 | 409 (`provider_not_connected`), 502, 503 (see [`drift`]) |
//! | `GET /v1/reservations[?org_id&state&cursor&limit]` | member | 200 | 404, 422, 503 |
//! | `GET /v1/reservations/{request_id}` | member | 200 | 404, 422, 503 |
//! | `PUT /v1/providers/openrouter` (paste a key) | admin | 200 the status, never the key | 422 (`provider_key_rejected`), 502 (`provider_unreachable`), 503 (`secrets_key_missing`) |
//! | `GET /v1/providers/openrouter` | member | 200 the status, never the key | 404 |
//! | `DELETE /v1/providers/openrouter` | admin | 200 | 404 (`provider_not_connected`) |
//! | `POST /v1/providers/openrouter/oauth/start` | admin | 200 `{authorize_url, expires_at}` | 422, 503 (`secrets_key_missing`, `public_url_missing`) |
//! | `GET /v1/providers/openrouter/oauth/callback?state&code` | the OAuth state, no bearer key | 200 page | 400 page (`oauth_state_*`, `oauth_denied`, `oauth_exchange_refused`), 502/503 page |
//! | `POST /v1/providers/openrouter/models/sync` | admin | 200 `{count, synced_at, error}` | 409 (`provider_not_connected`) |
//! | `GET /v1/providers/openrouter/models` | member | 200 `{models, synced_at}` | 404 |
//! | `PUT`/`GET`/`DELETE /v1/routing` | admin/member/admin | 200 the profile with `risk` | 404 (`routing_profile_not_found`), 422 (`byok_no_providers`, `unknown_preset`, …) |
//! | `PUT`/`GET`/`DELETE /v1/agents/{agent_id}/routing` | admin/member/admin | 200 | as above |
//! | `POST /v1/webhooks` | admin | 201 + the signing secret, shown once | 409 (`limit_exceeded`), 422 (`webhook_url_*`, `webhook_target_forbidden`, `webhook_host_unresolvable`, `webhook_events_empty`, `unknown_webhook_event`, `duplicate_webhook_event`), 503 (`secrets_key_missing`) |
//! | `GET /v1/webhooks[?org_id&cursor&limit]` | admin | 200 (never a secret) | 404, 422 |
//! | `GET`/`DELETE /v1/webhooks/{id}` | admin | 200 | 404 (`webhook_not_found`) |
//! | `GET /v1/webhooks/{id}/deliveries[?cursor&limit]` | admin | 200 the delivery log | 404 (`webhook_not_found`), 422 |
//! | `GET /healthz` | none | 200 | |
//! | `GET /readyz` | none | 200 | 503 |
//! | `GET /metrics` | none | 200 | |
//! | `GET /openapi.json` | none | 200 the OpenAPI 3.1 document (see [`openapi`]) | |
//!
//! Every `/v1/*` route needs `Authorization: Bearer <key>` (401
//! `missing_api_key` / `malformed_api_key` / `invalid_api_key`, 403
//! `forbidden_role` below its access level; see [`auth`]). The organisation
//! is the key's: `org_id` in a query or body is optional and, when given,
//! must name it (a write naming another is 403 `org_mismatch`, a read 404
//! `org_not_found`); another organisation's budget, generation or key is
//! 404 as if it did not exist.
//!
//! Unknown routes answer 404 `route_not_found`, wrong methods 405
//! `method_not_allowed`, requests slower than the configured timeout 503
//! `request_timeout`.
//!
//! The OAuth callback is the one `/v1` path without a bearer key: the
//! admin's browser arrives there from OpenRouter, and the single-use state
//! it carries (issued to an admin of one organisation) is what authorises
//! it ([`Access::OAuthState`]).
//!
//! Modules: [`auth`] (keys, roles, the caller), [`error`] (problems),
//! [`openapi`] (the generated OpenAPI 3.1 document),
//! [`metrics`] (Prometheus), and private modules per resource (budgets,
//! generations, spend, keys, health, providers, routing, webhooks), the request extractors (extract,
//! org_query), the response shapes (wire) and headers (respond), and the
//! pagination they share.
//!
//! # Decisions
//!
//! * **Money must be strings.** `limit_usd` given as a JSON number is
//!   refused (422 `amount_not_string` naming `limit_usd`): most JSON
//!   libraries decode numbers as doubles, so a number may already have lost
//!   digits before tally sees it. Responses carry every amount as a decimal
//!   string for the same reason.
//! * **`remaining_usd` is clamped at zero**; an overshoot is reported as
//!   `over_by_usd` (see the wire module).
//! * **Scope, period, time zone and organisation of a budget are
//!   immutable**: changing them would move money already booked (see the
//!   budgets module).
//! * **Enforcement defaults to `hard`** (the contract names no default): a
//!   budget exists to cap spend.
//! * **Strict input.** Unknown body fields and query parameters are refused
//!   (422 naming them), so a typo never silently changes a request; bodies
//!   are limited to [`BODY_LIMIT`] bytes by default.
//!   Nested objects are never read from arrays (serde would read `[..]`
//!   positionally). A whole number may be written `80.0` as well as `80`:
//!   JSON Schema's `integer`, which the OpenAPI document states, admits
//!   both.
//! * **One table declares every route's access.** [`routes`] lists each
//!   `/v1` method and path with the [`Access`] it needs; the router is
//!   built from it alone, so a route cannot exist without a declared role,
//!   and a test walks the table with every kind of caller. Handlers take
//!   the [`auth::Caller`] extractor, which only the table's layer provides.
//! * **The `Authorization` header is sensitive.** It is marked so before
//!   any layer sees it (its value prints as `Sensitive` in debug output)
//!   and request logs never include headers.
//! * **Limits everywhere** ([`limits`], [`server`]): header-read, idle and
//!   request timeouts, a body limit, a connection cap, per-organisation
//!   limits on what may be created, and every list paginated.
//! * **The OpenAPI document is generated from the route table.** Each
//!   handler carries its `#[utoipa::path]` attribute, and the table row
//!   takes the handler *through* that attribute (`utoipa_axum::routes!`),
//!   so the served route and its document entry are one value: a route
//!   cannot be added without its entry, and the row's method and path must
//!   equal the attribute's. What the table alone knows (security, access
//!   level, the problems of the shared layers) is added to every operation
//!   the same way ([`openapi`]), instead of being repeated by hand per
//!   handler where it would drift. `utoipa` because it derives schemas
//!   from the very structs the handlers serialise (with serde's renames,
//!   `deny_unknown_fields` and defaults), emits OpenAPI 3.1, and needs no
//!   runtime or macro-time network access; a hand-written document would
//!   drift from the code, which is what the fuzzing against it is meant to
//!   catch, not to cause.
//! * **Every error is a problem.** A middleware converts any error response
//!   that is not yet `application/problem+json` (routing 404/405, body
//!   limit, timeout) into one; no plain-text rejection reaches a client.

pub mod auth;
pub mod drift;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod server;

mod budgets;
mod extract;
mod generations;
mod health;
mod keys;
mod org_query;
mod pagination;
mod providers;
mod reservations;
mod respond;
mod routing;
mod spend;
mod webhooks;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderName, Method, StatusCode};
use axum::routing::MethodRouter;
use axum::Router;
use secrecy::SecretString;
use tally_store::Store;
use tally_telemetry::Registry;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::routes;

pub use auth::{Access, Authenticator, Caller};
pub use error::{ApiError, Problem};
pub use limits::{HttpLimits, OrgLimits};
pub use metrics::ApiMetrics;
pub use webhooks::WebhookSettings;

/// Largest accepted request body, in bytes (64 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Default time a request may take before it is answered 503.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Header carrying the request id (set when the client sent none, echoed
/// in the response, logged in the request's span).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// How the API is run.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Listen address (`TALLY_HTTP_ADDR`, default `127.0.0.1:8080`).
    pub addr: SocketAddr,
    /// NATS subject prefix of derived events (`TALLY_SUBJECT_PREFIX`).
    pub prefix: String,
    /// Time a request may take before it is answered 503 `request_timeout`.
    pub request_timeout: Duration,
    /// The operator token (`TALLY_OPERATOR_TOKEN`): admin of every
    /// organisation, and the only caller of `POST /v1/orgs`. `None`: no
    /// operator access over HTTP.
    pub operator_token: Option<SecretString>,
    /// Connection limits and timeouts (its `request_timeout` is replaced
    /// by the field above).
    pub http_limits: HttpLimits,
    /// What one organisation may create.
    pub org_limits: OrgLimits,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            prefix: "tally".to_owned(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            operator_token: None,
            http_limits: HttpLimits::default(),
            org_limits: OrgLimits::default(),
        }
    }
}

/// What every handler shares: the store, the metrics registry and settings.
#[derive(Clone, Debug)]
pub struct AppState {
    store: Store,
    registry: Registry,
    prefix: String,
    metrics: ApiMetrics,
    http_limits: HttpLimits,
    org_limits: OrgLimits,
    auth: Authenticator,
    providers: Option<tally_provider::OrgProviders>,
    connections: Option<tally_provider::Connections>,
    webhooks: WebhookSettings,
}

impl AppState {
    /// Creates the state and registers the API's metrics in `registry`
    /// (fails if they are registered there already). `prefix` is the
    /// subject prefix of the events a budget creation publishes.
    pub fn new(
        store: Store,
        registry: Registry,
        prefix: String,
    ) -> Result<Self, prometheus::Error> {
        let metrics = ApiMetrics::register(&registry)?;
        Ok(AppState {
            store,
            registry,
            prefix,
            metrics,
            http_limits: HttpLimits::default(),
            org_limits: OrgLimits::default(),
            auth: Authenticator::new(None),
            providers: None,
            connections: None,
            webhooks: WebhookSettings::default(),
        })
    }

    /// Creates the state from a configuration (its `prefix` and
    /// `request_timeout`; `addr` is for the caller to bind).
    pub fn from_config(
        store: Store,
        registry: Registry,
        config: &ApiConfig,
    ) -> Result<Self, prometheus::Error> {
        Ok(AppState::new(store, registry, config.prefix.clone())?
            .with_http_limits(config.http_limits)
            .with_org_limits(config.org_limits)
            .with_request_timeout(config.request_timeout)
            .with_operator_token(config.operator_token.as_ref()))
    }

    /// Lets `token` act as admin of every organisation (`None`: nobody).
    pub fn with_operator_token(mut self, token: Option<&SecretString>) -> Self {
        self.auth = Authenticator::new(token);
        self
    }

    /// Sets the time a request may take (default
    /// [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.http_limits.request_timeout = timeout;
        self
    }

    /// Sets the connection limits and timeouts (default
    /// [`HttpLimits::default`]), the request timeout among them.
    pub fn with_http_limits(mut self, limits: HttpLimits) -> Self {
        self.http_limits = limits;
        self
    }

    /// Sets what one organisation may create (default
    /// [`OrgLimits::default`]).
    pub fn with_org_limits(mut self, limits: OrgLimits) -> Self {
        self.org_limits = limits;
        self
    }

    /// The organisations' OpenRouter connections the drift check asks
    /// with (each organisation's own key); without them the drift answers
    /// 503 `provider_unavailable`.
    pub fn with_providers(mut self, providers: tally_provider::OrgProviders) -> Self {
        self.providers = Some(providers);
        self
    }

    /// The connection service behind `/v1/providers/openrouter` (paste a
    /// key, OAuth, status, models); without it those routes answer 503
    /// `provider_unavailable`. Its key-encryption key decides whether
    /// secrets can be stored (503 `secrets_key_missing` otherwise).
    pub fn with_connections(mut self, connections: tally_provider::Connections) -> Self {
        self.connections = Some(connections);
        self
    }

    /// How webhooks are registered: the key-encryption key that seals
    /// their signing secrets (without one, registering answers 503
    /// `secrets_key_missing`) and whether private targets are allowed.
    pub fn with_webhooks(mut self, settings: WebhookSettings) -> Self {
        self.webhooks = settings;
        self
    }

    /// What one organisation may create.
    pub fn org_limits(&self) -> OrgLimits {
        self.org_limits
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The metrics registry served on `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The subject prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// One `/v1` route: method, path template, the access it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: &'static str,
    /// Path template (`/v1/budgets/{id}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

struct Route {
    spec: RouteSpec,
    handler: MethodRouter<AppState>,
    doc: openapi::DocOp,
}

/// One row of the table: the handler comes with its OpenAPI operation
/// (`utoipa_axum::routes!`), whose method and path must be the row's.
fn route(
    method: Method,
    path: &'static str,
    access: Access,
    documented: openapi::Documented,
) -> Route {
    let (mut doc, handler) = openapi::take_one(documented);
    let method = metrics::method_label(&method);
    assert!(
        doc.method == method && doc.path == path,
        "route table row {method} {path} is documented as {} {}",
        doc.method,
        doc.path
    );
    openapi::finish_operation(&mut doc.operation, method, path, access);
    Route {
        spec: RouteSpec {
            method,
            path,
            access,
        },
        handler,
        doc,
    }
}

/// Every `/v1` route and the access it needs: the one table the router is
/// built from (see the crate docs).
#[rustfmt::skip]
fn v1_routes() -> Vec<Route> {
    use Access::{Admin, Member, OAuthState, Operator};
    vec![
        route(Method::POST,   "/v1/orgs",                             Operator,   routes!(keys::create_org)),
        route(Method::POST,   "/v1/keys",                             Admin,      routes!(keys::create)),
        route(Method::GET,    "/v1/keys",                             Admin,      routes!(keys::list)),
        route(Method::DELETE, "/v1/keys/{id}",                        Admin,      routes!(keys::revoke)),
        route(Method::POST,   "/v1/budgets",                          Admin,      routes!(budgets::create)),
        route(Method::GET,    "/v1/budgets",                          Member,     routes!(budgets::list)),
        route(Method::POST,   "/v1/budgets/check",                    Member,     routes!(budgets::check)),
        route(Method::GET,    "/v1/budgets/{id}",                     Member,     routes!(budgets::get)),
        route(Method::PATCH,  "/v1/budgets/{id}",                     Admin,      routes!(budgets::patch)),
        route(Method::DELETE, "/v1/budgets/{id}",                     Admin,      routes!(budgets::archive)),
        route(Method::GET,    "/v1/budgets/{id}/periods/{start}",     Member,     routes!(budgets::period)),
        route(Method::GET,    "/v1/budgets/{id}/entries",             Member,     routes!(budgets::entries)),
        route(Method::GET,    "/v1/generations/{generation_id}",      Member,     routes!(generations::get)),
        route(Method::GET,    "/v1/spend",                            Member,     routes!(spend::get)),
        route(Method::GET,    "/v1/providers/openrouter/drift",       Member,     routes!(drift::get)),
        route(Method::GET,    "/v1/reservations",                     Member,     routes!(reservations::list)),
        route(Method::GET,    "/v1/reservations/{request_id}",        Member,     routes!(reservations::get)),
        route(Method::PUT,    "/v1/providers/openrouter",             Admin,      routes!(providers::connect)),
        route(Method::GET,    "/v1/providers/openrouter",             Member,     routes!(providers::status)),
        route(Method::DELETE, "/v1/providers/openrouter",             Admin,      routes!(providers::disconnect)),
        route(Method::POST,   "/v1/providers/openrouter/oauth/start", Admin,      routes!(providers::oauth_start)),
        route(Method::GET,    OAUTH_CALLBACK_PATH,                    OAuthState, routes!(providers::oauth_callback)),
        route(Method::POST,   "/v1/providers/openrouter/models/sync", Admin,      routes!(providers::sync_models)),
        route(Method::GET,    "/v1/providers/openrouter/models",      Member,     routes!(providers::models)),
        route(Method::PUT,    "/v1/routing",                          Admin,      routes!(routing::put_default)),
        route(Method::GET,    "/v1/routing",                          Member,     routes!(routing::get_default)),
        route(Method::DELETE, "/v1/routing",                          Admin,      routes!(routing::delete_default)),
        route(Method::PUT,    "/v1/agents/{agent_id}/routing",        Admin,      routes!(routing::put_agent)),
        route(Method::GET,    "/v1/agents/{agent_id}/routing",        Member,     routes!(routing::get_agent)),
        route(Method::DELETE, "/v1/agents/{agent_id}/routing",        Admin,      routes!(routing::delete_agent)),
        route(Method::POST,   "/v1/webhooks",                         Admin,      routes!(webhooks::create)),
        route(Method::GET,    "/v1/webhooks",                         Admin,      routes!(webhooks::list)),
        route(Method::GET,    "/v1/webhooks/{id}",                    Admin,      routes!(webhooks::get)),
        route(Method::DELETE, "/v1/webhooks/{id}",                    Admin,      routes!(webhooks::delete)),
        route(Method::GET,    "/v1/webhooks/{id}/deliveries",         Admin,      routes!(webhooks::deliveries)),
    ]
}

/// The OAuth callback (no bearer key; see [`Access::OAuthState`]).
pub const OAUTH_CALLBACK_PATH: &str = tally_provider::oauth::CALLBACK_PATH;

/// The route table: every `/v1` method and path with its access level.
pub fn routes() -> Vec<RouteSpec> {
    v1_routes().into_iter().map(|r| r.spec).collect()
}

/// The routes outside `/v1`, none needing a key: probes, metrics and the
/// OpenAPI document itself.
fn public_routes() -> Vec<(openapi::DocOp, MethodRouter<AppState>)> {
    vec![
        openapi::take_one(routes!(health::healthz)),
        openapi::take_one(routes!(health::readyz)),
        openapi::take_one(routes!(health::metrics)),
        openapi::take_one(routes!(openapi::serve_document)),
    ]
}

/// The OpenAPI 3.1 document of every route (served at
/// [`openapi::OPENAPI_PATH`]; see [`openapi`]).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let ops = v1_routes()
        .into_iter()
        .map(|r| (r.doc, r.spec.access))
        .collect();
    let public = public_routes().into_iter().map(|(doc, _)| doc).collect();
    openapi::build(ops, public)
}

/// The API's router with every layer (request ids, tracing, metrics,
/// problems, authentication, timeout, body limit).
pub fn router(state: AppState) -> Router {
    build_router(state, None)
}

/// The same router with the authentication layer replaced by one that
/// hands every `/v1` request `caller`: only for measuring what
/// authentication costs (`benches/auth.rs`). Never serve it.
#[doc(hidden)]
pub fn router_with_fixed_caller(state: AppState, caller: auth::Caller) -> Router {
    build_router(state, Some(caller))
}

fn build_router(state: AppState, fixed: Option<auth::Caller>) -> Router {
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let mut routes = Router::new();
    for r in v1_routes() {
        if r.spec.access == Access::OAuthState {
            routes = routes.route(r.spec.path, r.handler);
            continue;
        }
        if let Some(caller) = fixed.clone() {
            let layer =
                axum::middleware::from_fn(move |mut req: Request, next: axum::middleware::Next| {
                    req.extensions_mut().insert(caller.clone());
                    next.run(req)
                });
            routes = routes.route(r.spec.path, r.handler.route_layer(layer));
            continue;
        }
        let layer =
            axum::middleware::from_fn_with_state((state.clone(), r.spec.access), auth::require);
        routes = routes.route(r.spec.path, r.handler.route_layer(layer));
    }
    for (doc, handler) in public_routes() {
        routes = routes.route(&doc.path, handler);
    }
    let routes = routes
        // Inner route layers: the timeout, then the matched route template
        // for the metrics (so timed-out requests keep their route label).
        .route_layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            state.http_limits.request_timeout,
        ))
        .route_layer(axum::middleware::from_fn(metrics::record_route))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route")
        });
    let metrics = state.metrics.clone();
    let body_limit = state.http_limits.body_limit;
    routes.with_state(state).layer(
        ServiceBuilder::new()
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
            ]))
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get(REQUEST_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!(
                    "http",
                    method = %req.method(),
                    path = %req.uri().path(),
                    request_id = %id,
                )
            }))
            .layer(PropagateRequestIdLayer::new(request_id))
            .layer(axum::middleware::from_fn_with_state(
                metrics,
                metrics::track,
            ))
            .layer(axum::middleware::from_fn(error::problems_only))
            .layer(DefaultBodyLimit::max(body_limit)),
    )
}

/// Serves the API on `listener` until `shutdown` completes, then finishes
/// the requests in flight; with the state's [`HttpLimits`] (see
/// [`server`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.http_limits;
    let metrics = state.metrics.clone();
    server::serve(listener, router(state), limits, metrics, shutdown).await
}
