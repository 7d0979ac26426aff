//! The projector's committed ledger entries, one message per batch and org
//! ([`LedgerPosted`]).
//!
//! # Invariants
//!
//! * Entries are append-only facts: a debit books a generation into a
//!   budget period, an adjustment moves it to its actual cost later.
//! * A debit is never negative; an adjustment may be (the actual came in
//!   below the estimate).
//! * `period_start < period_end`; the period is the one containing the
//!   generation's `completed_at` (money rule 5, owned by
//!   `tally-budget`).
//!
//! # Decisions
//!
//! * **One message per committed batch**, not per entry: every JetStream
//!   publish costs an fsync, so derived events are amortised like the
//!   Postgres commits they report (`sync_interval: always` makes every
//!   JetStream write an fsync).
//! * **Stringly enums with `as_str`/`FromStr`** so the store can keep them
//!   in text columns with the same spelling as the wire.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_money::Usd;

use crate::check::{self, wire_enum};
use crate::{EventError, EventType, Payload};

wire_enum! {
    /// What a ledger entry does.
    pub enum EntryKind {
        /// Books a generation into a budget period (≥ 0).
        Debit => "debit",
        /// Corrects an earlier debit (e.g. the actual replaced the estimate);
        /// any sign.
        Adjustment => "adjustment",
    }
}

wire_enum! {
    /// What the booked amount is based on.
    pub enum Basis {
        /// OpenRouter's actual cost.
        Actual => "actual",
        /// The producer's estimate, standing in for the actual.
        Estimate => "estimate",
        /// Neither is known: zero is booked and the generation is unpriced.
        None => "none",
    }
}

/// One ledger entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerEntry {
    /// Unique, deterministic id of the entry.
    pub entry_id: String,
    /// The budget debited.
    pub budget_id: String,
    /// The generation booked.
    pub generation_id: String,
    /// Debit or adjustment.
    pub kind: EntryKind,
    /// What the amount is based on.
    pub basis: Basis,
    /// The amount; negative only for adjustments.
    #[serde(with = "tally_money::serde_usd")]
    pub amount_usd: Usd,
    /// Start of the budget period (inclusive).
    #[serde(with = "check::rfc3339")]
    pub period_start: DateTime<Utc>,
    /// End of the budget period (exclusive).
    #[serde(with = "check::rfc3339")]
    pub period_end: DateTime<Utc>,
    /// When the entry was committed.
    #[serde(with = "check::rfc3339")]
    pub posted_at: DateTime<Utc>,
}

impl LedgerEntry {
    /// Checks one entry; `at` is its path, e.g. `data.entries[0]`.
    pub fn validate_at(&self, at: &str) -> Result<(), EventError> {
        check::reference(&format!("{at}.entry_id"), &self.entry_id)?;
        check::id(&format!("{at}.budget_id"), &self.budget_id)?;
        check::reference(&format!("{at}.generation_id"), &self.generation_id)?;
        let field = format!("{at}.amount_usd");
        match self.kind {
            EntryKind::Debit => check::cost(&field, &self.amount_usd)?,
            EntryKind::Adjustment => check::amount(&field, &self.amount_usd)?,
        }
        if self.period_start >= self.period_end {
            return Err(EventError::data(
                format!("{at}.period_end"),
                "must be after period_start",
            ));
        }
        Ok(())
    }
}

/// `tally.ledger.posted.v1`: every entry of one org committed in one
/// projector batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerPosted {
    /// The org whose entries these are.
    pub org_id: String,
    /// Id of the committed batch.
    pub batch_id: String,
    /// The entries (at least one).
    pub entries: Vec<LedgerEntry>,
}

impl Payload for LedgerPosted {
    const TYPE: EventType = EventType::LedgerPosted;

    fn org_id(&self) -> &str {
        &self.org_id
    }

    fn validate(&self) -> Result<(), EventError> {
        check::id("data.org_id", &self.org_id)?;
        check::reference("data.batch_id", &self.batch_id)?;
        if self.entries.is_empty() {
            return Err(EventError::data(
                "data.entries",
                "must hold at least one entry",
            ));
        }
        for (i, entry) in self.entries.iter().enumerate() {
            entry.validate_at(&format!("data.entries[{i}]"))?;
        }
        Ok(())
    }
}
