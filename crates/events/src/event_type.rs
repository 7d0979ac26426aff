//! The closed set of event types and the NATS subjects they travel on.
//!
//! | type | subject |
//! |---|---|
//! | `tally.generation.requested.v1` | `<prefix>.generation.requested.<org_id>` |
//! | `tally.generation.completed.v1` | `<prefix>.generation.completed.<org_id>` |
//! | `tally.generation.failed.v1` | `<prefix>.generation.failed.<org_id>` |
//! | `tally.generation.result.v1` | `<prefix>.generation.result.<org_id>` |
//! | `tally.cost.reconciled.v1` | `<prefix>.cost.reconciled.<org_id>` |
//! | `tally.cost.unresolved.v1` | `<prefix>.cost.unresolved.<org_id>` |
//! | `tally.ledger.posted.v1` | `<prefix>.ledger.posted.<org_id>` |
//! | `tally.budget.threshold_crossed.v1` | `<prefix>.budget.alert.<org_id>.<budget_id>` |
//!
//! # Invariants
//!
//! * The `type` strings are part of the contract and never change; an
//!   incompatible payload gets a new type (`.v2`), decoded side by side.
//! * The org token is always the subject's token right after the root, so
//!   `<prefix>.*.*.<org_id>` style permissions and per-org filters work for
//!   every event.
//!
//! # Decisions
//!
//! * **The `type` string does not carry the prefix.** The subject prefix is
//!   deployment configuration (several installations may share a NATS
//!   account); the event type is the schema's name and stays the same.
//! * **Alerts carry the budget in the subject** so a subscriber can follow
//!   one budget (`tally.budget.alert.acme.b1`) or one org
//!   (`tally.budget.alert.acme.*`).

