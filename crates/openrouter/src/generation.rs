//! `GET /generation?id=…`: what one generation actually cost.
//!
//! OpenRouter answers `{"data": {...}}` with the generation's statistics;
//! [`GenerationStats`] keeps the fields tally needs, and
//! [`GenerationStats::actual_cost`] applies [money rule 8](crate#money-rules) (BYOK).
//!
//! # Decisions
//!
//! * **Costs are parsed from the literal text of the JSON number**
//!   (`serde_json::value::RawValue` + [`tally_money::json_number`]), never
//!   through `f64`: `0.00012345678901234567` has 17 significant digits, more
//!   than a double keeps, and `1.425e-7` arrives in exponent notation.
//! * **A cost the client cannot read exactly is an error, never a number.**
//!   A cost written as a string, a negative cost, `NaN`-like text, or more than
//!   20 decimals makes the whole reply [`OpenRouterError::Malformed`]; a
//!   missing or `null` `total_cost` likewise. Wrong money is worse than late
//!   money.
//! * **Metadata is read leniently.** Token counts, model, provider and time
//!   are informational: a value of an unexpected type becomes `None` instead
//!   of refusing a reply whose cost is fine. `is_byok` decides money, so a
//!   non-boolean there is malformed (absent means `false`, as the API
//!   documents its default).
//! * **The reply must be for the generation asked about**: a `data.id` that
//!   differs from the requested id is malformed.
//! * **404 is "not yet"** (see [`crate::error`]).

use reqwest::Method;
use serde::Deserialize;
use serde_json::{value::RawValue, Value};
use tally_money::Cost;

use crate::{client::OpenRouterClient, error::OpenRouterError};

/// The largest `/generation` reply body read (1 MiB).
const BODY_LIMIT: usize = 1024 * 1024;

/// Statistics of one generation, as `GET /generation` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationStats {
    /// OpenRouter's generation id (`gen-…`).
    pub id: String,
    /// What OpenRouter charged, USD. For BYOK generations only OpenRouter's fee.
    pub total_cost: Cost,
    /// The `usage` figure (USD), when sent.
    pub usage: Option<Cost>,
    /// What the upstream provider billed directly (USD); filled for BYOK.
    pub upstream_inference_cost: Option<Cost>,
    /// Whether the generation ran on the customer's own provider key.
    pub is_byok: bool,
    /// Whether the generation was cancelled (an interrupted stream), when sent.
    pub cancelled: Option<bool>,
    /// The model that served the generation.
    pub model: Option<String>,
    /// The upstream provider that served it.
    pub provider_name: Option<String>,
    /// Prompt tokens counted by the provider's own tokenizer.
    pub native_tokens_prompt: Option<u64>,
    /// Completion tokens counted by the provider's own tokenizer.
    pub native_tokens_completion: Option<u64>,
    /// Reasoning tokens counted by the provider's own tokenizer.
    pub native_tokens_reasoning: Option<u64>,
    /// Cached prompt tokens counted by the provider's own tokenizer.
    pub native_tokens_cached: Option<u64>,
    /// When the generation was created, as sent (RFC 3339 text).
    pub created_at: Option<String>,
}

impl GenerationStats {
    /// The real cost of the generation ([money rule 8](crate#money-rules)): for BYOK,
    /// `total_cost + upstream_inference_cost` (OpenRouter's fee plus what the
    /// provider billed); otherwise `total_cost`.
    ///
    /// A BYOK reply without `upstream_inference_cost` counts the upstream part
    /// as zero; check [`missing_upstream_cost`](Self::missing_upstream_cost)
    /// to tell that case apart.
    ///
    /// The sum is exact; replies are refused when parsed if it would leave
    /// [`Cost::MAX`], so this fails (`amount_overflow`) only for stats
    /// built by hand.
    pub fn actual_cost(&self) -> Result<Cost, tally_money::MoneyError> {
        match (self.is_byok, self.upstream_inference_cost) {
            (true, Some(upstream)) => self.total_cost.try_add(upstream),
            _ => Ok(self.total_cost),
        }
    }

    /// True for a BYOK generation whose upstream cost was not reported, i.e.
    /// when [`actual_cost`](Self::actual_cost) is only OpenRouter's fee.
    pub fn missing_upstream_cost(&self) -> bool {
        self.is_byok && self.upstream_inference_cost.is_none()
    }

