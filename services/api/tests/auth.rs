//! Authentication, roles and organisation isolation over real HTTP against
//! a real Postgres database: every route of the route table with every kind
//! of caller, cross-organisation reads and writes, revocation across API
//! instances.

use std::time::{Duration, Instant};
use tally_events::Attribution;

use chrono::{Datelike, TimeZone, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tally_api::{Access, AppState, RouteSpec};
use tally_ledger::{Fact, Placement};
use tally_store::ledger::{CompletedDetails, FactInput, PostingOptions};
use tally_store::{Role, Store};
use tally_telemetry::Registry;
use tally_testkit::{TestDb, TestOrg};

const A: &str = "org-a";
const B: &str = "org-b";
const OPERATOR: &str = "operator-token-0123456789abcdefghijklmnop";
/// A receiver on a public address (an IP literal: no DNS needed; nothing
/// is ever sent to it here).
const PUBLIC_HOOK: &str = "https://93.184.216.34/hooks/tally";

struct Env {
    store: Store,
    base: String,
    sim: tally_sim::RunningSim,
    connections: tally_provider::Connections,
    a: TestOrg,
    b: TestOrg,
    revoked_key: String,
    _db: TestDb,
}

/// Connections sealing with a fresh key, asking the simulator.
fn connections(store: &Store, sim: &tally_sim::RunningSim) -> tally_provider::Connections {
    let kek = tally_secrets::generate_key_setting("k1");
    let keyring =
        std::sync::Arc::new(tally_secrets::Keyring::from_settings(Some(&kek), None).unwrap());
    let client = tally_openrouter::OpenRouterClient::new(tally_openrouter::ClientConfig::new(
        sim.base_url(),
    ))
    .unwrap();
    tally_provider::Connections::new(
        store.clone(),
        Some(keyring),
        client,
        format!("{}/auth", sim.root_url()),
        Some(tally_provider::oauth::validate_public_url("http://127.0.0.1:8080").unwrap()),
    )
}

async fn serve_instance(
    store: &Store,
    connections: &tally_provider::Connections,
) -> anyhow::Result<String> {
    let token = secrecy::SecretString::from(OPERATOR.to_owned());
    let kek = tally_secrets::generate_key_setting("k1");
    let keyring =
        std::sync::Arc::new(tally_secrets::Keyring::from_settings(Some(&kek), None).unwrap());
    let state = AppState::new(store.clone(), Registry::new(), "tally".into())?
        .with_operator_token(Some(&token))
        .with_connections(connections.clone())
        .with_webhooks(tally_api::WebhookSettings {
            keyring: Some(keyring),
            allow_private: false,
        });
    let base = tally_tests::serve_api(state).await?;
    Ok(base)
}

impl Env {
    async fn start() -> anyhow::Result<Env> {
        let (db, store) = tally_testkit::TestDb::migrated(10).await?;
        let a = TestOrg::create(&db.pool(), A).await?;
        let b = TestOrg::create(&db.pool(), B).await?;
        let revoked = store.create_key(A, Role::Admin, Some("old")).await?;
        store.revoke_key(revoked.info.id, None).await?;
        use secrecy::ExposeSecret as _;
        let sim = tally_sim::Simulator::start(tally_sim::SimConfig::ephemeral()).await?;
        let connections = connections(&store, &sim);
        let base = serve_instance(&store, &connections).await?;
        Ok(Env {
            store,
            base,
            sim,
            connections,
            a,
            b,
            revoked_key: revoked.secret.expose_secret().to_owned(),
            _db: db,
        })
    }

    /// A key the simulator issued.
    fn provider_key(&self) -> String {
        self.sim
            .simulator()
            .issue_key(tally_sim::KeySpec::default())
            .key
    }

    /// Org A connected (directly, not through the route under test).
    async fn connect_a(&self) {
        let key = secrecy::SecretString::from(self.provider_key());
        self.connections
            .connect_key(A, key, tally_store::providers::ConnectedVia::ApiKey, None)
            .await
            .expect("connect A");
    }

    /// A routing profile of org A (`agent` `None`: its default).
    async fn profile_of_a(&self, agent: Option<&str>) {
        self.store
            .put_routing_profile(A, agent, &json!({"presets": ["zdr-only"]}))
            .await
            .expect("profile");
    }

    async fn send(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        send(&self.base, key, method, path, body).await
    }

    async fn get(&self, key: Option<&str>, path: &str) -> (StatusCode, Value) {
        get_at(&self.base, key, path).await
    }

    async fn post(&self, key: Option<&str>, path: &str, body: Value) -> (StatusCode, Value) {
        post_at(&self.base, key, path, body).await
    }

    async fn patch(&self, key: Option<&str>, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, _, v) = self.send(key, Method::PATCH, path, Some(&body)).await;
        (s, v)
    }

    async fn delete(&self, key: Option<&str>, path: &str) -> (StatusCode, Value) {
        let (s, _, v) = self.send(key, Method::DELETE, path, None).await;
        (s, v)
    }

    /// Something org A's admin creates through the API: its id.
    async fn created_by_a(&self, path: &str, body: Value) -> String {
        let (s, b) = self.post(Some(&self.a.admin_key), path, body).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b["id"].as_str().unwrap().to_owned()
    }

    /// A webhook of org A, registered through the API.
    async fn webhook_of_a(&self) -> String {
        let body = json!({"url": PUBLIC_HOOK, "events": ["budget.threshold_crossed"]});
        self.created_by_a("/v1/webhooks", body).await
    }

    /// A budget of org A, created through the API.
    async fn budget_of_a(&self, name: &str) -> String {
        let body = json!({"name": name, "scope": {}, "period": "monthly", "limit_usd": "10"});
        self.created_by_a("/v1/budgets", body).await
    }

    /// A generation of org A, booked by the projector's transaction.
    async fn reservation_of_a(&self, id: &str) {
        let hold = tally_store::HoldRequest {
            request_id: id.to_owned(),
            attribution: Attribution::new(A, "m"),
            fallback_models: Vec::new(),
            amount_usd: Some("0.5".parse().unwrap()),
            max_output_tokens: 100,
            ttl: std::time::Duration::from_secs(60),
        };
        self.store.take_holds(&[hold]).await.expect("take_holds");
    }

    async fn generation_of_a(&self, id: &str) {
        let fact = FactInput {
            generation_id: id.to_owned(),
            org_id: A.to_owned(),
            fact: Fact::Completed {
                placement: Placement {
                    attribution: Attribution::new(A, "m"),
                    completed_at: Utc::now(),
                },
                estimate: None,
                actual: Some("0.5".parse().unwrap()),
            },
            details: Some(CompletedDetails {
                provider: None,
                status: "completed".into(),
                is_byok: false,
                request_id: None,
            }),
        };
        self.store
            .apply_batch(&[fact], &PostingOptions::default())
            .await
            .expect("apply_batch");
    }
}

