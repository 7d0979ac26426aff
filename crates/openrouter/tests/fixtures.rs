//! The wire examples (copies of `shared/openrouter/*.json`) parse into the
//! exact values they carry.

use tally_money::{cost, Cost};
use tally_openrouter::{GenerationStats, ModelInfo, Price};

use tally_money::usd;

#[test]
fn generation_json() {
    let s = GenerationStats::from_reply_body(include_bytes!("fixtures/generation.json")).unwrap();
    assert_eq!(s.id, "gen-1732531200-Xa81bQ0sPfTz4kLmN2vR");
    assert_eq!(s.total_cost, usd!("0.00012345678901234567"));
    assert_eq!(s.total_cost.to_string(), "0.00012345678901234567");
    assert_eq!(s.usage, Some(cost!("0.00012345678901234567")));
    assert_eq!(s.upstream_inference_cost, None);
    assert!(!s.is_byok);
    assert!(!s.missing_upstream_cost());
    assert_eq!(s.actual_cost().unwrap(), usd!("0.00012345678901234567"));
    assert_eq!(s.cancelled, Some(false));
    assert_eq!(s.model.as_deref(), Some("openai/gpt-4o-mini"));
    assert_eq!(s.provider_name.as_deref(), Some("OpenAI"));
    assert_eq!(s.native_tokens_prompt, Some(118));
    assert_eq!(s.native_tokens_completion, Some(41));
    assert_eq!(s.native_tokens_reasoning, Some(0));
    assert_eq!(s.native_tokens_cached, Some(64));
    assert_eq!(s.created_at.as_deref(), Some("2026-11-25T10:00:00.123Z"));
    assert_eq!(
        s.created_at_utc().unwrap().to_rfc3339(),
        "2026-11-25T10:00:00.123+00:00"
    );
}

#[test]
fn generation_byok_json() {
    let s =
        GenerationStats::from_reply_body(include_bytes!("fixtures/generation-byok.json")).unwrap();
    assert_eq!(s.id, "gen-1732531300-Qm2rT8vWc0pYk3ZsE5nH");
    assert!(s.is_byok);
    // 1.425e-7 on the wire, exactly.
    assert_eq!(s.total_cost, usd!("0.0000001425"));
    assert_eq!(s.upstream_inference_cost, Some(cost!("0.00000285")));
    // Money rule 8: fee + upstream.
    assert_eq!(s.actual_cost().unwrap(), usd!("0.0000029925"));
    assert_eq!(s.provider_name.as_deref(), Some("Anthropic"));
    assert_eq!(s.native_tokens_prompt, Some(10));
}

#[test]
fn generation_404_json_is_not_a_reply() {
    let err = GenerationStats::from_reply_body(include_bytes!("fixtures/generation-404.json"))
        .unwrap_err();
    assert_eq!(err.code(), "malformed_reply");
}

#[test]
fn models_json() {
    let models = ModelInfo::list_from_reply_body(include_bytes!("fixtures/models.json")).unwrap();
    let ids: Vec<_> = models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "openai/gpt-4o-mini",
            "deepseek/deepseek-r1",
            "openrouter/auto"
        ]
    );

    let mini = &models[0];
    assert_eq!(mini.context_length, Some(128_000));
    assert_eq!(mini.pricing.prompt, Price::PerUnit(cost!("0.00000015")));
    assert_eq!(mini.pricing.completion, Price::PerUnit(cost!("0.0000006")));
    assert_eq!(mini.pricing.request, Price::PerUnit(Cost::ZERO));
    assert_eq!(
        mini.pricing.input_cache_read,
        Price::PerUnit(cost!("0.000000075"))
    );
    assert_eq!(mini.pricing.input_cache_write, Price::Unknown);
    assert_eq!(mini.pricing.web_search, Price::PerUnit(Cost::ZERO));
    assert!(mini.supports("tools"));
    assert!(!mini.supports("reasoning"));

    let r1 = &models[1];
    assert_eq!(
        r1.pricing.input_cache_write,
        Price::PerUnit(cost!("0.0000005"))
    );
    assert_eq!(r1.pricing.internal_reasoning, Price::PerUnit(Cost::ZERO));
    assert!(r1.supports("reasoning"));

    let auto = &models[2];
    assert_eq!(auto.context_length, Some(2_000_000));
    assert_eq!(auto.pricing.prompt, Price::Dynamic);
    assert_eq!(auto.pricing.completion, Price::Dynamic);
    assert_eq!(auto.pricing.request, Price::Unknown);
    assert_eq!(auto.pricing.prompt.per_unit(), None);
}
