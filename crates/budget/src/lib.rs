//! Budget rules for tally: periods, scopes, thresholds and limits.
//!
//! A budget caps the spend of one organisation's generations in a *scope*
//! (agent, session, user, model — any combination) over a *period* (the whole
//! lifetime, or each local day, ISO week or calendar month in an IANA time
//! zone). This crate holds the pure rules behind budgets; it performs no I/O
//! and holds no state. The ledger projector, the store and the HTTP API call
//! into it so that all of them agree on every boundary and every comparison.
//!
//! * [`period_containing`] / [`period_starting_at`]: which period an instant
//!   belongs to, and whether an instant starts a period.
//! * [`Scope::matches`]: whether a budget counts a generation.
//! * [`validate_thresholds`] / [`thresholds_crossed`]: alert thresholds, in
//!   percent of the limit.
//! * [`validate_limit`] / [`is_exhausted`] / [`Enforcement`]: limits and
//!   whether a hard budget blocks new generations.
//!
//! ```
//! use chrono::{DateTime, Utc};
//! use tally_money::Usd;
//! use tally_budget::{parse_timezone, period_containing, thresholds_crossed, PeriodKind};
//!
//! let berlin = parse_timezone("Europe/Berlin").unwrap();
//! let at: DateTime<Utc> = "2024-03-31T12:00:00Z".parse().unwrap();
//! // The day of the spring change lasts 23 hours.
//! let day = period_containing(PeriodKind::Daily, berlin, at);
//! assert_eq!(day.start.to_rfc3339(), "2024-03-30T23:00:00+00:00");
//! assert_eq!(day.end.to_rfc3339(), "2024-03-31T22:00:00+00:00");
//!
//! // A debit from 4.00 to 8.00 of a 10.00 limit crosses 50 % and 80 %.
//! let crossed = thresholds_crossed(&[50, 80, 100], Usd::from(10), Usd::from(4), Usd::from(8));
//! assert_eq!(crossed, vec![50, 80]);
//! ```
//!
//! # Invariants
//!
//! * **Periods tile time.** For every kind and zone, periods are half-open
//!   intervals `[start, end)` with `start < end`; the end of one period is the
//!   start of the next, always, so every instant lies in exactly one period.
//!   `period_containing(k, tz, p.start) == p` and
//!   `period_containing(k, tz, p.end - 1ns) == p`. This is guaranteed for
//!   instants in `[TOTAL_START, TOTAL_END)` (see
//!   [`ensure_supported_instant`]); outside that range the functions still
//!   never panic, but near the limits of `chrono`'s calendar the periods are
//!   clamped.
//! * **Event time decides the period.** Callers pass a generation's
//!   `completed_at`, never the time it was processed: a generation that
//!   arrives after its period closed still counts in that period ([money rule 5](crate#money-rules)). Nothing here reads a clock.
//! * **Exact money.** Limits, spend and threshold levels are compared as exact
//!   decimals; no product or quotient is rounded (see [`thresholds_crossed`]).
//! * **Thresholds fire once per budget period, defined here, enforced by the
//!   store.** [`thresholds_crossed`] says which thresholds one debit moves the
//!   spend across, upward; the store records each `(budget, period,
//!   threshold)` alert at most once (a unique key), so redelivery, replay and
//!   spend that goes down and up again never alert twice.
//!
//! # Money rules
//!
//! This crate owns **money rule 5, event time decides the period**: a
//! generation counts in the budget period that contains its `completed_at`,
//! even if it arrives after that period closed. Every period computation in
//! tally goes through [`period_containing`], so the ledger, the API and
//! replays agree on it.
//!
//! # Decisions
//!
//! * **Half-open periods `[start, end)`.** With an exclusive end, consecutive
//!   periods share one boundary instant and neither overlaps nor leaves a gap,
//!   at any precision: no `23:59:59.999` end that a nanosecond timestamp could
//!   slip past. `period_end` on the wire is the next period's `period_start`.
//! * **Weeks are ISO 8601 weeks, starting Monday 00:00 local time.** One rule
//!   for every organisation, independent of locale (which would make a Sunday
//!   or Saturday start equally arguable), and the rule Postgres'
//!   `date_trunc('week', …)` and `chrono`'s `IsoWeek` use.
//! * **The total period is `1970-01-01T00:00:00Z .. 9999-12-31T00:00:00Z`.**
//!   A `total` budget has one period, but the store keys balances and alerts
//!   by `(budget, period_start)` and the events carry `period_start` /
//!   `period_end`; a finite, fixed period lets every budget use the same
//!   columns and fields without nulls or `infinity`. The end is the last
//!   midnight that every RFC 3339 library and Postgres can represent with a
//!   four-digit year (`10000-01-01` is not).
//! * **Daylight saving time: a period starts at the first instant at which the
//!   local clock shows its first day or later.** Local days are calendar days,
//!   not 24 hours: in Europe/Berlin the spring day lasts 23 h and the autumn
//!   day 25 h. When local midnight does not exist (zones that move the clock
//!   at 00:00, e.g. America/Santiago: `24:00 → 01:00`), the day starts at the
//!   first instant that exists after it (local 01:00). When local midnight
//!   occurs twice, the day starts at the earlier one. A local day that does
//!   not exist at all (Pacific/Apia skipped 2011-12-30) has no period: the
//!   periods before and after it share a boundary, so tiling still holds.
//! * **Thresholds are crossed upward only.** An alert says "spend reached X %
//!   of the limit". A threshold is crossed by a debit that takes the spend from
//!   below its level to at or above it (`before < level <= after`); reaching
//!   the level exactly counts. Spend that goes down (a negative adjustment when
//!   the actual cost turns out lower than the estimate) never alerts, and
//!   going back up may cross again in this pure function, but the store keeps
//!   only the first alert per period. A limit lowered below the spend already
//!   booked does not alert retroactively: the next debit starts above the
//!   level.
//! * **A limit of 0 allows nothing.** Every threshold of a zero budget is
//!   crossed by the first debit that makes the spend positive (from `<= 0` to
//!   `> 0`), since any positive spend is an infinite percentage of zero; spend
//!   of zero crosses nothing (no money, no alert). [`is_exhausted`] is true for
//!   a zero limit even with zero spend, so a hard zero budget blocks every new
//!   generation in its scope: it is the kill switch.
//! * **Hard budgets block at `spent >= limit`.** The limit is the most that may
//!   be spent; once it is reached, the next generation would exceed it. A
//!   generation already running when the limit is reached still books its
//!   full cost: money actually spent is never dropped.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use tally_money::MoneyError;
use tally_money::Usd;

