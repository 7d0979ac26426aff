//! `POST /responses`: run one generation, with or without streaming, and
//! capture exactly what it cost.
//!
//! * [`OpenRouterClient::responses`] sends `"stream": false` and reads one
//!   JSON reply.
//! * [`OpenRouterClient::responses_stream`] sends `"stream": true` and reads
//!   the server-sent events to the end; `usage` comes from the final event
//!   (`response.completed`, or `response.failed` / `response.incomplete`).
//!
//! Both return a [`ResponsesReply`]: the generation id (header
//! `X-Generation-Id`, else the body's `id`), the output text, the status and
//! the [`ResponseUsage`] (exact `cost`, `is_byok`,
//! `cost_details.upstream_inference_cost`, token details).
//!
//! # Decisions
//!
//! * **An aborted stream is an answer, not an error.** When the connection
//!   ends before the final event, the generation still exists (and may have
//!   cost money), so the reply carries its id with `aborted = true` and
//!   `usage = None`; the caller books an estimate and the reconciler finds
//!   the actual cost later. Only a stream that never revealed a generation
//!   id is an error.
//! * **Costs are read from the literal JSON number text**
//!   ([`tally_money::json_number`]); a negative or unreadable cost makes the
//!   reply malformed, never a wrong number. A `null` cost is `None`.
//! * **BYOK needs both halves.** [`ResponseUsage::actual_cost`] is
//!   `cost + upstream_inference_cost` for BYOK ([money rule 8](crate#money-rules)) and
//!   `None` when the upstream half is missing: a partial actual would be
//!   booked as final, while `None` lets the reconciler ask.
//! * **Errors of the generation endpoints get their own type**
//!   ([`ResponsesError`]): a 400 means a bad request (or an unknown model),
//!   which the shared [`OpenRouterError`] cannot tell apart; every other
//!   status maps exactly like the other endpoints.
//! * **Routing travels typed** ([`ProviderRouting`]): numbers in
//!   `max_price` are written as JSON numbers with their exact digits.

use std::time::Duration;

use reqwest::{header::HeaderMap, Method};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_money::{Cost, Usd};

use crate::{
    client::OpenRouterClient,
    error::{self, OpenRouterError},
    sse::SseParser,
};

/// The largest non-streaming reply body read (16 MiB).
const BODY_LIMIT: usize = 16 * 1024 * 1024;
/// How much of an error body is read for its message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// The response header carrying the generation id.
pub const GENERATION_ID_HEADER: &str = "x-generation-id";

/// OpenRouter's `provider` routing object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRouting {
    /// Providers to try, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Vec<String>>,
    /// Whether other providers may serve when the listed ones cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_fallbacks: Option<bool>,
    /// Only providers that support every parameter of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_parameters: Option<bool>,
    /// `allow` or `deny`: whether data-collecting providers may serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_collection: Option<String>,
    /// Only zero-data-retention endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zdr: Option<bool>,
    /// Providers allowed to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<Vec<String>>,
    /// Providers never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<Vec<String>>,
    /// `price`, `throughput` or `latency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<String>,
    /// Price ceilings, USD per million tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<MaxPriceUsd>,
}

impl ProviderRouting {
    /// Whether no field is set (nothing to send).
    pub fn is_empty(&self) -> bool {
        *self == ProviderRouting::default()
    }
}

/// `provider.max_price`: ceilings in USD per million tokens (`_per_mtok`),
/// where a catalog [`Pricing`](crate::models::Pricing) is USD per token: the
/// field names carry the unit so the two are never compared as they stand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaxPriceUsd {
    /// Highest prompt price.
    #[serde(
        rename = "prompt",
        default,
        with = "tally_money::json_number::cost_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub prompt_usd_per_mtok: Option<Cost>,
    /// Highest completion price.
    #[serde(
        rename = "completion",
        default,
        with = "tally_money::json_number::cost_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub completion_usd_per_mtok: Option<Cost>,
}

/// One input message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// The `input` of a Responses request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResponsesInput {
    /// One prompt.
    Text(String),
    /// A conversation.
    Messages(Vec<InputMessage>),
}

