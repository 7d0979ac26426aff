//! The OpenAPI 3.1 document of the API, served at `GET /openapi.json`
//! (no key needed), generated from the code.
//!
//! Each handler carries a `#[utoipa::path]` attribute (method, path,
//! parameters, request body, success responses and its own problem
//! codes); the route table (`v1_routes` in the crate root) is built from
//! those attributes with `utoipa_axum::routes!`, so the axum route *is*
//! the documented one: a route cannot be served without its document
//! entry, and the table's literal method and path must equal the
//! attribute's (checked when the table is built). [`finish_operation`]
//! then adds what the table alone knows, the same way for every route:
//!
//! * the security requirement and the `x-tally-access` extension
//!   (`member`, `admin`, `operator`, `oauth_state`, `public`);
//! * every problem response the shared layers can give: 401 on every
//!   keyed route, 403 below its access level, 400/413/415/422 for a JSON
//!   body, 400/414/422 for query parameters, 400/404 for path parameters,
//!   503 everywhere (database, timeout), each as `application/problem+json`
//!   with the [`Problem`](crate::Problem) schema (RFC 9457 plus `code` and
//!   `field`).
//!
//! # Invariants
//!
//! * Every route of the route table is in the document with the same
//!   method and access, and every documented `/v1` path is a route (unit
//!   tests below and `tests/openapi.rs`).
//! * Money is a decimal string (`^-?[0-9]+(\.[0-9]+)?$`; inputs also
//!   bounded to the accepted range), times are `date-time` strings.
//! * The document is deterministic: maps are ordered (no
//!   `preserve_order`), so the same code serves byte-for-byte the same
//!   document (a snapshot test holds it).

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use utoipa::openapi::content::Content;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem, Paths};
use utoipa::openapi::response::Response as DocResponse;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::auth::Access;
use crate::error::PROBLEM_CONTENT_TYPE;
use crate::AppState;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// Any decimal string amount (responses; adjustments and drift may be
/// negative).
pub const MONEY_PATTERN: &str = r"^-?[0-9]+(\.[0-9]+)?$";

/// A non-negative amount the API accepts: at most 10 integer digits and
/// 28 fractional ones (within ±10^10 at scale 28; money crate rules).
pub const AMOUNT_INPUT_PATTERN: &str = r"^(0|[1-9][0-9]{0,9})(\.[0-9]{1,28})?$";

/// Organisation, budget and agent ids.
pub const ID_PATTERN: &str = r"^[A-Za-z0-9_-]{1,64}$";

/// The security scheme of organisation API keys.
pub const API_KEY_SCHEME: &str = "apiKey";
/// The security scheme of the operator token.
pub const OPERATOR_SCHEME: &str = "operatorToken";
/// The extension naming each operation's access level.
pub const ACCESS_EXTENSION: &str = "x-tally-access";

/// What `utoipa_axum::routes!` gives for one handler: its schemas, its
/// path item and the method router built from the same attribute.
pub(crate) type Documented = (Vec<(String, RefOr<Schema>)>, Paths, MethodRouter<AppState>);

/// One documented operation taken out of a [`Documented`].
pub(crate) struct DocOp {
    pub path: String,
    pub method: &'static str,
    pub operation: Operation,
    pub schemas: Vec<(String, RefOr<Schema>)>,
}

fn slot<'a>(item: &'a mut PathItem, method: &str) -> Option<&'a mut Option<Operation>> {
    Some(match method {
        "GET" => &mut item.get,
        "POST" => &mut item.post,
        "PUT" => &mut item.put,
        "PATCH" => &mut item.patch,
        "DELETE" => &mut item.delete,
        _ => return None,
    })
}