/// Start of the single period of a [`PeriodKind::Total`] budget:
/// `1970-01-01T00:00:00Z`.
pub const TOTAL_START: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// End (exclusive) of the single period of a [`PeriodKind::Total`] budget:
/// `9999-12-31T00:00:00Z`.
pub const TOTAL_END: DateTime<Utc> = match DateTime::from_timestamp(253_402_214_400, 0) {
    Some(t) => t,
    None => panic!("9999-12-31T00:00:00Z is representable"),
};

/// Alert thresholds of a budget created without `thresholds_percent`.
pub const DEFAULT_THRESHOLDS: [u32; 3] = [50, 80, 100];

/// Smallest valid threshold, in percent of the limit.
pub const MIN_THRESHOLD_PERCENT: u32 = 1;

/// Largest valid threshold, in percent of the limit (ten times the limit).
pub const MAX_THRESHOLD_PERCENT: u32 = 1000;

/// Most distinct thresholds a budget may have.
pub const MAX_THRESHOLDS: usize = 10;

/// Longest value a scope field may have, in bytes.
pub const MAX_SCOPE_VALUE_LEN: usize = 256;

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

// ---------------------------------------------------------------------------
// Period kinds and periods
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Scopes
// ---------------------------------------------------------------------------

/// Which generations of its organisation a budget counts. Every field that is
/// set must equal the generation's; an unset field matches anything. The
/// empty scope counts every generation of the organisation.
///
/// Unknown fields are rejected when deserialising: a misspelt field (`"agent"`
/// for `"agent_id"`) would otherwise silently widen the budget to the whole
/// organisation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Only generations of this agent.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Only generations of this session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Only generations for this end user.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Only generations served by this model (as reported, e.g.
    /// `"openai/gpt-4o"`).
    #[serde(default)]
    pub model: Option<String>,
}

/// The facts of one generation that decide which budgets count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenerationFacts<'a> {
    /// The organisation the generation belongs to.
    pub org_id: &'a str,
    /// The agent that requested it, if any.
    pub agent_id: Option<&'a str>,
    /// The session it belongs to, if any.
    pub session_id: Option<&'a str>,
    /// The end user it was made for, if any.
    pub user_id: Option<&'a str>,
    /// The model that actually served it.
    pub model: &'a str,
}

impl Scope {
    /// Whether the scope counts the generation: every set field equals the
    /// generation's (byte for byte); an unset field matches anything, including
    /// a generation without that field. A set field never matches a
    /// generation that lacks it.
    ///
    /// The organisation is not part of the scope: budgets belong to one
    /// organisation and the caller compares it (or uses
    /// [`applies_to`](Scope::applies_to)).
    pub fn matches(&self, g: &GenerationFacts<'_>) -> bool {
        fn field(want: &Option<String>, have: Option<&str>) -> bool {
            match want {
                None => true,
                Some(w) => have == Some(w.as_str()),
            }
        }
        field(&self.agent_id, g.agent_id)
            && field(&self.session_id, g.session_id)
            && field(&self.user_id, g.user_id)
            && field(&self.model, Some(g.model))
    }

