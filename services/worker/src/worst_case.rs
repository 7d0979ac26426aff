//! The worst-case cost of a generation request, held against its budgets
//! before OpenRouter is called: exact, in [`Usd`], never an average.
//!
//! ```text
//! worst case = input_tokens_bound × max(prompt, input_cache_write)
//!            + max_output_tokens   × (completion + internal_reasoning)
//!            + request
//!            + web_search_bound    × web_search
//! input_tokens_bound = input bytes + MESSAGE_OVERHEAD_TOKENS × (messages + 1)
//! web_search_bound   = web_search tools asked for × WEB_SEARCHES_PER_TOOL
//! ```
//!
//! taken over the requested model and every fallback model (any of them may
//! serve it). `max_output_tokens` is resolved by
//! [`resolve_max_output_tokens`] and sent upstream, so the bound holds there
//! too.
//!
//! # Decisions
//!
//! * **Bytes bound tokens.** Every tokenizer in use emits at most one token
//!   per byte of UTF-8 text; chat templates add a few tokens per message,
//!   covered by [`MESSAGE_OVERHEAD_TOKENS`] per message and once more for
//!   the request.
//! * **The dearer of prompt and cache-write prices** bounds an input token:
//!   a cache write may cost more than a plain prompt token, a cache read
//!   never does.
//! * **Completion plus internal reasoning per output token.** The estimate
//!   (see [`crate::estimate`]) charges reasoning tokens at the completion
//!   price and again at `internal_reasoning`; a bound must cover an output
//!   made only of reasoning tokens, so it charges both (which is at least
//!   the highest of the two output prices).
//! * **No bound rather than a wrong one.** A dynamic (`-1`) or unknown
//!   prompt or completion price, a dynamic request fee, or a search price
//!   that is not fixed while searches are asked for give `None`: the
//!   request is *unpriced* (refused by hard budgets unless they allow
//!   unpriced models). A model missing from the catalog is unpriced too.
//!   An unknown request fee or reasoning surcharge counts as zero, as
//!   OpenRouter bills them.

use tally_money::Cost;
use tally_openrouter::{ModelInfo, Price, Pricing};

/// Tokens a chat template may add per message (and once per request).
pub const MESSAGE_OVERHEAD_TOKENS: u64 = 16;

/// Web searches one granted `web_search` server tool may make in one
/// generation.
pub const WEB_SEARCHES_PER_TOOL: u64 = 5;

/// The default output cap (`TALLY_DEFAULT_MAX_OUTPUT_TOKENS`).
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 4096;

/// What the request may consume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorstCaseInput {
    /// UTF-8 bytes of the prompt, the messages and the instructions.
    pub input_bytes: u64,
    /// Messages in the input (0 for a plain text prompt).
    pub messages: u64,
    /// The output cap sent upstream.
    pub max_output_tokens: u32,
    /// `web_search` server tools asked for.
    pub web_search_tools: u64,
}

impl WorstCaseInput {
    /// The bound on input tokens.
    pub fn input_tokens_bound(&self) -> u64 {
        self.input_bytes
            .saturating_add(MESSAGE_OVERHEAD_TOKENS.saturating_mul(self.messages.saturating_add(1)))
    }
}

/// The output cap: the request's, else the routing profile's, else the
/// model's `max_completion_tokens`, else `default`.
pub fn resolve_max_output_tokens(
    request: Option<u32>,
    profile: Option<u32>,
    model_max: Option<u64>,
    default: u32,
) -> u32 {
    request
        .or(profile)
        .or_else(|| {
            model_max
                .and_then(|m| u32::try_from(m).ok())
                .filter(|m| *m > 0)
        })
        .unwrap_or(default)
}

fn fixed(p: &Price) -> Option<Cost> {
    p.per_unit()
}

fn or_zero(p: &Price) -> Option<Cost> {
    match p {
        Price::Unknown => Some(Cost::ZERO),
        Price::Dynamic => None,
        Price::PerUnit(d) => Some(*d),
    }
}

/// The worst case of one model's prices, or `None` when it cannot be bounded.
pub fn worst_case(pricing: &Pricing, input: &WorstCaseInput) -> Option<Cost> {
    let prompt = fixed(&pricing.prompt)?;
    let input_price = match pricing.input_cache_write {
        Price::PerUnit(w) => prompt.max(w),
        _ => prompt,
    };
    let output_price = fixed(&pricing.completion)?
        .try_add(or_zero(&pricing.internal_reasoning)?)
        .ok()?;
    let request = or_zero(&pricing.request)?;
    let searches = input.web_search_tools.saturating_mul(WEB_SEARCHES_PER_TOOL);
    let search = if searches == 0 {
        Cost::ZERO
    } else {
        fixed(&pricing.web_search)?.try_mul_int(searches).ok()?
    };
    input_price
        .try_mul_int(input.input_tokens_bound())
        .ok()?
        .try_add(
            output_price
                .try_mul_int(u64::from(input.max_output_tokens))
                .ok()?,
        )
        .ok()?
        .try_add(request)
        .ok()?
        .try_add(search)
        .ok()
}