/// Splits a documented handler into its one operation and its router.
/// Panics when the attribute documents not exactly one method of one path:
/// a programming error that every test building the router catches.
pub(crate) fn take_one(doc: Documented) -> (DocOp, MethodRouter<AppState>) {
    let (schemas, paths, router) = doc;
    let mut items = paths.paths.into_iter();
    let (path, mut item) = items
        .next()
        .unwrap_or_else(|| panic!("a documented handler has no path"));
    assert!(items.next().is_none(), "{path}: one path per handler");
    let mut found = None;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        if let Some(op) = slot(&mut item, method).and_then(Option::take) {
            assert!(found.is_none(), "{path}: one method per handler");
            found = Some((method, op));
        }
    }
    let (method, operation) = found.unwrap_or_else(|| panic!("{path}: no documented method"));
    (
        DocOp {
            path,
            method,
            operation,
            schemas,
        },
        router,
    )
}

fn problem_ref() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name("Problem"))
}

/// Codes the shared layers add per status, by situation.
fn shared_codes(status: u16, op: &Operation, access: Access) -> Vec<&'static str> {
    let has_body = op.request_body.is_some();
    let params = op.parameters.as_deref().unwrap_or(&[]);
    let has_query = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query));
    let has_path = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Path));
    let keyed = matches!(access, Access::Member | Access::Admin | Access::Operator);
    let mut codes = Vec::new();
    match status {
        400 => {
            if has_body {
                codes.extend(["malformed_json", "invalid_request"]);
            }
            if has_query || has_path {
                codes.push("invalid_request");
            }
        }
        401 if keyed => codes.extend(["missing_api_key", "malformed_api_key", "invalid_api_key"]),
        403 => match access {
            Access::Admin => codes.extend(["forbidden_role", "org_mismatch"]),
            Access::Operator => codes.push("forbidden_role"),
            _ => {}
        },
        404 => {
            if has_path {
                codes.push("route_not_found");
            }
            if (has_query || has_body) && matches!(access, Access::Member | Access::Admin) {
                codes.push("org_not_found");
            }
        }
        413 if has_body => codes.push("payload_too_large"),
        414 if has_query => codes.push("uri_too_long"),
        415 if has_body => codes.push("unsupported_media_type"),
        422 => {
            if has_body {
                codes.extend([
                    "malformed_json",
                    "invalid_body",
                    "unknown_field",
                    "missing_field",
                    "invalid_field",
                    "duplicate_key",
                    "control_character",
                ]);
            }
            if has_query {
                codes.extend(["unknown_field", "missing_field", "invalid_field"]);
            }
        }
        503 => codes.extend([
            "database_unavailable",
            "transient_conflict",
            "request_timeout",
        ]),
        _ => {}
    }
    codes.dedup();
    codes
}

/// Statuses every operation is checked for.
const SHARED_STATUSES: [u16; 9] = [400, 401, 403, 404, 413, 414, 415, 422, 503];

fn problem_response(description: String, status: u16) -> DocResponse {
    let mut r = DocResponse::new(description);
    r.content.insert(
        PROBLEM_CONTENT_TYPE.to_owned(),
        Content::new(Some(problem_ref())),
    );
    if status == 401 {
        r.headers
            .insert("WWW-Authenticate".to_owned(), Header::new(String::schema()));
    }
    if status == 503 {
        let mut h = Header::new(u32::schema());
        h.description = Some("seconds to wait before retrying (database problems)".into());
        r.headers.insert("Retry-After".to_owned(), h);
    }
    r
}