    /// Whether a budget of organisation `budget_org_id` with this scope counts
    /// the generation: same organisation and [`matches`](Scope::matches).
    pub fn applies_to(&self, budget_org_id: &str, g: &GenerationFacts<'_>) -> bool {
        budget_org_id == g.org_id && self.matches(g)
    }

    /// Whether every generation `other` matches is also matched by `self`:
    /// each field `self` sets, `other` sets to the same value. Widening a
    /// budget's scope means replacing it by one that is wider-or-equal.
    pub fn is_wider_or_equal(&self, other: &Scope) -> bool {
        fn field(mine: &Option<String>, theirs: &Option<String>) -> bool {
            mine.is_none() || mine == theirs
        }
        field(&self.agent_id, &other.agent_id)
            && field(&self.session_id, &other.session_id)
            && field(&self.user_id, &other.user_id)
            && field(&self.model, &other.model)
    }

    /// Whether no field is set (the budget counts the whole organisation).
    pub fn is_org_wide(&self) -> bool {
        self == &Scope::default()
    }

    /// Checks that each set field is a value a generation can carry: not
    /// empty, at most [`MAX_SCOPE_VALUE_LEN`] bytes, no control characters,
    /// no leading or trailing white space.
    pub fn validate(&self) -> Result<(), BudgetError> {
        let fields = [
            ("agent_id", &self.agent_id),
            ("session_id", &self.session_id),
            ("user_id", &self.user_id),
            ("model", &self.model),
        ];
        for (field, value) in fields {
            let Some(v) = value else { continue };
            let reason = if v.is_empty() {
                "must not be empty (leave it out to match any value)"
            } else if v.len() > MAX_SCOPE_VALUE_LEN {
                "is longer than 256 bytes"
            } else if v.chars().any(char::is_control) {
                "contains control characters"
            } else if v.trim() != v {
                "has leading or trailing white space"
            } else {
                continue;
            };
            return Err(BudgetError::InvalidScope { field, reason });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Enforcement, limits, thresholds
// ---------------------------------------------------------------------------

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
    pub fn blocks(self, limit: Usd, spent: Usd) -> bool {
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

/// Checks a budget limit: a valid cost (`>= 0`; range and precision hold
/// for every [`Usd`], see [`tally_money::ensure_cost`]). Zero is valid: see the crate docs.
pub fn validate_limit(limit: Usd) -> Result<Usd, BudgetError> {
    tally_money::ensure_cost(limit).map_err(BudgetError::InvalidLimit)
}

/// Whether a budget's limit is used up: `spent >= limit`. A new generation is
/// allowed only while `spent < limit`, so hard budgets block from the moment
/// the spend reaches the limit, and a zero limit blocks from the start.
pub fn is_exhausted(limit: Usd, spent: Usd) -> bool {
    spent >= limit
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
/// * A limit of 0 (or below): every threshold is crossed by the step that
///   makes the spend positive (`before <= 0 < after`), since any positive
///   spend is an infinite percentage of zero.
///
/// This function is pure and only compares `before` with `after`: spend that
/// falls below a level and rises again crosses it again here. "Once per
/// period" is the store's job: it records each `(budget, period, threshold)`
/// alert at most once.
pub fn thresholds_crossed(thresholds: &[u32], limit: Usd, before: Usd, after: Usd) -> Vec<u32> {
    let mut crossed: Vec<u32> = if limit <= Usd::ZERO {
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
    fn total_end_is_9999_12_31() {
        assert_eq!(TOTAL_END.to_rfc3339(), "9999-12-31T00:00:00+00:00");
        assert_eq!(TOTAL_START.to_rfc3339(), "1970-01-01T00:00:00+00:00");
    }

    #[test]
    fn thresholds_compare_exactly_past_28_digits() {
        // 333 % of a 28-digit limit needs 31 digits:
        // 332999999.9999999999999999999667.
        let limit: Usd = "99999999.99999999999999999999".parse().unwrap();
        let below: Usd = "332999999.99999999999999999996".parse().unwrap();
        let above: Usd = "332999999.99999999999999999997".parse().unwrap();
        assert_eq!(thresholds_crossed(&[333], limit, below, above), vec![333]);
        assert!(thresholds_crossed(&[333], limit, Usd::ZERO, below).is_empty());
        let equal: Usd = "999999999.9999999999999999999".parse().unwrap();
        assert_eq!(thresholds_crossed(&[1000], limit, below, equal), vec![1000]);
    }

    #[test]
    fn first_instant_reaching_in_utc_is_identity() {
        for local in [-86_400_i64, 0, 1, 1_700_000_000] {
            assert_eq!(first_instant_reaching(Tz::UTC, local), Some(local));
        }
    }
}
