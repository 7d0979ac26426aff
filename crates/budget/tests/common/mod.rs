//! Helpers shared by the period tests.

use chrono::TimeDelta;
use chrono_tz::Tz;
use tally_budget::{parse_timezone, period_containing, period_starting_at, Period, PeriodKind};

/// The zone named `name`.
pub fn tz(name: &str) -> Tz {
    parse_timezone(name).unwrap()
}

/// The smallest step in time.
pub fn one_ns() -> TimeDelta {
    TimeDelta::nanoseconds(1)
}

/// `p` is the period of `kind` in `zone` from its first to its last
/// instant, starts there, and (but for the total period) touches its
/// neighbours with neither gap nor overlap.
pub fn assert_tiles(kind: PeriodKind, zone: Tz, p: Period) {
    assert_eq!(
        period_containing(kind, zone, p.start),
        p,
        "{kind} {zone}: containing(start)"
    );
    assert_eq!(
        period_containing(kind, zone, p.end - one_ns()),
        p,
        "{kind} {zone}: containing(end - 1ns)"
    );
    assert_eq!(
        period_starting_at(kind, zone, p.start),
        Ok(p),
        "{kind} {zone}: starting_at(start)"
    );
    if kind == PeriodKind::Total {
        return;
    }
    let next = period_containing(kind, zone, p.end);
    assert_eq!(
        next.start, p.end,
        "{kind} {zone}: next period must start at end of {p:?}"
    );
    let prev = period_containing(kind, zone, p.start - one_ns());
    assert_eq!(
        prev.end, p.start,
        "{kind} {zone}: previous period must end at start of {p:?}"
    );
}