fn code_list(codes: &[&str]) -> String {
    codes
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A unique operation id from the method and path:
/// `get_v1_budgets_id_periods_start`.
pub(crate) fn operation_id(method: &str, path: &str) -> String {
    let raw: String = format!("{method}_{path}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    raw.split('_')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

/// Completes an operation with what its access level and the shared
/// layers add (see the module docs).
pub(crate) fn finish_operation(op: &mut Operation, method: &str, path: &str, access: Access) {
    op.operation_id = Some(operation_id(method, path));
    op.extensions = Some(
        ExtensionsBuilder::new()
            .add(ACCESS_EXTENSION, access.as_str())
            .build(),
    );
    let none: [&str; 0] = [];
    op.security = match access {
        Access::Member | Access::Admin => Some(vec![
            SecurityRequirement::new(API_KEY_SCHEME, none),
            SecurityRequirement::new(OPERATOR_SCHEME, none),
        ]),
        Access::Operator => Some(vec![SecurityRequirement::new(OPERATOR_SCHEME, none)]),
        Access::OAuthState => None,
    };
    let html = access == Access::OAuthState;
    for status in SHARED_STATUSES {
        let shared = if html {
            Vec::new()
        } else {
            shared_codes(status, op, access)
        };
        let key = status.to_string();
        if shared.is_empty() {
            continue;
        }
        match op.responses.responses.get_mut(&key) {
            Some(RefOr::T(r)) => {
                r.description = format!("{}; also {}", r.description, code_list(&shared));
            }
            Some(RefOr::Ref(_)) => {}
            None => {
                op.responses
                    .responses
                    .insert(key, RefOr::T(problem_response(code_list(&shared), status)));
            }
        }
    }
    // Every error response a handler declared with a description only
    // gets the problem body.
    for (status, resp) in op.responses.responses.iter_mut() {
        let RefOr::T(r) = resp else { continue };
        let code: u16 = status.parse().unwrap_or(0);
        if code >= 400 && r.content.is_empty() && !html {
            let full = problem_response(String::new(), code);
            r.content = full.content;
            for (k, v) in full.headers {
                r.headers.entry(k).or_insert(v);
            }
        }
    }
}

/// Builds the document from the documented operations.
pub(crate) fn build(ops: Vec<(DocOp, Access)>, public: Vec<DocOp>) -> OpenApi {
    let mut paths = Paths::new();
    let mut schemas: Vec<(String, RefOr<Schema>)> = Vec::new();
    let public = public.into_iter().map(|mut op| {
        op.operation.extensions = Some(
            ExtensionsBuilder::new()
                .add(ACCESS_EXTENSION, "public")
                .build(),
        );
        op
    });
    for op in ops.into_iter().map(|(op, _)| op).chain(public) {
        let mut op = op;
        if !op.path.starts_with("/v1/") {
            op.operation.operation_id = Some(operation_id(op.method, &op.path));
        }
        schemas.extend(op.schemas);
        let item = paths.paths.entry(op.path).or_default();
        if let Some(s) = slot(item, op.method) {
            *s = Some(op.operation);
        }
    }
    // The shared schemas, whether or not a handler's attribute named them
    // (parameters refer to them without collecting them).
    for (name, schema) in [
        (
            crate::error::Problem::name(),
            crate::error::Problem::schema(),
        ),
        (IdDoc::name(), IdDoc::schema()),
        (UsdDoc::name(), UsdDoc::schema()),
        (UsdAmountDoc::name(), UsdAmountDoc::schema()),
        (ThresholdDoc::name(), ThresholdDoc::schema()),
        (TimezoneDoc::name(), TimezoneDoc::schema()),
        (ModelIdDoc::name(), ModelIdDoc::schema()),
        (ServerToolDoc::name(), ServerToolDoc::schema()),
        (ByokProviderDoc::name(), ByokProviderDoc::schema()),
        (ByokListDoc::name(), ByokListDoc::schema()),
        (BoolTextDoc::name(), BoolTextDoc::schema()),
        (RoleDoc::name(), RoleDoc::schema()),
    ] {
        schemas.push((name.into_owned(), schema));
    }
    let mut components = ComponentsBuilder::new()
        .security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tly_…")
                    .description(Some(
                        "An organisation's API key (`tly_` + 32 or more base62 characters), \
                         admin or member; the organisation of every request is the key's.",
                    ))
                    .build(),
            ),
        )
        .security_scheme(
            OPERATOR_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The operator token (TALLY_OPERATOR_TOKEN): admin of every \
                         organisation (name it with `org_id`) and the only caller of \
                         POST /v1/orgs. Unset: no operator access over HTTP.",
                    ))
                    .build(),
            ),
        )
        .build();
    for (name, schema) in schemas {
        components.schemas.insert(name, schema);
    }
    let api = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("tally")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Event-sourced cost accounting for OpenRouter generations: budgets, \
                     the ledger, spend, provider connections and routing profiles. JSON in \
                     and out, money as decimal strings, errors as RFC 9457 \
                     application/problem+json with a stable `code` (and the offending \
                     `field` where there is one).",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components))
        .build();
    text_rules(api)
}

