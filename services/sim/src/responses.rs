//! `POST /api/v1/responses`: a generation, streaming or not, with usage and
//! an exact cost, like OpenRouter's Responses API.
//!
//! What one request does:
//!
//! * no bearer key: 401; a model (or fallback model) not in the catalog: 400
//!   `"<model> is not a valid model ID"`;
//! * faults at the configured rates (`gen_rate_429` with `Retry-After`,
//!   `gen_rate_500`), then `gen_latency` before the first byte;
//! * otherwise a generation: id `gen-<unix>-<random>` in the
//!   `X-Generation-Id` header and the body `id`; tokens derived from the
//!   input (⌈characters/4⌉ prompt tokens, half of them cached when the
//!   model has a cache-read price, one output token per word, a quarter of
//!   them reasoning when the model reasons), the cost computed from the
//!   catalog prices (a dynamically priced router is served by
//!   `openai/gpt-4o-mini`), BYOK at `byok_rate` (OpenRouter's fee 5 %, the
//!   rest billed upstream), `usage.cost: null` at `gen_missing_cost_rate`;
//! * streams are cut before the final event at `gen_abort_rate` (the
//!   connection closes mid-body, so no usage arrives);
//! * every generation served is registered in the generation store, so
//!   `GET /generation?id=…` answers it after the stats delay (a cut stream
//!   is registered as cancelled, with the cost of what was produced).
//!
//! # Decisions
//!
//! * **Costs follow the catalog.** The simulated cost is the catalog price
//!   formula applied to the reported tokens, so a producer's estimate from
//!   the same catalog equals the actual cost: tests can assert both.
//! * **Generation faults use the thread RNG**, not the seeded one of the
//!   `/generation` endpoint (whose state is private to it); the rates are
//!   still exact fractions.

use std::{collections::HashMap, sync::OnceLock, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use futures::{channel::mpsc, SinkExt as _};
use rand::Rng;
use serde_json::{json, Value};
use tally_money::Usd;

use crate::{
    config::{Fraction, PPM},
    models::CATALOG_JSON,
    number::format_number,
    reply,
    state::SimGeneration,
    Simulator,
};

/// Prices of one catalog model, USD per unit (`None`: not listed).
#[derive(Debug, Clone, Default)]
pub(crate) struct SimPrices {
    prompt: Option<Usd>,
    completion: Option<Usd>,
    request: Option<Usd>,
    cache_read: Option<Usd>,
    reasoning: Option<Usd>,
    web_search: Option<Usd>,
    dynamic: bool,
    reasons: bool,
}

fn catalog() -> &'static HashMap<String, SimPrices> {
    static CATALOG: OnceLock<HashMap<String, SimPrices>> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let v: Value = serde_json::from_str(CATALOG_JSON).expect("the embedded catalog is JSON");
        let mut out = HashMap::new();
        for m in v["data"].as_array().into_iter().flatten() {
            let Some(id) = m["id"].as_str() else { continue };
            let price = |k: &str| -> Option<Usd> {
                m["pricing"][k]
                    .as_str()
                    .and_then(|s| tally_money::parse_json_number(s).ok())
            };
            let dynamic = price("prompt") == Some(-Usd::ONE);
            let reasons = m["supported_parameters"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p == "reasoning"));
            out.insert(
                id.to_owned(),
                SimPrices {
                    prompt: price("prompt"),
                    completion: price("completion"),
                    request: price("request"),
                    cache_read: price("input_cache_read"),
                    reasoning: price("internal_reasoning"),
                    web_search: price("web_search"),
                    dynamic,
                    reasons,
                },
            );
        }
        out
    })
}