    /// [`created_at`](Self::created_at) as a time, when it is valid RFC 3339.
    pub fn created_at_utc(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let text = self.created_at.as_deref()?;
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }

    /// Parses the body of a `200` reply (`{"data": {...}}`).
    ///
    /// Fails with [`OpenRouterError::Malformed`] (status 200) when the body is
    /// not JSON, has no `data` object or `id`, or a cost is not an exact,
    /// non-negative JSON number.
    pub fn from_reply_body(body: &[u8]) -> Result<Self, OpenRouterError> {
        Self::parse(body, 200)
    }

    pub(crate) fn parse(body: &[u8], status: u16) -> Result<Self, OpenRouterError> {
        let bad = |reason: String| OpenRouterError::malformed(status, reason);
        let envelope: Envelope = serde_json::from_slice(body)
            .map_err(|e| bad(format!("body is not a generation reply: {e}")))?;
        let data = envelope
            .data
            .ok_or_else(|| bad("reply has no \"data\" object".to_owned()))?;
        let w: Wire = serde_json::from_str(data.get())
            .map_err(|e| bad(format!("\"data\" is not a generation object: {e}")))?;

        let id = match w.id {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => {
                return Err(bad(
                    "data.id is missing or not a non-empty string".to_owned()
                ))
            }
        };
        let total_cost = cost("total_cost", w.total_cost.as_deref(), status)?
            .ok_or_else(|| bad("data.total_cost is missing or null".to_owned()))?;
        let usage = cost("usage", w.usage.as_deref(), status)?;
        let upstream_inference_cost = cost(
            "upstream_inference_cost",
            w.upstream_inference_cost.as_deref(),
            status,
        )?;
        let is_byok = match w.is_byok {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(other) => return Err(bad(format!("data.is_byok is not a boolean: {other}"))),
        };
        if let (true, Some(upstream)) = (is_byok, upstream_inference_cost) {
            total_cost.try_add(upstream).map_err(|e| {
                bad(format!(
                    "data.total_cost + data.upstream_inference_cost cannot be exact ({}): {e}",
                    e.code()
                ))
            })?;
        }
        Ok(GenerationStats {
            id,
            total_cost,
            usage,
            upstream_inference_cost,
            is_byok,
            cancelled: w.cancelled.and_then(|v| v.as_bool()),
            model: string(w.model),
            provider_name: string(w.provider_name),
            native_tokens_prompt: count(w.native_tokens_prompt),
            native_tokens_completion: count(w.native_tokens_completion),
            native_tokens_reasoning: count(w.native_tokens_reasoning),
            native_tokens_cached: count(w.native_tokens_cached),
            created_at: string(w.created_at),
        })
    }
}

#[derive(Deserialize)]
struct Envelope {
    data: Option<Box<RawValue>>,
}

/// The fields of `data` tally reads. Costs stay raw until checked; the rest
/// is read as loose JSON so that an odd metadata type does not hide a good cost.
#[derive(Deserialize)]
struct Wire {
    id: Option<Value>,
    total_cost: Option<Box<RawValue>>,
    usage: Option<Box<RawValue>>,
    upstream_inference_cost: Option<Box<RawValue>>,
    is_byok: Option<Value>,
    cancelled: Option<Value>,
    model: Option<Value>,
    provider_name: Option<Value>,
    created_at: Option<Value>,
    native_tokens_prompt: Option<Value>,
    native_tokens_completion: Option<Value>,
    native_tokens_reasoning: Option<Value>,
    native_tokens_cached: Option<Value>,
}

/// An exact, non-negative cost from a raw JSON number; `null`/absent → `None`.
pub(crate) fn cost(
    field: &str,
    raw: Option<&RawValue>,
    status: u16,
) -> Result<Option<Cost>, OpenRouterError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.get() == "null" {
        return Ok(None);
    }
    tally_money::json_number::cost_from_raw(raw)
        .map(Some)
        .map_err(|e| {
            OpenRouterError::malformed(
                status,
                format!(
                    "data.{field} is not an exact non-negative cost ({}): {e}",
                    e.code()
                ),
            )
        })
}

