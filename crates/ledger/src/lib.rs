//! The money rules of one generation, as a pure state machine.
//!
//! The ledger projector receives, in any order and any number of times, the
//! facts about a generation: that it completed (with an estimate and perhaps
//! the actual cost), that the reconciler found its actual cost, or that the
//! reconciler gave up. This crate folds those facts into a [`Generation`]
//! and says what the generation's **net debit** must be. The store turns the
//! difference between the net debit already booked and the new one into
//! ledger entries, one per matching budget.
//!
//! # Money rules
//!
//! This crate owns three of tally's money rules (rule 1 is
//! [`tally_money`]'s; the BYOK rule 8 is applied before a cost reaches
//! here):
//!
//! * **Money rule 2, exactly-once effect.** Delivery is at-least-once; the
//!   effect is exactly once. Facts are keyed on business ids (the
//!   `generation_id`; the store adds `budget_id` and period), so a
//!   redelivered, duplicated or replayed fact changes nothing twice.
//! * **Money rule 3, actual wins, estimate stands in.** A generation's net
//!   debit converges to the actual cost when known, else the estimate, else
//!   zero (flagged unpriced); a later actual posts an adjustment for the
//!   difference, and history is never rewritten.
//! * **Money rule 4, order does not matter.** Facts may arrive in any order
//!   and interleave with duplicates; the final state is the same for every
//!   order.
//!
//! # Invariants
//!
//! * **Actual wins, estimate stands in.** The net debit is the actual cost
//!   when known, else the estimate, else zero (state [`CostState::Unpriced`]).
//! * **Exactly once, any order.** Folding the same set of facts in any order,
//!   with any duplicates, yields the same [`Generation`]; applying a fact a
//!   second time is a no-op ([`Applied::Duplicate`]).
//! * **One actual.** Once an actual cost is known it never changes; a second,
//!   *different* actual is refused ([`Applied::ConflictingActual`]) and the
//!   first one stands, whichever order they arrived in. This keeps the
//!   result order-independent only if producers agree; the conflicting
//!   message is dead-lettered so an operator sees it.
//! * **Booked only once complete.** Nothing is debited before the
//!   `generation.completed` fact is known: only it says which budgets and
//!   which period the generation belongs to.
//!
//! # Decisions
//!
//! * **The first completed event's facts stand.** A producer that retries
//!   reuses the CloudEvent id, so a second completed event with a *new* id is
//!   a re-emission of the same generation. Its scope, period and estimate are
//!   ignored (they cannot move money already booked to other budgets without
//!   rewriting history); only an actual cost it carries is considered, with
//!   the same conflict rule as for reconciled events.
//! * **Unresolved is a state, not an amount.** When the reconciler gives up,
//!   the estimate stands; an actual that still arrives later wins.
//! * **One vocabulary.** [`Basis`] and [`EntryKind`] are the wire enums of
//!   `tally-events`, so the rules, the store and the events cannot drift
//!   apart.
//! * **Pure and small.** The store applies these rules to whole batches with
//!   set-based SQL; keeping the rules here makes them testable without a
//!   database, including property tests over every order of facts.

use chrono::{DateTime, Utc};
use tally_events::Attribution;
use tally_money::{Cost, Usd};

pub use tally_events::{Basis, EntryKind};

/// The accounting state of a generation, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CostState {
    /// Not booked yet: only reconciler facts are known, the completed event
    /// has not arrived.
    Pending,
    /// The actual cost is booked.
    Settled,
    /// The estimate is booked and the reconciler is still looking.
    Provisional,
    /// The estimate is booked and the reconciler gave up.
    Unresolved,
    /// Neither actual nor estimate: booked at zero.
    Unpriced,
}

impl CostState {
    /// Wire and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CostState::Pending => "pending",
            CostState::Settled => "settled",
            CostState::Provisional => "provisional",
            CostState::Unresolved => "unresolved",
            CostState::Unpriced => "unpriced",
        }
    }

    /// Parses the wire and database spelling.
    pub fn parse(s: &str) -> Option<CostState> {
        match s {
            "pending" => Some(CostState::Pending),
            "settled" => Some(CostState::Settled),
            "provisional" => Some(CostState::Provisional),
            "unresolved" => Some(CostState::Unresolved),
            "unpriced" => Some(CostState::Unpriced),
            _ => None,
        }
    }
}

