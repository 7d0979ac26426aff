//! Budget alerts ([`ThresholdCrossed`]).
//!
//! # Invariants
//!
//! * One alert per budget, period and threshold: `alert_id` is derived from
//!   those three, so a replay or a redelivery produces the same alert id and
//!   subscribers deduplicate on it.
//! * `spent_usd` is the period's spend right after the debit of
//!   `generation_id`, which made it cross `threshold_percent` of
//!   `limit_usd`.
//!
//! # Decisions
//!
//! * **Alerts go to `<prefix>.budget.alert.<org_id>.<budget_id>`** so
//!   subscribers can pick one budget or a whole org with a subject filter.
//! * **Thresholds above 100 % are allowed** (up to 1000 %) to warn about soft
//!   budgets that keep overspending.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_money::Cost;

use crate::check;
use crate::{EventError, EventType, Payload};

/// `tally.budget.threshold_crossed.v1`: a budget's spend in a period crossed
/// one of its alert thresholds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdCrossed {
    /// Deterministic per budget, period and threshold.
    pub alert_id: String,
    /// The budget.
    pub budget_id: String,
    /// The budget's org.
    pub org_id: String,
    /// The budget's name, for humans.
    pub budget_name: String,
    /// The threshold crossed, in percent of the limit (1..=1000).
    pub threshold_percent: u32,
    /// The budget's limit for the period.
    pub limit_usd: Cost,
    /// Spend in the period after the crossing debit.
    pub spent_usd: Cost,
    /// Start of the period (inclusive).
    #[serde(with = "check::rfc3339")]
    pub period_start: DateTime<Utc>,
    /// End of the period (exclusive).
    #[serde(with = "check::rfc3339")]
    pub period_end: DateTime<Utc>,
    /// The generation whose debit crossed the threshold.
    pub generation_id: String,
    /// When the crossing was committed.
    #[serde(with = "check::rfc3339")]
    pub crossed_at: DateTime<Utc>,
}

impl Payload for ThresholdCrossed {
    const TYPE: EventType = EventType::BudgetThresholdCrossed;

    fn org_id(&self) -> &str {
        &self.org_id
    }

    fn budget_id(&self) -> Option<&str> {
        Some(&self.budget_id)
    }

    fn validate(&self) -> Result<(), EventError> {
        check::reference("data.alert_id", &self.alert_id)?;
        check::id("data.budget_id", &self.budget_id)?;
        check::id("data.org_id", &self.org_id)?;
        check::reference("data.budget_name", &self.budget_name)?;
        check::range("data.threshold_percent", self.threshold_percent, 1, 1000)?;
        if self.period_start >= self.period_end {
            return Err(EventError::data(
                "data.period_end",
                "must be after period_start",
            ));
        }
        check::reference("data.generation_id", &self.generation_id)?;
        Ok(())
    }
}
