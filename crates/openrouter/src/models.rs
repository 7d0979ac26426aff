//! `GET /models`: the model catalog and its prices.
//!
//! Prices are **strings, USD per unit** (per token for `prompt`,
//! `completion`, `input_cache_*`, `internal_reasoning`; per request for
//! `request`; per search for `web_search`). `"-1"` marks a price decided per
//! request (routers such as `openrouter/auto`): [`Price::Dynamic`].
//!
//! # Decisions
//!
//! * **Prices are read exactly** from their text with [`tally_money`], never
//!   through `f64`. Exponent forms (`"1.5e-7"`) and JSON numbers are accepted
//!   too, still exactly.
//! * **One odd entry does not sink the catalog.** A price that is not a
//!   non-negative amount (other than `-1`) becomes [`Price::Unknown`], and a
//!   model without an `id` is skipped, each with a warning: the catalog only
//!   feeds *estimates*, and an unknown price is honest where a guessed one
//!   would not be. A reply without a `data` array is malformed.

use std::collections::HashMap;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{value::RawValue, Value};
use tally_money::{Cost, Usd};

use crate::{client::OpenRouterClient, error::OpenRouterError};

/// The largest `/models` reply body read (32 MiB; the real catalog is a few MiB).
const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// One model of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelInfo {
    /// The model slug, e.g. `openai/gpt-4o-mini`.
    pub id: String,
    /// Display name (`OpenAI: GPT-4o-mini`), when given.
    pub name: Option<String>,
    /// Context window in tokens, when known.
    pub context_length: Option<u64>,
    /// `top_provider.max_completion_tokens`: the longest output, when known.
    pub max_completion_tokens: Option<u64>,
    /// `architecture.input_modalities` (`text`, `image`, …).
    pub input_modalities: Vec<String>,
    /// `architecture.output_modalities`.
    pub output_modalities: Vec<String>,
    /// Prices.
    pub pricing: Pricing,
    /// Request parameters the model supports (`tools`, `reasoning`, …).
    pub supported_parameters: Vec<String>,
}

impl ModelInfo {
    /// Whether `parameter` (e.g. `"reasoning"`, `"tools"`) is supported.
    pub fn supports(&self, parameter: &str) -> bool {
        self.supported_parameters.iter().any(|p| p == parameter)
    }
}

/// A model's prices, USD per unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pricing {
    /// Per input token.
    pub prompt: Price,
    /// Per output token.
    pub completion: Price,
    /// Per request.
    pub request: Price,
    /// Per cached input token read.
    pub input_cache_read: Price,
    /// Per input token written to the cache.
    pub input_cache_write: Price,
    /// Per reasoning token.
    pub internal_reasoning: Price,
    /// Per web search.
    pub web_search: Price,
}

impl Pricing {
    /// The prices `price` gives for each catalog key (`"prompt"`,
    /// `"completion"`, `"request"`, `"input_cache_read"`,
    /// `"input_cache_write"`, `"internal_reasoning"`, `"web_search"`), as
    /// OpenRouter's `/models` and tally's stored catalog name them.
    pub fn from_keys(mut price: impl FnMut(&str) -> Price) -> Pricing {
        Pricing {
            prompt: price("prompt"),
            completion: price("completion"),
            request: price("request"),
            input_cache_read: price("input_cache_read"),
            input_cache_write: price("input_cache_write"),
            internal_reasoning: price("internal_reasoning"),
            web_search: price("web_search"),
        }
    }
}

/// One price.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Price {
    /// Not in the catalog (or not readable as a price).
    #[default]
    Unknown,
    /// `"-1"`: decided per request, not known in advance.
    Dynamic,
    /// A fixed price in USD per unit (may be zero).
    PerUnit(Cost),
}

impl Price {
    /// Reads a catalog price text: `"-1"` → [`Price::Dynamic`], a non-negative
    /// amount (`"0"`, `"0.00000015"`, `"1.5e-7"`) → [`Price::PerUnit`].
    pub fn parse(text: &str) -> Result<Price, tally_money::MoneyError> {
        let value = tally_money::parse_json_number(text.trim())?;
        if value == -Usd::ONE {
            return Ok(Price::Dynamic);
        }
        Cost::new(value).map(Price::PerUnit)
    }

    /// The fixed price, if there is one.
    pub fn per_unit(&self) -> Option<Cost> {
        match self {
            Price::PerUnit(p) => Some(*p),
            Price::Unknown | Price::Dynamic => None,
        }
    }

    /// Whether the price is decided per request.
    pub fn is_dynamic(&self) -> bool {
        matches!(self, Price::Dynamic)
    }
}

impl ModelInfo {
    /// Parses the body of a `200` reply from `/models` (`{"data": [...]}`).
    pub fn list_from_reply_body(body: &[u8]) -> Result<Vec<ModelInfo>, OpenRouterError> {
        parse_catalog(body, 200)
    }
}

#[derive(Deserialize)]
struct Envelope {
    data: Option<Vec<Box<RawValue>>>,
}

#[derive(Deserialize)]
struct WireModel {
    id: Option<Value>,
    name: Option<Value>,
    context_length: Option<Value>,
    top_provider: Option<Value>,
    architecture: Option<Value>,
    pricing: Option<HashMap<String, Box<RawValue>>>,
    supported_parameters: Option<Value>,
}

