//! Payloads about one generation: the request an agent sends
//! ([`GenerationRequested`]), the worker's answer ([`GenerationResult`],
//! [`GenerationFailed`]) and the fact that money may have been spent
//! ([`GenerationCompleted`]).
//!
//! # Invariants
//!
//! * The field set of every struct is exactly the `data` properties of its
//!   schema (`#[serde(deny_unknown_fields)]`); optional fields are omitted
//!   when `None`, required nullable fields are written as `null`.
//! * Every cost is a [`Cost`], non-negative by construction, and travels
//!   as a decimal string; a JSON number or a negative amount is refused
//!   when the event is read.
//!
//! # Decisions
//!
//! * **Completed carries estimate and actual side by side.** The actual
//!   cost is often missing (aborted streams never deliver `usage`); the
//!   producer's estimate lets budgets move at once, and the reconciler's
//!   actual replaces it later (money rule 3, owned by
//!   `tally-ledger`).
//! * **Cost is not part of the result.** [`GenerationResult`] answers the
//!   requester; money always travels in [`GenerationCompleted`], so that
//!   generations from other producers and from tally's worker are booked by
//!   the same path.
//! * **Routing is passed through, typed.** Typing the OpenRouter routing
//!   options rejects a misspelt `sort` at the edge instead of letting
//!   OpenRouter silently ignore it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_money::Cost;

use crate::check::{self, wire_enum};
use crate::Attribution;
use crate::{EventError, EventType, Payload};

wire_enum! {
    /// How a generation ended. Cancelled and errored generations may still
    /// have cost money.
    pub enum GenerationStatus {
        /// It ran to the end.
        Completed => "completed",
        /// The caller aborted it (e.g. a stream was dropped).
        Cancelled => "cancelled",
        /// OpenRouter or the provider failed part-way.
        Errored => "errored",
    }
}

impl Default for GenerationStatus {
    /// A completed event that does not say how the generation ended is a
    /// generation that ran to the end.
    fn default() -> Self {
        GenerationStatus::Completed
    }
}

wire_enum! {
    /// How a request ended, as told to the requester.
    pub enum ResultStatus {
        /// A generation ran to the end; `output_text` holds its output.
        Completed => "completed",
        /// The generation was cancelled part-way.
        Cancelled => "cancelled",
        /// The generation errored part-way.
        Errored => "errored",
        /// No generation could be produced (see `error`).
        Failed => "failed",
    }
}

wire_enum! {
    /// Author of one input message.
    pub enum Role {
        /// System prompt.
        System => "system",
        /// Developer instructions.
        Developer => "developer",
        /// The end user.
        User => "user",
        /// An earlier model answer.
        Assistant => "assistant",
    }
}

wire_enum! {
    /// Whether providers that store or train on prompts may serve.
    pub enum DataCollection {
        /// They may.
        Allow => "allow",
        /// They may not.
        Deny => "deny",
    }
}

wire_enum! {
    /// How OpenRouter ranks the providers of a model.
    pub enum Sort {
        /// Cheapest first.
        Price => "price",
        /// Highest throughput first.
        Throughput => "throughput",
        /// Lowest latency first.
        Latency => "latency",
    }
}

wire_enum! {
    /// Whose provider capacity serves the request.
    pub enum Capacity {
        /// OpenRouter's shared keys.
        Shared => "shared",
        /// The org's own provider keys (BYOK) first, then shared.
        ByokFirst => "byok_first",
        /// Only the org's own provider keys.
        ByokOnly => "byok_only",
    }
}

/// One message of a conversation input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputMessage {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
}

/// The input of a generation: a prompt or a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Input {
    /// A single prompt (non-empty).
    Text(String),
    /// A conversation (at least one message).
    Messages(Vec<InputMessage>),
}

// Hand-written rather than `#[serde(untagged)]` so that an error inside a
// message names its path (`data.input[0].role`) instead of "did not match
// any variant".
impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct InputVisitor;

        impl<'de> serde::de::Visitor<'de> for InputVisitor {
            type Value = Input;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a prompt string or an array of {role, content} messages")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Input, E> {
                Ok(Input::Text(v.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Input, E> {
                Ok(Input::Text(v))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Input, A::Error> {
                let mut messages = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
                while let Some(message) = seq.next_element::<InputMessage>()? {
                    messages.push(message);
                }
                Ok(Input::Messages(messages))
            }
        }

        d.deserialize_any(InputVisitor)
    }
}

/// Price ceilings, USD per million tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxPrice {
    /// Highest acceptable prompt price, USD per million tokens (wire
    /// `prompt`).
    #[serde(rename = "prompt", default, skip_serializing_if = "Option::is_none")]
    pub prompt_usd_per_mtok: Option<Cost>,
    /// Highest acceptable completion price, USD per million tokens (wire
    /// `completion`).
    #[serde(
        rename = "completion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub completion_usd_per_mtok: Option<Cost>,
}

