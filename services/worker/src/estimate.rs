//! The cost estimate of one generation from catalog prices: exact, in
//! `Usd` (a count times a price is an exact integer product), cache-aware.
//!
//! ```text
//! estimate = (prompt − cached − cache_writes) × prompt
//!          + cached × input_cache_read
//!          + cache_writes × input_cache_write
//!          + completion × completion
//!          + reasoning × internal_reasoning
//!          + request
//!          + web_search_calls × web_search
//! ```
//!
//! # Decisions
//!
//! * **No estimate rather than a wrong one.** A price that is dynamic
//!   (`-1`) or unknown for a part with a non-zero count gives `None`; a part
//!   with zero count needs no price. The request fee is charged on every
//!   request, so a dynamic request fee always gives `None`.
//! * **Reasonable fallbacks where OpenRouter itself has them.** A model
//!   without a cache-read or cache-write price bills those tokens at the
//!   prompt price; a missing `internal_reasoning` price is zero (reasoning
//!   tokens are already part of the completion tokens); a missing request
//!   fee is zero.
//! * **Completion tokens include reasoning tokens** (OpenRouter's usage
//!   convention); `internal_reasoning` is charged on top, as the catalog
//!   lists it (zero for most models).
//! * **Token approximations for aborted streams** ([`approx_tokens`]): one
//!   token per four characters, rounded up — only used when OpenRouter
//!   never reported usage, and replaced by the actual cost when the
//!   reconciler finds it.

use tally_money::Cost;
use tally_openrouter::{Price, Pricing};

/// What a generation consumed (or is expected to).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EstimateInput {
    /// Prompt tokens, cached and cache-written ones included.
    pub prompt_tokens: u64,
    /// Prompt tokens read from the cache.
    pub cached_tokens: u64,
    /// Prompt tokens written to the cache.
    pub cache_write_tokens: u64,
    /// Completion tokens (reasoning included).
    pub completion_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Server-tool web searches.
    pub web_search_calls: u64,
}

/// `count × price`; `None` when the price is needed and not fixed.
fn part(count: u64, price: &Price, fallback: Option<&Price>) -> Option<Cost> {
    if count == 0 {
        return Some(Cost::ZERO);
    }
    let price = match (price, fallback) {
        (Price::Unknown, Some(f)) => f,
        (p, _) => p,
    };
    price.per_unit().and_then(|p| p.try_mul_int(count).ok())
}

/// The exact estimate in USD, or `None` when a needed price is dynamic or
/// unknown (or the estimate would exceed `Usd`'s range: no estimate rather
/// than a rounded one).
pub fn estimate(pricing: &Pricing, input: &EstimateInput) -> Option<Cost> {
    let uncached = input
        .prompt_tokens
        .saturating_sub(input.cached_tokens)
        .saturating_sub(input.cache_write_tokens);
    let zero = Price::PerUnit(Cost::ZERO);
    let request = match pricing.request {
        Price::Dynamic => return None,
        Price::Unknown => Cost::ZERO,
        Price::PerUnit(p) => p,
    };
    let parts = [
        part(uncached, &pricing.prompt, None)?,
        part(
            input.cached_tokens,
            &pricing.input_cache_read,
            Some(&pricing.prompt),
        )?,
        part(
            input.cache_write_tokens,
            &pricing.input_cache_write,
            Some(&pricing.prompt),
        )?,
        part(input.completion_tokens, &pricing.completion, None)?,
        part(
            input.reasoning_tokens,
            &pricing.internal_reasoning,
            Some(&zero),
        )?,
        part(input.web_search_calls, &pricing.web_search, None)?,
    ];
    parts
        .into_iter()
        .try_fold(request, |acc, p| acc.try_add(p).ok())
}

