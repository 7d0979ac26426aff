//! The generation endpoints (`/responses`, `/chat/completions`) over real
//! HTTP: ids, exact costs, faults, aborted streams, and the registration
//! that lets `/generation` answer later.

use std::str::FromStr;

mod common;

use common::{generation_id as gen_id, start, start_with};
use serde_json::{json, Value};
use tally_money::Usd;
use tally_sim::{Fraction, RunningSim, SimConfig, TEST_KEY};

/// `POST {base}{path}` with the test key.
async fn post(sim: &RunningSim, path: &str, body: Value) -> reqwest::Response {
    common::post(sim, path, Some(TEST_KEY), &body).await
}

/// `{"model": "openai/gpt-4o-mini", "input": "hi"}`.
fn hi() -> Value {
    json!({"model": "openai/gpt-4o-mini", "input": "hi"})
}

/// The chat request the exact-cost checks are worked out for: "What is
/// 2+2?" (3 prompt tokens) with 8 output tokens.
fn two_plus_two() -> Value {
    json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 8})
}

#[tokio::test]
async fn chat_completion_carries_id_and_exact_cost_and_is_registered() {
    let sim = start(SimConfig::ephemeral()).await;
    let resp = post(&sim, "/chat/completions", two_plus_two()).await;
    assert_eq!(resp.status(), 200);
    let id = gen_id(&resp);
    let text = resp.text().await.unwrap();
    // 3 prompt tokens × 0.00000015 + 8 completion tokens × 0.0000006
    assert!(text.contains(r#""cost":0.00000525"#), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["completion_tokens"], 8);
    let g = sim.simulator().generation(&id).expect("registered");
    assert_eq!(g.total_cost, Usd::from_str("0.00000525").unwrap());
    let stats = common::get(&sim, &format!("/generation?id={id}"), Some(TEST_KEY)).await;
    assert_eq!(stats.status(), 200);
}

#[tokio::test]
async fn chat_stream_ends_with_usage_then_done() {
    let sim = start(SimConfig::ephemeral()).await;
    let mut body = two_plus_two();
    body["stream"] = json!(true);
    let resp = post(&sim, "/chat/completions", body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.starts_with(": OPENROUTER PROCESSING"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(text.contains(r#""cost":0.00000525"#), "{text}");
}

#[tokio::test]
async fn aborted_streams_are_cut_without_usage_and_registered_as_cancelled() {
    let sim = start_with(|c| c.gen_abort_rate = Fraction::ONE).await;
    for path in ["/chat/completions", "/responses"] {
        let mut resp = post(
            &sim,
            path,
            json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "input": "hi", "stream": true}),
        )
        .await;
        let id = gen_id(&resp);
        let mut body = Vec::new();
        let mut cut = false;
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                Ok(None) => break,
                Err(_) => {
                    cut = true;
                    break;
                }
            }
        }
        let text = String::from_utf8(body).unwrap();
        assert!(cut, "{path}: the connection was cut");
        assert!(!text.contains("\"usage\":{"), "{path}: {text}");
        assert!(!text.contains("[DONE]"), "{path}: {text}");
        assert!(sim.simulator().generation(&id).unwrap().cancelled);
    }
}

#[tokio::test]
async fn faults_unknown_models_missing_costs_and_keys() {
    let sim = start_with(|c| c.gen_missing_cost_rate = Fraction::ONE).await;
    let resp = post(
        &sim,
        "/responses",
        json!({"model": "nope/nope", "input": "hi"}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("not a valid model ID"));
    let resp = post(&sim, "/responses", hi()).await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["usage"]["cost"], Value::Null);
    let resp = common::post(&sim, "/responses", None, &hi()).await;
    assert_eq!(resp.status(), 401);

    let sim = start_with(|c| c.gen_rate_429 = Fraction::ONE).await;
    let resp = post(&sim, "/responses", hi()).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(sim.simulator().stats(None).generations_registered, 0);
}