/// An OpenRouter server-side tool (`{"type": "web_search"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTool {
    /// The tool type, e.g. `web_search`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// The body of `POST /responses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResponsesRequest {
    /// The model slug.
    pub model: String,
    /// Fallback models, tried in order (OpenRouter extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Prompt or conversation.
    pub input: ResponsesInput,
    /// System instructions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Output token cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Set by the client method ([`OpenRouterClient::responses`] /
    /// [`OpenRouterClient::responses_stream`]).
    pub stream: bool,
    /// Provider routing (OpenRouter extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderRouting>,
    /// Groups the generations of a session in OpenRouter's logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The end user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Server-side tools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ServerTool>>,
}

impl ResponsesRequest {
    /// A minimal request: `model` and a text prompt.
    pub fn new(model: impl Into<String>, input: impl Into<String>) -> Self {
        ResponsesRequest {
            model: model.into(),
            models: None,
            input: ResponsesInput::Text(input.into()),
            instructions: None,
            max_output_tokens: None,
            stream: false,
            provider: None,
            session_id: None,
            user: None,
            tools: None,
        }
    }
}

/// Token counts and cost of one generation, as `usage` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseUsage {
    /// Input (prompt) tokens, cached ones included.
    pub input_tokens: u64,
    /// Output (completion) tokens, reasoning ones included.
    pub output_tokens: u64,
    /// Total tokens, when sent.
    pub total_tokens: Option<u64>,
    /// Input tokens read from the cache.
    pub cached_tokens: Option<u64>,
    /// Input tokens written to the cache.
    pub cache_write_tokens: Option<u64>,
    /// Reasoning tokens.
    pub reasoning_tokens: Option<u64>,
    /// Web searches made by server tools.
    pub web_search_requests: Option<u64>,
    /// `usage.cost` (USD; for BYOK only OpenRouter's fee); `None` when null
    /// or absent.
    pub cost: Option<Cost>,
    /// Whether the org's own provider key served it.
    pub is_byok: bool,
    /// `cost_details.upstream_inference_cost` (USD): what the upstream
    /// provider billed (for BYOK, billed to the organisation's own key).
    pub upstream_inference_cost: Option<Cost>,
    /// Its prompt part: `cost_details.upstream_inference_input_cost`
    /// (Responses API) or `upstream_inference_prompt_cost` (chat).
    pub upstream_inference_input_cost: Option<Cost>,
    /// Its completion part: `cost_details.upstream_inference_output_cost`
    /// (Responses API) or `upstream_inference_completions_cost` (chat).
    pub upstream_inference_output_cost: Option<Cost>,
}

impl ResponseUsage {
    /// What the generation really cost ([money rule 8](crate#money-rules)): `cost`, plus
    /// `upstream_inference_cost` for BYOK. `None` when `cost` is missing, or
    /// for BYOK when the upstream cost is missing. The sum is exact (a reply
    /// whose sum would leave [`Cost::MAX`] is refused when parsed; for
    /// hand-built usage it gives `None`, never a rounded figure).
    pub fn actual_cost(&self) -> Option<Cost> {
        let cost = self.cost?;
        if self.is_byok {
            cost.try_add(self.upstream_inference_cost?).ok()
        } else {
            Some(cost)
        }
    }
}

/// The outcome of one generation request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponsesReply {
    /// OpenRouter's generation id (`X-Generation-Id`, else the body `id`).
    pub generation_id: String,
    /// The model that served it, when reported.
    pub model: Option<String>,
    /// The upstream provider, when reported.
    pub provider: Option<String>,
    /// The response `status` (`completed`, `incomplete`, `failed`,
    /// `cancelled`, …), when reported.
    pub status: Option<String>,
    /// The output text (empty when there is none).
    pub output_text: String,
    /// Usage; `None` for an aborted stream or a reply without it.
    pub usage: Option<ResponseUsage>,
    /// The stream ended before its final event.
    pub aborted: bool,
    /// An error message the reply or stream carried.
    pub error: Option<String>,
}