/// A rough token count of `text`: ⌈characters / 4⌉.
pub fn approx_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    use tally_money::cost;

    fn p(s: &str) -> Price {
        Price::parse(s).unwrap()
    }

    fn r1() -> Pricing {
        // deepseek/deepseek-r1 from the fixture, with a request fee, a
        // reasoning surcharge and a search fee added.
        Pricing {
            prompt: p("0.0000004"),
            completion: p("0.000002"),
            request: p("0.0001"),
            input_cache_read: p("0.0000001"),
            input_cache_write: p("0.0000005"),
            internal_reasoning: p("0.000001"),
            web_search: p("0.004"),
        }
    }

    /// (case, pricing, input, expected) — expected figures computed by hand.
    #[test]
    #[rustfmt::skip]
    fn hand_computed_estimates() {
        let mini = Pricing {
            prompt: p("0.00000015"),
            completion: p("0.0000006"),
            request: p("0"),
            input_cache_read: p("0.000000075"),
            web_search: p("0"),
            internal_reasoning: p("0"),
            ..Pricing::default()
        };
        let cases: Vec<(&str, Pricing, EstimateInput, Option<&str>)> = vec![
            // 118 × 0.00000015 + 41 × 0.0000006 = 0.0000177 + 0.0000246
            ("plain", mini.clone(), EstimateInput { prompt_tokens: 118, completion_tokens: 41, ..Default::default() }, Some("0.0000423")),
            // (118−64) × 0.00000015 + 64 × 0.000000075 + 41 × 0.0000006
            // = 0.0000081 + 0.0000048 + 0.0000246
            ("cached", mini.clone(), EstimateInput { prompt_tokens: 118, cached_tokens: 64, completion_tokens: 41, ..Default::default() }, Some("0.0000375")),
            // no cache-write price: written tokens at the prompt price
            // 100 × 0.00000015 + 10 × 0.0000006 = 0.000015 + 0.000006
            ("write fallback", mini.clone(), EstimateInput { prompt_tokens: 100, cache_write_tokens: 40, completion_tokens: 10, ..Default::default() }, Some("0.000021")),
            // 1000 uncached → (1000−200−100) × 0.0000004 = 0.00028
            // 200 × 0.0000001 = 0.00002; 100 × 0.0000005 = 0.00005
            // 500 × 0.000002 = 0.001; 300 × 0.000001 = 0.0003
            // request 0.0001; 2 × 0.004 = 0.008
            // total 0.00028 + 0.00002 + 0.00005 + 0.001 + 0.0003 + 0.0001 + 0.008 = 0.00975
            ("everything", r1(), EstimateInput { prompt_tokens: 1000, cached_tokens: 200, cache_write_tokens: 100, completion_tokens: 500, reasoning_tokens: 300, web_search_calls: 2 }, Some("0.00975")),
            ("zero tokens = request fee", r1(), EstimateInput::default(), Some("0.0001")),
            ("dynamic prompt", Pricing { prompt: Price::Dynamic, completion: Price::Dynamic, ..Pricing::default() }, EstimateInput { prompt_tokens: 1, completion_tokens: 1, ..Default::default() }, None),
            ("dynamic request fee", Pricing { request: Price::Dynamic, ..mini.clone() }, EstimateInput { prompt_tokens: 1, ..Default::default() }, None),
            ("unknown completion price", Pricing { completion: Price::Unknown, ..mini.clone() }, EstimateInput { prompt_tokens: 1, completion_tokens: 1, ..Default::default() }, None),
            ("unknown search price with searches", Pricing { web_search: Price::Unknown, ..mini.clone() }, EstimateInput { prompt_tokens: 1, web_search_calls: 1, ..Default::default() }, None),
            ("unknown search price without searches", Pricing { web_search: Price::Unknown, ..mini.clone() }, EstimateInput { prompt_tokens: 10, ..Default::default() }, Some("0.0000015")),
            // cached > prompt cannot underflow
            ("inconsistent counts", mini, EstimateInput { prompt_tokens: 10, cached_tokens: 20, ..Default::default() }, Some("0.0000015")),
        ];
        for (case, pricing, input, want) in cases {
            assert_eq!(estimate(&pricing, &input), want.map(|w| cost!(w)), "{case}");
        }
    }

    #[test]
    fn approximate_tokens() {
        assert_eq!(approx_tokens(""), 0);
        assert_eq!(approx_tokens("abc"), 1);
        assert_eq!(approx_tokens("abcd"), 1);
        assert_eq!(approx_tokens("abcde"), 2);
        assert_eq!(approx_tokens("éééé"), 1);
    }
}