/// Every event type tally publishes or consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// `tally.generation.requested.v1`: an agent asks for a generation.
    GenerationRequested,
    /// `tally.generation.completed.v1`: a generation finished and may have cost money.
    GenerationCompleted,
    /// `tally.generation.failed.v1`: the worker could not produce a generation.
    GenerationFailed,
    /// `tally.generation.result.v1`: the worker's answer to a request.
    GenerationResult,
    /// `tally.cost.reconciled.v1`: the actual cost was found.
    CostReconciled,
    /// `tally.cost.unresolved.v1`: the reconciler gave up.
    CostUnresolved,
    /// `tally.ledger.posted.v1`: the projector committed ledger entries.
    LedgerPosted,
    /// `tally.budget.threshold_crossed.v1`: a budget crossed an alert threshold.
    BudgetThresholdCrossed,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 8] = [
        EventType::GenerationRequested,
        EventType::GenerationCompleted,
        EventType::GenerationFailed,
        EventType::GenerationResult,
        EventType::CostReconciled,
        EventType::CostUnresolved,
        EventType::LedgerPosted,
        EventType::BudgetThresholdCrossed,
    ];

    /// The CloudEvents `type`, e.g. `"tally.generation.completed.v1"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::GenerationRequested => "tally.generation.requested.v1",
            EventType::GenerationCompleted => "tally.generation.completed.v1",
            EventType::GenerationFailed => "tally.generation.failed.v1",
            EventType::GenerationResult => "tally.generation.result.v1",
            EventType::CostReconciled => "tally.cost.reconciled.v1",
            EventType::CostUnresolved => "tally.cost.unresolved.v1",
            EventType::LedgerPosted => "tally.ledger.posted.v1",
            EventType::BudgetThresholdCrossed => "tally.budget.threshold_crossed.v1",
        }
    }

    /// The event type named by a CloudEvents `type`, if tally knows it.
    pub fn from_type(s: &str) -> Option<Self> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The subject tokens between the prefix and the org, e.g.
    /// `"generation.completed"` or `"budget.alert"`.
    pub fn subject_root(&self) -> &'static str {
        match self {
            EventType::GenerationRequested => "generation.requested",
            EventType::GenerationCompleted => "generation.completed",
            EventType::GenerationFailed => "generation.failed",
            EventType::GenerationResult => "generation.result",
            EventType::CostReconciled => "cost.reconciled",
            EventType::CostUnresolved => "cost.unresolved",
            EventType::LedgerPosted => "ledger.posted",
            EventType::BudgetThresholdCrossed => "budget.alert",
        }
    }

    /// Whether the subject ends with a budget token after the org token.
    pub fn has_budget_token(&self) -> bool {
        matches!(self, EventType::BudgetThresholdCrossed)
    }

    /// The NATS subject of an event of this type, e.g.
    /// `subject("tally", "acme", None)` = `"tally.generation.completed.acme"`
    /// and, for alerts, `subject("tally", "acme", Some("b1"))` =
    /// `"tally.budget.alert.acme.b1"`.
    ///
    /// `budget_id` is ignored by every other type; for alerts, `None` gives
    /// the org-wide filter `tally.budget.alert.acme.*`.
    pub fn subject(&self, prefix: &str, org_id: &str, budget_id: Option<&str>) -> String {
        let root = self.subject_root();
        if self.has_budget_token() {
            format!("{prefix}.{root}.{org_id}.{}", budget_id.unwrap_or("*"))
        } else {
            format!("{prefix}.{root}.{org_id}")
        }
    }

    /// The event type whose subjects `subject` belongs to (the inverse of
    /// [`EventType::subject`]): the prefix, then the type's root, then the
    /// org token (and, for alerts, the budget token). `None` for any other
    /// subject.
    pub fn from_subject(prefix: &str, subject: &str) -> Option<Self> {
        let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
        EventType::ALL.into_iter().find(|t| {
            let Some(tokens) = rest
                .strip_prefix(t.subject_root())
                .and_then(|r| r.strip_prefix('.'))
            else {
                return false;
            };
            let want = if t.has_budget_token() { 2 } else { 1 };
            let tokens: Vec<&str> = tokens.split('.').collect();
            tokens.len() == want && tokens.iter().all(|t| !t.is_empty())
        })
    }

    /// The subject filter matching every event of this type, e.g.
    /// `"tally.generation.completed.*"`, `"tally.budget.alert.*.*"` (for
    /// stream and consumer configuration).
    pub fn subject_filter(&self, prefix: &str) -> String {
        self.subject(prefix, "*", Some("*"))
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_their_type_and_nothing_else() {
        for t in EventType::ALL {
            let s = t.subject("t.x", "acme", Some("b1"));
            assert_eq!(EventType::from_subject("t.x", &s), Some(t), "{s}");
            assert_eq!(EventType::from_subject("tally", &s), None, "{s}");
        }
        for s in [
            "t.x.generation.completed",
            "t.x.generation.completed.acme.extra",
            "t.x.budget.alert.acme",
            "t.x.generation.completedx.acme",
            "t.x.deadletter.projector",
            "t.xgeneration.completed.acme",
        ] {
            assert_eq!(EventType::from_subject("t.x", s), None, "{s}");
        }
    }

    #[test]
    fn names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::from_type(t.as_str()), Some(t));
            assert!(t.as_str().starts_with("tally.") && t.as_str().ends_with(".v1"));
        }
        assert_eq!(EventType::from_type("tally.generation.completed.v2"), None);
    }

    #[test]
    fn subjects() {
        assert_eq!(
            EventType::GenerationCompleted.subject("tally", "acme", None),
            "tally.generation.completed.acme"
        );
        assert_eq!(
            EventType::GenerationCompleted.subject("tally", "acme", Some("b1")),
            "tally.generation.completed.acme"
        );
        assert_eq!(
            EventType::BudgetThresholdCrossed.subject("tally", "acme", Some("b1")),
            "tally.budget.alert.acme.b1"
        );
        assert_eq!(
            EventType::BudgetThresholdCrossed.subject("t.x", "acme", None),
            "t.x.budget.alert.acme.*"
        );
        assert_eq!(
            EventType::BudgetThresholdCrossed.subject_filter("tally"),
            "tally.budget.alert.*.*"
        );
        assert_eq!(
            EventType::CostUnresolved.subject_filter("tally"),
            "tally.cost.unresolved.*"
        );
    }
}