impl ResponsesReply {
    /// An empty reply whose generation id is the `X-Generation-Id` header
    /// `header_id` (empty when absent).
    pub(crate) fn for_header(header_id: &str) -> Self {
        ResponsesReply {
            generation_id: header_id.to_owned(),
            ..ResponsesReply::default()
        }
    }

    /// Takes what a reply object says of where it ran: its `id` (when the
    /// header gave none), the model and the provider (when sent).
    pub(crate) fn note_origin(
        &mut self,
        id: Option<String>,
        model: Option<String>,
        provider: Option<String>,
    ) {
        if self.generation_id.is_empty() {
            if let Some(id) = id.filter(|s| !s.is_empty()) {
                self.generation_id = id;
            }
        }
        if model.is_some() {
            self.model = model;
        }
        if provider.is_some() {
            self.provider = provider;
        }
    }

    /// Takes a reply object's usage, when sent; usage that is not readable
    /// makes the reply (of HTTP `status`) malformed.
    pub(crate) fn note_usage(
        &mut self,
        usage: Option<WireUsage>,
        status: u16,
    ) -> Result<(), OpenRouterError> {
        if let Some(u) = usage {
            self.usage = Some(
                u.into_usage()
                    .map_err(|e| OpenRouterError::malformed(status, e))?,
            );
        }
        Ok(())
    }

    /// The reply at the end of a stream, if the stream revealed its
    /// generation id.
    pub(crate) fn streamed(self) -> Result<ResponsesReply, OpenRouterError> {
        if self.generation_id.is_empty() {
            return Err(OpenRouterError::Transport(
                "the stream ended before revealing a generation id".to_owned(),
            ));
        }
        Ok(self)
    }

    /// The reply, if it names its generation (header or body); a reply
    /// without a generation id cannot be reconciled, so it is malformed.
    pub(crate) fn with_generation_id(self) -> Result<ResponsesReply, OpenRouterError> {
        if self.generation_id.is_empty() {
            return Err(OpenRouterError::malformed(
                200,
                "no X-Generation-Id header and no id in the body",
            ));
        }
        Ok(self)
    }
}

/// Why a generation request produced no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponsesError {
    /// HTTP 400/422: OpenRouter refused the request as invalid.
    #[error("OpenRouter refused the request (HTTP {status}): {message}")]
    BadRequest {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The model is not known to OpenRouter.
    #[error("unknown model: {message}")]
    UnknownModel {
        /// The server's message.
        message: String,
    },
    /// HTTP 404 "no endpoints": no provider can serve the request under its
    /// routing constraints.
    #[error("no provider can serve the request: {message}")]
    NoEndpoints {
        /// The server's message.
        message: String,
    },
    /// Every other failure (402, 429, 5xx, timeouts, malformed replies …).
    #[error(transparent)]
    Api(#[from] OpenRouterError),
}

impl ResponsesError {
    /// Stable code: `bad_request`, `unknown_model`, `no_endpoints`, or the
    /// [`OpenRouterError::code`].
    pub fn code(&self) -> &'static str {
        match self {
            ResponsesError::BadRequest { .. } => "bad_request",
            ResponsesError::UnknownModel { .. } => "unknown_model",
            ResponsesError::NoEndpoints { .. } => "no_endpoints",
            ResponsesError::Api(e) => e.code(),
        }
    }

    /// Whether sending the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ResponsesError::Api(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// The server's `Retry-After`, when sent.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ResponsesError::Api(e) => e.retry_after(),
            _ => None,
        }
    }

    /// The HTTP status behind the error, when there was a reply.
    pub fn status(&self) -> Option<u16> {
        match self {
            ResponsesError::BadRequest { status, .. } => Some(*status),
            ResponsesError::UnknownModel { .. } => Some(400),
            ResponsesError::NoEndpoints { .. } => Some(404),
            ResponsesError::Api(e) => e.status(),
        }
    }
}