/// The model that serves `requested` (a dynamic router is served by a
/// fixed-price model) and its provider name.
fn serving(requested: &str, provider_pref: Option<&str>) -> (String, &'static str, String) {
    let model = match catalog().get(requested) {
        Some(p) if p.dynamic => "openai/gpt-4o-mini",
        _ => requested,
    };
    let provider = match model.split('/').next() {
        Some("openai") => "OpenAI",
        Some("deepseek") => "DeepInfra",
        Some("anthropic") => "Anthropic",
        _ => "Simulated",
    };
    let chosen = provider_pref.unwrap_or(provider).to_owned();
    (model.to_owned(), provider, chosen)
}

/// One planned generation.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub(crate) id: String,
    pub(crate) created: i64,
    pub(crate) model: String,
    pub(crate) provider: String,
    pub(crate) words: Vec<String>,
    pub(crate) input_tokens: u64,
    pub(crate) cached_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) reasoning_tokens: u64,
    pub(crate) web_searches: u64,
    /// What OpenRouter reports as `cost` (BYOK: its fee); `None` when the
    /// reply hides it.
    pub(crate) cost: Option<Usd>,
    pub(crate) upstream: Option<Usd>,
    pub(crate) is_byok: bool,
    pub(crate) abort: bool,
}

fn roll(p: Fraction) -> bool {
    !p.is_zero() && rand::rng().random_range(0..PPM) < p.ppm()
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match &i["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

const WORDS: [&str; 8] = [
    "The",
    "simulated",
    "answer",
    "is",
    "forty",
    "two,",
    "as",
    "usual.",
];

/// The exact cost of a planned generation; the simulator's prices are
/// small, so a cost past `Usd`'s range only comes from absurd knobs and is
/// shown as the bound.
fn cost_of(p: &SimPrices, g: &Planned, output_tokens: u64) -> Usd {
    let z = Usd::ZERO;
    let uncached = g.input_tokens - g.cached_tokens;
    let prompt = p.prompt.unwrap_or(z);
    let parts = [
        prompt.checked_mul_int(uncached),
        p.cache_read
            .unwrap_or(prompt)
            .checked_mul_int(g.cached_tokens),
        p.completion.unwrap_or(z).checked_mul_int(output_tokens),
        p.reasoning
            .unwrap_or(z)
            .checked_mul_int(g.reasoning_tokens.min(output_tokens)),
        p.web_search.unwrap_or(z).checked_mul_int(g.web_searches),
    ];
    parts
        .into_iter()
        .try_fold(p.request.unwrap_or(z), |acc, x| acc.checked_add(x?))
        .unwrap_or(Usd::MAX)
}

/// Validates and plans a generation request; `Err` is the reply to send
/// (built once per refused request, so its size does not matter).
/// `input` is the prompt text, `max_tokens` the output cap.
#[allow(clippy::result_large_err)]
pub(crate) fn plan(
    sim: &Simulator,
    headers: &HeaderMap,
    body: &Value,
    input: &str,
    max_tokens: Option<u64>,
    stream: bool,
) -> Result<Planned, Response> {
    let Some(key) = sim.accounts.authenticate(headers) else {
        return Err(reply::unknown_key(headers));
    };
    let Some(model) = body["model"].as_str().filter(|m| !m.is_empty()) else {
        return Err(reply::error(
            StatusCode::BAD_REQUEST,
            "model is required",
            None,
        ));
    };
    let mut asked = vec![model.to_owned()];
    for m in body["models"].as_array().into_iter().flatten() {
        if let Some(m) = m.as_str() {
            asked.push(m.to_owned());
        }
    }
    for m in &asked {
        if !catalog().contains_key(m) {
            return Err(reply::error(
                StatusCode::BAD_REQUEST,
                &format!("{m} is not a valid model ID"),
                None,
            ));
        }
    }
    let cfg = &sim.shared.cfg;
    if roll(cfg.gen_rate_429) {
        return Err(reply::rate_limited(cfg.retry_after));
    }
    if roll(cfg.gen_rate_500) {
        return Err(reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            None,
        ));
    }
    let pref = body["provider"]["only"]
        .get(0)
        .or_else(|| body["provider"]["order"].get(0))
        .and_then(Value::as_str);
    let (served, _, provider) = serving(model, pref);
    let prices = catalog().get(&served).cloned().unwrap_or_default();
    let input_tokens = tokens(input);
    let cached_tokens = if prices.cache_read.is_some() && input_tokens >= 32 {
        input_tokens / 2
    } else {
        0
    };
    let output_tokens = max_tokens.unwrap_or(32).clamp(1, 32);
    let words: Vec<String> = (0..output_tokens)
        .map(|i| WORDS[i as usize % WORDS.len()].to_owned())
        .collect();
    let reasoning_tokens = if prices.reasons { output_tokens / 4 } else { 0 };
    let web_searches = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["type"].as_str().is_some_and(|t| t.contains("web_search")))
        .count() as u64;
    let mut rng = rand::rng();
    let suffix: String = (0..20)
        .map(|_| {
            let c = rng.random_range(0..62u8);
            (match c {
                0..=9 => b'0' + c,
                10..=35 => b'a' + c - 10,
                _ => b'A' + c - 36,
            }) as char
        })
        .collect();
    let created = chrono::Utc::now().timestamp();
    let mut g = Planned {
        id: format!("gen-{created}-{suffix}"),
        created,
        model: served,
        provider,
        words,
        input_tokens,
        cached_tokens,
        output_tokens,
        reasoning_tokens,
        web_searches,
        cost: None,
        upstream: None,
        is_byok: roll(cfg.byok_rate),
        abort: stream && roll(cfg.gen_abort_rate),
    };
    let full = cost_of(&prices, &g, output_tokens).normalize();
    let produced = if g.abort {
        cost_of(&prices, &g, output_tokens / 2).normalize()
    } else {
        full
    };
    // Register what the generation really cost, for `/generation`.
    let mut record = if g.is_byok {
        let fee = crate::number::scaled(produced, 5, 100);
        SimGeneration::new(g.id.clone(), fee).byok(Some(produced))
    } else {
        SimGeneration::new(g.id.clone(), produced)
    };
    record.model = g.model.clone();
    record.provider_name = g.provider.clone();
    record.cancelled = g.abort;
    record.native_tokens_prompt = input_tokens;
    record.native_tokens_completion = if g.abort {
        output_tokens / 2
    } else {
        output_tokens
    };
    sim.accounts.record_generation(
        &key,
        crate::accounts::Served {
            id: record.id.clone(),
            at: chrono::Utc::now(),
            charged: record.total_cost,
            upstream: record
                .is_byok
                .then_some(record.upstream_inference_cost)
                .flatten(),
        },
    );
    sim.register_generation(record);
    if !roll(cfg.gen_missing_cost_rate) {
        if g.is_byok {
            g.cost = Some(crate::number::scaled(full, 5, 100));
            g.upstream = Some(full);
        } else {
            g.cost = Some(full);
            g.upstream = Some(full);
        }
    }
    Ok(g)
}

