//! The simulator's HTTP surface, over real HTTP on 127.0.0.1, as a separate
//! process (the load generator, an end-to-end test) would use it.

use std::time::Duration;

mod common;

use common::{get, start, start_with};
use serde_json::{json, Value};
use tally_sim::{RegisteredGeneration, RunningSim, SimConfig, SimStats, TEST_KEY};

async fn get_generation(sim: &RunningSim, id: &str, key: Option<&str>) -> reqwest::Response {
    let req = reqwest::Client::new()
        .get(format!("{}/generation", sim.base_url()))
        .query(&[("id", id)]);
    common::send(req, key).await
}

/// `GET /generation?id=…` with the test key.
async fn lookup(sim: &RunningSim, id: &str) -> reqwest::Response {
    get_generation(sim, id, Some(TEST_KEY)).await
}

/// `POST {root}/sim{path}` (the admin surface), with `body` when given.
async fn admin(sim: &RunningSim, path: &str, body: Option<&Value>) -> reqwest::Response {
    let req = reqwest::Client::new().post(format!("{}/sim{path}", sim.root_url()));
    let req = match body {
        Some(body) => req.json(body),
        None => req,
    };
    common::send(req, None).await
}

async fn register(sim: &RunningSim, body: Value) -> reqwest::Response {
    admin(sim, "/generations", Some(&body)).await
}