fn parse_catalog(body: &[u8], status: u16) -> Result<Vec<ModelInfo>, OpenRouterError> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
        OpenRouterError::malformed(status, format!("body is not a model catalog: {e}"))
    })?;
    let entries = envelope
        .data
        .ok_or_else(|| OpenRouterError::malformed(status, "reply has no \"data\" array"))?;
    let mut models = Vec::with_capacity(entries.len());
    for (index, raw) in entries.iter().enumerate() {
        match parse_model(raw) {
            Some(m) => models.push(m),
            None => tracing::warn!(index, "skipping a catalog entry without a usable id"),
        }
    }
    Ok(models)
}

fn parse_model(raw: &RawValue) -> Option<ModelInfo> {
    let w: WireModel = serde_json::from_str(raw.get()).ok()?;
    let id = match w.id {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return None,
    };
    let prices = w.pricing.unwrap_or_default();
    let price = |key: &str| -> Price {
        let Some(raw) = prices.get(key) else {
            return Price::Unknown;
        };
        let text = raw.get();
        let parsed = if text.starts_with('"') {
            serde_json::from_str::<String>(text)
                .map_err(|_| tally_money::MoneyError::Syntax(text.to_owned()))
                .and_then(|s| Price::parse(&s))
        } else if text == "null" {
            return Price::Unknown;
        } else {
            Price::parse(text)
        };
        parsed.unwrap_or_else(|e| {
            tracing::warn!(model = %id, key, value = text, error = %e, "unreadable price; treated as unknown");
            Price::Unknown
        })
    };
    let pricing = Pricing::from_keys(price);
    let supported_parameters = match w.supported_parameters {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let arch = w.architecture.as_ref();
    Some(ModelInfo {
        context_length: w.context_length.and_then(|v| v.as_u64()),
        name: w.name.and_then(|v| v.as_str().map(str::to_owned)),
        max_completion_tokens: w
            .top_provider
            .as_ref()
            .and_then(|t| t.get("max_completion_tokens"))
            .and_then(Value::as_u64),
        input_modalities: strings(arch.and_then(|a| a.get("input_modalities"))),
        output_modalities: strings(arch.and_then(|a| a.get("output_modalities"))),
        id,
        pricing,
        supported_parameters,
    })
}

impl OpenRouterClient {
    /// `GET {base}/models`: the model catalog with its prices.
    pub async fn models(&self) -> Result<Vec<ModelInfo>, OpenRouterError> {
        self.catalog("/models").await
    }

    /// `GET {base}/models/user`: the catalog filtered by the key owner's
    /// provider preferences and privacy settings (needs the key).
    pub async fn models_user(&self) -> Result<Vec<ModelInfo>, OpenRouterError> {
        self.catalog("/models/user").await
    }

    /// `GET {base}{path}`, read as a model catalog.
    async fn catalog(&self, path: &str) -> Result<Vec<ModelInfo>, OpenRouterError> {
        let url = self.url(path)?;
        let reply = self
            .send_and_read(self.request(Method::GET, url), BODY_LIMIT, false)
            .await?;
        parse_catalog(&reply.body, reply.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tally_money::cost;

    #[test]
    fn prices_parse_exactly() {
        assert_eq!(Price::parse("-1").unwrap(), Price::Dynamic);
        assert_eq!(Price::parse("0").unwrap(), Price::PerUnit(Cost::ZERO));
        assert_eq!(
            Price::parse("0.00000015").unwrap(),
            Price::PerUnit(cost!("0.00000015"))
        );
        assert_eq!(
            Price::parse("1.5e-7").unwrap(),
            Price::PerUnit(cost!("0.00000015"))
        );
        assert_eq!(Price::parse("-0.5").unwrap_err().code(), "negative_amount");
        assert_eq!(Price::parse("free").unwrap_err().code(), "invalid_amount");
        assert_eq!(Price::parse("").unwrap_err().code(), "invalid_amount");
        assert_eq!(Price::Dynamic.per_unit(), None);
        assert!(Price::Dynamic.is_dynamic());
    }

    #[test]
    fn odd_entries_do_not_sink_the_catalog() {
        let body = br#"{"data":[
            {"id":"a/b","pricing":{"prompt":"oops","completion":0.000002,"request":null,"web_search":"-2"},"supported_parameters":["tools",3],"context_length":"big"},
            {"name":"no id"},
            7,
            {"id":"c/d"}
        ]}"#;
        let models = ModelInfo::list_from_reply_body(body).unwrap();
        assert_eq!(models.len(), 2);
        let a = &models[0];
        assert_eq!(a.pricing.prompt, Price::Unknown);
        assert_eq!(a.pricing.completion, Price::PerUnit(cost!("0.000002")));
        assert_eq!(a.pricing.request, Price::Unknown);
        assert_eq!(a.pricing.web_search, Price::Unknown);
        assert_eq!(a.supported_parameters, vec!["tools".to_owned()]);
        assert!(a.supports("tools"));
        assert_eq!(a.context_length, None);
        assert_eq!(models[1].pricing, Pricing::default());
        for bad in [&b"{}"[..], b"[]", b"{\"data\":{}}", b"nope"] {
            assert_eq!(
                ModelInfo::list_from_reply_body(bad).unwrap_err().code(),
                "malformed_reply"
            );
        }
    }
}
