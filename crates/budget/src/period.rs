//! Budget periods: [`PeriodKind`], the [`Period`] containing an instant in
//! an IANA time zone, and the boundaries of local days, weeks and months
//! across offset changes (see the crate's invariants).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::BudgetError;

/// Start of the single period of a [`PeriodKind::Total`] budget:
/// `1970-01-01T00:00:00Z`.
pub const TOTAL_START: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// End (exclusive) of the single period of a [`PeriodKind::Total`] budget:
/// `9999-12-31T00:00:00Z`.
pub const TOTAL_END: DateTime<Utc> = match DateTime::from_timestamp(253_402_214_400, 0) {
    Some(t) => t,
    None => panic!("9999-12-31T00:00:00Z is representable"),
};

/// How a budget's spend is grouped in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeriodKind {
    /// One period for the budget's whole life: [`TOTAL_START`]..[`TOTAL_END`].
    Total,
    /// Local calendar days, from local midnight to the next local midnight.
    Daily,
    /// ISO 8601 weeks, from Monday 00:00 local time to the next Monday.
    Weekly,
    /// Calendar months, from the 1st 00:00 local time to the next 1st.
    Monthly,
}

impl PeriodKind {
    /// Every period kind, in order of increasing resolution after `Total`.
    pub const ALL: [PeriodKind; 4] = [
        PeriodKind::Total,
        PeriodKind::Daily,
        PeriodKind::Weekly,
        PeriodKind::Monthly,
    ];

    /// The wire name (`total`, `daily`, `weekly`, `monthly`), as in serde.
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Total => "total",
            PeriodKind::Daily => "daily",
            PeriodKind::Weekly => "weekly",
            PeriodKind::Monthly => "monthly",
        }
    }
}

impl fmt::Display for PeriodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PeriodKind {
    type Err = BudgetError;

    /// Parses a wire name exactly (lower case, no surrounding space).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeriodKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| BudgetError::InvalidPeriodKind(s.to_owned()))
    }
}

/// A budget period: the half-open interval `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Period {
    /// First instant of the period (inclusive).
    pub start: DateTime<Utc>,
    /// First instant after the period (exclusive); the next period's start.
    pub end: DateTime<Utc>,
}

impl Period {
    /// The single period of every [`PeriodKind::Total`] budget.
    pub const TOTAL: Period = Period {
        start: TOTAL_START,
        end: TOTAL_END,
    };

    /// Whether `at` lies in the period (`start <= at < end`).
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }

    /// How long the period lasts (`end - start`).
    pub fn duration(&self) -> TimeDelta {
        self.end - self.start
    }
}

/// Parses an IANA time zone name (`"Europe/Berlin"`, `"UTC"`), exactly as
/// spelled in the tz database (case-sensitive, no surrounding space).
pub fn parse_timezone(name: &str) -> Result<Tz, BudgetError> {
    Tz::from_str(name).map_err(|_| BudgetError::UnknownTimezone(name.to_owned()))
}

/// Checks that an instant lies in `[TOTAL_START, TOTAL_END)`, the range in
/// which every period invariant is guaranteed. Callers may use it to reject
/// absurd event times (`completed_at` in year 1 or 20000) at the edge.
pub fn ensure_supported_instant(at: DateTime<Utc>) -> Result<DateTime<Utc>, BudgetError> {
    if (TOTAL_START..TOTAL_END).contains(&at) {
        Ok(at)
    } else {
        Err(BudgetError::InstantOutOfRange(at))
    }
}