/// `GET {root}/sim/stats{query}`.
async fn stats(sim: &RunningSim, query: &str) -> SimStats {
    reqwest::get(format!("{}/sim/stats{query}", sim.root_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn admin_registration_then_exact_wire_numbers() {
    let sim = start(SimConfig::ephemeral()).await;
    let resp = register(
        &sim,
        json!({"id": "gen-1", "total_cost": "0.0000001425", "upstream_inference_cost": "0.00000285",
               "is_byok": true, "ready_after_ms": 0}),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let r: RegisteredGeneration = resp.json().await.unwrap();
    assert_eq!(r.total_cost_wire, "1.425e-7");
    assert_eq!(r.actual_cost.to_string(), "0.0000029925");

    let resp = lookup(&sim, "gen-1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let text = resp.text().await.unwrap();
    assert!(text.contains(r#""total_cost":1.425e-7"#), "{text}");
    assert!(text.contains(r#""usage":1.425e-7"#), "{text}");
    assert!(
        text.contains(r#""upstream_inference_cost":0.00000285"#),
        "{text}"
    );
    assert!(text.contains(r#""is_byok":true"#), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"]["id"], "gen-1");

    // 17 significant digits, plain.
    register(
        &sim,
        json!({"id": "gen-2", "total_cost": "0.00012345678901234567", "ready_after_ms": 0}),
    )
    .await;
    let text = lookup(&sim, "gen-2").await.text().await.unwrap();
    assert!(
        text.contains(r#""total_cost":0.00012345678901234567,"#),
        "{text}"
    );
    assert!(text.contains(r#""upstream_inference_cost":null"#), "{text}");
}

#[tokio::test]
async fn admin_rejects_bad_input() {
    let sim = start(SimConfig::ephemeral()).await;
    // Money is a decimal string on tally's side, never a JSON number.
    for body in [
        json!({"id": "g", "total_cost": 0.1}),
        json!({"id": "g", "total_cost": "-0.1"}),
        json!({"id": "g", "total_cost": "1e-7"}),
        json!({"id": "g", "script": ["explode"]}),
        json!({"id": "g", "unknown_field": 1}),
        json!({"total_cost": "0.1"}),
    ] {
        let status = register(&sim, body.clone()).await.status();
        assert!(status.is_client_error(), "{body}: {status}");
    }
    assert_eq!(register(&sim, json!({"id": ""})).await.status(), 400);
    assert_eq!(stats(&sim, "").await.generations_registered, 0);
}

#[tokio::test]
async fn random_generations_batch_and_stats() {
    let sim = start_with(|c| c.seed = Some(3)).await;
    let specs: Vec<Value> = (0..20).map(|i| json!({"id": format!("gen-{i}")})).collect();
    let resp = admin(&sim, "/generations/batch", Some(&json!(specs))).await;
    assert_eq!(resp.status(), 201);
    let regs: Vec<RegisteredGeneration> = resp.json().await.unwrap();
    assert_eq!(regs.len(), 20);
    for r in &regs {
        let text = lookup(&sim, &r.id).await.text().await.unwrap();
        assert!(
            text.contains(&format!(r#""total_cost":{},"#, r.total_cost_wire)),
            "{text}"
        );
        let parsed = tally_money::parse_json_number(&r.total_cost_wire).unwrap();
        assert_eq!(parsed, r.total_cost);
    }
    let _ = get_generation(&sim, "gen-0", None).await;
    let stats = stats(&sim, "?id=gen-0").await;
    assert_eq!(stats.generation_requests, 21);
    assert_eq!(stats.replies["ok"], 20);
    assert_eq!(stats.replies["unauthorized"], 1);
    assert_eq!(stats.generations_registered, 20);
    assert_eq!(stats.calls, Some(2));

    let resp = admin(&sim, "/reset", None).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(sim.simulator().total_calls(), 0);
    assert_eq!(lookup(&sim, "gen-0").await.status(), 404);
}

#[tokio::test]
async fn error_replies_look_like_openrouter() {
    let sim = start_with(|c| {
        c.stats_delay = Duration::from_secs(60);
        c.retry_after = Duration::from_millis(1500);
    })
    .await;
    // Not ready yet: 404 with OpenRouter's body.
    register(&sim, json!({"id": "gen-w"})).await;
    let resp = lookup(&sim, "gen-w").await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        json!({"error": {"code": 404, "message": "Generation gen-w not found"}})
    );

    // No key: 401.
    let resp = get_generation(&sim, "gen-w", None).await;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], 401);

    // No id: 400.
    let resp = get(&sim, "/generation", Some(TEST_KEY)).await;
    assert_eq!(resp.status(), 400);

    // 429 with Retry-After rounded up to whole seconds.
    register(&sim, json!({"id": "gen-r", "script": ["rate_limited"]})).await;
    let resp = lookup(&sim, "gen-r").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["metadata"]["error_type"], "rate_limit_exceeded");
}

#[tokio::test]
async fn models_catalog_is_served_with_total_count_links_and_pages() {
    let sim = start(SimConfig::ephemeral()).await;
    let get = |q: &'static str| {
        let url = format!("{}/models{q}", sim.base_url());
        async move {
            serde_json::from_str::<Value>(&reqwest::get(url).await.unwrap().text().await.unwrap())
                .unwrap()
        }
    };
    let all = get("").await;
    let catalog: Value = serde_json::from_str(tally_sim::models::CATALOG_JSON).unwrap();
    assert_eq!(all["data"], catalog["data"]);
    assert_eq!(all["total_count"], 3);
    assert_eq!(all["links"]["next"], Value::Null);
    assert_eq!(all["data"][2]["pricing"]["prompt"], "-1");
    let page = get("?offset=0&limit=2").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["total_count"], 3);
    assert_eq!(page["links"]["next"], "/api/v1/models?offset=2&limit=2");
    let rest = get("?offset=2&limit=2").await;
    assert_eq!(rest["data"][0]["id"], "openrouter/auto");
    assert_eq!(rest["links"]["next"], Value::Null);
    // The user-filtered list needs a key.
    let resp = reqwest::get(format!("{}/models/user", sim.base_url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn key_info_masks_the_key_and_sums_its_spend() {
    let sim = start_with(|c| c.byok_rate = tally_sim::Fraction::ONE).await;
    let body = json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 8});
    let r = common::post(&sim, "/chat/completions", Some(TEST_KEY), &body).await;
    let g = sim
        .simulator()
        .generation(&common::generation_id(&r))
        .unwrap();
    let text = get(&sim, "/key", Some(TEST_KEY))
        .await
        .text()
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["data"]["label"].as_str().unwrap().contains("..."),
        "{text}"
    );
    assert_eq!(v["data"]["rate_limit"]["requests"], -1, "{text}");
    // 3 × 0.00000015 + 8 × 0.0000006 = 0.00000525 billed upstream, 5 % fee.
    assert_eq!(g.upstream_inference_cost.unwrap().to_string(), "0.00000525");
    assert!(text.contains(r#""byok_usage":0.00000525"#), "{text}");
    assert!(text.contains(r#""usage":2.625e-7"#), "{text}");
    let resp = get(&sim, "/key", None).await;
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn lookup_scripts_play_402_502_524_529() {
    let sim = start(SimConfig::ephemeral()).await;
    register(
        &sim,
        json!({"id": "gen-e", "total_cost": "0.1", "script": ["payment_required", "bad_gateway", "edge_timeout", "overloaded"]}),
    )
    .await;
    for (status, kind) in [
        (402, "payment_required"),
        (502, "provider_unavailable"),
        (524, "timeout"),
        (529, "provider_overloaded"),
    ] {
        let resp = lookup(&sim, "gen-e").await;
        assert_eq!(resp.status(), status);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], status);
        assert_eq!(v["error"]["metadata"]["error_type"], kind);
    }
    assert_eq!(lookup(&sim, "gen-e").await.status(), 200);
}

#[tokio::test]
async fn shutdown_is_clean() {
    let sim = start(SimConfig::ephemeral()).await;
    let addr = sim.addr();
    sim.shutdown().await.unwrap();
    assert!(reqwest::get(format!("http://{addr}/api/v1/models"))
        .await
        .is_err());
}

#[tokio::test]
async fn truncated_replies_never_break_a_character() {
    let sim = start(SimConfig::ephemeral()).await;
    for n in 0..8 {
        let id = format!("gen-{}", "é".repeat(n * 7 + 1));
        register(
            &sim,
            json!({"id": id, "total_cost": "0.5", "script": ["malformed"]}),
        )
        .await;
        let resp = lookup(&sim, &id).await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
        // The next reply is the real one.
        let resp = lookup(&sim, &id).await;
        assert_eq!(resp.status(), 200);
    }
}
