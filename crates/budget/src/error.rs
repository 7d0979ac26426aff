//! [`BudgetError`]: why a budget rule rejected its input, each variant with
//! a stable code (used as the API's problem type and in dead-letter
//! reasons).

use chrono::{DateTime, Utc};
use tally_money::MoneyError;

use crate::{PeriodKind, MAX_THRESHOLDS, MAX_THRESHOLD_PERCENT, MIN_THRESHOLD_PERCENT};

/// Why a budget rule rejected its input. Each variant maps to a stable
/// [`code`](BudgetError::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The text is not an IANA time zone name.
    #[error("unknown time zone {0:?}; expected an IANA name such as \"Europe/Berlin\" or \"UTC\"")]
    UnknownTimezone(String),
    /// The text is not a period kind.
    #[error("invalid period {0:?}; expected one of total, daily, weekly, monthly")]
    InvalidPeriodKind(String),
    /// The text is not an enforcement mode.
    #[error("invalid enforcement {0:?}; expected hard or soft")]
    InvalidEnforcement(String),
    /// A threshold outside `1..=1000` percent.
    #[error(
        "invalid threshold {value}%; thresholds must be between {MIN_THRESHOLD_PERCENT} and {MAX_THRESHOLD_PERCENT} percent"
    )]
    InvalidThreshold {
        /// The offending threshold, in percent.
        value: u32,
    },
    /// More than [`MAX_THRESHOLDS`] distinct thresholds.
    #[error("{count} thresholds given; at most {MAX_THRESHOLDS} are allowed")]
    TooManyThresholds {
        /// How many distinct thresholds were given.
        count: usize,
    },
    /// The instant is not the start of a period of the budget.
    #[error(
        "{start} is not the start of a {kind} period in {timezone}; the period containing it starts at {period_start}"
    )]
    NotAPeriodStart {
        /// The budget's period kind.
        kind: PeriodKind,
        /// The budget's time zone (IANA name).
        timezone: String,
        /// The instant that was asked for.
        start: DateTime<Utc>,
        /// The start of the period that contains `start`.
        period_start: DateTime<Utc>,
    },
    /// The limit is not a valid cost.
    #[error("invalid limit: {0}")]
    InvalidLimit(#[source] MoneyError),
    /// A scope field is set to a value no generation can carry.
    #[error("invalid scope {field}: {reason}")]
    InvalidScope {
        /// The scope field (`agent_id`, `session_id`, `user_id`, `model`).
        field: &'static str,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// The instant is outside `[TOTAL_START, TOTAL_END)`.
    #[error(
        "instant {0} is outside the supported range 1970-01-01T00:00:00Z .. 9999-12-31T00:00:00Z"
    )]
    InstantOutOfRange(DateTime<Utc>),
}

impl BudgetError {
    /// Stable machine-readable code (problem types, dead-letter reasons,
    /// metric labels).
    pub fn code(&self) -> &'static str {
        match self {
            BudgetError::UnknownTimezone(_) => "unknown_timezone",
            BudgetError::InvalidPeriodKind(_) => "invalid_period_kind",
            BudgetError::InvalidEnforcement(_) => "invalid_enforcement",
            BudgetError::InvalidThreshold { .. } => "invalid_threshold",
            BudgetError::TooManyThresholds { .. } => "too_many_thresholds",
            BudgetError::NotAPeriodStart { .. } => "not_a_period_start",
            BudgetError::InvalidLimit(_) => "invalid_limit",
            BudgetError::InvalidScope { .. } => "invalid_scope",
            BudgetError::InstantOutOfRange(_) => "instant_out_of_range",
        }
    }
}
