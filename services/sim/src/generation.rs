//! `GET /api/v1/generation?id=…`: generation statistics, with OpenRouter's
//! delays and faults.
//!
//! * Unknown, not yet ready, or never-ready generations: 404 with
//!   OpenRouter's "not found" body.
//! * Ready generations: 200 with a body shaped like OpenRouter's, costs
//!   written as JSON numbers with their exact digits (see [`crate::number`]).
//! * Scripted replies first, then random faults at the configured rates.
//! * A missing or empty bearer key: 401.
//! * The statistics agree with the usage the generation endpoints reported
//!   for the same generation: `native_tokens_cached` / `_reasoning` are the
//!   usage's cached and reasoning tokens, `streamed` says whether it was
//!   streamed, a cancelled (cut) generation has no `finish_reason`, one
//!   that failed mid-stream has `error`, and `upstream_inference_cost` is
//!   the usage's `cost_details.upstream_inference_cost` (the provider's
//!   bill: for BYOK billed to the customer's own key, otherwise equal to
//!   the cost).

use axum::{
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    config::NumberFormat,
    number::{format_number, raw, raw_number},
    reply,
    state::{Counted, ReplyKind, SimGeneration},
    Simulator,
};

/// The query string.
#[derive(Debug, Deserialize)]
pub(crate) struct GenerationQuery {
    id: Option<String>,
}

pub(crate) async fn get_generation(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Query(q): Query<GenerationQuery>,
) -> Response {
    let shared = &sim.shared;
    let Some(id) = q.id.filter(|id| !id.is_empty()) else {
        shared.counters.count_generation_request();
        shared.counters.count(Counted::BadRequest);
        return reply::error(StatusCode::BAD_REQUEST, "Missing generation id", None);
    };
    shared.record_call(&id);
    let Some(key) = sim.accounts.authenticate(&headers) else {
        shared.counters.count(Counted::Unauthorized);
        return reply::unknown_key(&headers);
    };
    sim.accounts.record_lookup(&key, &id);
    let plan = shared.plan_generation_reply(&id);
    if plan.slow {
        shared.counters.count(Counted::Slow);
        tokio::time::sleep(shared.cfg.slow_delay).await;
    }
    shared.counters.count(plan.kind.into());
    tracing::debug!(id, kind = ?plan.kind, slow = plan.slow, "generation request");
    let format = |g: &SimGeneration| g.number_format.unwrap_or(shared.cfg.number_format);
    match (plan.kind, plan.generation.as_ref()) {
        (ReplyKind::Ok, Some(g)) => reply::json(StatusCode::OK, body(g, format(g), Cost::Exact)),
        (ReplyKind::NotFound, _) | (ReplyKind::Ok, None) => not_found(&id),
        (ReplyKind::RateLimited, _) => reply::rate_limited(shared.cfg.retry_after),
        (ReplyKind::ServerError, _) => reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            None,
        ),
        (ReplyKind::Unavailable, _) => reply::with_retry_after(
            reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service temporarily unavailable",
                None,
            ),
            shared.cfg.retry_after,
        ),
        (ReplyKind::Unauthorized, _) => reply::unauthorized(),
        (ReplyKind::PaymentRequired, _) => reply::payment_required(),
        (ReplyKind::BadGateway, _) => reply::bad_gateway(),
        (ReplyKind::EdgeTimeout, _) => reply::edge_timeout(),
        (ReplyKind::Overloaded, _) => reply::overloaded(shared.cfg.retry_after),
        (ReplyKind::Malformed, g) => {
            let full = match g {
                Some(g) => body(g, format(g), Cost::Exact),
                None => placeholder_body(&id),
            };
            // Cut in the middle of the object: a truncated reply.
            let mut cut = full.len() / 2;
            while !full.is_char_boundary(cut) {
                cut -= 1;
            }
            reply::json(StatusCode::OK, full[..cut].to_owned())
        }
        (ReplyKind::CostAsString, g) => {
            let g = g.cloned().unwrap_or_else(|| placeholder(&id));
            reply::json(StatusCode::OK, body(&g, format(&g), Cost::AsString))
        }
        (ReplyKind::NegativeCost, g) => {
            let g = g.cloned().unwrap_or_else(|| placeholder(&id));
            reply::json(StatusCode::OK, body(&g, format(&g), Cost::Negative))
        }
        (ReplyKind::Html, _) => {
            let mut r = reply::json(
                StatusCode::OK,
                "<html><body><h1>502 Bad Gateway</h1></body></html>".to_owned(),
            );
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("text/html"),
            );
            r
        }
    }
}

fn not_found(id: &str) -> Response {
    reply::error(
        StatusCode::NOT_FOUND,
        &format!("Generation {id} not found"),
        None,
    )
}

fn placeholder(id: &str) -> SimGeneration {
    SimGeneration::new(id, tally_money::Usd::new(1, 4))
}

fn placeholder_body(id: &str) -> String {
    body(&placeholder(id), NumberFormat::Js, Cost::Exact)
}

/// How `total_cost` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cost {
    /// A JSON number with the exact digits.
    Exact,
    /// A JSON string (malformed).
    AsString,
    /// A negative JSON number (malformed).
    Negative,
}

