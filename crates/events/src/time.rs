//! Instants as tally reads them: strict RFC 3339, one representation per
//! instant, and the window of event times tally accepts.
//!
//! # Invariants
//!
//! * [`parse_rfc3339`] returns instants with at most microsecond precision
//!   and never a leap-second representation, so the instant Rust computes a
//!   budget period from is the very instant Postgres (`timestamptz`,
//!   microseconds) stores and `/v1/spend` filters on: every surface agrees
//!   on the period of an instant.
//! * Every event time that decides a budget period (`completed_at`) lies in
//!   [`EARLIEST`]`..=now + `[`MAX_AHEAD`]: the periods tally computes and
//!   returns are then always four-digit-year RFC 3339 times.
//!
//! # Decisions
//!
//! * **A leap second is the last microsecond of its minute.**
//!   `23:59:60.5Z` is read as `23:59:59.999999Z`: it still belongs to the
//!   day (and month, and year) whose last minute it extends, as UTC says,
//!   and Postgres, which has no leap seconds, stores exactly that value.
//!   Refusing it would dead-letter real money on the rare day one occurs.
//! * **Sub-microsecond digits are cut, not rounded.** Rounding
//!   `23:59:59.9999999Z` up would move it into the next day (and period);
//!   cutting keeps every instant in the second it was written in.
//! * **The window is [2020-01-01T00:00:00Z, now + 1 day].** No OpenRouter
//!   generation predates 2020; a day ahead absorbs any producer's clock
//!   skew. Times outside are refused (`time_out_of_range`), never clamped:
//!   a clamped time would book money to a period it does not belong to.

use chrono::{DateTime, TimeDelta, Timelike, Utc};

/// The earliest accepted event time, `2020-01-01T00:00:00Z`.
pub const EARLIEST: DateTime<Utc> = match DateTime::from_timestamp(1_577_836_800, 0) {
    Some(t) => t,
    None => panic!("2020-01-01T00:00:00Z is representable"),
};

/// How far ahead of the receiver's clock an event time may be: one day.
pub const MAX_AHEAD: TimeDelta = TimeDelta::days(1);

/// The one representation of an instant: a leap second becomes
/// `:59.999999`, digits below the microsecond are cut.
pub fn normalize(t: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = t.nanosecond();
    let nanos = if nanos >= 1_000_000_000 {
        999_999_000
    } else {
        nanos - nanos % 1_000
    };
    // `with_nanosecond` fails only for values ≥ 2·10⁹; both are below 10⁹.
    t.with_nanosecond(nanos).unwrap_or(t)
}

/// Parses a strict RFC 3339 date-time (a `T` between date and time, an
/// offset) into a normalised UTC instant; the error says why, quoting at
/// most a bounded prefix of `text`.
pub fn parse_rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    // chrono also takes a space between date and time; RFC 3339's
    // `date-time` production (and JSON Schema's `format`) does not.
    let shown = crate::strict::excerpt(text);
    if !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
        return Err(format!(
            "{shown:?} is not an RFC 3339 date-time (expected e.g. \"2025-05-01T12:00:00Z\")"
        ));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| normalize(t.with_timezone(&Utc)))
        .map_err(|e| format!("{shown:?} is not an RFC 3339 date-time: {e}"))
}

/// Whether `t` lies in the accepted window `[EARLIEST, now + MAX_AHEAD]`.
pub fn in_window(t: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    t >= EARLIEST && t <= now + MAX_AHEAD
}

/// Why `t` is outside the window, or `None` when it is inside.
pub fn window_violation(t: DateTime<Utc>, now: DateTime<Utc>) -> Option<String> {
    if t < EARLIEST {
        Some(format!(
            "{} is before the earliest accepted time 2020-01-01T00:00:00Z",
            format(&t)
        ))
    } else if t > now + MAX_AHEAD {
        Some(format!(
            "{} is more than one day ahead of the receiver's clock ({})",
            format(&t),
            format(&now)
        ))
    } else {
        None
    }
}

/// Formats an instant as RFC 3339 in UTC (`2025-05-01T12:00:02.500Z`);
/// for an instant outside years 0..=9999 (never produced by tally's
/// checks, only when describing refused input) chrono's extended form.
pub fn format(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leap_seconds_and_nanoseconds_normalise_within_their_second() {
        let t = parse_rfc3339("2026-12-31T23:59:60Z").unwrap();
        assert_eq!(format(&t), "2026-12-31T23:59:59.999999Z");
        let t = parse_rfc3339("2026-12-31T23:59:60.5Z").unwrap();
        assert_eq!(format(&t), "2026-12-31T23:59:59.999999Z");
        let t = parse_rfc3339("2026-12-31T23:59:59.9999999Z").unwrap();
        assert_eq!(format(&t), "2026-12-31T23:59:59.999999Z");
        let t = parse_rfc3339("2025-05-01T12:00:02.5Z").unwrap();
        assert_eq!(format(&t), "2025-05-01T12:00:02.500Z");
    }

    #[test]
    fn strictness() {
        assert!(parse_rfc3339("2025-05-01 12:00:00Z").is_err());
        assert!(parse_rfc3339("2025-05-01").is_err());
        let long = format!("2025-05-01T12:00:00Z{}", "x".repeat(10_000));
        assert!(parse_rfc3339(&long).unwrap_err().len() < 200);
    }

    #[test]
    fn window() {
        let now = parse_rfc3339("2026-12-01T00:00:00Z").unwrap();
        assert!(in_window(EARLIEST, now));
        assert!(in_window(now + MAX_AHEAD, now));
        assert!(!in_window(
            now + MAX_AHEAD + TimeDelta::microseconds(1),
            now
        ));
        for bad in [
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
            "2019-12-31T23:59:59.999999Z",
            "9999-12-31T23:59:59.999999Z",
        ] {
            let t = parse_rfc3339(bad).unwrap();
            assert!(window_violation(t, now).is_some(), "{bad}");
        }
    }
}