fn string(v: Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

fn count(v: Option<Value>) -> Option<u64> {
    v.and_then(|v| v.as_u64())
}

impl OpenRouterClient {
    /// `GET {base}/generation?id=<id>`: the statistics of generation `id`.
    ///
    /// [`OpenRouterError::NotYet`] (HTTP 404) means OpenRouter has not
    /// published the statistics yet; ask again later.
    pub async fn generation(&self, id: &str) -> Result<GenerationStats, OpenRouterError> {
        let mut url = self.url("/generation")?;
        url.query_pairs_mut().append_pair("id", id);
        let reply = self
            .send_and_read(self.request(Method::GET, url), BODY_LIMIT, true)
            .await?;
        let stats = GenerationStats::parse(&reply.body, reply.status)?;
        if stats.id != id {
            return Err(OpenRouterError::malformed(
                reply.status,
                format!("asked for generation {id:?}, got {:?}", stats.id),
            ));
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tally_money::usd;

    fn body(data: &str) -> Vec<u8> {
        format!(r#"{{"data":{data}}}"#).into_bytes()
    }

    #[test]
    fn minimal_reply() {
        let s = GenerationStats::from_reply_body(&body(r#"{"id":"g","total_cost":0}"#)).unwrap();
        assert_eq!(s.total_cost, Cost::ZERO);
        assert!(!s.is_byok);
        assert_eq!(s.actual_cost().unwrap(), Cost::ZERO);
        assert_eq!(s.usage, None);
    }

    #[test]
    fn costs_that_are_not_exact_numbers_are_refused() {
        for (data, needle) in [
            (r#"{"id":"g","total_cost":"0.001"}"#, "total_cost"),
            (r#"{"id":"g","total_cost":-0.001}"#, "negative"),
            (r#"{"id":"g","total_cost":1e-29}"#, "too_precise"),
            (
                r#"{"id":"g","total_cost":0.00000000000000000000000000001}"#,
                "too_precise",
            ),
            (r#"{"id":"g","total_cost":true}"#, "total_cost"),
            (r#"{"id":"g","total_cost":null}"#, "missing or null"),
            (r#"{"id":"g"}"#, "missing or null"),
            (r#"{"id":"g","total_cost":1,"usage":"1"}"#, "data.usage"),
            (
                r#"{"id":"g","total_cost":1,"upstream_inference_cost":-1}"#,
                "upstream",
            ),
            (r#"{"id":"g","total_cost":1e11}"#, "out_of_range"),
            (r#"{"id":"g","total_cost":1,"is_byok":"yes"}"#, "is_byok"),
            (r#"{"total_cost":1}"#, "data.id"),
            (r#"{"id":"","total_cost":1}"#, "data.id"),
            (r#"[1]"#, "not a generation object"),
            (r#"null"#, "no \"data\""),
        ] {
            let err = GenerationStats::from_reply_body(&body(data)).unwrap_err();
            match &err {
                OpenRouterError::Malformed {
                    status: 200,
                    reason,
                } => {
                    assert!(reason.contains(needle), "{data}: {reason}")
                }
                other => panic!("{data}: {other:?}"),
            }
        }
        for raw in [
            &b""[..],
            b"{",
            b"<html>",
            b"{\"data\":{\"id\":\"g\",\"total_cost\":0.1",
        ] {
            let err = GenerationStats::from_reply_body(raw).unwrap_err();
            assert_eq!(err.code(), "malformed_reply");
        }
    }

    #[test]
    fn metadata_is_lenient() {
        let s = GenerationStats::from_reply_body(&body(
            r#"{"id":"g","total_cost":2.5e-7,"native_tokens_prompt":1.5,"model":7,"cancelled":"no","created_at":null,"is_byok":null}"#,
        ))
        .unwrap();
        assert_eq!(s.total_cost, usd!("0.00000025"));
        assert_eq!(s.native_tokens_prompt, None);
        assert_eq!(s.model, None);
        assert_eq!(s.cancelled, None);
        assert!(!s.is_byok);
    }

    #[test]
    fn byok_without_upstream_is_flagged() {
        let s = GenerationStats::from_reply_body(&body(
            r#"{"id":"g","total_cost":0.5,"is_byok":true,"upstream_inference_cost":null}"#,
        ))
        .unwrap();
        assert!(s.missing_upstream_cost());
        assert_eq!(s.actual_cost().unwrap(), usd!("0.5"));
        // Non-BYOK: an upstream figure is informational only.
        let s = GenerationStats::from_reply_body(&body(
            r#"{"id":"g","total_cost":0.5,"is_byok":false,"upstream_inference_cost":0.5}"#,
        ))
        .unwrap();
        assert!(!s.missing_upstream_cost());
        assert_eq!(s.actual_cost().unwrap(), usd!("0.5"));
    }
}