/// OpenRouter `provider` preferences.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderPrefs {
    /// Providers to try, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Vec<String>>,
    /// Whether other providers may serve when the listed ones cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_fallbacks: Option<bool>,
    /// Providers allowed to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<Vec<String>>,
    /// Providers never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<Vec<String>>,
    /// Whether data-collecting providers may serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_collection: Option<DataCollection>,
    /// Only zero-data-retention endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zdr: Option<bool>,
    /// How to rank providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<Sort>,
    /// Price ceilings.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::strict::object_only_opt"
    )]
    pub max_price: Option<MaxPrice>,
}

/// Routing preferences of a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// OpenRouter presets to apply, by slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presets: Option<Vec<String>>,
    /// Provider preferences.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::strict::object_only_opt"
    )]
    pub provider: Option<ProviderPrefs>,
    /// Whose capacity serves the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
}

/// `tally.generation.requested.v1`: an agent runtime asks the generation
/// worker to run one generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationRequested {
    /// The requester's id; the worker's idempotency key (id pattern).
    pub request_id: String,
    /// Who pays and which budgets count it; `model` is the OpenRouter
    /// model slug requested.
    #[serde(flatten)]
    pub attribution: Attribution,
    /// Fallback models, tried in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Prompt or conversation.
    pub input: Input,
    /// System instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Output token cap (≥ 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Whether the worker streams from OpenRouter.
    #[serde(default)]
    pub stream: bool,
    /// Routing preferences.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::strict::object_only_opt"
    )]
    pub routing: Option<Routing>,
    /// OpenRouter server-side tools to enable (e.g. `web_search`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tools: Option<Vec<String>>,
    /// NATS subject (no wildcards) the [`GenerationResult`] goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_subject: Option<String>,
    /// When the agent made the request.
    #[serde(with = "check::rfc3339")]
    pub requested_at: DateTime<Utc>,
}

impl Payload for GenerationRequested {
    const TYPE: EventType = EventType::GenerationRequested;

    fn org_id(&self) -> &str {
        &self.attribution.org_id
    }

    fn validate(&self) -> Result<(), EventError> {
        check::id("data.request_id", &self.request_id)?;
        self.attribution.validate()?;
        check::opt_list("data.models", self.models.as_deref())?;
        match &self.input {
            Input::Text(text) if text.is_empty() => {
                return Err(EventError::data("data.input", "must not be empty"));
            }
            Input::Messages(messages) if messages.is_empty() => {
                return Err(EventError::data(
                    "data.input",
                    "must hold at least one message",
                ));
            }
            _ => {}
        }
        if let Some(n) = self.max_output_tokens {
            check::range("data.max_output_tokens", n, 1, u32::MAX)?;
        }
        if let Some(routing) = &self.routing {
            check::opt_list("data.routing.presets", routing.presets.as_deref())?;
            if let Some(p) = &routing.provider {
                check::opt_list("data.routing.provider.order", p.order.as_deref())?;
                check::opt_list("data.routing.provider.only", p.only.as_deref())?;
                check::opt_list("data.routing.provider.ignore", p.ignore.as_deref())?;
            }
        }
        check::opt_list("data.server_tools", self.server_tools.as_deref())?;
        if let Some(subject) = &self.reply_subject {
            check::reference("data.reply_subject", subject)?;
            if !check::is_plain_subject(subject) {
                return Err(EventError::data(
                    "data.reply_subject",
                    format!("{subject:?} is not a NATS subject without wildcards"),
                ));
            }
        }
        Ok(())
    }
}

/// Why a request produced no (complete) generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultError {
    /// Machine-readable snake_case reason.
    pub reason: String,
    /// Human-readable explanation.
    pub message: String,
}

