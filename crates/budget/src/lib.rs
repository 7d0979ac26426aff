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
//! use tally_money::{cost, Usd};
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
//! let crossed = thresholds_crossed(&[50, 80, 100], cost!("10"), Usd::from(4), Usd::from(8));
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

mod error;
mod limits;
mod period;
mod scope;

pub use error::BudgetError;
pub use limits::{
    is_exhausted, thresholds_crossed, validate_limit, validate_thresholds, Enforcement,
    DEFAULT_THRESHOLDS, MAX_THRESHOLDS, MAX_THRESHOLD_PERCENT, MIN_THRESHOLD_PERCENT,
};
pub use period::{
    ensure_supported_instant, parse_timezone, period_containing, period_starting_at, Period,
    PeriodKind, TOTAL_END, TOTAL_START,
};
pub use scope::{Scope, MAX_SCOPE_VALUE_LEN};
pub use tally_events::Attribution;
