//! The per-organisation model catalog: what OpenRouter's `/models` (or
//! `/models/user`) lists for the organisation's key, stored with exact
//! prices, limits and a capability profile per model.
//!
//! # Decisions
//!
//! * **`/models/user` first, `/models` when it does not answer**: the user
//!   list honours the key owner's provider preferences and privacy
//!   settings; an error other than a key problem falls back to the public
//!   list.
//! * **Capabilities** come from `supported_parameters` (`reasoning`,
//!   `tools`, `structured_outputs`, `response_format`) and `architecture`
//!   (input and output modalities).
//! * **A dynamic price (`-1`) is not a price**: the API shows `null`, and no
//!   estimate is made from it.

use serde::Serialize;
use tally_money::Cost;
use tally_openrouter::{ModelInfo, Price, Pricing};
use tally_store::providers::{StoredModel, StoredPrice, StoredPricing};

/// A `$pricing` whose every price is `$f` of the same price of `$p`: the
/// seven priced items of a model, named once for every form they take.
macro_rules! map_prices {
    ($pricing:ident, $p:expr, $f:expr) => {{
        let (p, f) = ($p, $f);
        $pricing {
            prompt: f(&p.prompt),
            completion: f(&p.completion),
            request: f(&p.request),
            input_cache_read: f(&p.input_cache_read),
            input_cache_write: f(&p.input_cache_write),
            internal_reasoning: f(&p.internal_reasoning),
            web_search: f(&p.web_search),
        }
    }};
}

fn stored_price(p: &Price) -> StoredPrice {
    match p {
        Price::Unknown => StoredPrice::Unknown,
        Price::Dynamic => StoredPrice::Dynamic,
        Price::PerUnit(d) => StoredPrice::PerUnit(*d),
    }
}

fn price(p: &StoredPrice) -> Price {
    match p {
        StoredPrice::Unknown => Price::Unknown,
        StoredPrice::Dynamic => Price::Dynamic,
        StoredPrice::PerUnit(d) => Price::PerUnit(*d),
    }
}

/// The stored form of a discovered model.
pub fn to_stored(m: &ModelInfo) -> StoredModel {
    StoredModel {
        model_id: m.id.clone(),
        name: m.name.clone(),
        context_length: m.context_length,
        max_completion_tokens: m.max_completion_tokens,
        pricing: map_prices!(StoredPricing, &m.pricing, stored_price),
        supported_parameters: m.supported_parameters.clone(),
        input_modalities: m.input_modalities.clone(),
        output_modalities: m.output_modalities.clone(),
    }
}

/// A stored model in the client's form (for estimates and routing).
pub fn to_model_info(m: &StoredModel) -> ModelInfo {
    ModelInfo {
        id: m.model_id.clone(),
        name: m.name.clone(),
        context_length: m.context_length,
        max_completion_tokens: m.max_completion_tokens,
        input_modalities: m.input_modalities.clone(),
        output_modalities: m.output_modalities.clone(),
        pricing: map_prices!(Pricing, &m.pricing, price),
        supported_parameters: m.supported_parameters.clone(),
    }
}

/// What a model can do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CapabilityProfile {
    /// `reasoning` in `supported_parameters`.
    pub reasoning: bool,
    /// `tools`.
    pub tools: bool,
    /// `structured_outputs`.
    pub structured_outputs: bool,
    /// `response_format`.
    pub response_format: bool,
    /// `architecture.input_modalities`.
    pub input_modalities: Vec<String>,
    /// `architecture.output_modalities`.
    pub output_modalities: Vec<String>,
}

impl CapabilityProfile {
    /// The profile of a stored model.
    pub fn of(m: &StoredModel) -> Self {
        let has = |p: &str| m.supported_parameters.iter().any(|s| s == p);
        CapabilityProfile {
            reasoning: has("reasoning"),
            tools: has("tools"),
            structured_outputs: has("structured_outputs"),
            response_format: has("response_format"),
            input_modalities: m.input_modalities.clone(),
            output_modalities: m.output_modalities.clone(),
        }
    }
}