/// Maps a non-2xx reply of a generation endpoint (`POST /responses`,
/// `POST /chat/completions`) to its error.
pub fn generation_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ResponsesError {
    let message = error::error_message(body).unwrap_or_else(|| {
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no message")
            .to_owned()
    });
    let lower = message.to_ascii_lowercase();
    let about_model = lower.contains("model")
        && (lower.contains("not a valid")
            || lower.contains("does not exist")
            || lower.contains("not found")
            || lower.contains("unknown"));
    match status {
        400 | 404 | 422 if about_model && !lower.contains("no endpoints") => {
            ResponsesError::UnknownModel { message }
        }
        404 => ResponsesError::NoEndpoints { message },
        400 | 422 => ResponsesError::BadRequest { status, message },
        _ => ResponsesError::Api(error::from_status(status, headers, body, false)),
    }
}

// ---- wire types -----------------------------------------------------------

#[derive(Deserialize, Default)]
struct WireTokensIn {
    cached_tokens: Option<u64>,
    cache_write_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct WireTokensOut {
    reasoning_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct WireCostDetails {
    #[serde(default, with = "tally_money::json_number::opt")]
    upstream_inference_cost: Option<Usd>,
    // The parts of the upstream cost: Responses API names…
    #[serde(default, with = "tally_money::json_number::opt")]
    upstream_inference_input_cost: Option<Usd>,
    #[serde(default, with = "tally_money::json_number::opt")]
    upstream_inference_output_cost: Option<Usd>,
    // …and chat-completions names.
    #[serde(default, with = "tally_money::json_number::opt")]
    upstream_inference_prompt_cost: Option<Usd>,
    #[serde(default, with = "tally_money::json_number::opt")]
    upstream_inference_completions_cost: Option<Usd>,
}

#[derive(Deserialize, Default)]
struct WireToolUse {
    web_search_requests: Option<u64>,
}

#[derive(Deserialize, Default)]
pub(crate) struct WireUsage {
    input_tokens: Option<u64>,
    // Chat-style names, accepted too.
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens_details: Option<WireTokensIn>,
    prompt_tokens_details: Option<WireTokensIn>,
    output_tokens: Option<u64>,
    output_tokens_details: Option<WireTokensOut>,
    completion_tokens_details: Option<WireTokensOut>,
    total_tokens: Option<u64>,
    #[serde(default, with = "tally_money::json_number::opt")]
    cost: Option<Usd>,
    is_byok: Option<bool>,
    cost_details: Option<WireCostDetails>,
    server_tool_use_details: Option<WireToolUse>,
}

impl WireUsage {
    /// The reply's usage, its costs checked once here, naming the field
    /// that is not a cost.
    pub(crate) fn into_usage(self) -> Result<ResponseUsage, String> {
        let details = self.cost_details.unwrap_or_default();
        let input_part = details
            .upstream_inference_input_cost
            .or(details.upstream_inference_prompt_cost);
        let output_part = details
            .upstream_inference_output_cost
            .or(details.upstream_inference_completions_cost);
        let cost = wire_cost("cost", self.cost)?;
        let upstream = wire_cost(
            "cost_details.upstream_inference_cost",
            details.upstream_inference_cost,
        )?;
        let input_part = wire_cost("cost_details.upstream_inference_input_cost", input_part)?;
        let output_part = wire_cost("cost_details.upstream_inference_output_cost", output_part)?;
        if let (Some(true), Some(c), Some(u)) = (self.is_byok, cost, upstream) {
            c.try_add(u).map_err(|e| {
                format!("usage.cost + usage.cost_details.upstream_inference_cost: {e}")
            })?;
        }
        let tin = self.input_tokens_details.or(self.prompt_tokens_details);
        let tout = self
            .output_tokens_details
            .or(self.completion_tokens_details);
        Ok(ResponseUsage {
            input_tokens: self.input_tokens.or(self.prompt_tokens).unwrap_or(0),
            output_tokens: self.output_tokens.or(self.completion_tokens).unwrap_or(0),
            total_tokens: self.total_tokens,
            cached_tokens: tin.as_ref().and_then(|t| t.cached_tokens),
            cache_write_tokens: tin.as_ref().and_then(|t| t.cache_write_tokens),
            reasoning_tokens: tout.and_then(|t| t.reasoning_tokens),
            web_search_requests: self
                .server_tool_use_details
                .and_then(|t| t.web_search_requests),
            cost,
            is_byok: self.is_byok.unwrap_or(false),
            upstream_inference_cost: upstream,
            upstream_inference_input_cost: input_part,
            upstream_inference_output_cost: output_part,
        })
    }
}

/// A wire amount as a cost, or the field it came in and why not.
fn wire_cost(name: &str, amount: Option<Usd>) -> Result<Option<Cost>, String> {
    amount
        .map(Cost::new)
        .transpose()
        .map_err(|e| format!("usage.{name}: {e}"))
}

#[derive(Deserialize, Default)]
struct WireResponse {
    id: Option<String>,
    model: Option<String>,
    provider: Option<String>,
    status: Option<String>,
    output: Option<Vec<Value>>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    response: Option<WireResponse>,
    delta: Option<String>,
    message: Option<String>,
}

fn output_text(output: &[Value]) -> String {
    let mut text = String::new();
    for item in output {
        if item.get("type").and_then(Value::as_str) != Some("message") {
            continue;
        }
        let Some(content) = item.get("content").and_then(Value::as_array) else {
            continue;
        };
        for part in content {
            if part.get("type").and_then(Value::as_str) == Some("output_text") {
                if let Some(t) = part.get("text").and_then(Value::as_str) {
                    text.push_str(t);
                }
            }
        }
    }
    text
}

pub(crate) fn error_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(
            other
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| other.to_string()),
        ),
    }
}