/// What every JSON string of a body obeys (the strict JSON reading the
/// bus uses too): no C0 control character other than tab, line feed and
/// carriage return. Fields checked further (names, scope values, ids,
/// cursors) carry their own stricter pattern.
pub const TEXT_PATTERN: &str = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$";

/// Adds [`TEXT_PATTERN`] to every JSON string schema without a pattern,
/// format or enumeration (in the components, the parameters and the JSON
/// request bodies; not in text/html or text/plain answers, which are
/// documents), and makes an optional request body (`Option<T>`) a body
/// that may be left out instead of one that may be `null`.
fn text_rules(api: OpenApi) -> OpenApi {
    fn strings(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                let is_string = match m.get("type") {
                    Some(serde_json::Value::String(t)) => t == "string",
                    Some(serde_json::Value::Array(ts)) => ts.iter().any(|t| t == "string"),
                    _ => false,
                };
                let free = !["pattern", "format", "enum", "const"]
                    .iter()
                    .any(|k| m.contains_key(*k));
                if is_string && free {
                    m.insert("pattern".into(), TEXT_PATTERN.into());
                }
                m.values_mut().for_each(strings);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strings),
            _ => {}
        }
    }
    let Ok(mut v) = serde_json::to_value(&api) else {
        return api;
    };
    if let Some(schemas) = v.pointer_mut("/components/schemas") {
        strings(schemas);
    }
    if let Some(serde_json::Value::Object(paths)) = v.get_mut("paths") {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                if let Some(params) = op.get_mut("parameters") {
                    strings(params);
                }
                let Some(body) = op.get_mut("requestBody") else {
                    continue;
                };
                let mut optional = false;
                if let Some(schema) = body.pointer_mut("/content/application~1json/schema") {
                    let inner = schema
                        .get("oneOf")
                        .and_then(|o| o.as_array())
                        .filter(|o| o.len() == 2 && o[0] == serde_json::json!({"type": "null"}))
                        .map(|o| o[1].clone());
                    if let Some(inner) = inner {
                        *schema = inner;
                        optional = true;
                    }
                    strings(schema);
                }
                if optional {
                    body["required"] = false.into();
                }
            }
        }
    }
    serde_json::from_value(v).unwrap_or(api)
}

static DOCUMENT: OnceLock<Vec<u8>> = OnceLock::new();

/// The served document, as JSON bytes (built once).
pub fn document_json() -> &'static [u8] {
    DOCUMENT.get_or_init(|| {
        serde_json::to_vec_pretty(&crate::openapi_document()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "OpenAPI document cannot be serialised");
            b"{}".to_vec()
        })
    })
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json", body = Object)),
)]
pub(crate) async fn serve_document() -> Response {
    let mut resp = document_json().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

// ------------------------------------------------------------ doc types

macro_rules! string_schema {
    ($(#[$m:meta])* $ty:ident, $name:literal, $pattern:expr, $example:literal, $desc:literal) => {
        $(#[$m])*
        pub(crate) struct $ty;
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some($pattern))
                    .description(Some($desc))
                    .examples([serde_json::json!($example)])
                    .into()
            }
        }
        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

string_schema!(
    /// A USD amount as a decimal string (responses).
    UsdDoc,
    "Usd",
    MONEY_PATTERN,
    "12.50",
    "USD as a decimal string, exact (never a JSON number)"
);

string_schema!(
    /// A non-negative USD amount as a decimal string (inputs).
    UsdAmountDoc,
    "UsdAmount",
    AMOUNT_INPUT_PATTERN,
    "100.00",
    "a non-negative USD amount as a decimal string (a JSON number is refused with \
     `amount_not_string`)"
);

string_schema!(
    /// A model id of a routing profile.
    ModelIdDoc,
    "ModelId",
    r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
    "openai/gpt-4o",
    "a model id: 1 to 256 printable characters, not blank"
);

string_schema!(
    /// A server tool name.
    ServerToolDoc,
    "ServerTool",
    r"^[A-Za-z0-9_:.-]{1,64}$",
    "web_search",
    "a server tool name"
);

string_schema!(
    /// An organisation, budget or agent id.
    IdDoc,
    "Id",
    ID_PATTERN,
    "acme",
    "an id: 1 to 64 of A-Z a-z 0-9 _ -"
);

/// How a budget's spend is grouped in time.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = PeriodKind)]
#[allow(dead_code)]
pub(crate) enum PeriodKindDoc {
    Total,
    Daily,
    Weekly,
    Monthly,
}

/// What a budget does when its limit is reached.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Enforcement)]
#[allow(dead_code)]
pub(crate) enum EnforcementDoc {
    Hard,
    Soft,
}

/// Which generations of the organisation a budget counts; an unset field
/// matches anything, `{}` the whole organisation.
#[derive(serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Scope)]
#[allow(dead_code)]
pub(crate) struct ScopeDoc {
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*$"
    )]
    agent_id: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*$"
    )]
    session_id: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*$"
    )]
    user_id: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*$"
    )]
    model: Option<String>,
}

