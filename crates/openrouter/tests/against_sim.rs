//! The client against the OpenRouter simulator over real HTTP on 127.0.0.1.

mod common;

use std::time::Duration;

use common::{client, start, start_with};
use tally_money::{cost, Cost, Usd};
use tally_openrouter::{ClientConfig, OpenRouterClient, OpenRouterError, Price};
use tally_sim::{Fraction, NumberFormat, ScriptedReply, SimConfig, SimGeneration};

use tally_money::usd;

#[tokio::test]
async fn costs_arrive_exact_to_the_digit() {
    let sim = start(SimConfig::ephemeral()).await;
    let s = sim.simulator();
    s.register_generation(SimGeneration::new("gen-17", usd!("0.00012345678901234567")));
    s.register_generation(SimGeneration::new("gen-exp", usd!("0.0000001425")));

    // The wire really carries the exponent form a JavaScript backend prints.
    let raw = common::raw_get(&sim, "/generation?id=gen-exp").await;
    assert!(raw.contains(r#""total_cost":1.425e-7"#), "{raw}");

    let c = client(&sim);
    let g = c.generation("gen-17").await.unwrap();
    assert_eq!(g.total_cost, usd!("0.00012345678901234567"));
    assert_eq!(g.total_cost.to_string(), "0.00012345678901234567");
    assert_eq!(g.actual_cost().unwrap(), usd!("0.00012345678901234567"));
    assert_eq!(g.usage, Some(cost!("0.00012345678901234567")));

    let g = c.generation("gen-exp").await.unwrap();
    assert_eq!(g.total_cost, usd!("0.0000001425"));
    assert_eq!(g.total_cost.to_string(), "0.0000001425");
    assert_eq!(g.id, "gen-exp");
    assert_eq!(g.model.as_deref(), Some("openai/gpt-4o-mini"));
    assert!(g.created_at_utc().is_some());
}

#[tokio::test]
async fn every_number_format_round_trips_exactly() {
    let sim = start_with(|c| {
        c.seed = Some(11);
        c.byok_rate = Fraction::from_ppm(300_000);
    })
    .await;
    let c = client(&sim);
    let s = sim.simulator();
    for (i, format) in [
        NumberFormat::Js,
        NumberFormat::Plain,
        NumberFormat::Exponent,
    ]
    .into_iter()
    .cycle()
    .take(150)
    .enumerate()
    {
        let id = format!("gen-rt-{i}");
        let g = s.random_generation(&id).number_format(format);
        s.register_generation(g.clone());
        let got = c.generation(&id).await.unwrap();
        assert_eq!(got.total_cost, g.total_cost, "{id} {format:?}");
        assert_eq!(
            got.upstream_inference_cost.map(Cost::usd),
            g.upstream_inference_cost
        );
        assert_eq!(got.is_byok, g.is_byok);
        assert_eq!(got.actual_cost().unwrap(), g.actual_cost());
    }
}

#[tokio::test]
async fn byok_actual_cost_is_fee_plus_upstream() {
    let sim = start(SimConfig::ephemeral()).await;
    sim.simulator().register_generation(
        SimGeneration::new("gen-byok", usd!("0.0000001425")).byok(Some(usd!("0.00000285"))),
    );
    let g = client(&sim).generation("gen-byok").await.unwrap();
    assert!(g.is_byok);
    assert_eq!(g.total_cost, usd!("0.0000001425"));
    assert_eq!(g.upstream_inference_cost, Some(cost!("0.00000285")));
    assert_eq!(g.actual_cost().unwrap(), usd!("0.0000029925"));
    assert!(!g.missing_upstream_cost());
}

#[tokio::test]
async fn not_yet_then_ready() {
    let sim = start(SimConfig::ephemeral()).await;
    let s = sim.simulator();
    s.register_generation(
        SimGeneration::new("gen-late", usd!("0.001")).ready_after(Duration::from_millis(300)),
    );
    s.register_generation(SimGeneration::new("gen-never", usd!("0.001")).never_ready());
    let c = client(&sim);

    let err = c.generation("gen-late").await.unwrap_err();
    assert_eq!(err, OpenRouterError::NotYet);
    assert_eq!(err.code(), "not_yet");
    assert!(err.is_retryable());
    assert_eq!(err.status(), Some(404));

    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        c.generation("gen-late").await.unwrap().total_cost,
        usd!("0.001")
    );

    for id in ["gen-never", "gen-unknown"] {
        for _ in 0..2 {
            assert_eq!(c.generation(id).await.unwrap_err(), OpenRouterError::NotYet);
        }
    }
    assert_eq!(s.calls("gen-late"), 2);
    assert_eq!(s.calls("gen-unknown"), 2);
    assert_eq!(s.total_calls(), 6);
}

#[tokio::test]
async fn scripted_faults_map_to_errors() {
    let sim = start_with(|c| c.retry_after = Duration::from_secs(2)).await;
    sim.simulator()
        .register_generation(SimGeneration::new("gen-faulty", usd!("0.0042")).script([
            ScriptedReply::NotFound,
            ScriptedReply::RateLimited,
            ScriptedReply::ServerError,
            ScriptedReply::Unavailable,
            ScriptedReply::Malformed,
            ScriptedReply::CostAsString,
            ScriptedReply::NegativeCost,
            ScriptedReply::Html,
            ScriptedReply::Unauthorized,
            ScriptedReply::Ok,
        ]));
    let c = client(&sim);
    let mut got = Vec::new();
    for _ in 0..9 {
        got.push(c.generation("gen-faulty").await.unwrap_err());
    }
    assert_eq!(got[0], OpenRouterError::NotYet);
    assert_eq!(
        got[1],
        OpenRouterError::RateLimited {
            retry_after: Some(Duration::from_secs(2))
        }
    );
    assert_eq!(got[1].retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(got[2], OpenRouterError::Server { status: 500 });
    assert_eq!(got[2].code(), "server_error");
    assert_eq!(
        got[3],
        OpenRouterError::Unavailable {
            status: 503,
            retry_after: Some(Duration::from_secs(2))
        }
    );
    for (e, needle) in got[4..8].iter().zip([
        "not a generation reply",
        "total_cost",
        "negative",
        "not a generation reply",
    ]) {
        assert!(
            matches!(e, OpenRouterError::Malformed { status: 200, reason } if reason.contains(needle)),
            "expected malformed ({needle}), got {e:?}"
        );
        assert!(e.is_retryable());
    }
    assert!(matches!(got[8], OpenRouterError::Auth { status: 401, .. }));
    // Script done: the real answer, exact.
    assert_eq!(
        c.generation("gen-faulty").await.unwrap().total_cost,
        usd!("0.0042")
    );
}

#[tokio::test]
async fn a_cost_with_22_fractional_digits_is_kept_exactly() {
    // Below 0.001 USD a 17-significant-digit double prints with more than
    // 20 fractional digits; every one of them is kept (nothing rounds).
    let sim = start(SimConfig::ephemeral()).await;
    let tiny = Usd::new(1, 22);
    sim.simulator()
        .register_generation(SimGeneration::new("gen-tiny", tiny));
    let stats = client(&sim).generation("gen-tiny").await.unwrap();
    assert_eq!(stats.total_cost, tiny);
    assert_eq!(stats.total_cost.to_string(), "0.0000000000000000000001");
}

#[tokio::test]
async fn missing_key_is_auth_error() {
    let sim = start(SimConfig::ephemeral()).await;
    sim.simulator()
        .register_generation(SimGeneration::new("gen-1", usd!("0.1")));
    let c = OpenRouterClient::new(ClientConfig::new(sim.base_url())).unwrap();
    let err = c.generation("gen-1").await.unwrap_err();
    match &err {
        OpenRouterError::Auth {
            status: 401,
            message,
        } => {
            assert_eq!(message, "No auth credentials found")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.code(), "auth");
    assert!(!err.is_retryable());
    // An empty key is no key.
    let c = OpenRouterClient::new(ClientConfig::new(sim.base_url()).with_api_key("")).unwrap();
    assert!(matches!(
        c.generation("gen-1").await.unwrap_err(),
        OpenRouterError::Auth { status: 401, .. }
    ));
}

#[tokio::test]
async fn slow_reply_times_out() {
    let sim = start_with(|c| c.slow_delay = Duration::from_secs(2)).await;
    sim.simulator().register_generation(
        SimGeneration::new("gen-slow", usd!("0.5")).script([ScriptedReply::Slow]),
    );
    let c = OpenRouterClient::new(common::config(&sim).with_timeout(Duration::from_millis(200)))
        .unwrap();
    let started = std::time::Instant::now();
    let err = c.generation("gen-slow").await.unwrap_err();
    assert_eq!(err, OpenRouterError::Timeout);
    assert_eq!(err.code(), "timeout");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(2));
    // The next call is not slow.
    assert_eq!(
        c.generation("gen-slow").await.unwrap().total_cost,
        usd!("0.5")
    );
}

#[tokio::test]
async fn random_fault_rates_apply() {
    let sim = start_with(|c| {
        c.rate_429 = Fraction::ONE;
        c.seed = Some(1);
    })
    .await;
    sim.simulator()
        .register_generation(SimGeneration::new("gen-1", usd!("0.1")));
    let c = client(&sim);
    for _ in 0..5 {
        let err = c.generation("gen-1").await.unwrap_err();
        assert_eq!(
            err,
            OpenRouterError::RateLimited {
                retry_after: Some(Duration::from_secs(1))
            }
        );
    }
    let sim = start_with(|c| c.rate_500 = Fraction::ONE).await;
    let err = client(&sim).generation("gen-x").await.unwrap_err();
    assert_eq!(err, OpenRouterError::Server { status: 500 });
}

#[tokio::test]
async fn ids_are_url_encoded() {
    let sim = start(SimConfig::ephemeral()).await;
    let id = "gen a/b&c=d?é";
    sim.simulator()
        .register_generation(SimGeneration::new(id, usd!("0.25")));
    let g = client(&sim).generation(id).await.unwrap();
    assert_eq!(g.id, id);
    assert_eq!(sim.simulator().calls(id), 1);
}

#[tokio::test]
async fn models_catalog_parses_with_dynamic_prices() {
    let sim = start(SimConfig::ephemeral()).await;
    // The catalog needs no key, like OpenRouter's.
    let c = OpenRouterClient::new(ClientConfig::new(sim.base_url())).unwrap();
    let models = c.models().await.unwrap();
    assert_eq!(models.len(), 3);
    let auto = models.iter().find(|m| m.id == "openrouter/auto").unwrap();
    assert_eq!(auto.pricing.prompt, Price::Dynamic);
    assert_eq!(auto.pricing.completion, Price::Dynamic);
    let mini = models
        .iter()
        .find(|m| m.id == "openai/gpt-4o-mini")
        .unwrap();
    assert_eq!(mini.pricing.prompt, Price::PerUnit(cost!("0.00000015")));
    assert_eq!(
        mini.pricing.input_cache_read.per_unit(),
        Some(cost!("0.000000075"))
    );
    assert!(models.iter().any(|m| m.supports("reasoning")));
}

#[tokio::test]
async fn connection_refused_is_transport() {
    // A port that was free a moment ago and has nobody listening now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = OpenRouterClient::new(ClientConfig::new(format!("http://{addr}/api/v1"))).unwrap();
    let err = c.generation("gen-1").await.unwrap_err();
    assert!(matches!(err, OpenRouterError::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(err.status(), None);
}

#[tokio::test]
async fn wrong_path_prefix_is_unexpected_for_models() {
    let sim = start(SimConfig::ephemeral()).await;
    // Base URL without /api/v1: the simulator has no /models there.
    let c = OpenRouterClient::new(ClientConfig::new(sim.root_url())).unwrap();
    assert_eq!(
        c.models().await.unwrap_err(),
        OpenRouterError::UnexpectedStatus { status: 404 }
    );
}
