//! `POST /api/v1/responses`: a generation, streaming or not, with usage and
//! an exact cost, like OpenRouter's Responses API.
//!
//! What one request does:
//!
//! * no bearer key: 401; a model (or fallback model) not in the catalog: 400
//!   `"<model> is not a valid model ID"`;
//! * faults at the configured rates (`gen_rate_429` with `Retry-After`,
//!   `gen_rate_500`, `gen_rate_402` with OpenRouter's "insufficient
//!   credits" body, `gen_rate_502`, `gen_rate_524`, `gen_rate_529`), each
//!   with an error body the SDK's typed errors accept, then `gen_latency`
//!   before the first byte;
//! * otherwise a generation: id `gen-<unix>-<random>` in the
//!   `X-Generation-Id` header and the body `id`; tokens derived from the
//!   input (⌈characters/4⌉ prompt tokens, half of them cached when the
//!   model has a cache-read price, one output token per word, a quarter of
//!   them reasoning when the model reasons), the cost computed from the
//!   catalog prices (a dynamically priced router is served by
//!   `openai/gpt-4o-mini`), BYOK at `byok_rate` (OpenRouter's fee 5 %, the
//!   rest billed upstream), `usage.cost: null` at `gen_missing_cost_rate`;
//! * the reply carries every field the Responses API declares as required
//!   (`completed_at`, `instructions`, `tools`, `tool_choice`, …) and the
//!   full `usage.cost_details` (`upstream_inference_cost` and its
//!   `_input_` / `_output_` parts, which add up to it); a stream numbers
//!   every event (`sequence_number`) and sends `response.created`,
//!   `response.in_progress`, `response.output_item.added`,
//!   `response.content_part.added`, the text deltas,
//!   `response.output_text.done`, `response.content_part.done`,
//!   `response.output_item.done`, `response.completed`, then `[DONE]`;
//! * streams are cut before the final event at `gen_abort_rate` (the
//!   connection closes mid-body, so no usage arrives), and fail after half
//!   of the output at `gen_mid_stream_error_rate` (`response.failed`, then
//!   `[DONE]`, no usage);
//! * every generation served is registered in the generation store, so
//!   `GET /generation?id=…` answers it after the stats delay (a cut stream
//!   is registered as cancelled, a failed one with `finish_reason:
//!   "error"`, both with the cost of what was produced).
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

/// How a generation's reply ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Normally: usage, then `[DONE]` for a stream.
    Complete,
    /// The connection is cut mid-stream (no usage, no final event).
    Abort,
    /// An error event mid-stream (chat: a chunk with `finish_reason:
    /// "error"`; responses: `response.failed`), then `[DONE]`; no usage.
    MidStreamError,
}

/// One planned generation.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub(crate) id: String,
    pub(crate) created: i64,
    pub(crate) model: String,
    pub(crate) provider: String,
    /// Every word the generation would produce.
    pub(crate) words: Vec<String>,
    /// How many of them are sent (fewer when the stream is cut or fails).
    pub(crate) sent: usize,
    pub(crate) input_tokens: u64,
    pub(crate) cached_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) reasoning_tokens: u64,
    pub(crate) web_searches: u64,
    /// What OpenRouter reports as `cost` (BYOK: its fee); `None` when the
    /// reply hides it.
    pub(crate) cost: Option<Usd>,
    /// `cost_details.upstream_inference_cost`: the provider's bill.
    pub(crate) upstream: Option<Usd>,
    /// Its prompt part (request fee, input tokens, web searches).
    pub(crate) upstream_prompt: Option<Usd>,
    /// Its completion part (output and reasoning tokens).
    pub(crate) upstream_completion: Option<Usd>,
    pub(crate) is_byok: bool,
    pub(crate) ending: Ending,
    /// `stop`, or `length` when `max_tokens` cut the answer.
    pub(crate) finish_reason: &'static str,
    pub(crate) instructions: Option<String>,
    pub(crate) max_output_tokens: Option<u64>,
}