/// A key's role.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Role)]
#[allow(dead_code)]
pub(crate) enum RoleDoc {
    Admin,
    Member,
}

/// How a ledger entry's amount was priced.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Basis)]
#[allow(dead_code)]
pub(crate) enum BasisDoc {
    Actual,
    Estimate,
    None,
}

/// A ledger entry's kind.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = EntryKind)]
#[allow(dead_code)]
pub(crate) enum EntryKindDoc {
    Debit,
    Adjustment,
}

/// Whether a parameter is `true` or `false`.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = BoolText)]
#[allow(dead_code)]
pub(crate) enum BoolTextDoc {
    True,
    False,
}

/// A BYOK provider name: 1 to 64 characters, no surrounding spaces, no
/// control characters.
pub(crate) struct ByokProviderDoc;
impl PartialSchema for ByokProviderDoc {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(64))
            .pattern(Some(
                r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$",
            ))
            .examples([serde_json::json!("anthropic")])
            .into()
    }
}
impl ToSchema for ByokProviderDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ByokProvider")
    }
}

/// BYOK provider names: at most 32, no repeats.
pub(crate) struct ByokListDoc;
impl PartialSchema for ByokListDoc {
    fn schema() -> RefOr<Schema> {
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(RefOr::Ref(Ref::from_schema_name(ByokProviderDoc::name())))
            .max_items(Some(32))
            .unique_items(true)
            .into()
    }
}
impl ToSchema for ByokListDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ByokProviders")
    }
}

/// A threshold: percent of the limit.
pub(crate) struct ThresholdDoc;
impl PartialSchema for ThresholdDoc {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(1000))
            .into()
    }
}
impl ToSchema for ThresholdDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ThresholdPercent")
    }
}

/// An IANA time zone name (every name the server's time zone database
/// knows).
pub(crate) struct TimezoneDoc;
impl PartialSchema for TimezoneDoc {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("an IANA time zone name"))
            .enum_values(Some(
                chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name().to_owned()),
            ))
            .into()
    }
}
impl ToSchema for TimezoneDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Timezone")
    }
}

/// `org_id` of a query.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct OrgQuery {
    /// The organisation: must be the key's when given (a read naming
    /// another is 404 `org_not_found`, a write 403 `org_mismatch`); the
    /// operator names the organisation here.
    #[param(value_type = Option<IdDoc>)]
    org_id: Option<String>,
}

/// A page of a list.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct PageQuery {
    /// `next_cursor` of the previous page (empty: the first page).
    #[param(max_length = 1024, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// A page of a list whose cursor is an entry id.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct UuidPageQuery {
    /// `next_cursor` of the previous page (empty: the first page).
    #[param(
        pattern = r"^$|^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

// Mirrors of the provider crate's answers (that crate does not depend on
// utoipa); unit tests validate real values against them.