fn wire_price(p: &StoredPrice) -> Option<String> {
    match p {
        StoredPrice::PerUnit(d) => Some(d.to_string()),
        StoredPrice::Unknown | StoredPrice::Dynamic => None,
    }
}

/// Prices on the wire: decimal strings, USD per unit, `null` when dynamic
/// or not listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WirePricing {
    /// Per input token.
    pub prompt: Option<String>,
    /// Per output token.
    pub completion: Option<String>,
    /// Per request.
    pub request: Option<String>,
    /// Per cached input token read.
    pub input_cache_read: Option<String>,
    /// Per input token written to the cache.
    pub input_cache_write: Option<String>,
    /// Per reasoning token.
    pub internal_reasoning: Option<String>,
    /// Per web search.
    pub web_search: Option<String>,
}

/// One model as `GET /v1/providers/openrouter/models` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WireModel {
    /// Model slug.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// Context window in tokens.
    pub context_length: Option<u64>,
    /// Longest output in tokens.
    pub max_completion_tokens: Option<u64>,
    /// Prices.
    pub pricing: WirePricing,
    /// Capabilities.
    pub capabilities: CapabilityProfile,
}

impl WireModel {
    /// The wire form of a stored model.
    pub fn of(m: &StoredModel) -> Self {
        WireModel {
            id: m.model_id.clone(),
            name: m.name.clone(),
            context_length: m.context_length,
            max_completion_tokens: m.max_completion_tokens,
            pricing: map_prices!(WirePricing, &m.pricing, wire_price),
            capabilities: CapabilityProfile::of(m),
        }
    }
}

/// Whether any price of `m` needed for an estimate is dynamic.
pub fn has_dynamic_price(m: &StoredModel) -> bool {
    matches!(m.pricing.prompt, StoredPrice::Dynamic)
        || matches!(m.pricing.completion, StoredPrice::Dynamic)
}

/// The exact value of a price, if fixed.
pub fn fixed(p: &StoredPrice) -> Option<Cost> {
    match p {
        StoredPrice::PerUnit(d) => Some(*d),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<ModelInfo> {
        ModelInfo::list_from_reply_body(tally_sim::models::CATALOG_JSON.as_bytes()).unwrap()
    }

    #[test]
    fn capability_profiles_and_prices_from_the_fixture() {
        let models: Vec<StoredModel> = fixture().iter().map(to_stored).collect();
        let by = |id: &str| models.iter().find(|m| m.model_id == id).unwrap();
        let mini = WireModel::of(by("openai/gpt-4o-mini"));
        assert_eq!(mini.pricing.prompt.as_deref(), Some("0.00000015"));
        assert_eq!(
            mini.pricing.input_cache_read.as_deref(),
            Some("0.000000075")
        );
        assert_eq!(mini.max_completion_tokens, Some(16384));
        assert!(mini.capabilities.tools && mini.capabilities.structured_outputs);
        assert!(mini.capabilities.response_format && !mini.capabilities.reasoning);
        assert_eq!(mini.capabilities.input_modalities, ["text", "image"]);
        let r1 = WireModel::of(by("deepseek/deepseek-r1"));
        assert!(r1.capabilities.reasoning && r1.capabilities.tools);
        assert!(!r1.capabilities.structured_outputs);
        assert_eq!(r1.max_completion_tokens, None);
        let auto = by("openrouter/auto");
        assert!(has_dynamic_price(auto));
        let w = WireModel::of(auto);
        assert_eq!(w.pricing.prompt, None);
        assert_eq!(w.pricing.completion, None);
        // Round trip through the stored form keeps everything.
        for m in fixture() {
            assert_eq!(to_model_info(&to_stored(&m)), m);
        }
    }
}