/// The `data` object of a 200 reply, field for field like OpenRouter's.
#[derive(Serialize)]
struct Data<'a> {
    id: &'a str,
    upstream_id: String,
    total_cost: Box<RawValue>,
    usage: Box<RawValue>,
    cache_discount: Option<()>,
    upstream_inference_cost: Option<Box<RawValue>>,
    created_at: String,
    model: &'a str,
    app_id: Option<()>,
    streamed: bool,
    cancelled: bool,
    provider_name: &'a str,
    latency: u64,
    moderation_latency: Option<()>,
    generation_time: u64,
    finish_reason: Option<&'a str>,
    native_finish_reason: Option<&'a str>,
    tokens_prompt: u64,
    tokens_completion: u64,
    native_tokens_prompt: u64,
    native_tokens_completion: u64,
    native_tokens_completion_images: Option<()>,
    native_tokens_reasoning: u64,
    native_tokens_cached: u64,
    num_media_prompt: Option<()>,
    num_input_audio_prompt: Option<()>,
    num_media_completion: Option<()>,
    num_search_results: Option<()>,
    num_fetches: Option<()>,
    origin: &'a str,
    is_byok: bool,
    external_user: Option<&'a str>,
    session_id: Option<&'a str>,
    request_id: Option<()>,
    router: Option<()>,
    preset_id: Option<()>,
    service_tier: Option<()>,
    web_search_engine: Option<()>,
    user_agent: Option<()>,
    http_referer: Option<()>,
    workspace_id: Option<()>,
    response_cache_source_id: Option<()>,
    data_region: &'a str,
    api_type: &'a str,
    provider_responses: Option<()>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    data: Data<'a>,
}

/// The wall-clock creation time of `g`, from its monotonic `created_at`.
fn created_at_text(g: &SimGeneration) -> String {
    let age = chrono::Duration::from_std(g.created_at.elapsed()).unwrap_or_default();
    (chrono::Utc::now() - age).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn body(g: &SimGeneration, format: NumberFormat, cost: Cost) -> String {
    let total = match cost {
        Cost::Exact => raw_number(&g.total_cost, format),
        Cost::AsString => raw(format!(
            "\"{}\"",
            format_number(&g.total_cost, NumberFormat::Plain)
        )),
        Cost::Negative => {
            // A cost of zero would stay valid; make sure the sign shows.
            let v = if g.total_cost.is_zero() {
                tally_money::Usd::new(1, 6)
            } else {
                g.total_cost
            };
            raw(format!("-{}", format_number(&v, format)))
        }
    };
    let usage = raw_number(&g.total_cost, format);
    let envelope = Envelope {
        data: Data {
            id: &g.id,
            upstream_id: format!("up-{}", g.id),
            total_cost: total,
            usage,
            cache_discount: None,
            upstream_inference_cost: g
                .upstream_inference_cost
                .as_ref()
                .map(|u| raw_number(u, format)),
            created_at: created_at_text(g),
            model: &g.model,
            app_id: None,
            streamed: g.streamed,
            cancelled: g.cancelled,
            provider_name: &g.provider_name,
            latency: 812,
            moderation_latency: None,
            generation_time: 640,
            finish_reason: g.finish_reason.as_deref(),
            native_finish_reason: g.finish_reason.as_deref(),
            tokens_prompt: g.native_tokens_prompt,
            tokens_completion: g.native_tokens_completion,
            native_tokens_prompt: g.native_tokens_prompt,
            native_tokens_completion: g.native_tokens_completion,
            native_tokens_completion_images: None,
            native_tokens_reasoning: g.native_tokens_reasoning,
            native_tokens_cached: g.native_tokens_cached,
            num_media_prompt: None,
            num_input_audio_prompt: None,
            num_media_completion: None,
            num_search_results: None,
            num_fetches: None,
            origin: "",
            is_byok: g.is_byok,
            external_user: g.external_user.as_deref(),
            session_id: g.session_id.as_deref(),
            request_id: None,
            router: None,
            preset_id: None,
            service_tier: None,
            web_search_engine: None,
            user_agent: None,
            http_referer: None,
            workspace_id: None,
            response_cache_source_id: None,
            data_region: "global",
            api_type: &g.api_type,
            provider_responses: None,
        },
    };
    serde_json::to_string(&envelope).unwrap_or_else(|_| placeholder_error())
}

fn placeholder_error() -> String {
    r#"{"error":{"code":500,"message":"simulator could not render the reply"}}"#.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn body_matches_the_wire_example_shape() {
        let g = SimGeneration::new("gen-1", tally_money::Usd::from_str("0.0000001425").unwrap())
            .byok(Some(tally_money::Usd::from_str("0.00000285").unwrap()));
        let text = body(&g, NumberFormat::Js, Cost::Exact);
        assert!(text.contains(r#""total_cost":1.425e-7"#), "{text}");
        assert!(
            text.contains(r#""upstream_inference_cost":0.00000285"#),
            "{text}"
        );
        let ours: serde_json::Value = serde_json::from_str(&text).unwrap();
        let theirs: serde_json::Value =
            serde_json::from_str(include_str!("../fixtures/generation-byok.json")).unwrap();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<_> = v["data"].as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&ours), keys(&theirs));
        let s = body(&g, NumberFormat::Js, Cost::AsString);
        assert!(s.contains(r#""total_cost":"0.0000001425""#), "{s}");
        let s = body(&g, NumberFormat::Js, Cost::Negative);
        assert!(s.contains(r#""total_cost":-1.425e-7"#), "{s}");
    }
}