/// The period of kind `kind`, in time zone `tz`, that contains the instant `at`.
///
/// * `Total`: always [`Period::TOTAL`] (`TOTAL_START..TOTAL_END`), whatever
///   `at` is.
/// * `Daily`: local midnight to the next local midnight in `tz`.
/// * `Weekly`: ISO week, Monday 00:00 local to the next Monday 00:00 local.
/// * `Monthly`: the 1st 00:00 local to the next 1st 00:00 local.
///
/// A local midnight that does not exist is replaced by the first instant that
/// exists after it, an ambiguous one by the earliest; see the crate docs'
/// *Decisions*. For `at` in `[TOTAL_START, TOTAL_END)` the result contains
/// `at` and the periods tile time. Never panics.
pub fn period_containing(kind: PeriodKind, tz: Tz, at: DateTime<Utc>) -> Period {
    let unit = match kind {
        PeriodKind::Total => return Period::TOTAL,
        PeriodKind::Daily => Unit::Day,
        PeriodKind::Weekly => Unit::Week,
        PeriodKind::Monthly => Unit::Month,
    };
    let mut first_day = unit.floor(local_date(tz, at));
    let mut start = boundary(tz, Some(first_day));
    // `start <= at` holds by construction (the local clock at `at` already
    // shows `first_day` or later); step back only as a safety net.
    let mut guard = 0;
    while start > at && guard < 8 {
        match unit.prev(first_day) {
            Some(d) => {
                first_day = d;
                start = boundary(tz, Some(d));
            }
            None => {
                start = DateTime::<Utc>::MIN_UTC;
                break;
            }
        }
        guard += 1;
    }
    // Step forward over periods that end at or before `at`: a skipped local
    // day has an empty period, and a midnight that the clock passes twice
    // (a fall-back across 00:00) can put `at` in the next period although
    // its local date is still the previous day.
    loop {
        let next_day = unit.next(first_day);
        let end = boundary(tz, next_day);
        if end > at || end == DateTime::<Utc>::MAX_UTC {
            return Period { start, end };
        }
        // `next_day` is `Some` here: `None` saturates `end` to `MAX_UTC`.
        let Some(next_day) = next_day else {
            return Period { start, end };
        };
        first_day = next_day;
        start = end;
    }
}

/// The period of kind `kind` in `tz` that starts exactly at `start`
/// (`GET /v1/budgets/{id}/periods/{start}`).
///
/// Fails with [`BudgetError::NotAPeriodStart`] (which names the start of the
/// period containing `start`) when `start` is not a period boundary. For
/// `Total`, only [`TOTAL_START`] is a period start.
pub fn period_starting_at(
    kind: PeriodKind,
    tz: Tz,
    start: DateTime<Utc>,
) -> Result<Period, BudgetError> {
    let period = period_containing(kind, tz, start);
    if period.start == start {
        Ok(period)
    } else {
        Err(BudgetError::NotAPeriodStart {
            kind,
            timezone: tz.name().to_owned(),
            start,
            period_start: period.start,
        })
    }
}

/// Calendar unit of a non-total period, working on local dates.
#[derive(Clone, Copy)]
enum Unit {
    Day,
    Week,
    Month,
}

impl Unit {
    /// First local date of the period that contains local date `d`.
    fn floor(self, d: NaiveDate) -> NaiveDate {
        match self {
            Unit::Day => d,
            Unit::Week => {
                let back = u64::from(d.weekday().num_days_from_monday());
                // Only fails before the earliest representable Monday.
                d.checked_sub_days(Days::new(back))
                    .unwrap_or(NaiveDate::MIN)
            }
            Unit::Month => d.with_day(1).unwrap_or(d),
        }
    }

    /// First local date of the period after the one starting at `d`.
    fn next(self, d: NaiveDate) -> Option<NaiveDate> {
        match self {
            Unit::Day => d.checked_add_days(Days::new(1)),
            Unit::Week => d.checked_add_days(Days::new(7)),
            Unit::Month => d.checked_add_months(Months::new(1)),
        }
    }

    /// First local date of the period before the one starting at `d`.
    fn prev(self, d: NaiveDate) -> Option<NaiveDate> {
        match self {
            Unit::Day => d.checked_sub_days(Days::new(1)),
            Unit::Week => d.checked_sub_days(Days::new(7)),
            Unit::Month => d.checked_sub_months(Months::new(1)),
        }
    }
}

/// Total UTC offset of `tz` at the UTC second `utc_secs`, in seconds.
fn offset_at(tz: Tz, utc_secs: i64) -> Option<i64> {
    let utc = DateTime::<Utc>::from_timestamp(utc_secs, 0)?;
    let offset = tz.offset_from_utc_datetime(&utc.naive_utc()).fix();
    Some(i64::from(offset.local_minus_utc()))
}