impl Planned {
    /// The text actually sent.
    pub(crate) fn sent_text(&self) -> String {
        self.words[..self.sent].join(" ")
    }
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

/// The natural length of an answer (words = output tokens).
const ANSWER_TOKENS: u64 = 32;

/// The catalog price of a generation that produced `output_tokens`, split
/// into its prompt part (request fee, input tokens, web searches) and its
/// completion part (output and reasoning tokens). Exact; the simulator's
/// prices are small, so a cost past `Usd`'s range only comes from absurd
/// knobs and is shown as the bound.
fn cost_parts(p: &SimPrices, g: &Planned, output_tokens: u64) -> (Usd, Usd) {
    let z = Usd::ZERO;
    let uncached = g.input_tokens - g.cached_tokens;
    let prompt = p.prompt.unwrap_or(z);
    let sum = |start: Usd, parts: &[Option<Usd>]| {
        parts
            .iter()
            .try_fold(start, |acc, x| acc.checked_add((*x)?))
            .unwrap_or(Usd::MAX)
    };
    let prompt_part = sum(
        p.request.unwrap_or(z),
        &[
            prompt.checked_mul_int(uncached),
            p.cache_read
                .unwrap_or(prompt)
                .checked_mul_int(g.cached_tokens),
            p.web_search.unwrap_or(z).checked_mul_int(g.web_searches),
        ],
    );
    let completion_part = sum(
        z,
        &[
            p.completion.unwrap_or(z).checked_mul_int(output_tokens),
            p.reasoning
                .unwrap_or(z)
                .checked_mul_int(g.reasoning_tokens.min(output_tokens)),
        ],
    );
    (prompt_part, completion_part)
}

/// OpenRouter's fee on a BYOK generation (5 % of the provider's bill; the
/// provider making a number up, not tally rounding).
fn byok_fee(upstream: Usd) -> Usd {
    crate::number::scaled(upstream, 5, 100)
}

/// Waits the configured generation latency: how long both generation
/// endpoints take before they answer a planned request.
async fn generation_latency(sim: &Simulator) {
    let latency = sim.shared.cfg.gen_latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// The start both generation endpoints share: the JSON body, its `stream`
/// flag and the plan for the prompt and output cap that `prompt` reads
/// from the body, then the configured latency. `Err` is the reply to send.
pub(crate) async fn begin(
    sim: &Simulator,
    headers: &HeaderMap,
    body: &[u8],
    prompt: impl FnOnce(&Value) -> (String, Option<u64>),
) -> Result<(Planned, bool), Response> {
    let body = reply::json_body(body)?;
    let stream = body["stream"].as_bool().unwrap_or(false);
    let (input, max) = prompt(&body);
    let g = plan(sim, headers, &body, &input, max, stream)?;
    generation_latency(sim).await;
    Ok((g, stream))
}

/// Validates and plans a generation request; `Err` is the reply to send
/// (built once per refused request, so its size does not matter).
/// `input` is the prompt text, `max_tokens` the output cap.
#[allow(clippy::result_large_err)]
fn plan(
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
            Some("server"),
        ));
    }
    if roll(cfg.gen_rate_402) {
        return Err(reply::payment_required());
    }
    if roll(cfg.gen_rate_502) {
        return Err(reply::bad_gateway());
    }
    if roll(cfg.gen_rate_524) {
        return Err(reply::edge_timeout());
    }
    if roll(cfg.gen_rate_529) {
        return Err(reply::overloaded(cfg.retry_after));
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
    let output_tokens = max_tokens.unwrap_or(ANSWER_TOKENS).clamp(1, ANSWER_TOKENS);
    let finish_reason = if output_tokens < ANSWER_TOKENS {
        "length"
    } else {
        "stop"
    };
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
    let ending = if !stream {
        Ending::Complete
    } else if roll(cfg.gen_abort_rate) {
        Ending::Abort
    } else if roll(cfg.gen_mid_stream_error_rate) {
        Ending::MidStreamError
    } else {
        Ending::Complete
    };
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
    let sent = match ending {
        Ending::Complete => words.len(),
        Ending::Abort | Ending::MidStreamError => words.len() / 2,
    };
    let mut g = Planned {
        id: format!("gen-{created}-{suffix}"),
        created,
        model: served,
        provider,
        words,
        sent,
        input_tokens,
        cached_tokens,
        output_tokens,
        reasoning_tokens,
        web_searches,
        cost: None,
        upstream: None,
        upstream_prompt: None,
        upstream_completion: None,
        is_byok: roll(cfg.byok_rate),
        ending,
        finish_reason,
        instructions: body["instructions"].as_str().map(str::to_owned),
        max_output_tokens: max_tokens,
    };
    let (prompt_part, completion_part) = cost_parts(&prices, &g, output_tokens);
    let full = prompt_part.checked_add(completion_part).unwrap_or(Usd::MAX);
    let produced_tokens = sent as u64;
    let produced = {
        let (p, c) = cost_parts(&prices, &g, produced_tokens);
        p.checked_add(c).unwrap_or(Usd::MAX)
    };
    // Register what the generation really cost, for `/generation`: the
    // same tokens and costs as the usage of the reply (or, for a cut or
    // failed stream, of what was produced).
    let mut record = if g.is_byok {
        SimGeneration::new(g.id.clone(), byok_fee(produced)).byok(Some(produced))
    } else {
        let mut r = SimGeneration::new(g.id.clone(), produced);
        r.upstream_inference_cost = Some(produced);
        r
    };
    record.model = g.model.clone();
    record.provider_name = g.provider.clone();
    record.cancelled = ending == Ending::Abort;
    record.native_tokens_prompt = input_tokens;
    record.native_tokens_completion = produced_tokens;
    record.native_tokens_cached = cached_tokens;
    record.native_tokens_reasoning = reasoning_tokens.min(produced_tokens);
    record.streamed = stream;
    record.finish_reason = match ending {
        Ending::Complete => Some(finish_reason.to_owned()),
        Ending::Abort => None,
        Ending::MidStreamError => Some("error".to_owned()),
    };
    record.session_id = body["session_id"].as_str().map(str::to_owned);
    record.external_user = body["user"].as_str().map(str::to_owned);
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
    if ending == Ending::Complete && !roll(cfg.gen_missing_cost_rate) {
        g.cost = Some(if g.is_byok { byok_fee(full) } else { full });
        g.upstream = Some(full);
        g.upstream_prompt = Some(prompt_part);
        g.upstream_completion = Some(completion_part);
    }
    Ok(g)
}