const COST_MARK: &str = "\"__tally_sim_cost__\"";
const UPSTREAM_MARK: &str = "\"__tally_sim_upstream__\"";

/// Serialises `v`, writing the cost placeholders as exact JSON numbers.
pub(crate) fn render(sim: &Simulator, g: &Planned, v: &Value) -> String {
    let fmt = sim.shared.cfg.number_format;
    let num = |d: Option<Usd>| d.map_or("null".to_owned(), |d| format_number(&d, fmt));
    v.to_string()
        .replace(COST_MARK, &num(g.cost))
        .replace(UPSTREAM_MARK, &num(g.upstream))
}

fn usage(g: &Planned) -> Value {
    json!({
        "input_tokens": g.input_tokens,
        "input_tokens_details": {"cached_tokens": g.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": g.output_tokens,
        "output_tokens_details": {"reasoning_tokens": g.reasoning_tokens},
        "total_tokens": g.input_tokens + g.output_tokens,
        "cost": "__tally_sim_cost__",
        "is_byok": g.is_byok,
        "cost_details": {"upstream_inference_cost": "__tally_sim_upstream__"},
        "server_tool_use_details": {"web_search_requests": g.web_searches},
    })
}

/// The chat-completions usage object.
pub(crate) fn chat_usage(g: &Planned) -> Value {
    json!({
        "prompt_tokens": g.input_tokens,
        "completion_tokens": g.output_tokens,
        "total_tokens": g.input_tokens + g.output_tokens,
        "cost": "__tally_sim_cost__",
        "is_byok": g.is_byok,
        "prompt_tokens_details": {"cached_tokens": g.cached_tokens, "cache_write_tokens": 0},
        "cost_details": {"upstream_inference_cost": "__tally_sim_upstream__"},
        "completion_tokens_details": {"reasoning_tokens": g.reasoning_tokens},
    })
}

fn response_object(g: &Planned, status: &str, with_output: bool) -> Value {
    let text = g.words.join(" ");
    let mut v = json!({
        "id": g.id,
        "object": "response",
        "created_at": g.created,
        "model": g.model,
        "provider": g.provider,
        "status": status,
        "output": [],
        "error": null,
    });
    if with_output {
        v["output"] = json!([{
            "type": "message", "id": "msg-1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }]);
        v["usage"] = usage(g);
    }
    v
}

/// Adds `X-Generation-Id`.
pub(crate) fn with_generation_id(mut resp: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-generation-id", v);
    }
    resp
}

/// A streaming reply: `chunks` are written one by one; when `abort`, the
/// connection is cut after them (no terminating chunk).
pub(crate) fn stream_reply(id: &str, chunks: Vec<String>, abort: bool) -> Response {
    let (mut tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        for c in chunks {
            if tx.send(Ok(Bytes::from(c))).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        if abort {
            // Give the client the chunks before the cut.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx
                .send(Err(std::io::Error::other("simulated aborted stream")))
                .await;
        }
    });
    let resp = (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(rx),
    )
        .into_response();
    with_generation_id(resp, id)
}

fn sse(event: &str, data: &str) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

pub(crate) async fn post_responses(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return reply::error(StatusCode::BAD_REQUEST, "body is not JSON", None);
    };
    let stream = body["stream"].as_bool().unwrap_or(false);
    let mut input = text_of(&body["input"]);
    if let Some(i) = body["instructions"].as_str() {
        input.push('\n');
        input.push_str(i);
    }
    let g = match plan(
        &sim,
        &headers,
        &body,
        &input,
        body["max_output_tokens"].as_u64(),
        stream,
    ) {
        Ok(g) => g,
        Err(resp) => return resp,
    };
    let latency = sim.shared.cfg.gen_latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    tracing::debug!(
        id = g.id,
        model = g.model,
        stream,
        abort = g.abort,
        "responses"
    );
    if !stream {
        let text = render(&sim, &g, &response_object(&g, "completed", true));
        return with_generation_id(reply::json(StatusCode::OK, text), &g.id);
    }
    let mut chunks = vec![": OPENROUTER PROCESSING\n\n".to_owned()];
    chunks.push(sse(
        "response.created",
        &json!({"type": "response.created", "response": response_object(&g, "in_progress", false)})
            .to_string(),
    ));
    let n = if g.abort {
        g.words.len() / 2
    } else {
        g.words.len()
    };
    for (i, w) in g.words.iter().take(n).enumerate() {
        let delta = if i + 1 < g.words.len() {
            format!("{w} ")
        } else {
            w.clone()
        };
        chunks.push(sse(
            "response.output_text.delta",
            &json!({"type": "response.output_text.delta", "item_id": "msg-1", "output_index": 0, "content_index": 0, "delta": delta}).to_string(),
        ));
    }
    if !g.abort {
        let done = json!({"type": "response.completed", "response": response_object(&g, "completed", true)});
        chunks.push(sse("response.completed", &render(&sim, &g, &done)));
    }
    stream_reply(&g.id, chunks, g.abort)
}