/// `models` of a connection status.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = ModelsStatus)]
#[allow(dead_code)]
pub(crate) struct ModelsStatusDoc {
    count: u64,
    synced_at: Option<chrono::DateTime<chrono::Utc>>,
    error: Option<String>,
}

/// How the organisation connected OpenRouter.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ConnectedVia)]
#[allow(dead_code)]
pub(crate) enum ConnectedViaDoc {
    ApiKey,
    Oauth,
}

/// The organisation's OpenRouter connection (never the key).
#[derive(serde::Serialize, ToSchema)]
#[schema(as = ConnectionStatus)]
#[allow(dead_code)]
pub(crate) struct ConnectionStatusDoc {
    connected: bool,
    #[schema(value_type = Option<ConnectedViaDoc>)]
    connected_via: Option<String>,
    connected_at: Option<chrono::DateTime<chrono::Utc>>,
    key_label: Option<String>,
    #[schema(value_type = Option<UsdDoc>)]
    limit_remaining_usd: Option<String>,
    is_free_tier: Option<bool>,
    byok_providers: Vec<String>,
    models: ModelsStatusDoc,
}

/// The start of an OAuth connection.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = OAuthStart)]
#[allow(dead_code)]
pub(crate) struct OAuthStartDoc {
    /// Where to send the admin's browser.
    authorize_url: String,
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// Prices of a model, USD per unit, as OpenRouter lists them.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = ModelPricing)]
#[allow(dead_code)]
pub(crate) struct PricingDoc {
    #[schema(value_type = Option<UsdDoc>)]
    prompt: Option<String>,
    #[schema(value_type = Option<UsdDoc>)]
    completion: Option<String>,
    #[schema(value_type = Option<UsdDoc>)]
    request: Option<String>,
    #[schema(value_type = Option<UsdDoc>)]
    input_cache_read: Option<String>,
    #[schema(value_type = Option<UsdDoc>)]
    input_cache_write: Option<String>,
    #[schema(value_type = Option<UsdDoc>)]
    internal_reasoning: Option<String>,
    #[schema(value_type = Option<UsdDoc>)]
    web_search: Option<String>,
}

/// What a model can do.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = ModelCapabilities)]
#[allow(dead_code)]
pub(crate) struct CapabilitiesDoc {
    reasoning: bool,
    tools: bool,
    structured_outputs: bool,
    response_format: bool,
    input_modalities: Vec<String>,
    output_modalities: Vec<String>,
}

/// One model of the organisation's catalog.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = Model)]
#[allow(dead_code)]
pub(crate) struct ModelDoc {
    id: String,
    name: Option<String>,
    context_length: Option<u64>,
    max_completion_tokens: Option<u64>,
    pricing: PricingDoc,
    capabilities: CapabilitiesDoc,
}

/// Ceilings of a provider's price, USD per token.
#[derive(serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MaxPrice)]
#[allow(dead_code)]
pub(crate) struct MaxPriceDoc {
    #[schema(value_type = Option<UsdAmountDoc>)]
    prompt: Option<String>,
    #[schema(value_type = Option<UsdAmountDoc>)]
    completion: Option<String>,
}

/// How OpenRouter ranks providers.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ProviderSort)]
#[allow(dead_code)]
pub(crate) enum SortDoc {
    Price,
    Throughput,
    Latency,
}

/// Whether providers may keep the prompts.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = DataCollection)]
#[allow(dead_code)]
pub(crate) enum DataCollectionDoc {
    Allow,
    Deny,
}

/// Whose capacity serves the requests.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Capacity)]
#[allow(dead_code)]
pub(crate) enum CapacityDoc {
    Shared,
    ByokFirst,
    ByokOnly,
}

/// OpenRouter provider preferences.
#[derive(serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ProviderPrefs)]
#[allow(dead_code)]
pub(crate) struct ProviderPrefsDoc {
    order: Option<Vec<String>>,
    allow_fallbacks: Option<bool>,
    only: Option<Vec<String>>,
    ignore: Option<Vec<String>>,
    #[schema(value_type = Option<DataCollectionDoc>)]
    data_collection: Option<String>,
    zdr: Option<bool>,
    #[schema(value_type = Option<SortDoc>)]
    sort: Option<String>,
    max_price: Option<MaxPriceDoc>,
}

/// A routing profile as written.
#[derive(serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RoutingProfileInput)]
#[allow(dead_code)]
pub(crate) struct RoutingInputDoc {
    /// Must be the caller's organisation when given (here or as the query's `org_id`).
    #[schema(value_type = Option<IdDoc>)]
    org_id: Option<String>,
    /// Fallback models, tried in order (at most 32).
    #[schema(max_items = 32, value_type = Option<Vec<ModelIdDoc>>)]
    models: Option<Vec<String>>,
    provider: Option<ProviderPrefsDoc>,
    #[schema(value_type = Option<CapacityDoc>)]
    capacity: Option<String>,
    /// OpenRouter presets applied before the request's (at most 32).
    #[schema(max_items = 32)]
    presets: Option<Vec<String>>,
    /// Server tools the agent may use (at most 32).
    #[schema(max_items = 32, value_type = Option<Vec<ServerToolDoc>>)]
    server_tools: Option<Vec<String>>,
    /// BYOK providers for this profile (default: the connection's; at most 32, no repeats).
    #[schema(value_type = Option<ByokListDoc>)]
    byok_providers: Option<Vec<String>>,
    /// Output token cap when the request gives none.
    #[schema(minimum = 1, maximum = 4294967295_u64, value_type = Option<u64>)]
    max_output_tokens: Option<u32>,
}

/// `high` when the profile grants a server tool, else `low`.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Risk)]
#[allow(dead_code)]
pub(crate) enum RiskDoc {
    Low,
    High,
}

/// A stored routing profile.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = RoutingProfile)]
#[allow(dead_code)]
pub(crate) struct RoutingDoc {
    org_id: String,
    /// The agent, or null for the organisation's default.
    agent_id: Option<String>,
    models: Option<Vec<String>>,
    provider: Option<ProviderPrefsDoc>,
    #[schema(value_type = Option<CapacityDoc>)]
    capacity: Option<String>,
    presets: Option<Vec<String>>,
    server_tools: Option<Vec<String>>,
    byok_providers: Option<Vec<String>>,
    max_output_tokens: Option<u32>,
    #[schema(value_type = RiskDoc)]
    risk: String,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// A deleted routing profile.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = RoutingDeleted)]
#[allow(dead_code)]
pub(crate) struct RoutingDeletedDoc {
    org_id: String,
    agent_id: Option<String>,
    deleted: bool,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn doc() -> Value {
        serde_json::from_slice(super::document_json()).unwrap()
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((method.to_ascii_uppercase(), path.clone(), op.clone()));
            }
        }
        out
    }