/// Applies a (final or non-streaming) response object to `reply`.
fn apply_response(
    reply: &mut ResponsesReply,
    w: WireResponse,
    status: u16,
) -> Result<(), OpenRouterError> {
    reply.note_origin(w.id, w.model, w.provider);
    if w.status.is_some() {
        reply.status = w.status;
    }
    if let Some(output) = &w.output {
        let text = output_text(output);
        if !text.is_empty() || reply.output_text.is_empty() {
            reply.output_text = text;
        }
    }
    if let Some(e) = w.error.as_ref().and_then(error_text) {
        reply.error = Some(e);
    }
    reply.note_usage(w.usage, status)
}

pub(crate) fn header_generation_id(headers: &HeaderMap) -> String {
    headers
        .get(GENERATION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl ResponsesReply {
    /// Parses a non-streaming `200` body; `header_id` is the
    /// `X-Generation-Id` header (empty when absent).
    pub fn from_body(header_id: &str, body: &[u8]) -> Result<Self, OpenRouterError> {
        let w: WireResponse = serde_json::from_slice(body).map_err(|e| {
            OpenRouterError::malformed(200, format!("body is not a response object: {e}"))
        })?;
        let mut reply = ResponsesReply::for_header(header_id);
        apply_response(&mut reply, w, 200)?;
        reply.with_generation_id()
    }
}

/// Folds the events of a Responses stream into a reply.
#[derive(Debug, Default)]
pub struct StreamAccumulator {
    reply: ResponsesReply,
    finished: bool,
    deltas: String,
}

impl StreamAccumulator {
    /// An accumulator for a stream whose `X-Generation-Id` header was
    /// `header_id` (empty when absent).
    pub fn new(header_id: &str) -> Self {
        StreamAccumulator {
            reply: ResponsesReply::for_header(header_id),
            ..StreamAccumulator::default()
        }
    }

    /// Whether the final event arrived.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Applies one event's `data`.
    pub fn event(&mut self, data: &str) -> Result<(), OpenRouterError> {
        if data == "[DONE]" {
            return Ok(());
        }
        let ev: WireEvent = serde_json::from_str(data).map_err(|e| {
            OpenRouterError::malformed(200, format!("unreadable stream event: {e}"))
        })?;
        match ev.kind.as_deref() {
            Some("response.output_text.delta") => {
                if let Some(d) = ev.delta {
                    self.deltas.push_str(&d);
                }
            }
            Some("response.completed" | "response.failed" | "response.incomplete") => {
                if let Some(r) = ev.response {
                    apply_response(&mut self.reply, r, 200)?;
                }
                self.finished = true;
            }
            Some("error") => {
                self.reply.error = ev.message.or(Some("stream error".to_owned()));
            }
            _ => {
                // response.created, response.in_progress, …: metadata only.
                if let Some(r) = ev.response {
                    self.reply.note_origin(r.id, r.model, r.provider);
                }
            }
        }
        Ok(())
    }

    /// The reply; `aborted` when the final event never came. Fails when the
    /// stream never revealed a generation id.
    pub fn finish(mut self) -> Result<ResponsesReply, OpenRouterError> {
        if self.reply.output_text.is_empty() {
            self.reply.output_text = std::mem::take(&mut self.deltas);
        }
        if !self.finished {
            self.reply.aborted = true;
            self.reply.usage = None;
        }
        self.reply.streamed()
    }
}

impl OpenRouterClient {
    async fn post_responses(
        &self,
        req: &ResponsesRequest,
        stream: bool,
    ) -> Result<reqwest::Response, ResponsesError> {
        let url = self.url("/responses")?;
        let mut body = req.clone();
        body.stream = stream;
        let mut resp = self
            .request(Method::POST, url)
            .json(&body)
            .send()
            .await
            .map_err(|e| OpenRouterError::from_reqwest(&e))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let headers = std::mem::take(resp.headers_mut());
            let body = read_limited(&mut resp, ERROR_BODY_LIMIT)
                .await
                .unwrap_or_default();
            return Err(generation_error(status, &headers, &body));
        }
        Ok(resp)
    }

    /// `POST {base}/responses` without streaming.
    pub async fn responses(
        &self,
        req: &ResponsesRequest,
    ) -> Result<ResponsesReply, ResponsesError> {
        self.start_responses(req, false).await?.finish().await
    }

    /// `POST {base}/responses` with `"stream": true`, read to the end. A
    /// stream cut before its final event gives a reply with
    /// `aborted = true` and no usage.
    pub async fn responses_stream(
        &self,
        req: &ResponsesRequest,
    ) -> Result<ResponsesReply, ResponsesError> {
        self.start_responses(req, true).await?.finish().await
    }

    /// `POST {base}/responses` (streaming or not), returning as soon as the
    /// response headers arrive: the caller can record the generation id
    /// ([`PendingResponse::generation_id`]) before the body is read with
    /// [`PendingResponse::finish`].
    pub async fn start_responses(
        &self,
        req: &ResponsesRequest,
        stream: bool,
    ) -> Result<PendingResponse, ResponsesError> {
        let resp = self.post_responses(req, stream).await?;
        let header_id = header_generation_id(resp.headers());
        Ok(PendingResponse {
            resp,
            header_id,
            stream,
        })
    }
}

/// A generation whose response headers arrived and whose body is still to
/// be read (see [`OpenRouterClient::start_responses`]).
#[derive(Debug)]
pub struct PendingResponse {
    resp: reqwest::Response,
    header_id: String,
    stream: bool,
}

impl PendingResponse {
    /// The `X-Generation-Id` header, when sent.
    pub fn generation_id(&self) -> Option<&str> {
        Some(self.header_id.as_str()).filter(|id| !id.is_empty())
    }

    /// Reads the body to the end.
    pub async fn finish(mut self) -> Result<ResponsesReply, ResponsesError> {
        if !self.stream {
            let body = read_limited(&mut self.resp, BODY_LIMIT)
                .await
                .map_err(|e| match e {
                    Some(e) => OpenRouterError::from_reqwest(&e),
                    None => OpenRouterError::malformed(
                        200,
                        format!("body larger than {BODY_LIMIT} bytes"),
                    ),
                })?;
            return Ok(ResponsesReply::from_body(&self.header_id, &body)?);
        }
        let mut acc = StreamAccumulator::new(&self.header_id);
        let mut parser = SseParser::new();
        loop {
            match self.resp.chunk().await {
                Ok(Some(chunk)) => {
                    let events = parser
                        .push(&chunk)
                        .map_err(|e| OpenRouterError::malformed(200, e.to_string()))?;
                    for ev in events {
                        acc.event(&ev.data)?;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "generation stream cut");
                    break;
                }
            }
        }
        Ok(acc.finish()?)
    }
}

/// Reads a body up to `limit` bytes; `Err(None)` when it is larger.
async fn read_limited(
    resp: &mut reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, Option<reqwest::Error>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Some)? {
        if body.len() + chunk.len() > limit {
            return Err(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    use tally_money::cost;

    #[test]
    fn the_responses_fixture_parses_exactly() {
        let body = include_bytes!("../tests/fixtures/responses.json");
        let r = ResponsesReply::from_body("gen-h", body).unwrap();
        assert_eq!(r.generation_id, "gen-h");
        assert_eq!(r.output_text, "Four.");
        assert_eq!(r.status.as_deref(), Some("completed"));
        let u = r.usage.unwrap();
        assert_eq!(u.input_tokens, 118);
        assert_eq!(u.output_tokens, 41);
        assert_eq!(u.cached_tokens, Some(64));
        assert_eq!(u.cache_write_tokens, Some(0));
        assert_eq!(u.reasoning_tokens, Some(12));
        assert_eq!(u.web_search_requests, Some(0));
        assert_eq!(u.cost, Some(cost!("0.0001234")));
        assert_eq!(u.upstream_inference_cost, Some(cost!("0.0001234")));
        assert!(!u.is_byok);
        assert_eq!(u.actual_cost(), Some(cost!("0.0001234")));
        // Without the header, the body id stands in.
        let r = ResponsesReply::from_body("", body).unwrap();
        assert_eq!(r.generation_id, "resp-1732531500-Lk9sQ2wE4rTy6uIo8pAs");
    }

    #[test]
    fn chat_usage_names_are_understood_too() {
        let v: Value =
            serde_json::from_slice(include_bytes!("../tests/fixtures/chat-completion.json"))
                .unwrap();
        let usage = v["usage"].to_string();
        // Re-read from the original text to keep the exact digits.
        let text =
            std::str::from_utf8(include_bytes!("../tests/fixtures/chat-completion.json")).unwrap();
        let start = text.find("\"usage\":").unwrap() + 8;
        let u: WireUsage = serde_json::from_str(&text[start..text.len() - 2]).unwrap();
        let u = u.into_usage().unwrap();
        assert!(usage.contains("prompt_tokens"));
        assert_eq!(u.input_tokens, 118);
        assert_eq!(u.cached_tokens, Some(64));
        assert_eq!(u.cost, Some(cost!("0.00012345678901234567")));
    }

    #[test]
    fn byok_actual_cost_needs_both_halves() {
        let mut u = ResponseUsage {
            cost: Some(cost!("0.00001")),
            is_byok: true,
            upstream_inference_cost: Some(cost!("0.0002")),
            ..ResponseUsage::default()
        };
        assert_eq!(u.actual_cost(), Some(cost!("0.00021")));
        u.upstream_inference_cost = None;
        assert_eq!(u.actual_cost(), None);
        u.is_byok = false;
        assert_eq!(u.actual_cost(), Some(cost!("0.00001")));
        u.cost = None;
        assert_eq!(u.actual_cost(), None);
    }

    #[test]
    fn bad_costs_are_malformed_and_null_costs_missing() {
        let neg = br#"{"id":"g","usage":{"input_tokens":1,"output_tokens":1,"cost":-0.1}}"#;
        assert_eq!(
            ResponsesReply::from_body("", neg).unwrap_err().code(),
            "malformed_reply"
        );
        let string = br#"{"id":"g","usage":{"input_tokens":1,"output_tokens":1,"cost":"0.1"}}"#;
        assert_eq!(
            ResponsesReply::from_body("", string).unwrap_err().code(),
            "malformed_reply"
        );
        let null = br#"{"id":"g","usage":{"input_tokens":1,"output_tokens":1,"cost":null}}"#;
        let r = ResponsesReply::from_body("", null).unwrap();
        assert_eq!(r.usage.unwrap().cost, None);
        assert_eq!(
            ResponsesReply::from_body("", b"{}").unwrap_err().code(),
            "malformed_reply"
        );
    }

    #[test]
    fn streams_fold_and_aborts_keep_the_id() {
        let mut acc = StreamAccumulator::new("");
        acc.event(r#"{"type":"response.created","response":{"id":"gen-1","model":"m","status":"in_progress"}}"#).unwrap();
        acc.event(r#"{"type":"response.output_text.delta","delta":"Fo"}"#)
            .unwrap();
        acc.event(r#"{"type":"response.output_text.delta","delta":"ur."}"#)
            .unwrap();
        let aborted = acc.finish().unwrap();
        assert!(aborted.aborted);
        assert_eq!(aborted.generation_id, "gen-1");
        assert_eq!(aborted.output_text, "Four.");
        assert_eq!(aborted.usage, None);

        let mut acc = StreamAccumulator::new("gen-h");
        acc.event(r#"{"type":"response.output_text.delta","delta":"Four."}"#)
            .unwrap();
        acc.event(r#"{"type":"response.completed","response":{"id":"gen-1","status":"completed","usage":{"input_tokens":3,"output_tokens":2,"cost":1.425e-7,"is_byok":false}}}"#).unwrap();
        acc.event("[DONE]").unwrap();
        let r = acc.finish().unwrap();
        assert!(!r.aborted);
        assert_eq!(r.generation_id, "gen-h");
        assert_eq!(r.output_text, "Four.");
        assert_eq!(r.usage.unwrap().cost, Some(cost!("0.0000001425")));

        assert_eq!(
            StreamAccumulator::new("").finish().unwrap_err().code(),
            "transport"
        );
    }

    #[test]
    fn error_statuses_map_to_cases() {
        let h = HeaderMap::new();
        let e = generation_error(
            400,
            &h,
            br#"{"error":{"code":400,"message":"x/y is not a valid model ID"}}"#,
        );
        assert_eq!(e.code(), "unknown_model");
        let e = generation_error(400, &h, br#"{"error":{"code":400,"message":"bad input"}}"#);
        assert_eq!(e.code(), "bad_request");
        assert!(!e.is_retryable());
        let e = generation_error(
            404,
            &h,
            br#"{"error":{"code":404,"message":"No endpoints found matching your data policy"}}"#,
        );
        assert_eq!(e.code(), "no_endpoints");
        let e = generation_error(402, &h, include_bytes!("../tests/fixtures/error-402.json"));
        assert_eq!(e.code(), "payment_required");
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "4".parse().unwrap());
        let e = generation_error(429, &h, include_bytes!("../tests/fixtures/error-429.json"));
        assert_eq!(e.code(), "rate_limited");
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(4)));
        assert_eq!(generation_error(502, &h, b"").code(), "bad_gateway");
        assert_eq!(generation_error(503, &h, b"").code(), "unavailable");
        assert_eq!(generation_error(524, &h, b"").code(), "edge_timeout");
        assert_eq!(generation_error(529, &h, b"").code(), "provider_overloaded");
        assert_eq!(generation_error(500, &h, b"").code(), "server_error");
    }

    #[test]
    fn requests_serialise_with_exact_max_price() {
        let mut r = ResponsesRequest::new("m", "hi");
        r.provider = Some(ProviderRouting {
            max_price: Some(MaxPriceUsd {
                prompt_usd_per_mtok: Some(cost!("0.15")),
                completion_usd_per_mtok: None,
            }),
            sort: Some("price".into()),
            ..ProviderRouting::default()
        });
        r.tools = Some(vec![ServerTool {
            kind: "web_search".into(),
        }]);
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"model":"m","input":"hi","stream":false,"provider":{"sort":"price","max_price":{"prompt":0.15}},"tools":[{"type":"web_search"}]}"#
        );
    }
}
