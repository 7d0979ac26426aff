//! The HTTP API over real HTTP against a real Postgres database of its own
//! per test. Ledger data is written with `Store::apply_batch`, the
//! projector's own transaction (no NATS needed here).

use std::time::Duration;
use tally_events::Attribution;

use chrono::{DateTime, TimeZone, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_api::AppState;
use tally_ledger::{Fact, Placement};
use tally_store::ledger::{CompletedDetails, FactInput, PostingOptions};
use tally_store::Store;
use tally_telemetry::Registry;
use tally_testkit::{TestDb, TestOrg};

const ORG: &str = "acme";

/// A request that must be refused: path, status, problem code, field.
type Refusal<'a> = (&'a str, u16, &'a str, Option<&'a str>);

struct Api {
    base: String,
    http: reqwest::Client,
    store: Store,
    _db: Option<TestDb>,
}

impl Api {
    async fn start() -> anyhow::Result<Api> {
        let (db, store) = tally_testkit::TestDb::migrated(10).await?;
        let org = TestOrg::create(&db.pool(), ORG).await?;
        Api::serve_store(
            store,
            Some(db),
            &org.admin_key,
            tally_api::DEFAULT_REQUEST_TIMEOUT,
        )
        .await
    }

    /// Serves `store`, with a client sending `key` on every request.
    async fn serve_store(
        store: Store,
        db: Option<TestDb>,
        key: &str,
        timeout: Duration,
    ) -> anyhow::Result<Api> {
        let state = AppState::new(store.clone(), Registry::new(), "tally".into())?
            .with_request_timeout(timeout);
        let base = tally_tests::serve_api(state).await?;
        Ok(Api {
            base,
            http: tally_testkit::authed_client(key)?,
            store,
            _db: db,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (s, _, b) = self.send(self.http.get(self.url(path))).await;
        (s, b)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, _, b) = self.send(self.http.post(self.url(path)).json(&body)).await;
        (s, b)
    }

    async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, _, b) = self.send(self.http.patch(self.url(path)).json(&body)).await;
        (s, b)
    }

    async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", content_type)
                .body(body.to_owned()),
        )
        .await
    }

    /// GETs that must each be refused.
    async fn assert_gets_refused(&self, cases: &[Refusal<'_>]) {
        for &(path, status, code, field) in cases {
            let (s, body) = self.get(path).await;
            assert_problem(s, &body, status, code, field);
        }
    }

    async fn check(&self, body: Value) -> (StatusCode, Value) {
        self.post("/v1/budgets/check", body).await
    }

    async fn create_budget(&self, body: Value) -> Value {
        let (status, b) = self.post("/v1/budgets", body).await;
        assert_eq!(status, StatusCode::CREATED, "{b}");
        b
    }

    async fn apply(&self, facts: &[FactInput]) {
        self.store
            .apply_batch(facts, &PostingOptions::default())
            .await
            .expect("apply_batch");
    }
}

use tally_money::cost;

fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
}

struct Gen<'a> {
    id: &'a str,
    agent: Option<&'a str>,
    user: Option<&'a str>,
    model: &'a str,
    at: DateTime<Utc>,
    estimate: Option<&'a str>,
    actual: Option<&'a str>,
}

impl<'a> Gen<'a> {
    /// The same generation booked at an estimate, without an actual.
    fn estimated(self, estimate: &'a str) -> Gen<'a> {
        Gen {
            estimate: Some(estimate),
            actual: None,
            ..self
        }
    }

    /// The same generation by `agent`.
    fn by_agent(self, agent: &'a str) -> Gen<'a> {
        Gen {
            agent: Some(agent),
            ..self
        }
    }

    fn fact(&self) -> FactInput {
        FactInput {
            generation_id: self.id.to_owned(),
            org_id: ORG.to_owned(),
            fact: Fact::Completed {
                placement: Placement {
                    attribution: Attribution {
                        agent_id: self.agent.map(str::to_owned),
                        user_id: self.user.map(str::to_owned),
                        ..Attribution::new(ORG, self.model)
                    },
                    completed_at: self.at,
                },
                estimate: self.estimate.map(|e| cost!(e)),
                actual: self.actual.map(|a| cost!(a)),
            },
            details: Some(CompletedDetails {
                provider: Some("openai".into()),
                status: "completed".into(),
                is_byok: false,
                request_id: None,
            }),
        }
    }
}

fn gen<'a>(id: &'a str, model: &'a str, at: DateTime<Utc>, actual: &'a str) -> Gen<'a> {
    Gen {
        id,
        agent: None,
        user: None,
        model,
        at,
        estimate: None,
        actual: Some(actual),
    }
}

fn reconciled(id: &str, actual: &str) -> FactInput {
    FactInput {
        generation_id: id.to_owned(),
        org_id: ORG.to_owned(),
        fact: Fact::Reconciled {
            actual: cost!(actual),
        },
        details: None,
    }
}