    /// Every route of the table is documented with its method and access,
    /// and every documented operation is a route of the table or one of
    /// the public routes.
    #[test]
    fn the_document_is_the_route_table() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let table: BTreeSet<(String, String, String)> = crate::routes()
            .into_iter()
            .map(|r| {
                (
                    r.method.to_owned(),
                    r.path.to_owned(),
                    r.access.as_str().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            table.len(),
            crate::routes().len(),
            "a route is listed twice"
        );
        let documented: BTreeSet<(String, String, String)> = operations(&doc)
            .into_iter()
            .map(|(m, p, op)| (m, p, op[ACCESS_EXTENSION].as_str().unwrap_or("").to_owned()))
            .collect();
        let public: BTreeSet<(String, String, String)> =
            ["/healthz", "/readyz", "/metrics", OPENAPI_PATH]
                .into_iter()
                .map(|p| ("GET".to_owned(), p.to_owned(), "public".to_owned()))
                .collect();
        let missing: Vec<_> = table.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the document (or with another access): {missing:?}"
        );
        let extra: Vec<_> = documented
            .difference(&table)
            .filter(|d| !public.contains(*d))
            .collect();
        assert!(
            extra.is_empty(),
            "documented operations that are no route: {extra:?}"
        );
        assert!(public.is_subset(&documented));
    }

