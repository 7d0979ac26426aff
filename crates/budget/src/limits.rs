//! Enforcement, limits and alert thresholds: what a budget does at its
//! limit ([`Enforcement`], [`is_exhausted`]) and which thresholds a debit
//! crosses ([`thresholds_crossed`], exact past 28 digits).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tally_money::{Cost, Usd};

use crate::BudgetError;

/// Alert thresholds of a budget created without `thresholds_percent`.
pub const DEFAULT_THRESHOLDS: [u32; 3] = [50, 80, 100];

/// Smallest valid threshold, in percent of the limit.
pub const MIN_THRESHOLD_PERCENT: u32 = 1;

/// Largest valid threshold, in percent of the limit (ten times the limit).
pub const MAX_THRESHOLD_PERCENT: u32 = 1000;

/// Most distinct thresholds a budget may have.
pub const MAX_THRESHOLDS: usize = 10;

/// What a budget does when its limit is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// New generations in scope are refused once `spent >= limit`
    /// (`POST /v1/budgets/check` answers "not allowed").
    Hard,
    /// Only alerts; generations are never refused.
    Soft,
}

impl Enforcement {
    /// Both modes.
    pub const ALL: [Enforcement; 2] = [Enforcement::Hard, Enforcement::Soft];

    /// The wire name (`hard`, `soft`), as in serde.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Hard => "hard",
            Enforcement::Soft => "soft",
        }
    }

    /// Whether a budget with this enforcement refuses a new generation, given
    /// its limit and the spend of the current period: hard and
    /// [`is_exhausted`].
    pub fn blocks(self, limit: Cost, spent: Usd) -> bool {
        self == Enforcement::Hard && is_exhausted(limit, spent)
    }
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Enforcement {
    type Err = BudgetError;

    /// Parses a wire name exactly (lower case, no surrounding space).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Enforcement::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| BudgetError::InvalidEnforcement(s.to_owned()))
    }
}

/// Checks a budget limit: a valid [`Cost`] (`>= 0`; range and precision
/// hold for every [`Usd`]). Zero is valid: see the crate docs.
pub fn validate_limit(limit: Usd) -> Result<Cost, BudgetError> {
    Cost::new(limit).map_err(BudgetError::InvalidLimit)
}

/// Whether a budget's limit is used up: `spent >= limit`. A new generation is
/// allowed only while `spent < limit`, so hard budgets block from the moment
/// the spend reaches the limit, and a zero limit blocks from the start.
pub fn is_exhausted(limit: Cost, spent: Usd) -> bool {
    spent >= limit.usd()
}

/// Validates alert thresholds (percent of the limit): each in `1..=1000`,
/// returned sorted ascending without duplicates; at most [`MAX_THRESHOLDS`]
/// distinct values (duplicates are removed before counting). An empty list is
/// valid (a budget without alerts). Budgets created without thresholds use
/// [`DEFAULT_THRESHOLDS`].
pub fn validate_thresholds(t: &[u32]) -> Result<Vec<u32>, BudgetError> {
    if let Some(&value) = t
        .iter()
        .find(|v| !(MIN_THRESHOLD_PERCENT..=MAX_THRESHOLD_PERCENT).contains(v))
    {
        return Err(BudgetError::InvalidThreshold { value });
    }
    let mut sorted = t.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() > MAX_THRESHOLDS {
        return Err(BudgetError::TooManyThresholds {
            count: sorted.len(),
        });
    }
    Ok(sorted)
}

/// The thresholds whose level `limit * pct / 100` the spend reaches by going
/// from `before` to `after`: `before < level <= after`. Returned ascending,
/// without duplicates.
///
/// * Reaching a level exactly counts; one debit can cross several thresholds.
/// * Only upward: if `after <= before` nothing is crossed.
/// * The comparison is exact: `limit * pct / 100` is never rounded, even
///   where the level needs more digits than a `Usd` holds
///   ([`Usd::cmp_percent_of`]).
/// * A limit of 0: every threshold is crossed by the step that
///   makes the spend positive (`before <= 0 < after`), since any positive
///   spend is an infinite percentage of zero.
///
/// This function is pure and only compares `before` with `after`: spend that
/// falls below a level and rises again crosses it again here. "Once per
/// period" is the store's job: it records each `(budget, period, threshold)`
/// alert at most once.
pub fn thresholds_crossed(thresholds: &[u32], limit: Cost, before: Usd, after: Usd) -> Vec<u32> {
    let limit = limit.usd();
    let mut crossed: Vec<u32> = if limit.is_zero() {
        if before <= Usd::ZERO && after > Usd::ZERO {
            thresholds.to_vec()
        } else {
            Vec::new()
        }
    } else {
        thresholds
            .iter()
            .copied()
            .filter(|&pct| {
                before.cmp_percent_of(limit, pct).is_lt()
                    && after.cmp_percent_of(limit, pct).is_ge()
            })
            .collect()
    };
    crossed.sort_unstable();
    crossed.dedup();
    crossed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_compare_exactly_past_28_digits() {
        // 333 % of a 28-digit limit needs 31 digits:
        // 332999999.9999999999999999999667.
        let limit: Cost = "99999999.99999999999999999999".parse().unwrap();
        let below: Usd = "332999999.99999999999999999996".parse().unwrap();
        let above: Usd = "332999999.99999999999999999997".parse().unwrap();
        assert_eq!(thresholds_crossed(&[333], limit, below, above), vec![333]);
        assert!(thresholds_crossed(&[333], limit, Usd::ZERO, below).is_empty());
        let equal: Usd = "999999999.9999999999999999999".parse().unwrap();
        assert_eq!(thresholds_crossed(&[1000], limit, below, equal), vec![1000]);
    }
}