/// What the `generation.completed` event says about where a generation
/// belongs. Fixed by the first completed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Organisation, budget scopes and the model that served it.
    pub attribution: Attribution,
    /// Event time: decides the budget period.
    pub completed_at: DateTime<Utc>,
}

/// One fact about a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// From `tally.generation.completed.v1`.
    Completed {
        /// Where the generation belongs.
        placement: Placement,
        /// The producer's estimate.
        estimate: Option<Cost>,
        /// The actual cost, when the producer had it (`usage.cost`).
        actual: Option<Cost>,
    },
    /// From `tally.cost.reconciled.v1`.
    Reconciled {
        /// The actual cost (BYOK already included).
        actual: Cost,
    },
    /// From `tally.cost.unresolved.v1`.
    Unresolved {
        /// Why the reconciler gave up.
        reason: String,
    },
}

/// What applying a fact did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The fact changed the generation.
    Changed,
    /// The fact was already known: nothing changed.
    Duplicate,
    /// The fact carried an actual cost different from the one already known.
    /// The known actual stands; any other part of the fact was applied.
    ConflictingActual {
        /// The actual cost that stands.
        kept: Cost,
        /// The actual cost that was refused.
        refused: Cost,
    },
}

/// Everything the ledger knows about one generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generation {
    /// Set once the completed event arrived.
    pub placement: Option<Placement>,
    /// The producer's estimate, from the first completed event.
    pub estimate: Option<Cost>,
    /// The actual cost, from whichever fact brought it first.
    pub actual: Option<Cost>,
    /// Why the reconciler gave up, if it did.
    pub unresolved_reason: Option<String>,
}

impl Generation {
    /// Folds one fact into the generation.
    pub fn apply(&mut self, fact: &Fact) -> Applied {
        match fact {
            Fact::Completed {
                placement,
                estimate,
                actual,
            } => {
                let mut changed = false;
                if self.placement.is_none() {
                    self.placement = Some(placement.clone());
                    self.estimate = *estimate;
                    changed = true;
                }
                match actual {
                    Some(a) => match self.learn_actual(*a) {
                        Applied::Changed => Applied::Changed,
                        Applied::Duplicate if changed => Applied::Changed,
                        other => other,
                    },
                    None if changed => Applied::Changed,
                    None => Applied::Duplicate,
                }
            }
            Fact::Reconciled { actual } => self.learn_actual(*actual),
            Fact::Unresolved { reason } => {
                if self.unresolved_reason.is_some() {
                    Applied::Duplicate
                } else {
                    self.unresolved_reason = Some(reason.clone());
                    Applied::Changed
                }
            }
        }
    }

    fn learn_actual(&mut self, actual: Cost) -> Applied {
        match self.actual {
            None => {
                self.actual = Some(actual);
                Applied::Changed
            }
            Some(known) if known == actual => Applied::Duplicate,
            Some(known) => Applied::ConflictingActual {
                kept: known,
                refused: actual,
            },
        }
    }

    /// The net debit every matching budget must carry for this generation,
    /// and its basis. `None` while the generation is not booked (no completed
    /// event yet).
    pub fn net_debit(&self) -> Option<(Cost, Basis)> {
        self.placement.as_ref()?;
        Some(match (self.actual, self.estimate) {
            (Some(a), _) => (a, Basis::Actual),
            (None, Some(e)) => (e, Basis::Estimate),
            (None, None) => (Cost::ZERO, Basis::None),
        })
    }

    /// The accounting state reported by the API.
    pub fn state(&self) -> CostState {
        match self.net_debit() {
            None => CostState::Pending,
            Some((_, Basis::Actual)) => CostState::Settled,
            Some((_, Basis::Estimate)) if self.unresolved_reason.is_some() => CostState::Unresolved,
            Some((_, Basis::Estimate)) => CostState::Provisional,
            Some((_, Basis::None)) => CostState::Unpriced,
        }
    }
}