    #[test]
    fn security_and_problems_follow_the_access_level() {
        let doc = doc();
        let mut ids = BTreeSet::new();
        for (method, path, op) in operations(&doc) {
            let ctx = format!("{method} {path}");
            assert!(
                ids.insert(op["operationId"].as_str().unwrap().to_owned()),
                "{ctx}: operationId repeated"
            );
            let access = op[ACCESS_EXTENSION].as_str().unwrap();
            let schemes: BTreeSet<&str> = op["security"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .flat_map(|r| r.as_object().unwrap().keys().map(String::as_str))
                        .collect()
                })
                .unwrap_or_default();
            let responses = op["responses"].as_object().unwrap();
            match access {
                "member" | "admin" => {
                    assert_eq!(
                        schemes,
                        BTreeSet::from([API_KEY_SCHEME, OPERATOR_SCHEME]),
                        "{ctx}"
                    );
                }
                "operator" => assert_eq!(schemes, BTreeSet::from([OPERATOR_SCHEME]), "{ctx}"),
                "oauth_state" | "public" => assert!(schemes.is_empty(), "{ctx}"),
                other => panic!("{ctx}: access {other}"),
            }
            let keyed = !schemes.is_empty();
            assert_eq!(responses.contains_key("401"), keyed, "{ctx}: 401");
            assert_eq!(
                responses.contains_key("403"),
                matches!(access, "admin" | "operator"),
                "{ctx}: 403"
            );
            if op.get("requestBody").is_some() {
                for s in ["400", "413", "415", "422"] {
                    assert!(responses.contains_key(s), "{ctx}: {s}");
                }
            }
            for (status, r) in responses {
                let code: u16 = status.parse().unwrap();
                if code >= 400 && access != "oauth_state" {
                    assert_eq!(
                        r["content"][PROBLEM_CONTENT_TYPE]["schema"]["$ref"],
                        "#/components/schemas/Problem",
                        "{ctx} {status}"
                    );
                }
                if (200..300).contains(&code) {
                    assert!(
                        r["content"].as_object().is_some_and(|c| !c.is_empty()),
                        "{ctx} {status}: no body"
                    );
                }
            }
        }
    }

    /// Every `$ref` names a schema of the document, money is a decimal
    /// string and times are date-time strings.
    #[test]
    fn references_resolve_and_money_is_a_string() {
        let doc = doc();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        fn walk(v: &Value, f: &mut dyn FnMut(&str, &Value)) {
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        f(k, x);
                        walk(x, f);
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
                _ => {}
            }
        }
        walk(&doc, &mut |k, x| {
            if k == "$ref" {
                let name = x
                    .as_str()
                    .unwrap()
                    .strip_prefix("#/components/schemas/")
                    .unwrap();
                assert!(schemas.contains_key(name), "dangling {name}");
            }
            if let (Some(name), Value::Object(p)) = (k.strip_suffix("_usd"), x) {
                let money = p
                    .get("$ref")
                    .or_else(|| p.get("oneOf").and_then(|o| o[1].get("$ref")));
                assert!(
                    money.is_some_and(|r| r.as_str().unwrap().ends_with("/Usd")
                        || r.as_str().unwrap().ends_with("/UsdAmount")),
                    "{name}_usd is no decimal string: {x}"
                );
            }
            if k.ends_with("_at") && x.is_object() && x.get("properties").is_none() {
                assert_eq!(x["format"], "date-time", "{k}: {x}");
            }
        });
        assert_eq!(schemas["Usd"]["type"], "string");
        assert_eq!(schemas["Usd"]["pattern"], MONEY_PATTERN);
    }

    #[test]
    fn the_document_is_deterministic() {
        let a = serde_json::to_vec_pretty(&crate::openapi_document()).unwrap();
        let b = serde_json::to_vec_pretty(&crate::openapi_document()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, super::document_json());
    }

    #[test]
    fn operation_ids() {
        assert_eq!(
            operation_id("GET", "/v1/budgets/{id}/periods/{start}"),
            "get_v1_budgets_id_periods_start"
        );
        assert_eq!(operation_id("GET", "/openapi.json"), "get_openapi_json");
    }
}
