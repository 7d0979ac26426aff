//! The Responses client against the simulator over real HTTP: exact usage
//! from JSON replies and from the final stream event, aborted streams, and
//! typed errors.

mod common;

use std::time::Duration;

use common::{client, start, start_with};
use tally_openrouter::{ClientConfig, OpenRouterClient, ResponsesRequest};
use tally_sim::{Fraction, NumberFormat, SimConfig};

use tally_money::{cost, usd};

fn request() -> ResponsesRequest {
    let mut r = ResponsesRequest::new("openai/gpt-4o-mini", "What is 2+2?");
    r.max_output_tokens = Some(8);
    r.session_id = Some("s-1".into());
    r.user = Some("u-1".into());
    r
}

#[tokio::test]
async fn non_streaming_usage_is_exact() {
    let sim = start_with(|c| c.number_format = NumberFormat::Exponent).await;
    let r = client(&sim).responses(&request()).await.unwrap();
    assert!(r.generation_id.starts_with("gen-"));
    assert!(!r.aborted);
    assert_eq!(r.status.as_deref(), Some("completed"));
    assert_eq!(r.output_text.split(' ').count(), 8);
    let u = r.usage.unwrap();
    assert_eq!((u.input_tokens, u.output_tokens), (3, 8));
    // 3 × 0.00000015 + 8 × 0.0000006, sent as 5.25e-6.
    assert_eq!(u.cost, Some(cost!("0.00000525")));
    assert_eq!(u.actual_cost(), Some(cost!("0.00000525")));
    let g = sim.simulator().generation(&r.generation_id).unwrap();
    assert_eq!(g.actual_cost(), usd!("0.00000525"));
}

#[tokio::test]
async fn streaming_usage_comes_from_the_final_event() {
    let sim = start(SimConfig::ephemeral()).await;
    let mut req = request();
    req.model = "deepseek/deepseek-r1".into();
    req.input = tally_openrouter::ResponsesInput::Text("x".repeat(160));
    let r = client(&sim).responses_stream(&req).await.unwrap();
    assert!(!r.aborted);
    let u = r.usage.unwrap();
    // 40 prompt tokens, 20 of them cached; 8 output tokens, 2 reasoning.
    assert_eq!(u.cached_tokens, Some(20));
    assert_eq!(u.reasoning_tokens, Some(2));
    // 20 × 0.0000004 + 20 × 0.0000001 + 8 × 0.000002 = 0.000008 + 0.000002 + 0.000016
    assert_eq!(u.cost, Some(cost!("0.000026")));
    assert_eq!(r.model.as_deref(), Some("deepseek/deepseek-r1"));
    assert_eq!(r.output_text.split(' ').count(), 8);
}

#[tokio::test]
async fn byok_and_missing_costs() {
    let sim = start_with(|c| c.byok_rate = Fraction::ONE).await;
    let u = client(&sim)
        .responses(&request())
        .await
        .unwrap()
        .usage
        .unwrap();
    assert!(u.is_byok);
    assert_eq!(u.upstream_inference_cost, Some(cost!("0.00000525")));
    assert_eq!(u.cost, Some(cost!("0.0000002625")));
    assert_eq!(u.actual_cost(), Some(cost!("0.0000055125")));

    let sim = start_with(|c| c.gen_missing_cost_rate = Fraction::ONE).await;
    let r = client(&sim).responses_stream(&request()).await.unwrap();
    assert_eq!(r.usage.unwrap().cost, None);
}

#[tokio::test]
async fn an_aborted_stream_keeps_the_generation_id_without_usage() {
    let sim = start_with(|c| c.gen_abort_rate = Fraction::ONE).await;
    let r = client(&sim).responses_stream(&request()).await.unwrap();
    assert!(r.aborted);
    assert_eq!(r.usage, None);
    assert!(
        sim.simulator()
            .generation(&r.generation_id)
            .unwrap()
            .cancelled
    );
    assert_eq!(r.output_text.split_whitespace().count(), 4);
}

#[tokio::test]
async fn errors_are_typed() {
    let sim = start_with(|c| {
        c.gen_rate_429 = Fraction::ONE;
        c.retry_after = Duration::from_secs(2);
    })
    .await;
    let e = client(&sim).responses(&request()).await.unwrap_err();
    assert_eq!(e.code(), "rate_limited");
    assert!(e.is_retryable());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));

    let sim = start_with(|c| c.gen_rate_500 = Fraction::ONE).await;
    let e = client(&sim).responses_stream(&request()).await.unwrap_err();
    assert_eq!(e.code(), "server_error");

    let sim = start(SimConfig::ephemeral()).await;
    let mut req = request();
    req.model = "nope/nope".into();
    let e = client(&sim).responses(&req).await.unwrap_err();
    assert_eq!(e.code(), "unknown_model");
    assert!(!e.is_retryable());
    let anon = OpenRouterClient::new(ClientConfig::new(sim.base_url())).unwrap();
    assert_eq!(anon.responses(&request()).await.unwrap_err().code(), "auth");
}