async fn send(
    base: &str,
    key: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let http = reqwest::Client::new();
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

async fn get_at(base: &str, key: Option<&str>, path: &str) -> (StatusCode, Value) {
    let (s, _, v) = send(base, key, Method::GET, path, None).await;
    (s, v)
}

async fn post_at(base: &str, key: Option<&str>, path: &str, body: Value) -> (StatusCode, Value) {
    let (s, _, v) = send(base, key, Method::POST, path, Some(&body)).await;
    (s, v)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    NoKey,
    Malformed,
    Unknown,
    Revoked,
    Member,
    Admin,
    OtherAdmin,
    Operator,
}

const EVERYONE: [Who; 8] = [
    Who::NoKey,
    Who::Malformed,
    Who::Unknown,
    Who::Revoked,
    Who::Member,
    Who::Admin,
    Who::OtherAdmin,
    Who::Operator,
];

/// How a route treats a caller of another organisation naming org A's
/// resource or org A itself.
#[derive(Debug, Clone, Copy)]
enum Foreign {
    /// 404 with this code (a resource by id, or a read naming org A).
    NotFound(&'static str),
    /// 403 `org_mismatch` (a write naming org A).
    Mismatch,
    /// The operator-only route: 403 `forbidden_role` for any key.
    OperatorOnly,
}

/// A concrete request for a route of the table, made on org A's behalf:
/// its path and body, its success status and how another organisation's
/// key is treated.
struct Case {
    path: String,
    body: Option<Value>,
    ok: u16,
    foreign: Foreign,
}

impl Case {
    fn new(path: impl Into<String>, foreign: Foreign) -> Case {
        Case {
            path: path.into(),
            body: None,
            ok: 200,
            foreign,
        }
    }

    /// A read about org A: another organisation's key gets 404
    /// `org_not_found`.
    fn read(path: impl Into<String>) -> Case {
        Case::new(path, Foreign::NotFound("org_not_found"))
    }

    /// A write acting on org A: another organisation's key gets 403
    /// `org_mismatch`.
    fn write(path: impl Into<String>) -> Case {
        Case::new(path, Foreign::Mismatch)
    }

    /// One of org A's resources by id: another organisation's key gets 404
    /// `code`.
    fn resource(path: impl Into<String>, code: &'static str) -> Case {
        Case::new(path, Foreign::NotFound(code))
    }

    fn body(mut self, body: Value) -> Case {
        self.body = Some(body);
        self
    }

    fn status(mut self, ok: u16) -> Case {
        self.ok = ok;
        self
    }
}

/// `path` naming org A in its query.
fn of_a(path: &str) -> String {
    format!("{path}?org_id={A}")
}

/// A request for a new budget of org A, at `suffix` below its URL.
async fn budget_case(env: &Env, name: &str, suffix: &str) -> Case {
    let id = env.budget_of_a(name).await;
    Case::resource(format!("/v1/budgets/{id}{suffix}"), "budget_not_found")
}

/// A request for a new webhook of org A, at `suffix` below its URL.
async fn webhook_case(env: &Env, suffix: &str) -> Case {
    let id = env.webhook_of_a().await;
    Case::resource(format!("/v1/webhooks/{id}{suffix}"), "webhook_not_found")
}

/// The request for a route of the table. Every route of the table must be
/// here: a new route fails this test until it is added.
async fn request_for(env: &Env, r: &RouteSpec) -> Case {
    let now = Utc::now();
    let month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let new_org = json!({"org_id": format!("new-{}", uuid::Uuid::new_v4().simple())});
    let budget =
        json!({"org_id": A, "name": "t", "scope": {}, "period": "monthly", "limit_usd": "1"});
    let webhook = json!({"url": PUBLIC_HOOK, "events": ["budget.threshold_crossed"], "org_id": A});
    let routing = json!({"org_id": A, "presets": ["zdr-only"], "server_tools": ["web_search"]});
    match (r.method, r.path) {
        ("POST", "/v1/orgs") => Case::new("/v1/orgs", Foreign::OperatorOnly)
            .body(new_org)
            .status(201),
        ("POST", "/v1/keys") => Case::write("/v1/keys")
            .body(json!({"role": "member", "name": "table", "org_id": A}))
            .status(201),
        ("GET", "/v1/keys") => Case::read(of_a("/v1/keys")),
        ("DELETE", "/v1/keys/{id}") => {
            let victim = env.store.create_key(A, Role::Member, Some("victim"));
            let id = victim.await.unwrap().info.id;
            Case::resource(format!("/v1/keys/{id}"), "key_not_found")
        }
        ("POST", "/v1/budgets") => Case::write("/v1/budgets").body(budget).status(201),
        ("GET", "/v1/budgets") => Case::read(of_a("/v1/budgets")),
        ("POST", "/v1/budgets/check") => {
            Case::read("/v1/budgets/check").body(json!({"org_id": A, "agent_id": "x"}))
        }
        ("GET", "/v1/budgets/{id}") => budget_case(env, "get", "").await,
        ("PATCH", "/v1/budgets/{id}") => budget_case(env, "patch", "")
            .await
            .body(json!({"name": "patched"})),
        ("DELETE", "/v1/budgets/{id}") => budget_case(env, "delete", "").await,
        ("GET", "/v1/budgets/{id}/periods/{start}") => {
            budget_case(env, "period", &format!("/periods/{month}")).await
        }
        ("GET", "/v1/budgets/{id}/entries") => budget_case(env, "entries", "/entries").await,
        ("GET", "/v1/generations/{generation_id}") => {
            let id = format!("gen-{}", uuid::Uuid::new_v4().simple());
            env.generation_of_a(&id).await;
            Case::resource(format!("/v1/generations/{id}"), "generation_not_found")
        }
        ("GET", "/v1/spend") => Case::read(format!(
            "{}&from=2026-01-01T00:00:00Z&to=2026-12-31T00:00:00Z&group_by=model",
            of_a("/v1/spend")
        )),
        // This API runs without provider access: reaching the handler is
        // the 503 that says so.
        ("GET", "/v1/providers/openrouter/drift") => {
            Case::read(of_a("/v1/providers/openrouter/drift")).status(503)
        }
        ("GET", "/v1/reservations") => Case::read(of_a("/v1/reservations")),
        ("PUT", "/v1/providers/openrouter") => Case::write("/v1/providers/openrouter")
            .body(json!({"api_key": env.provider_key(), "org_id": A})),
        ("GET", "/v1/providers/openrouter") => Case::read(of_a("/v1/providers/openrouter")),
        ("DELETE", "/v1/providers/openrouter") => {
            env.connect_a().await;
            Case::write(of_a("/v1/providers/openrouter"))
        }
        ("POST", "/v1/providers/openrouter/oauth/start") => {
            Case::write("/v1/providers/openrouter/oauth/start").body(json!({"org_id": A}))
        }
        // Reached without a bearer key: every caller gets the same page for
        // a state nobody issued (see the loop).
        ("GET", "/v1/providers/openrouter/oauth/callback") => Case::resource(
            "/v1/providers/openrouter/oauth/callback?state=never-issued&code=c",
            "oauth_state_unknown",
        )
        .status(400),
        ("POST", "/v1/providers/openrouter/models/sync") => {
            env.connect_a().await;
            Case::write(of_a("/v1/providers/openrouter/models/sync"))
        }
        ("GET", "/v1/providers/openrouter/models") => {
            Case::read(of_a("/v1/providers/openrouter/models"))
        }
        ("GET", "/v1/reservations/{request_id}") => {
            let id = format!("req-{}", uuid::Uuid::new_v4().simple());
            env.reservation_of_a(&id).await;
            Case::resource(format!("/v1/reservations/{id}"), "reservation_not_found")
        }
        ("PUT", "/v1/routing") => Case::write("/v1/routing").body(routing),
        ("GET", "/v1/routing") => {
            env.profile_of_a(None).await;
            Case::read(of_a("/v1/routing"))
        }
        ("DELETE", "/v1/routing") => {
            env.profile_of_a(None).await;
            Case::write(of_a("/v1/routing"))
        }
        ("PUT", "/v1/agents/{agent_id}/routing") => {
            Case::write("/v1/agents/bot/routing").body(json!({"org_id": A, "capacity": "shared"}))
        }
        ("GET", "/v1/agents/{agent_id}/routing") => {
            env.profile_of_a(Some("bot")).await;
            Case::read(of_a("/v1/agents/bot/routing"))
        }
        ("DELETE", "/v1/agents/{agent_id}/routing") => {
            env.profile_of_a(Some("bot")).await;
            Case::write(of_a("/v1/agents/bot/routing"))
        }
        ("POST", "/v1/webhooks") => Case::write("/v1/webhooks").body(webhook).status(201),
        ("GET", "/v1/webhooks") => Case::read(of_a("/v1/webhooks")),
        ("GET", "/v1/webhooks/{id}") => webhook_case(env, "").await,
        ("DELETE", "/v1/webhooks/{id}") => webhook_case(env, "").await,
        ("GET", "/v1/webhooks/{id}/deliveries") => webhook_case(env, "/deliveries").await,
        (m, p) => panic!("route {m} {p} has no case in the route-table test: add one"),
    }
}

fn assert_problem(s: StatusCode, body: &Value, status: u16, code: &str, ctx: &str) {
    assert_eq!(s.as_u16(), status, "{ctx}: {body}");
    assert_eq!(body["code"], code, "{ctx}: {body}");
    assert_eq!(
        body["type"],
        format!("https://tally.dev/problems/{}", code.replace('_', "-")),
        "{ctx}: {body}"
    );
}

#[tokio::test]
async fn every_route_with_every_kind_of_caller() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let routes = tally_api::routes();
    assert!(routes.len() >= 14, "{routes:?}");
    let unknown = format!("tly_{}", "Z".repeat(40));
    let mut checked = 0;
    for r in &routes {
        assert!(r.path.starts_with("/v1/"), "{r:?}");
        if r.access == Access::OAuthState {
            // No bearer key is needed or looked at: whoever calls with a
            // state nobody issued gets the same 400 page, and nothing is
            // stored.
            for who in EVERYONE {
                let Case { path, ok, .. } = request_for(&env, r).await;
                let key = match who {
                    Who::NoKey => None,
                    Who::Admin => Some(env.a.admin_key.as_str()),
                    Who::Member => Some(env.a.member_key.as_str()),
                    _ => Some("sk-or-v1-whatever"),
                };
                let (s, h, v) = env.send(key, Method::GET, &path, None).await;
                assert_eq!(s.as_u16(), ok, "{} as {who:?}: {v}", r.path);
                assert!(
                    h["content-type"].to_str()?.starts_with("text/html"),
                    "{h:?}"
                );
                assert!(v.as_str().unwrap().contains("oauth_state_unknown"), "{v}");
                assert!(h.get("www-authenticate").is_none());
                checked += 1;
            }
            continue;
        }
        for who in EVERYONE {
            let Case {
                path,
                body,
                ok,
                foreign,
            } = request_for(&env, r).await;
            let key: Option<&str> = match who {
                Who::NoKey => None,
                Who::Malformed => Some("sk-or-v1-not-a-tally-key"),
                Who::Unknown => Some(&unknown),
                Who::Revoked => Some(&env.revoked_key),
                Who::Member => Some(&env.a.member_key),
                Who::Admin => Some(&env.a.admin_key),
                Who::OtherAdmin => Some(&env.b.admin_key),
                Who::Operator => Some(OPERATOR),
            };
            let method = Method::from_bytes(r.method.as_bytes())?;
            let (s, h, v) = env.send(key, method, &path, body.as_ref()).await;
            let ctx = format!("{} {} as {who:?}", r.method, r.path);
            let unauthorized = |code: &str| {
                assert_problem(s, &v, 401, code, &ctx);
                assert_eq!(
                    h.get("www-authenticate").map(|v| v.to_str().unwrap()),
                    Some("Bearer realm=\"tally\""),
                    "{ctx}"
                );
            };
            match who {
                Who::NoKey => unauthorized("missing_api_key"),
                Who::Malformed => unauthorized("malformed_api_key"),
                Who::Unknown | Who::Revoked => unauthorized("invalid_api_key"),
                Who::Member if r.access != Access::Member => {
                    assert_problem(s, &v, 403, "forbidden_role", &ctx)
                }
                Who::Admin if r.access == Access::Operator => {
                    assert_problem(s, &v, 403, "forbidden_role", &ctx)
                }
                Who::OtherAdmin => match foreign {
                    Foreign::OperatorOnly => assert_problem(s, &v, 403, "forbidden_role", &ctx),
                    Foreign::Mismatch => assert_problem(s, &v, 403, "org_mismatch", &ctx),
                    Foreign::NotFound(code) => assert_problem(s, &v, 404, code, &ctx),
                },
                Who::Member | Who::Admin | Who::Operator => {
                    assert_eq!(s.as_u16(), ok, "{ctx}: {v}")
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * EVERYONE.len());
    Ok(())
}

#[tokio::test]
async fn one_organisation_never_reads_or_changes_another() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let a_budget = env.budget_of_a("a's money").await;
    env.generation_of_a("gen-a").await;
    let b = Some(env.b.admin_key.as_str());

    // B's reads of its own organisation show nothing of A.
    let (s, list) = env.get(b, "/v1/budgets").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["budgets"], json!([]), "{list}");
    let (s, spend) = env
        .get(
            b,
            "/v1/spend?from=2020-01-01T00:00:00Z&to=2021-01-01T00:00:00Z&group_by=model",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{spend}");
    let now = Utc::now();
    let range = format!(
        "from={}&to={}",
        (now - chrono::TimeDelta::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        (now + chrono::TimeDelta::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let (_, spend) = env
        .get(b, &format!("/v1/spend?{range}&group_by=model"))
        .await;
    assert_eq!(spend["total"]["generations"], 0, "{spend}");
    assert_eq!(spend["groups"], json!([]), "{spend}");
    let (_, spend_a) = env
        .get(
            Some(&env.a.member_key),
            &format!("/v1/spend?{range}&group_by=model"),
        )
        .await;
    assert_eq!(spend_a["total"]["generations"], 1, "{spend_a}");
    let (_, check) = env.post(b, "/v1/budgets/check", json!({})).await;
    assert_eq!(check["budgets"], json!([]), "{check}");
    let (_, keys) = env.get(b, "/v1/keys").await;
    let ids: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["org_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![B, B], "{keys}");

    // Naming A's resources or A itself is as if they did not exist.
    for path in [
        format!("/v1/budgets/{a_budget}"),
        format!("/v1/budgets/{a_budget}/entries"),
        format!("/v1/budgets/{a_budget}/periods/2026-01-01T00:00:00Z"),
        "/v1/generations/gen-a".to_owned(),
        format!("/v1/budgets?org_id={A}"),
        format!("/v1/keys?org_id={A}"),
        format!("/v1/spend?org_id={A}&{range}&group_by=day"),
    ] {
        let (s, v) = env.get(b, &path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
        assert!(!v.to_string().contains("a's money"), "{v}");
    }

    // A's budget cannot be changed, archived or created for with B's key.
    let (s, _) = env
        .patch(
            b,
            &format!("/v1/budgets/{a_budget}"),
            json!({"limit_usd": "1000000", "enforcement": "soft"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = env.delete(b, &format!("/v1/budgets/{a_budget}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = env.post(b, "/v1/budgets", json!({"org_id": A, "name": "sneaky", "scope": {}, "period": "total", "limit_usd": "0"})).await;
    assert_problem(s, &v, 403, "org_mismatch", "create for A with B's key");
    let (s, v) = env
        .post(b, "/v1/keys", json!({"org_id": A, "role": "admin"}))
        .await;
    assert_problem(s, &v, 403, "org_mismatch", "key for A with B's key");
    let a_key = env.a.admin_key_id;
    let (s, _) = env.delete(b, &format!("/v1/keys/{a_key}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, got) = env
        .get(Some(&env.a.admin_key), &format!("/v1/budgets/{a_budget}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["limit_usd"], "10");
    assert_eq!(got["enforcement"], "hard");
    assert_eq!(got["archived_at"], Value::Null);
    let (_, list) = env.get(Some(&env.a.admin_key), "/v1/budgets").await;
    assert_eq!(list["budgets"].as_array().unwrap().len(), 1, "{list}");
    // A's admin key still works: B could not revoke it.
    Ok(())
}

#[tokio::test]
async fn keys_are_shown_once_and_revocation_reaches_every_instance() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let other_instance = serve_instance(&env.store, &env.connections).await?;
    let admin = Some(env.a.admin_key.as_str());

    let (s, h, k) = env
        .send(
            admin,
            Method::POST,
            "/v1/keys",
            Some(&json!({"role": "member", "name": "ci"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    assert_eq!(h["cache-control"], "no-store");
    let secret = k["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tly_") && secret.len() >= 36, "{k}");
    assert!(secret[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(k["prefix"], &secret[..12]);
    assert_eq!(k["role"], "member");
    assert_eq!(k["name"], "ci");
    let id = k["id"].as_str().unwrap().to_owned();

    // Both instances accept it (and cache the lookup).
    for base in [&env.base, &other_instance] {
        let (s, v) = get_at(base, Some(&secret), "/v1/budgets").await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    // Listings never show a secret, but do show use.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, list) = env.get(admin, "/v1/keys").await;
        assert_eq!(s, StatusCode::OK);
        let text = list.to_string();
        assert!(
            !text.contains(&secret) && !text.contains(&env.a.admin_key),
            "{text}"
        );
        assert!(list["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("key").is_none()));
        let ci = list["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id.as_str())
            .cloned()
            .unwrap();
        if ci["last_used_at"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "last_used_at never set: {ci}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Keep the other instance's cache warm, revoke through the first one.
    let (s, _) = get_at(&other_instance, Some(&secret), "/v1/budgets").await;
    assert_eq!(s, StatusCode::OK);
    let revoked_at = Instant::now();
    let (s, v) = env.delete(admin, &format!("/v1/keys/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["revoked_at"].is_string(), "{v}");
    // At once on the instance that revoked it.
    let (s, v) = env.get(Some(&secret), "/v1/budgets").await;
    assert_problem(s, &v, 401, "invalid_api_key", "revoked, same instance");
    // Within a second on the other one.
    loop {
        let (s, _) = get_at(&other_instance, Some(&secret), "/v1/budgets").await;
        if s == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "the other instance still accepts a revoked key after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(1));

    // Bad key requests.
    let (s, v) = env.post(admin, "/v1/keys", json!({"role": "owner"})).await;
    assert_eq!(
        (s.as_u16(), v["code"].as_str()),
        (422, Some("invalid_role")),
        "{v}"
    );
    let (s, v) = env.delete(admin, "/v1/keys/not-a-uuid").await;
    assert_problem(s, &v, 404, "key_not_found", "bad key id");
    Ok(())
}

#[tokio::test]
async fn the_operator_names_the_organisation() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let op = Some(OPERATOR);
    let (s, v) = env.get(op, "/v1/budgets").await;
    assert_eq!(
        (s.as_u16(), v["code"].as_str(), v["field"].as_str()),
        (422, Some("missing_field"), Some("org_id")),
        "{v}"
    );
    let (s, v) = env.get(op, "/v1/budgets?org_id=nobody").await;
    assert_problem(s, &v, 404, "org_not_found", "operator, unknown org");
    let (s, v) = env
        .post(
            op,
            "/v1/orgs",
            json!({"org_id": "fresh", "name": "Fresh Ltd"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["org_id"], "fresh");
    assert_eq!(v["role"], "admin");
    let key = v["key"].as_str().unwrap().to_owned();
    let (s, v) = env.get(Some(&key), "/v1/keys").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["keys"][0]["org_id"], "fresh");
    let (s, v) = env.post(op, "/v1/orgs", json!({"org_id": "fresh"})).await;
    assert_problem(s, &v, 409, "org_exists", "duplicate org");
    let (s, v) = env.post(op, "/v1/orgs", json!({"org_id": "a.b"})).await;
    assert_problem(s, &v, 422, "invalid_id", "bad org id");

    // Without an operator token configured, nothing is the operator.
    let state = AppState::new(env.store.clone(), Registry::new(), "tally".into())?;
    let base = tally_tests::serve_api(state).await?;
    let (s, v) = post_at(&base, op, "/v1/orgs", json!({"org_id": "x"})).await;
    assert_problem(s, &v, 401, "malformed_api_key", "no operator configured");
    Ok(())
}