/// Computes the entry (kind, amount) a budget needs, or `None` if its
/// balance for this generation is already right.
///
/// A budget that carries nothing yet gets a debit of the full net debit
/// (even zero, so that every booked generation is visible in every matching
/// budget's journal); one that carries an amount gets an adjustment for the
/// difference, if any. `booked` is what the budget's entries for the
/// generation sum to (signed, as adjustments are); the difference is exact
/// and fails (`amount_overflow`) only if it leaves [`Usd`]'s range, which a
/// cost minus a sum of the same generation's entries never does.
pub fn entry_needed(
    booked: Option<Usd>,
    net: Cost,
) -> Result<Option<(EntryKind, Usd)>, tally_money::MoneyError> {
    let net = net.usd();
    Ok(match booked {
        None => Some((EntryKind::Debit, net)),
        Some(b) if b == net => None,
        Some(b) => Some((EntryKind::Adjustment, net.try_sub(b)?)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use tally_money::{cost, usd};

    fn completed(estimate: Option<&str>, actual: Option<&str>) -> Fact {
        Fact::Completed {
            placement: Placement {
                attribution: Attribution {
                    agent_id: Some("a1".into()),
                    ..Attribution::new("acme", "openai/gpt-4o-mini")
                },
                completed_at: DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc),
            },
            estimate: estimate.map(|e| cost!(e)),
            actual: actual.map(|a| cost!(a)),
        }
    }

    fn fold(facts: &[Fact]) -> Generation {
        let mut g = Generation::default();
        for f in facts {
            g.apply(f);
        }
        g
    }

    #[test]
    fn actual_in_the_completed_event_settles_at_once() {
        let g = fold(&[completed(Some("0.0002"), Some("0.00012345678901234567"))]);
        assert_eq!(
            g.net_debit(),
            Some((cost!("0.00012345678901234567"), Basis::Actual))
        );
        assert_eq!(g.state(), CostState::Settled);
    }

    #[test]
    fn estimate_stands_in_until_the_actual_arrives() {
        let mut g = fold(&[completed(Some("0.0002"), None)]);
        assert_eq!(g.net_debit(), Some((cost!("0.0002"), Basis::Estimate)));
        assert_eq!(g.state(), CostState::Provisional);
        assert_eq!(
            g.apply(&Fact::Reconciled {
                actual: cost!("0.00015")
            }),
            Applied::Changed
        );
        assert_eq!(g.net_debit(), Some((cost!("0.00015"), Basis::Actual)));
        assert_eq!(
            entry_needed(Some(usd!("0.0002")), cost!("0.00015")),
            Ok(Some((EntryKind::Adjustment, usd!("-0.00005"))))
        );
    }

    #[test]
    fn reconciled_before_completed_waits_then_books_the_actual() {
        let mut g = fold(&[Fact::Reconciled {
            actual: cost!("1.5"),
        }]);
        assert_eq!(g.net_debit(), None);
        assert_eq!(g.state(), CostState::Pending);
        g.apply(&completed(Some("2"), None));
        assert_eq!(g.net_debit(), Some((cost!("1.5"), Basis::Actual)));
    }

    #[test]
    fn unresolved_keeps_the_estimate_and_a_late_actual_still_wins() {
        let mut g = fold(&[
            completed(Some("0.3"), None),
            Fact::Unresolved {
                reason: "deadline_exceeded".into(),
            },
        ]);
        assert_eq!(g.state(), CostState::Unresolved);
        assert_eq!(g.net_debit(), Some((cost!("0.3"), Basis::Estimate)));
        g.apply(&Fact::Reconciled {
            actual: cost!("0.25"),
        });
        assert_eq!(g.state(), CostState::Settled);
    }

    #[test]
    fn nothing_known_is_unpriced_at_zero() {
        let g = fold(&[completed(None, None)]);
        assert_eq!(g.net_debit(), Some((Cost::ZERO, Basis::None)));
        assert_eq!(g.state(), CostState::Unpriced);
        assert_eq!(
            entry_needed(None, Cost::ZERO),
            Ok(Some((EntryKind::Debit, Usd::ZERO)))
        );
    }

    #[test]
    fn a_different_second_actual_is_refused_and_the_first_stands() {
        let mut g = fold(&[completed(None, Some("0.1"))]);
        assert_eq!(
            g.apply(&Fact::Reconciled {
                actual: cost!("0.2")
            }),
            Applied::ConflictingActual {
                kept: cost!("0.1"),
                refused: cost!("0.2")
            }
        );
        assert_eq!(g.net_debit(), Some((cost!("0.1"), Basis::Actual)));
        // Same value with another scale is the same money, not a conflict.
        assert_eq!(
            g.apply(&Fact::Reconciled {
                actual: cost!("0.100")
            }),
            Applied::Duplicate
        );
    }

    #[test]
    fn duplicates_change_nothing() {
        let mut g = fold(&[completed(Some("1"), None)]);
        assert_eq!(g.apply(&completed(Some("1"), None)), Applied::Duplicate);
        assert_eq!(g.apply(&completed(Some("9"), None)), Applied::Duplicate);
        assert_eq!(g.estimate, Some(cost!("1")));
        assert_eq!(entry_needed(Some(usd!("1")), cost!("1")), Ok(None));
    }

    mod any_order {
        use super::*;
        use proptest::prelude::*;

        fn facts() -> impl Strategy<Value = Vec<Fact>> {
            let estimate = proptest::option::of(0u64..10_000_000);
            let actual = proptest::option::of(0u64..10_000_000);
            (
                estimate,
                actual,
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(|(e, a, actual_in_event, reconciled, unresolved)| {
                    let to = |x: u64| Cost::new(Usd::new(x as i64, 17)).unwrap();
                    let mut out = vec![Fact::Completed {
                        placement: match completed(None, None) {
                            Fact::Completed { placement, .. } => placement,
                            _ => unreachable!(),
                        },
                        estimate: e.map(to),
                        actual: a.filter(|_| actual_in_event).map(to),
                    }];
                    if let (Some(a), true) = (a, reconciled) {
                        out.push(Fact::Reconciled { actual: to(a) });
                    }
                    if unresolved {
                        out.push(Fact::Unresolved {
                            reason: "deadline_exceeded".into(),
                        });
                    }
                    out
                })
        }

        proptest! {
            #[test]
            fn every_order_and_duplication_gives_the_same_generation(
                (facts, shuffled) in facts().prop_flat_map(|facts| {
                    // Every fact twice, the doubled sequence itself
                    // shuffled: an early fact gets no second chance in the
                    // original order.
                    let doubled: Vec<Fact> =
                        facts.iter().chain(facts.iter()).cloned().collect();
                    (Just(facts), Just(doubled).prop_shuffle())
                }),
            ) {
                let reference = fold(&facts);
                let g = fold(&shuffled);
                prop_assert_eq!(&g, &reference);
                prop_assert_eq!(g.net_debit(), reference.net_debit());
                prop_assert_eq!(g.state(), reference.state());
            }

            #[test]
            fn entries_always_sum_to_the_net_debit(facts in facts()) {
                // Book after every fact, as a projector committing one
                // message per batch would.
                let mut g = Generation::default();
                let mut booked: Option<Usd> = None;
                let mut entries = Vec::new();
                for f in &facts {
                    g.apply(f);
                    if let Some((net, _)) = g.net_debit() {
                        if let Some((kind, amount)) = entry_needed(booked, net).unwrap() {
                            entries.push((kind, amount));
                            booked = Some(net.usd());
                        }
                    }
                }
                let sum = Usd::try_sum(entries.iter().map(|(_, a)| *a)).unwrap();
                prop_assert_eq!(Some(sum), g.net_debit().map(|(n, _)| n.usd()));
                prop_assert!(entries.iter().filter(|(k, _)| *k == EntryKind::Debit).count() == 1);
                prop_assert!(entries.iter().filter(|(k, _)| *k == EntryKind::Adjustment).count() <= 1);
            }
        }
    }
}