const MARKS: [&str; 4] = [
    "\"__tally_sim_cost__\"",
    "\"__tally_sim_upstream__\"",
    "\"__tally_sim_upstream_prompt__\"",
    "\"__tally_sim_upstream_completion__\"",
];

/// Serialises `v`, writing the cost placeholders as exact JSON numbers.
pub(crate) fn render(sim: &Simulator, g: &Planned, v: &Value) -> String {
    let fmt = sim.shared.cfg.number_format;
    let num = |d: Option<Usd>| d.map_or("null".to_owned(), |d| format_number(&d, fmt));
    let mut text = v.to_string();
    for (mark, value) in
        MARKS
            .iter()
            .zip([g.cost, g.upstream, g.upstream_prompt, g.upstream_completion])
    {
        text = text.replace(mark, &num(value));
    }
    text
}

/// `cost_details` with the names of the API (`prompt`/`completions` for
/// chat, `input`/`output` for responses); null when the cost is hidden.
fn cost_details(g: &Planned, prompt_name: &str, completion_name: &str) -> Value {
    if g.cost.is_none() {
        return Value::Null;
    }
    let mut d = serde_json::Map::new();
    d.insert(
        "upstream_inference_cost".into(),
        json!("__tally_sim_upstream__"),
    );
    d.insert(prompt_name.into(), json!("__tally_sim_upstream_prompt__"));
    d.insert(
        completion_name.into(),
        json!("__tally_sim_upstream_completion__"),
    );
    Value::Object(d)
}