fn assert_problem(
    status: StatusCode,
    body: &Value,
    want_status: u16,
    code: &str,
    field: Option<&str>,
) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["status"], want_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(
        body["type"],
        format!("https://tally.dev/problems/{}", code.replace('_', "-")),
        "{body}"
    );
    assert!(body["title"].is_string(), "{body}");
    assert!(body["detail"].is_string(), "{body}");
    match field {
        Some(f) => assert_eq!(body["field"], f, "{body}"),
        None => assert!(body.get("field").is_none(), "{body}"),
    }
}

/// Asserts that `v` has each field of `want` with its value.
fn assert_has(v: &Value, want: Value) {
    for (field, value) in want.as_object().expect("an object of fields") {
        assert_eq!(&v[field], value, "{field} of {v}");
    }
}

/// A new budget's body with `field` set to `value`.
fn with(field: &str, value: Value) -> Value {
    let mut body = budget_body("n");
    body[field] = value;
    body
}

/// A new budget's body without `field`.
fn without(field: &str) -> Value {
    let mut body = budget_body("n");
    body.as_object_mut().unwrap().remove(field);
    body
}

fn budget_body(name: &str) -> Value {
    json!({
        "org_id": ORG,
        "name": name,
        "scope": {},
        "period": "monthly",
        "limit_usd": "10",
    })
}

