//! Payloads of the reconciler: the actual cost of a generation was found
//! ([`CostReconciled`]) or could not be found in time ([`CostUnresolved`]).
//!
//! # Invariants
//!
//! * `actual_cost_usd` is the whole actual cost of the generation: OpenRouter's
//!   `total_cost`, plus `upstream_inference_cost` when BYOK (money rule 8,
//!   owned by `tally-openrouter`). Both parts are kept so the sum can be audited.
//! * All amounts are costs (≥ 0), exact decimals.
//!
//! # Decisions
//!
//! * **Giving up is an event.** [`CostUnresolved`] makes "we will never know"
//!   explicit: the estimate stands and the generation is flagged, instead of
//!   waiting forever for an answer that will not come.
//! * **The sum is checked at the edge.** A reconciled event whose
//!   `actual_cost_usd` is not `total_cost_usd` (plus
//!   `upstream_inference_cost_usd` when `is_byok`, a missing upstream part
//!   counting as zero) is refused (`invalid_data` at `data.actual_cost_usd`):
//!   the three figures travel side by side so the sum can be audited, and a
//!   consumer must never have to choose which of two disagreeing figures to
//!   book.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_money::Cost;

use crate::check;
use crate::{EventError, EventType, Payload};

/// `tally.cost.reconciled.v1`: the reconciler learnt the actual cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostReconciled {
    /// OpenRouter's generation id.
    pub generation_id: String,
    /// The org that pays.
    pub org_id: String,
    /// The total actual cost (`total_cost_usd` + upstream cost when BYOK).
    pub actual_cost_usd: Cost,
    /// OpenRouter's `total_cost`.
    pub total_cost_usd: Cost,
    /// OpenRouter's `upstream_inference_cost` (BYOK); JSON `null`, required,
    /// when absent.
    #[serde(deserialize_with = "Option::deserialize")]
    pub upstream_inference_cost_usd: Option<Cost>,
    /// Whether the org's own provider key served it.
    pub is_byok: bool,
    /// Lookups it took (≥ 1).
    pub attempts: u32,
    /// When the reconciler got the answer.
    #[serde(with = "check::rfc3339")]
    pub reconciled_at: DateTime<Utc>,
}

impl Payload for CostReconciled {
    const TYPE: EventType = EventType::CostReconciled;

    fn org_id(&self) -> &str {
        &self.org_id
    }

    fn validate(&self) -> Result<(), EventError> {
        check::reference("data.generation_id", &self.generation_id)?;
        check::id("data.org_id", &self.org_id)?;
        check::range("data.attempts", self.attempts, 1, u32::MAX)?;
        self.check_sum()
    }
}

impl CostReconciled {
    /// What `actual_cost_usd` must be: `total_cost_usd`, plus the upstream
    /// part when BYOK (money rule 8, owned by `tally-openrouter`).
    pub fn expected_actual(&self) -> Option<Cost> {
        match (self.is_byok, self.upstream_inference_cost_usd) {
            (true, Some(upstream)) => self.total_cost_usd.try_add(upstream).ok(),
            _ => Some(self.total_cost_usd),
        }
    }

    fn check_sum(&self) -> Result<(), EventError> {
        if self.expected_actual() == Some(self.actual_cost_usd) {
            return Ok(());
        }
        let rule = if self.is_byok {
            "total_cost_usd + upstream_inference_cost_usd"
        } else {
            "total_cost_usd (not BYOK)"
        };
        Err(EventError::data(
            "data.actual_cost_usd",
            format!("{} is not {rule}", self.actual_cost_usd),
        ))
    }
}

/// `tally.cost.unresolved.v1`: the reconciler gave up learning the actual
/// cost; the estimate (if any) stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostUnresolved {
    /// OpenRouter's generation id.
    pub generation_id: String,
    /// The org that pays.
    pub org_id: String,
    /// Why: `deadline_exceeded`, `not_found`, `malformed_reply`,
    /// `upstream_error`, ... (snake_case).
    pub reason: String,
    /// Lookups made.
    pub attempts: u32,
    /// HTTP status of the last lookup (100..=599); JSON `null`, required,
    /// when none got an answer.
    #[serde(deserialize_with = "check::required_nullable")]
    pub last_status: Option<u16>,
    /// When the reconciler gave up.
    #[serde(with = "check::rfc3339")]
    pub gave_up_at: DateTime<Utc>,
}

impl Payload for CostUnresolved {
    const TYPE: EventType = EventType::CostUnresolved;

    fn org_id(&self) -> &str {
        &self.org_id
    }

    fn validate(&self) -> Result<(), EventError> {
        check::reference("data.generation_id", &self.generation_id)?;
        check::id("data.org_id", &self.org_id)?;
        check::code("data.reason", &self.reason)?;
        if let Some(status) = self.last_status {
            check::range("data.last_status", status, 100, 599)?;
        }
        Ok(())
    }
}