/// The worst case over every model that may serve the request (`None` when
/// any of them is missing or cannot be bounded).
pub fn worst_case_of<'a>(
    models: impl IntoIterator<Item = Option<&'a ModelInfo>>,
    input: &WorstCaseInput,
) -> Option<Cost> {
    let mut worst: Option<Cost> = None;
    for m in models {
        let w = worst_case(&m?.pricing, input)?;
        worst = Some(worst.map_or(w, |x| x.max(w)));
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    use tally_money::cost;

    fn p(s: &str) -> Price {
        Price::parse(s).unwrap()
    }

    fn mini() -> Pricing {
        Pricing {
            prompt: p("0.00000015"),
            completion: p("0.0000006"),
            request: p("0"),
            input_cache_read: p("0.000000075"),
            web_search: p("0.004"),
            internal_reasoning: p("0"),
            ..Pricing::default()
        }
    }

    #[test]
    #[rustfmt::skip]
    fn hand_computed_bounds() {
        let text = WorstCaseInput { input_bytes: 12, messages: 0, max_output_tokens: 8, web_search_tools: 0 };
        // (12 + 16) × 0.00000015 + 8 × 0.0000006 = 0.0000042 + 0.0000048
        assert_eq!(worst_case(&mini(), &text), Some(cost!("0.000009")));
        // Two messages: (100 + 16 × 3) = 148 input tokens.
        let msgs = WorstCaseInput { input_bytes: 100, messages: 2, max_output_tokens: 0, web_search_tools: 0 };
        assert_eq!(msgs.input_tokens_bound(), 148);
        assert_eq!(worst_case(&mini(), &msgs), Some(cost!("0.0000222")));
        // Searches: 1 tool × 5 searches × 0.004 = 0.02 on top.
        let search = WorstCaseInput { web_search_tools: 1, ..text };
        assert_eq!(worst_case(&mini(), &search), Some(cost!("0.020009")));
        // A dearer cache write and a reasoning surcharge raise the bound;
        // a request fee is added once.
        let r1 = Pricing {
            prompt: p("0.0000004"),
            completion: p("0.000002"),
            request: p("0.0001"),
            input_cache_write: p("0.0000005"),
            internal_reasoning: p("0.000001"),
            ..Pricing::default()
        };
        // 28 × 0.0000005 + 8 × 0.000003 + 0.0001 = 0.000014 + 0.000024 + 0.0001
        assert_eq!(worst_case(&r1, &text), Some(cost!("0.000138")));
    }

    #[test]
    fn unboundable_prices_give_none() {
        let text = WorstCaseInput {
            input_bytes: 1,
            max_output_tokens: 1,
            ..WorstCaseInput::default()
        };
        let dynamic = Pricing {
            prompt: Price::Dynamic,
            completion: Price::Dynamic,
            ..Pricing::default()
        };
        assert_eq!(worst_case(&dynamic, &text), None);
        assert_eq!(
            worst_case(
                &Pricing {
                    completion: Price::Unknown,
                    ..mini()
                },
                &text
            ),
            None
        );
        assert_eq!(
            worst_case(
                &Pricing {
                    request: Price::Dynamic,
                    ..mini()
                },
                &text
            ),
            None
        );
        // An unknown search price matters only when searches are asked for.
        let no_search_price = Pricing {
            web_search: Price::Unknown,
            ..mini()
        };
        assert!(worst_case(&no_search_price, &text).is_some());
        let searching = WorstCaseInput {
            web_search_tools: 1,
            ..text
        };
        assert_eq!(worst_case(&no_search_price, &searching), None);
    }

    #[test]
    fn the_worst_model_decides_and_a_missing_one_leaves_it_unpriced() {
        let cheap = ModelInfo {
            id: "cheap".into(),
            pricing: mini(),
            ..ModelInfo::default()
        };
        let dear = ModelInfo {
            id: "dear".into(),
            pricing: Pricing {
                completion: p("0.00001"),
                ..mini()
            },
            ..cheap.clone()
        };
        let input = WorstCaseInput {
            input_bytes: 0,
            messages: 0,
            max_output_tokens: 100,
            web_search_tools: 0,
        };
        let both = worst_case_of([Some(&cheap), Some(&dear)], &input);
        assert_eq!(both, worst_case(&dear.pricing, &input));
        assert_eq!(worst_case_of([Some(&cheap), None], &input), None);
    }

    #[test]
    fn max_output_tokens_resolution_order() {
        assert_eq!(
            resolve_max_output_tokens(Some(8), Some(100), Some(1000), 4096),
            8
        );
        assert_eq!(
            resolve_max_output_tokens(None, Some(100), Some(1000), 4096),
            100
        );
        assert_eq!(
            resolve_max_output_tokens(None, None, Some(1000), 4096),
            1000
        );
        assert_eq!(resolve_max_output_tokens(None, None, None, 4096), 4096);
        assert_eq!(resolve_max_output_tokens(None, None, Some(0), 4096), 4096);
    }
}