/// The local calendar date in `tz` at the instant `at` (clamped at the ends
/// of `chrono`'s calendar).
fn local_date(tz: Tz, at: DateTime<Utc>) -> NaiveDate {
    let offset = tz.offset_from_utc_datetime(&at.naive_utc()).fix();
    match at.naive_utc().checked_add_offset(offset) {
        Some(local) => local.date(),
        None if at.timestamp() < 0 => NaiveDate::MIN,
        None => NaiveDate::MAX,
    }
}

/// No zone's UTC offset reaches this (the largest in the tz database is
/// about 16 h), so the first instant whose local time reaches a given local
/// time lies within this distance of it.
const WINDOW_SECS: i64 = 26 * 3600;

/// Offset changes are found by sampling at this step and bisecting, which is
/// exact as long as no zone changes its offset twice within one step. In the
/// tz database shipped with `chrono-tz` consecutive changes of a zone are at
/// least 6.9 days apart; the tests compare every zone's periods from 1970 to
/// 2100 with `chrono`'s own local-time resolution to keep this honest.
const STEP_SECS: i64 = 24 * 3600;

/// The instant at which local date `day` begins in `tz`: the first instant at
/// which the local clock shows `day` 00:00 or later. `None` (a date beyond
/// `chrono`'s range) saturates towards the side it lies on.
fn boundary(tz: Tz, day: Option<NaiveDate>) -> DateTime<Utc> {
    let Some(day) = day else {
        return DateTime::<Utc>::MAX_UTC;
    };
    let local_midnight = day.and_time(chrono::NaiveTime::MIN).and_utc().timestamp();
    first_instant_reaching(tz, local_midnight)
        .and_then(|secs| DateTime::<Utc>::from_timestamp(secs, 0))
        .unwrap_or(if local_midnight < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
}

/// The first UTC second `u` with `u + offset(u) >= local` (local time given as
/// seconds since 1970-01-01T00:00 on the local clock).
///
/// The window `[local - WINDOW, local + WINDOW]` is split into stretches of
/// constant offset; in a stretch `[s, e)` with offset `o` the local clock runs
/// `u + o`, so it first shows `local` or later at `max(s, local - o)` if that
/// is before `e`. `s` wins when the clock jumped over `local` at `s` (a
/// skipped midnight); the first stretch that qualifies gives the earliest
/// instant (an ambiguous midnight resolves to its first occurrence).
fn first_instant_reaching(tz: Tz, local: i64) -> Option<i64> {
    let lo = local.checked_sub(WINDOW_SECS)?;
    let hi = local.checked_add(WINDOW_SECS)?;
    let mut stretch_start = lo;
    let mut offset = offset_at(tz, lo)?;
    loop {
        let stretch_end = next_offset_change(tz, stretch_start, offset, hi)?;
        let candidate = local - offset;
        if candidate < stretch_start {
            return Some(stretch_start);
        }
        if candidate < stretch_end {
            return Some(candidate);
        }
        if stretch_end > hi {
            // Unreachable for real zones (offsets stay below WINDOW_SECS).
            return None;
        }
        stretch_start = stretch_end;
        offset = offset_at(tz, stretch_end)?;
    }
}

/// The first second in `(from, hi]` at which the offset differs from
/// `offset` (the offset at `from`), or `hi + 1` if there is none.
fn next_offset_change(tz: Tz, from: i64, offset: i64, hi: i64) -> Option<i64> {
    let mut same = from;
    while same < hi {
        let probe = (same + STEP_SECS).min(hi);
        if offset_at(tz, probe)? != offset {
            // Bisect (same, probe]: offset(same) == offset != offset(probe).
            let mut changed = probe;
            while changed - same > 1 {
                let mid = same + (changed - same) / 2;
                if offset_at(tz, mid)? == offset {
                    same = mid;
                } else {
                    changed = mid;
                }
            }
            return Some(changed);
        }
        same = probe;
    }
    Some(hi + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_end_is_9999_12_31() {
        assert_eq!(TOTAL_END.to_rfc3339(), "9999-12-31T00:00:00+00:00");
        assert_eq!(TOTAL_START.to_rfc3339(), "1970-01-01T00:00:00+00:00");
    }

    #[test]
    fn first_instant_reaching_in_utc_is_identity() {
        for local in [-86_400_i64, 0, 1, 1_700_000_000] {
            assert_eq!(first_instant_reaching(Tz::UTC, local), Some(local));
        }
    }
}