#[tokio::test]
async fn budget_lifecycle() -> anyhow::Result<()> {
    let api = Api::start().await?;

    // Create: 201, Location, defaults.
    let (status, headers, b) = api
        .send(api.http.post(api.url("/v1/budgets")).json(&json!({
            "org_id": ORG,
            "name": "team A",
            "scope": {"agent_id": "agent-1"},
            "period": "monthly",
            "limit_usd": "25.50",
        })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let id = b["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("bud_"));
    assert_eq!(headers["location"], format!("/v1/budgets/{id}").as_str());
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(b["org_id"], ORG);
    assert_eq!(b["scope"]["agent_id"], "agent-1");
    assert_eq!(b["scope"]["model"], Value::Null);
    assert_eq!(b["timezone"], "UTC");
    assert_eq!(b["limit_usd"], "25.5");
    assert_eq!(b["thresholds_percent"], json!([50, 80, 100]));
    assert_eq!(b["enforcement"], "hard");
    assert_eq!(b["archived_at"], Value::Null);
    assert_eq!(b["booked_generations"], 0);
    let cp = &b["current_period"];
    assert_eq!(cp["spent_usd"], "0");
    assert_eq!(cp["remaining_usd"], "25.5");
    assert_eq!(cp["generations"], 0);
    let start = DateTime::parse_from_rfc3339(cp["start"].as_str().unwrap())?;
    let end = DateTime::parse_from_rfc3339(cp["end"].as_str().unwrap())?;
    assert!(start <= Utc::now() && Utc::now() < end);

    // Get.
    let (status, got) = api.get(&format!("/v1/budgets/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["name"], "team A");
    assert!(got.get("booked_generations").is_none());

    // List.
    api.create_budget(json!({
        "org_id": ORG, "name": "whole org", "scope": {}, "period": "total",
        "limit_usd": "100", "enforcement": "soft", "thresholds_percent": [90, 10],
        "timezone": "Europe/Berlin",
    }))
    .await;
    let (status, list) = api.get(&format!("/v1/budgets?org_id={ORG}")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let budgets = list["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 2);
    assert_eq!(budgets[0]["id"], id.as_str());
    assert_eq!(budgets[1]["thresholds_percent"], json!([10, 90]));
    assert_eq!(budgets[1]["enforcement"], "soft");
    assert_eq!(budgets[1]["current_period"]["end"], "9999-12-31T00:00:00Z");
    // Another organisation's list is not found, as if it did not exist.
    let (status, other) = api.get("/v1/budgets?org_id=other").await;
    assert_problem(status, &other, 404, "org_not_found", Some("org_id"));

    // Patch.
    let (status, p) = api
        .patch(
            &format!("/v1/budgets/{id}"),
            json!({"name": "team A (renamed)", "limit_usd": "0.00012345678901234567", "enforcement": "soft"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["name"], "team A (renamed)");
    assert_eq!(p["limit_usd"], "0.00012345678901234567");
    assert_eq!(p["enforcement"], "soft");
    assert_eq!(p["scope"]["agent_id"], "agent-1");
    let this = format!("/v1/budgets/{id}");
    let immutable = ["scope", "period", "timezone", "org_id"].map(|field| {
        (
            this.as_str(),
            json!({ field: null }),
            422,
            "immutable_field",
            Some(field),
        )
    });
    for (path, body, status, code, field) in immutable.into_iter().chain([
        (
            this.as_str(),
            json!({"limit_usd": 5}),
            422,
            "amount_not_string",
            Some("limit_usd"),
        ),
        (
            this.as_str(),
            json!({"thresholds_percent": [0]}),
            422,
            "invalid_threshold",
            Some("thresholds_percent"),
        ),
        (
            "/v1/budgets/bud_missing",
            json!({"name": "x"}),
            404,
            "budget_not_found",
            None,
        ),
    ]) {
        let (s, e) = api.patch(path, body).await;
        assert_problem(s, &e, status, code, field);
    }

    // Delete archives.
    let (status, _, d) = api
        .send(api.http.delete(api.url(&format!("/v1/budgets/{id}"))))
        .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert!(d["archived_at"].is_string(), "{d}");
    let (_, list) = api.get(&format!("/v1/budgets?org_id={ORG}")).await;
    assert_eq!(list["budgets"].as_array().unwrap().len(), 1);
    let (_, list) = api
        .get(&format!("/v1/budgets?org_id={ORG}&include_archived=true"))
        .await;
    assert_eq!(list["budgets"].as_array().unwrap().len(), 2);
    let (status, again) = api.get(&format!("/v1/budgets/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["archived_at"], d["archived_at"]);

    // Unknown and invalid ids, missing and unknown query parameters.
    #[rustfmt::skip]
    let refused: &[Refusal] = &[
        ("/v1/budgets/bud_nope",                  404, "budget_not_found", None),
        ("/v1/budgets/a.b",                       422, "invalid_id",       Some("id")),
        ("/v1/budgets?org_id=acme&archived=true", 422, "unknown_field",    Some("archived")),
        ("/v1/budgets?org_id=ac.me",              422, "invalid_id",       Some("org_id")),
    ];
    api.assert_gets_refused(refused).await;
    // org_id defaults to the key's organisation.
    let (status, list) = api.get("/v1/budgets").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["budgets"].as_array().unwrap().len(), 1);
    Ok(())
}

#[tokio::test]
async fn bad_input_is_a_problem() -> anyhow::Result<()> {
    let api = Api::start().await?;

    // Every refused body names its field: money as a JSON number, the other
    // money errors, unknown fields (top level and in the scope), missing
    // fields, invalid values.
    #[rustfmt::skip]
    let refused = [
        (with("limit_usd", json!(10.5)),                              "amount_not_string",   "limit_usd"),
        (with("limit_usd", json!("-1")),                              "negative_amount",     "limit_usd"),
        (with("limit_usd", json!("1e3")),                             "invalid_amount",      "limit_usd"),
        (with("limit_usd", json!("0.00000000000000000000000000001")), "amount_too_precise",  "limit_usd"),
        (with("limit_usd", json!("10000000001")),                     "amount_out_of_range", "limit_usd"),
        (with("limits_usd", json!("1")),                              "unknown_field",       "limits_usd"),
        (with("scope", json!({"agent": "a"})),                        "unknown_field",       "scope.agent"),
        (without("period"),                                           "missing_field",       "period"),
        (without("scope"),                                            "missing_field",       "scope"),
        (with("timezone", json!("Mars/Olympus")),                     "unknown_timezone",    "timezone"),
        (with("period", json!("yearly")),                             "invalid_period_kind", "period"),
        (with("enforcement", json!("strict")),                        "invalid_enforcement", "enforcement"),
        (with("thresholds_percent", json!([50, 2000])),               "invalid_threshold",   "thresholds_percent"),
        (with("thresholds_percent", json!([50, -1])),                 "invalid_field",       "thresholds_percent[1]"),
        (with("name", json!(" ")),                                    "invalid_field",       "name"),
        (with("name", json!(7)),                                      "invalid_field",       "name"),
        (with("org_id", json!("a b")),                                "invalid_id",          "org_id"),
        (with("scope", json!({"model": " gpt "})),                    "invalid_scope",       "scope.model"),
    ];
    for (body, code, field) in refused {
        let (status, e) = api.post("/v1/budgets", body).await;
        assert_problem(status, &e, 422, code, Some(field));
    }

    // Malformed JSON: 400, problem+json.
    let (status, headers, e) = api
        .post_raw("/v1/budgets", "application/json", r#"{"org_id": "acme","#)
        .await;
    assert_problem(status, &e, 400, "malformed_json", None);
    assert_eq!(headers["content-type"], "application/problem+json");
    let (status, _, e) = api.post_raw("/v1/budgets", "application/json", "").await;
    assert_problem(status, &e, 400, "malformed_json", None);
    let (status, _, e) = api.post_raw("/v1/budgets", "application/json", "[]").await;
    assert_problem(status, &e, 422, "invalid_body", None);
    let (status, _, e) = api
        .post_raw("/v1/budgets", "application/json", "\"x\"")
        .await;
    assert_problem(status, &e, 422, "invalid_body", None);

    // Wrong content type: 415.
    let (status, _, e) = api
        .post_raw("/v1/budgets", "text/plain", &budget_body("n").to_string())
        .await;
    assert_problem(status, &e, 415, "unsupported_media_type", None);

    // Too large: 413.
    let mut body = budget_body("n");
    body["name"] = json!("x".repeat(100 * 1024));
    let (status, e) = api.post("/v1/budgets", body).await;
    assert_problem(status, &e, 413, "payload_too_large", None);

    // Unknown route and wrong method: problems too.
    let (status, headers, e) = api.send(api.http.get(api.url("/v2/nothing"))).await;
    assert_problem(status, &e, 404, "route_not_found", None);
    assert_eq!(headers["content-type"], "application/problem+json");
    let (status, headers, e) = api.send(api.http.put(api.url("/v1/budgets"))).await;
    assert_problem(status, &e, 405, "method_not_allowed", None);
    assert!(headers.contains_key("allow"));

    // Nothing was created.
    let (_, list) = api.get(&format!("/v1/budgets?org_id={ORG}")).await;
    assert_eq!(list["budgets"], json!([]));
    Ok(())
}

#[tokio::test]
async fn generation_estimate_then_actual() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let b = api.create_budget(budget_body("org")).await;
    let now = Utc::now();
    let mut g = gen("gen-1", "openai/gpt-4o", now, "0");
    g.actual = None;
    g.estimate = Some("0.0001");
    g.agent = Some("agent-1");
    api.apply(&[g.fact()]).await;

    let (status, v) = api.get("/v1/generations/gen-1").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_has(
        &v,
        json!({
            "state": "provisional", "basis": "estimate", "debited_usd": "0.0001",
            "actual_cost_usd": null,
        }),
    );
    assert_eq!(v["entries"].as_array().unwrap().len(), 1);

    api.apply(&[reconciled("gen-1", "0.00012345678901234567")])
        .await;
    let (status, v) = api.get("/v1/generations/gen-1").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["org_id"], ORG);
    assert_has(
        &v,
        json!({
            "agent_id": "agent-1", "model": "openai/gpt-4o", "provider": "openai",
            "status": "completed", "estimated_cost_usd": "0.0001",
            "actual_cost_usd": "0.00012345678901234567", "debited_usd": "0.00012345678901234567",
            "basis": "actual", "state": "settled",
        }),
    );
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{v}");
    assert_eq!(entries[0]["kind"], "debit");
    assert_eq!(entries[0]["basis"], "estimate");
    assert_eq!(entries[0]["amount_usd"], "0.0001");
    assert_eq!(entries[0]["budget_id"], b["id"]);
    assert_eq!(entries[1]["kind"], "adjustment");
    assert_eq!(entries[1]["basis"], "actual");
    assert_eq!(entries[1]["amount_usd"], "0.00002345678901234567");

    // The budget carries the actual, all of it booked at actual cost.
    let (_, budget) = api
        .get(&format!("/v1/budgets/{}", b["id"].as_str().unwrap()))
        .await;
    let cp = &budget["current_period"];
    assert_has(
        cp,
        json!({
            "spent_usd": "0.00012345678901234567", "spent_actual_usd": "0.00012345678901234567",
            "spent_estimated_usd": "0", "remaining_usd": "9.99987654321098765433",
            "generations": 1,
        }),
    );

    // Only a cost fact: pending, not booked.
    api.apply(&[reconciled("gen-early", "0.5")]).await;
    let (status, v) = api.get("/v1/generations/gen-early").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_has(
        &v,
        json!({
            "state": "pending", "actual_cost_usd": "0.5", "debited_usd": null, "basis": null,
        }),
    );
    assert_eq!(v["entries"], json!([]));

    #[rustfmt::skip]
    let refused: &[Refusal] = &[
        ("/v1/generations/gen-unknown", 404, "generation_not_found", None),
        ("/v1/generations/a%0Ab",       422, "invalid_id",           Some("generation_id")),
    ];
    api.assert_gets_refused(refused).await;
    Ok(())
}

#[tokio::test]
async fn a_budget_created_later_counts_recorded_generations() -> anyhow::Result<()> {
    let api = Api::start().await?;
    api.apply(&[
        gen("g1", "m1", at(2025, 3, 10, 12), "0.00012345678901234567").fact(),
        gen("g2", "m2", at(2025, 3, 11, 1), "1.5").fact(),
        gen("g3", "m1", Utc::now(), "0").estimated("0.25").fact(),
    ])
    .await;

    let b = api
        .create_budget(json!({
            "org_id": ORG, "name": "all time", "scope": {}, "period": "total", "limit_usd": "100",
        }))
        .await;
    assert_eq!(b["booked_generations"], 3);
    let cp = &b["current_period"];
    assert_has(
        cp,
        json!({
            "spent_usd": "1.75012345678901234567", "spent_actual_usd": "1.50012345678901234567",
            "spent_estimated_usd": "0.25", "generations": 3,
            "remaining_usd": "98.24987654321098765433", "over_by_usd": "0", "exhausted": false,
        }),
    );
    let (_, got) = api
        .get(&format!("/v1/budgets/{}", b["id"].as_str().unwrap()))
        .await;
    assert_eq!(got["current_period"], b["current_period"]);

    // A daily budget scoped to m1, in UTC: past periods by their start.
    let d = api
        .create_budget(json!({
            "org_id": ORG, "name": "m1 daily", "scope": {"model": "m1"}, "period": "daily",
            "limit_usd": "0.0001",
        }))
        .await;
    assert_eq!(d["booked_generations"], 2);
    let id = d["id"].as_str().unwrap();
    let (status, p) = api
        .get(&format!("/v1/budgets/{id}/periods/2025-03-10T00:00:00Z"))
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_has(
        &p,
        json!({
            "start": "2025-03-10T00:00:00Z", "end": "2025-03-11T00:00:00Z",
            "spent_usd": "0.00012345678901234567", "generations": 1, "remaining_usd": "0",
            "over_by_usd": "0.00002345678901234567", "exhausted": true, "current": false,
        }),
    );
    let (status, p) = api
        .get(&format!(
            "/v1/budgets/{id}/periods/2025-03-11T00:00:00%2B00:00"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["spent_usd"], "0");
    assert_eq!(p["generations"], 0);
    let periods = format!("/v1/budgets/{id}/periods");
    #[rustfmt::skip]
    let refused: &[Refusal] = &[
        (&format!("{periods}/2025-03-10T01:00:00Z"), 422, "not_a_period_start", Some("start")),
        (&format!("{periods}/yesterday"),            422, "invalid_time",       Some("start")),
    ];
    api.assert_gets_refused(refused).await;
    Ok(())
}

#[tokio::test]
async fn check_blocks_only_on_exhausted_hard_budgets() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let hard = api
        .create_budget(json!({
            "org_id": ORG, "name": "a1 hard", "scope": {"agent_id": "a1"}, "period": "total",
            "limit_usd": "0.001", "enforcement": "hard",
        }))
        .await;
    let soft = api
        .create_budget(json!({
            "org_id": ORG, "name": "a2 soft", "scope": {"agent_id": "a2"}, "period": "total",
            "limit_usd": "0.001", "enforcement": "soft",
        }))
        .await;
    let model_only = api
        .create_budget(json!({
            "org_id": ORG, "name": "m hard", "scope": {"model": "m"}, "period": "total",
            "limit_usd": "0", "enforcement": "hard",
        }))
        .await;

    // Nothing spent yet: a1 allowed (its model is unknown, so the zero
    // model budget does not apply).
    let (status, c) = api.check(json!({"org_id": ORG, "agent_id": "a1"})).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["allowed"], true);
    assert_eq!(c["blocking_budget"], Value::Null);
    assert_eq!(c["budgets"].as_array().unwrap().len(), 1);
    assert_eq!(c["budgets"][0]["id"], hard["id"]);

    api.apply(&[
        gen("g1", "x", Utc::now(), "0.001").by_agent("a1").fact(),
        gen("g2", "x", Utc::now(), "0.002").by_agent("a2").fact(),
    ])
    .await;

    let (status, c) = api.check(json!({"org_id": ORG, "agent_id": "a1"})).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["allowed"], false, "{c}");
    let blocking = &c["blocking_budget"];
    assert_eq!(blocking["id"], hard["id"]);
    assert_eq!(blocking["name"], "a1 hard");
    assert_eq!(blocking["limit_usd"], "0.001");
    assert_eq!(blocking["period"]["spent_usd"], "0.001");
    assert_eq!(blocking["period"]["exhausted"], true);

    let (_, c) = api.check(json!({"org_id": ORG, "agent_id": "a2"})).await;
    assert_eq!(c["allowed"], true, "{c}");
    assert_eq!(c["blocking_budget"], Value::Null);
    assert_eq!(c["budgets"][0]["id"], soft["id"]);
    assert_eq!(c["budgets"][0]["period"]["exhausted"], true);
    assert_eq!(c["budgets"][0]["period"]["over_by_usd"], "0.001");
    assert_eq!(c["budgets"][0]["blocks"], false);

    // With the model known, the zero-limit model budget blocks.
    let (_, c) = api
        .check(json!({"org_id": ORG, "agent_id": "a3", "model": "m"}))
        .await;
    assert_eq!(c["allowed"], false, "{c}");
    assert_eq!(c["blocking_budget"]["id"], model_only["id"]);

    // Archived budgets no longer block.
    let hard_id = hard["id"].as_str().unwrap();
    api.send(api.http.delete(api.url(&format!("/v1/budgets/{hard_id}"))))
        .await;
    let (_, c) = api.check(json!({"org_id": ORG, "agent_id": "a1"})).await;
    assert_eq!(c["allowed"], true, "{c}");
    assert_eq!(c["budgets"], json!([]));

    let (status, e) = api.check(json!({"org_id": ORG, "agent": "a1"})).await;
    assert_problem(status, &e, 422, "unknown_field", Some("agent"));
    // org_id defaults to the key's organisation.
    let (status, c) = api.check(json!({"agent_id": "a2"})).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["budgets"][0]["id"], soft["id"], "{c}");
    Ok(())
}

#[tokio::test]
async fn spend_by_model_and_by_day() -> anyhow::Result<()> {
    let api = Api::start().await?;
    api.apply(&[
        gen("g1", "m1", at(2025, 3, 10, 12), "0.00012345678901234567").fact(),
        gen("g2", "m2", at(2025, 3, 10, 23), "1").fact(),
        Gen {
            user: Some("u1"),
            ..gen("g3", "m1", at(2025, 3, 11, 0), "0").estimated("0.25")
        }
        .fact(),
        Gen {
            estimate: None,
            actual: None,
            ..gen("g4", "m2", at(2025, 3, 11, 5), "0")
        }
        .fact(),
        // Outside the range.
        gen("g5", "m1", at(2025, 3, 12, 0), "7").fact(),
        gen("g6", "m1", at(2025, 3, 9, 23), "7").fact(),
    ])
    .await;
    let range = "from=2025-03-10T00:00:00Z&to=2025-03-12T00:00:00Z";

    let (status, s) = api
        .get(&format!("/v1/spend?org_id={ORG}&{range}&group_by=model"))
        .await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["group_by"], "model");
    assert_eq!(s["from"], "2025-03-10T00:00:00Z");
    assert_eq!(
        s["total"],
        json!({"spent_usd": "1.25012345678901234567", "spent_actual_usd": "1.00012345678901234567",
               "spent_estimated_usd": "0.25", "generations": 4})
    );
    assert_eq!(
        s["groups"],
        json!([
            {"key": "m1", "spent_usd": "0.25012345678901234567", "spent_actual_usd": "0.00012345678901234567",
             "spent_estimated_usd": "0.25", "generations": 2},
            {"key": "m2", "spent_usd": "1", "spent_actual_usd": "1", "spent_estimated_usd": "0", "generations": 2},
        ])
    );

    let (status, s) = api
        .get(&format!("/v1/spend?org_id={ORG}&{range}&group_by=day"))
        .await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(
        s["groups"],
        json!([
            {"key": "2025-03-10", "spent_usd": "1.00012345678901234567", "spent_actual_usd": "1.00012345678901234567",
             "spent_estimated_usd": "0", "generations": 2},
            {"key": "2025-03-11", "spent_usd": "0.25", "spent_actual_usd": "0", "spent_estimated_usd": "0.25",
             "generations": 2},
        ])
    );

    let (_, s) = api
        .get(&format!("/v1/spend?org_id={ORG}&{range}&group_by=user"))
        .await;
    assert_eq!(s["groups"][0]["key"], "u1");
    assert_eq!(s["groups"][1]["key"], Value::Null);
    assert_eq!(s["groups"][1]["generations"], 3);

    let spend = format!("/v1/spend?org_id={ORG}");
    #[rustfmt::skip]
    let refused: &[Refusal] = &[
        (&format!("{spend}&from=2025-03-12T00:00:00Z&to=2025-03-10T00:00:00Z&group_by=day"), 422, "invalid_range",   Some("to")),
        (&format!("{spend}&from=2020-01-01T00:00:00Z&to=2025-03-10T00:00:00Z&group_by=day"), 422, "range_too_large", Some("to")),
        (&format!("{spend}&{range}&group_by=week"),                                          422, "invalid_field",   Some("group_by")),
        (&format!("{spend}&{range}"),                                                        422, "missing_field",   Some("group_by")),
        (&format!("{spend}&from=2025-03-10&to=2025-03-12T00:00:00Z&group_by=day"),           422, "invalid_time",    Some("from")),
    ];
    api.assert_gets_refused(refused).await;
    Ok(())
}

#[tokio::test]
async fn entries_are_cursor_paginated() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let b = api.create_budget(budget_body("org")).await;
    let id = b["id"].as_str().unwrap();
    let now = Utc::now();
    for i in 0..5 {
        // One batch per generation: entries in posting order.
        api.apply(&[gen(&format!("g{i}"), "m", now, &format!("0.{i}1")).fact()])
            .await;
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/budgets/{id}/entries?limit=2&cursor={c}"),
            None => format!("/v1/budgets/{id}/entries?limit=2"),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for e in page["entries"].as_array().unwrap() {
            assert_eq!(e["budget_id"], id);
            assert_eq!(e["kind"], "debit");
            seen.push((
                e["entry_id"].as_str().unwrap().to_owned(),
                e["generation_id"].as_str().unwrap().to_owned(),
                e["amount_usd"].as_str().unwrap().to_owned(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let gens: Vec<&str> = seen.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(gens, ["g0", "g1", "g2", "g3", "g4"]);
    assert_eq!(seen[3].2, "0.31");
    let mut ids: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 5);

    let (_, all) = api.get(&format!("/v1/budgets/{id}/entries")).await;
    assert_eq!(all["entries"].as_array().unwrap().len(), 5);
    assert_eq!(all["next_cursor"], Value::Null);

    let entries = format!("/v1/budgets/{id}/entries");
    #[rustfmt::skip]
    let refused: &[Refusal] = &[
        (&format!("{entries}?limit=0"),    422, "invalid_field",    Some("limit")),
        (&format!("{entries}?limit=1001"), 422, "invalid_field",    Some("limit")),
        (&format!("{entries}?limit=x"),    422, "invalid_field",    Some("limit")),
        (&format!("{entries}?cursor=zzz"), 422, "invalid_field",    Some("cursor")),
        ("/v1/budgets/bud_nope/entries",   404, "budget_not_found", None),
    ];
    api.assert_gets_refused(refused).await;
    Ok(())
}

#[tokio::test]
async fn health_readiness_and_metrics() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let (status, h) = api.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{h}");
    let (status, r) = api.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let b = api.create_budget(budget_body("m")).await;
    api.get(&format!("/v1/budgets/{}", b["id"].as_str().unwrap()))
        .await;
    api.get("/v1/budgets/bud_unknown").await;
    api.get("/nowhere").await;
    api.send(api.http.put(api.url("/v1/budgets"))).await;

    let resp = api.http.get(api.url("/metrics")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await?;
    assert!(text.contains("tally_api_requests_total"), "{text}");
    assert!(
        text.contains("tally_api_request_duration_seconds"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"tally_api_requests_total{method="GET",route="/v1/budgets/{id}",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"tally_api_requests_total{method="GET",route="/v1/budgets/{id}",status="404"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"tally_api_requests_total{method="POST",route="/v1/budgets",status="201"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(
        text.contains(
            r#"tally_api_requests_total{method="PUT",route="/v1/budgets",status="405"} 1"#
        ),
        "{text}"
    );
    assert!(
        !text.contains("bud_"),
        "raw ids must not become labels: {text}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_database_is_503() -> anyhow::Result<()> {
    // A port nothing listens on.
    let port = tally_testkit::free_port()?;
    let pool = sqlx_pool(&format!("postgres://tally:tally@127.0.0.1:{port}/tally"))?;
    let store = Store::from_pool(pool);
    // A well-formed key: looking it up needs the database.
    let key = format!("tly_{}", "k".repeat(40));
    let api = Api::serve_store(store.clone(), None, &key, Duration::from_secs(10)).await?;
    let (status, e) = api.get("/readyz").await;
    assert_problem(status, &e, 503, "database_unavailable", None);
    let (status, _, e) = api.send(api.http.get(api.url("/v1/budgets/bud_x"))).await;
    assert_problem(status, &e, 503, "database_unavailable", None);
    let (status, h) = api.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{h}");

    // A request slower than the timeout (the pool waits 500 ms for a
    // connection) is abandoned with a problem, and keeps its route label.
    let api = Api::serve_store(store, None, &key, Duration::from_millis(50)).await?;
    let (status, headers, e) = api.send(api.http.get(api.url("/v1/budgets/bud_x"))).await;
    assert_problem(status, &e, 503, "request_timeout", None);
    assert_eq!(headers["content-type"], "application/problem+json");
    let (_, h) = api.get("/healthz").await;
    assert_eq!(h["status"], "ok");
    let text = api
        .http
        .get(api.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        text.contains(
            r#"tally_api_requests_total{method="GET",route="/v1/budgets/{id}",status="503"} 1"#
        ),
        "{text}"
    );
    Ok(())
}

fn sqlx_pool(url: &str) -> anyhow::Result<sqlx::PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(url)?)
}

fn hold_request(id: &str, agent: &str, amount: &str) -> tally_store::HoldRequest {
    tally_store::HoldRequest {
        request_id: id.into(),
        attribution: Attribution {
            agent_id: Some(agent.into()),
            ..Attribution::new(ORG, "openai/gpt-4o-mini")
        },
        fallback_models: Vec::new(),
        amount_usd: Some(cost!(amount)),
        max_output_tokens: 4096,
        ttl: Duration::from_secs(600),
    }
}

#[tokio::test]
async fn holds_show_on_budgets_count_in_checks_and_list_as_reservations() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let hard = api
        .create_budget(json!({
            "org_id": ORG, "name": "a1 hard", "scope": {"agent_id": "a1"}, "period": "total",
            "limit_usd": "1", "enforcement": "hard", "allow_unpriced_models": true,
        }))
        .await;
    assert_eq!(hard["allow_unpriced_models"], true);
    assert_eq!(hard["current_period"]["reserved_usd"], "0");
    assert_eq!(hard["current_period"]["available_usd"], "1");
    let id = hard["id"].as_str().unwrap().to_owned();
    let (status, patched) = api
        .patch(
            &format!("/v1/budgets/{id}"),
            json!({"allow_unpriced_models": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["allow_unpriced_models"], false);
    let (status, bad) = api
        .patch(
            &format!("/v1/budgets/{id}"),
            json!({"allow_unpriced_models": "yes"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");

    // Two holds of 0.5 leave nothing available: the check blocks though
    // nothing is spent yet.
    let out = api
        .store
        .take_holds(&[
            hold_request("r1", "a1", "0.5"),
            hold_request("r2", "a1", "0.5"),
            hold_request("r3", "a1", "0.5"),
        ])
        .await?;
    assert!(matches!(out[2], tally_store::HoldOutcome::Refused { .. }));
    let (_, b) = api.get(&format!("/v1/budgets/{id}")).await;
    let cp = &b["current_period"];
    assert_has(
        cp,
        json!({
            "spent_usd": "0", "reserved_usd": "1", "available_usd": "0", "remaining_usd": "1",
        }),
    );
    let (status, c) = api.check(json!({"org_id": ORG, "agent_id": "a1"})).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["allowed"], false, "{c}");
    assert_eq!(c["blocking_budget"]["id"], hard["id"]);
    assert_eq!(c["blocking_budget"]["period"]["reserved_usd"], "1");

    // The reservations, by state, in pages.
    let (status, page) = api
        .get(&format!("/v1/reservations?org_id={ORG}&state=held&limit=1"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["reservations"].as_array().unwrap().len(), 1);
    let first = &page["reservations"][0];
    assert_eq!(first["state"], "held");
    assert_eq!(first["amount_usd"], "0.5");
    assert_eq!(first["holds"][0]["budget_id"], hard["id"]);
    assert_eq!(first["holds"][0]["amount_usd"], "0.5");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = api
        .get(&format!(
            "/v1/reservations?org_id={ORG}&state=held&cursor={cursor}"
        ))
        .await;
    assert_eq!(rest["reservations"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_cursor"], Value::Null);
    assert_ne!(rest["reservations"][0]["request_id"], first["request_id"]);
    let (_, refused) = api
        .get(&format!("/v1/reservations?org_id={ORG}&state=refused"))
        .await;
    assert_eq!(refused["reservations"][0]["request_id"], "r3");
    assert_eq!(
        refused["reservations"][0]["failure_reason"],
        "budget_exhausted"
    );
    assert_eq!(refused["reservations"][0]["refused_by"], hard["id"]);
    let (status, one) = api.get("/v1/reservations/r3").await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["state"], "refused");

    // Settling one frees its hold; the spend takes its place.
    api.apply(&[{
        let mut f = gen("g1", "openai/gpt-4o-mini", Utc::now(), "0.1")
            .by_agent("a1")
            .fact();
        if let Some(d) = f.details.as_mut() {
            d.request_id = Some("r1".into());
        }
        f
    }])
    .await;
    let (_, b) = api.get(&format!("/v1/budgets/{id}")).await;
    assert_eq!(b["current_period"]["spent_usd"], "0.1");
    assert_eq!(b["current_period"]["reserved_usd"], "0.5");
    assert_eq!(b["current_period"]["available_usd"], "0.4");
    let (_, one) = api.get("/v1/reservations/r1").await;
    assert_eq!(one["state"], "settled");
    assert_eq!(one["generation_id"], "g1");
    assert_eq!(one["settled_usd"], "0.1");

    // Bad input is a specific problem.
    let list = format!("/v1/reservations?org_id={ORG}");
    #[rustfmt::skip]
    let refused: &[Refusal] = &[
        (&format!("{list}&state=bogus"), 422, "invalid_field",         Some("state")),
        (&format!("{list}&limit=0"),     422, "invalid_field",         Some("limit")),
        ("/v1/reservations/nope",        404, "reservation_not_found", None),
    ];
    api.assert_gets_refused(refused).await;
    // Without org_id the key's organisation is meant.
    let (status, p) = api.get("/v1/reservations?state=held").await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["reservations"][0]["org_id"], ORG, "{p}");
    Ok(())
}