fn cost_mark(g: &Planned) -> Value {
    if g.cost.is_some() {
        json!("__tally_sim_cost__")
    } else {
        Value::Null
    }
}

/// The Responses API usage object.
fn usage(g: &Planned) -> Value {
    json!({
        "input_tokens": g.input_tokens,
        "input_tokens_details": {"cached_tokens": g.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": g.output_tokens,
        "output_tokens_details": {"reasoning_tokens": g.reasoning_tokens},
        "total_tokens": g.input_tokens + g.output_tokens,
        "cost": cost_mark(g),
        "is_byok": g.is_byok,
        "cost_details": cost_details(g, "upstream_inference_input_cost", "upstream_inference_output_cost"),
        "server_tool_use_details": {"web_search_requests": g.web_searches},
    })
}

/// The chat-completions usage object.
pub(crate) fn chat_usage(g: &Planned) -> Value {
    let mut u = json!({
        "prompt_tokens": g.input_tokens,
        "completion_tokens": g.output_tokens,
        "total_tokens": g.input_tokens + g.output_tokens,
        "cost": cost_mark(g),
        "is_byok": g.is_byok,
        "prompt_tokens_details": {"cached_tokens": g.cached_tokens, "cache_write_tokens": 0, "audio_tokens": 0, "video_tokens": 0},
        "cost_details": cost_details(g, "upstream_inference_prompt_cost", "upstream_inference_completions_cost"),
        "completion_tokens_details": {"reasoning_tokens": g.reasoning_tokens, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    });
    if g.web_searches > 0 {
        u["server_tool_use_details"] = json!({"web_search_requests": g.web_searches});
    }
    u
}

/// The one output message item of a response (`status` of the item).
fn message_item(g: &Planned, status: &str, text: &str) -> Value {
    json!({
        "type": "message", "id": format!("msg-{}", g.id), "status": status, "role": "assistant",
        "content": if status == "in_progress" { json!([]) } else { json!([output_text_part(text)]) },
    })
}

fn output_text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// The response object in the state `status` (`in_progress`, `completed`,
/// `failed`), with every field the Responses API declares as required.
fn response_object(g: &Planned, status: &str) -> Value {
    let completed = status == "completed";
    let failed = status == "failed";
    let text = if completed {
        g.words.join(" ")
    } else {
        g.sent_text()
    };
    let output = if completed {
        json!([message_item(g, "completed", &text)])
    } else if failed {
        json!([message_item(g, "incomplete", &text)])
    } else {
        json!([])
    };
    json!({
        "id": g.id,
        "object": "response",
        "created_at": g.created,
        "completed_at": if completed { json!(chrono::Utc::now().timestamp()) } else { Value::Null },
        "model": g.model,
        "provider": g.provider,
        "status": status,
        "output": output,
        "output_text": if completed { json!(text) } else { Value::Null },
        "error": if failed { mid_stream_error_field() } else { Value::Null },
        "incomplete_details": null,
        "instructions": g.instructions,
        "metadata": {},
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "temperature": null,
        "top_p": null,
        "presence_penalty": null,
        "frequency_penalty": null,
        "max_output_tokens": g.max_output_tokens,
        "store": false,
        "truncation": "disabled",
        "text": {"format": {"type": "text"}},
        "usage": if completed { usage(g) } else { Value::Null },
    })
}

/// The message of a simulated mid-stream failure.
pub(crate) const MID_STREAM_ERROR_MESSAGE: &str = "Provider disconnected unexpectedly";

fn mid_stream_error_field() -> Value {
    json!({"code": "server_error", "message": MID_STREAM_ERROR_MESSAGE})
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
    delayed_reply(id, "text/event-stream", chunks, abort, Duration::ZERO)
}

/// A reply whose headers go out at once and whose `chunks` follow after
/// `delay`; when `abort`, the connection is cut after them.
fn delayed_reply(
    id: &str,
    content_type: &'static str,
    chunks: Vec<String>,
    abort: bool,
    delay: Duration,
) -> Response {
    let (mut tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
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
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(rx),
    )
        .into_response();
    with_generation_id(resp, id)
}

/// Numbers the events of one Responses stream.
struct Events {
    out: Vec<String>,
    seq: u64,
}

impl Events {
    fn push(&mut self, sim: &Simulator, g: &Planned, mut ev: Value) {
        ev["sequence_number"] = json!(self.seq);
        self.seq += 1;
        let kind = ev["type"].as_str().unwrap_or("message").to_owned();
        self.out
            .push(format!("event: {kind}\ndata: {}\n\n", render(sim, g, &ev)));
    }
}

pub(crate) async fn post_responses(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let prompt = |body: &Value| {
        let mut input = text_of(&body["input"]);
        if let Some(i) = body["instructions"].as_str() {
            input.push('\n');
            input.push_str(i);
        }
        (input, body["max_output_tokens"].as_u64())
    };
    let (g, stream) = match begin(&sim, &headers, &body, prompt).await {
        Ok(started) => started,
        Err(resp) => return resp,
    };
    tracing::debug!(
        id = g.id,
        model = g.model,
        stream,
        ending = ?g.ending,
        "responses"
    );
    let body_delay = sim.shared.cfg.gen_body_delay;
    if !stream {
        let text = render(&sim, &g, &response_object(&g, "completed"));
        if !body_delay.is_zero() {
            return delayed_reply(&g.id, "application/json", vec![text], false, body_delay);
        }
        return with_generation_id(reply::json(StatusCode::OK, text), &g.id);
    }
    let mut ev = Events {
        out: vec![": OPENROUTER PROCESSING\n\n".to_owned()],
        seq: 0,
    };
    let item_id = format!("msg-{}", g.id);
    ev.push(
        &sim,
        &g,
        json!({"type": "response.created", "response": response_object(&g, "in_progress")}),
    );
    ev.push(
        &sim,
        &g,
        json!({"type": "response.in_progress", "response": response_object(&g, "in_progress")}),
    );
    ev.push(&sim, &g, json!({"type": "response.output_item.added", "output_index": 0, "item": message_item(&g, "in_progress", "")}));
    ev.push(&sim, &g, json!({"type": "response.content_part.added", "item_id": item_id, "output_index": 0, "content_index": 0, "part": output_text_part("")}));
    for (i, w) in g.words.iter().take(g.sent).enumerate() {
        let delta = if i + 1 < g.words.len() {
            format!("{w} ")
        } else {
            w.clone()
        };
        ev.push(&sim, &g, json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0, "content_index": 0, "delta": delta, "logprobs": []}));
    }
    match g.ending {
        Ending::Abort => {
            return delayed_reply(&g.id, "text/event-stream", ev.out, true, body_delay)
        }
        Ending::MidStreamError => {
            ev.push(
                &sim,
                &g,
                json!({"type": "response.failed", "response": response_object(&g, "failed")}),
            );
        }
        Ending::Complete => {
            let text = g.words.join(" ");
            ev.push(&sim, &g, json!({"type": "response.output_text.done", "item_id": item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}));
            ev.push(&sim, &g, json!({"type": "response.content_part.done", "item_id": item_id, "output_index": 0, "content_index": 0, "part": output_text_part(&text)}));
            ev.push(&sim, &g, json!({"type": "response.output_item.done", "output_index": 0, "item": message_item(&g, "completed", &text)}));
            ev.push(
                &sim,
                &g,
                json!({"type": "response.completed", "response": response_object(&g, "completed")}),
            );
        }
    }
    ev.out.push("data: [DONE]\n\n".to_owned());
    delayed_reply(&g.id, "text/event-stream", ev.out, false, body_delay)
}
