//! A thin, typed client for the parts of OpenRouter's HTTP API tally uses.
//!
//! * [`OpenRouterClient::generation`] — `GET /generation?id=…`: what a
//!   generation actually cost ([`GenerationStats`], with
//!   [`GenerationStats::actual_cost`] applying the BYOK rule).
//! * [`OpenRouterClient::models`] — `GET /models`: the catalog and its
//!   per-token prices ([`ModelInfo`], [`Pricing`], [`Price`]);
//!   [`OpenRouterClient::models_user`] the same filtered by the key
//!   owner's preferences (`GET /models/user`).
//! * [`OpenRouterClient::key_info`] — `GET /key`: the key's label, limit and
//!   usage ([`KeyInfo`]); [`OpenRouterClient::exchange_code`] — the OAuth
//!   PKCE code exchange (`POST /auth/keys`).
//! * [`OpenRouterClient::with_key`] — the same client with an
//!   organisation's own key (one shared connection pool).
//!
//! Every failure is an [`OpenRouterError`] with a stable
//! [`code`](OpenRouterError::code), a retry verdict and the server's
//! `Retry-After`. The client does not retry by itself: callers (the
//! reconciler, the worker) own their retry policy and deadline.
//!
//! ```no_run
//! # async fn f() -> Result<(), tally_openrouter::OpenRouterError> {
//! use tally_openrouter::{ClientConfig, OpenRouterClient};
//! let client = OpenRouterClient::new(
//!     ClientConfig::new("https://openrouter.ai/api/v1").with_api_key("sk-or-…"),
//! )?;
//! let stats = client.generation("gen-123").await?;
//! if let Ok(cost) = stats.actual_cost() {
//!     println!("{cost} USD");
//! }
//! # Ok(()) }
//! ```
//!
//! # Modules
//!
//! * [`client`] — configuration and shared HTTP plumbing (auth, timeouts,
//!   bounded bodies, status mapping). New endpoints add `impl
//!   OpenRouterClient` blocks in their own module.
//! * [`generation`], [`models`], [`responses`], [`chat`], [`account`] —
//!   one module per endpoint (family).
//! * [`sse`] — the server-sent events parser used by streaming endpoints.
//! * [`error`] — [`OpenRouterError`] and `Retry-After` parsing.
//!
//! # Money rules
//!
//! This crate owns **money rule 8, BYOK is real money too**: when `is_byok`
//! is true, OpenRouter's `cost` is only its fee and the upstream provider
//! bills `upstream_inference_cost` directly, so the actual cost of the
//! generation is `cost + upstream_inference_cost`
//! ([`GenerationStats::actual_cost`], [`responses`]). It reads every cost
//! under [money rule 1](tally_money#money-rules).
//!
//! # Decisions
//!
//! * **404 from `/generation` is "not yet", not "never".** OpenRouter
//!   publishes generation statistics seconds (sometimes much longer) after
//!   the generation ends, and answers 404 until then. The client reports
//!   [`OpenRouterError::NotYet`], retryable; the caller's deadline decides
//!   when to give up.
//! * **Costs are parsed from the literal text of the JSON number**, never via
//!   `f64` ([money rule 1](tally_money#money-rules)): a double keeps ~15–17 significant digits
//!   and OpenRouter sends 17, sometimes in exponent form (`1.425e-7`). A cost
//!   that cannot be read exactly (a string, negative, too many decimals)
//!   makes the reply [`OpenRouterError::Malformed`]: never a wrong cost.
//! * **`Retry-After` is honoured but capped** at [`MAX_RETRY_AFTER`]
//!   (5 minutes) so that an absurd header cannot stall a service.
//! * **BYOK is real money** ([money rule 8](crate#money-rules)): the actual cost of a BYOK
//!   generation is OpenRouter's fee plus the upstream provider's bill.

pub mod account;
pub mod chat;
pub mod client;
pub mod error;
pub mod generation;
pub mod key;
pub mod models;
pub mod responses;
pub mod sse;

pub use account::{ExchangedKey, KeyInfo};
pub use chat::{chat_reply_from_body, ChatStreamAccumulator};
pub use client::{ClientConfig, OpenRouterClient, DEFAULT_BASE_URL};
pub use error::{parse_retry_after, OpenRouterError, MAX_RETRY_AFTER};
pub use generation::GenerationStats;
pub use key::{KeyUsage, UsageWindow, WindowUsage};
pub use models::{ModelInfo, Price, Pricing};
pub use responses::{
    generation_error, InputMessage, MaxPriceUsd, PendingResponse, ProviderRouting, ResponseUsage,
    ResponsesError, ResponsesInput, ResponsesReply, ResponsesRequest, ServerTool,
    StreamAccumulator,
};
pub use sse::{SseEvent, SseParser};