/// `tally.generation.result.v1`: the worker's answer to a
/// [`GenerationRequested`], sent to its `reply_subject` (or the result
/// subject).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationResult {
    /// The request answered.
    pub request_id: String,
    /// The request's org.
    pub org_id: String,
    /// OpenRouter's generation id; `None` (JSON `null`, required) when no
    /// generation was started.
    #[serde(deserialize_with = "check::required_nullable")]
    pub generation_id: Option<String>,
    /// How it ended.
    pub status: ResultStatus,
    /// The output text; `None` (JSON `null`, required) when there is none.
    #[serde(deserialize_with = "check::required_nullable")]
    pub output_text: Option<String>,
    /// Why it did not complete.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::strict::object_only_opt"
    )]
    pub error: Option<ResultError>,
    /// When the worker finished with the request.
    #[serde(with = "check::rfc3339")]
    pub finished_at: DateTime<Utc>,
}

impl Payload for GenerationResult {
    const TYPE: EventType = EventType::GenerationResult;

    fn org_id(&self) -> &str {
        &self.org_id
    }

    fn validate(&self) -> Result<(), EventError> {
        check::id("data.request_id", &self.request_id)?;
        check::id("data.org_id", &self.org_id)?;
        check::opt_reference("data.generation_id", self.generation_id.as_deref())?;
        if let Some(e) = &self.error {
            check::code("data.error.reason", &e.reason)?;
        }
        Ok(())
    }
}

/// Token counts of a generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    pub completion_tokens: u64,
    /// Reasoning tokens, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    /// Prompt tokens read from the cache, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    /// Prompt tokens written to the cache, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<u64>,
}

/// `tally.generation.completed.v1`: a generation finished and may have cost
/// money.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationCompleted {
    /// OpenRouter's generation id (`X-Generation-Id`).
    pub generation_id: String,
    /// Who pays and which budgets count it; `model` is the model that
    /// actually served it.
    #[serde(flatten)]
    pub attribution: Attribution,
    /// Upstream provider name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// When it finished; decides the budget period.
    #[serde(with = "check::rfc3339")]
    pub completed_at: DateTime<Utc>,
    /// Token counts (an object; an array is refused, not read positionally).
    #[serde(deserialize_with = "crate::strict::object_only")]
    pub usage: Usage,
    /// Whether the org's own provider key served it.
    #[serde(default)]
    pub is_byok: bool,
    /// `usage.cost` (+ upstream inference cost when BYOK); `None` when missing.
    #[serde(default)]
    pub actual_cost_usd: Option<Cost>,
    /// The producer's estimate from the price catalog.
    #[serde(default)]
    pub estimated_cost_usd: Option<Cost>,
    /// How it ended; `completed` when the producer does not say (most
    /// producers know nothing of statuses).
    #[serde(default)]
    pub status: GenerationStatus,
    /// The request it answers, when it came through tally's worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// What the upstream provider billed directly (BYOK), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_inference_cost_usd: Option<Cost>,
}

impl Payload for GenerationCompleted {
    const TYPE: EventType = EventType::GenerationCompleted;

    fn org_id(&self) -> &str {
        &self.attribution.org_id
    }

    fn validate(&self) -> Result<(), EventError> {
        check::reference("data.generation_id", &self.generation_id)?;
        self.attribution.validate()?;
        check::opt_reference("data.provider", self.provider.as_deref())?;
        check::event_time("data.completed_at", &self.completed_at)?;
        check::opt_id("data.request_id", self.request_id.as_deref())?;
        Ok(())
    }
}

/// `tally.generation.failed.v1`: the worker could not produce a generation
/// for a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationFailed {
    /// The request that failed.
    pub request_id: String,
    /// OpenRouter's generation id if one was assigned (JSON `null`, required,
    /// otherwise).
    #[serde(deserialize_with = "check::required_nullable")]
    pub generation_id: Option<String>,
    /// The request's org, budget scopes and requested model.
    #[serde(flatten)]
    pub attribution: Attribution,
    /// Machine-readable snake_case reason, e.g. `upstream_rate_limited`.
    pub reason: String,
    /// Human-readable explanation.
    pub message: String,
    /// Whether sending the same request again may succeed.
    pub retryable: bool,
    /// When the worker gave up.
    #[serde(with = "check::rfc3339")]
    pub failed_at: DateTime<Utc>,
}

impl Payload for GenerationFailed {
    const TYPE: EventType = EventType::GenerationFailed;

    fn org_id(&self) -> &str {
        &self.attribution.org_id
    }

    fn validate(&self) -> Result<(), EventError> {
        check::id("data.request_id", &self.request_id)?;
        self.attribution.validate()?;
        check::opt_reference("data.generation_id", self.generation_id.as_deref())?;
        check::code("data.reason", &self.reason)?;
        Ok(())
    }
}
