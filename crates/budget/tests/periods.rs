//! Table tests for period boundaries in many zones, including the DST and
//! calendar edge cases the crate docs promise to handle.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use common::{assert_tiles, one_ns, tz};
use tally_budget::{
    ensure_supported_instant, parse_timezone, period_containing, period_starting_at, BudgetError,
    Period, PeriodKind, TOTAL_END, TOTAL_START,
};

use PeriodKind::{Daily, Monthly, Total, Weekly};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad test time {s}: {e}"))
        .with_timezone(&Utc)
}

/// Checks the period against the expectation and the tiling invariants around it.
fn check(zone: &str, kind: PeriodKind, at: &str, start: &str, end: &str) {
    let zone_tz = tz(zone);
    let at = t(at);
    let expected = Period {
        start: t(start),
        end: t(end),
    };
    let got = period_containing(kind, zone_tz, at);
    assert_eq!(got, expected, "{kind} period in {zone} containing {at}");
    assert!(got.contains(at));
    assert_tiles(kind, zone_tz, got);
}

fn duration_of(zone: &str, kind: PeriodKind, at: &str) -> TimeDelta {
    period_containing(kind, tz(zone), t(at)).duration()
}

// ---------------------------------------------------------------------------
// UTC
// ---------------------------------------------------------------------------

#[test]
fn utc_table() {
    #[rustfmt::skip]
    let rows = [
        // kind, at, start, end
        (Daily, "2024-02-29T13:45:12.5Z", "2024-02-29T00:00:00Z", "2024-03-01T00:00:00Z"),
        (Daily, "2024-03-01T00:00:00Z", "2024-03-01T00:00:00Z", "2024-03-02T00:00:00Z"),
        (Daily, "2024-02-29T23:59:59.999999999Z", "2024-02-29T00:00:00Z", "2024-03-01T00:00:00Z"),
        (Daily, "2023-12-31T23:00:00Z", "2023-12-31T00:00:00Z", "2024-01-01T00:00:00Z"),
        (Daily, "1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "1970-01-02T00:00:00Z"),
        // 2024-02-29 is a Thursday: week of Monday 2024-02-26.
        (Weekly, "2024-02-29T13:00:00Z", "2024-02-26T00:00:00Z", "2024-03-04T00:00:00Z"),
        (Weekly, "2024-02-26T00:00:00Z", "2024-02-26T00:00:00Z", "2024-03-04T00:00:00Z"),
        // Sunday belongs to the week that started the Monday before.
        (Weekly, "2024-03-03T23:59:59Z", "2024-02-26T00:00:00Z", "2024-03-04T00:00:00Z"),
        // ISO week 1 of 2025 starts Monday 2024-12-30.
        (Weekly, "2025-01-01T12:00:00Z", "2024-12-30T00:00:00Z", "2025-01-06T00:00:00Z"),
        // 1970-01-01 was a Thursday.
        (Weekly, "1970-01-01T00:00:00Z", "1969-12-29T00:00:00Z", "1970-01-05T00:00:00Z"),
        (Monthly, "2024-02-29T13:00:00Z", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"),
        (Monthly, "2023-02-28T23:59:59Z", "2023-02-01T00:00:00Z", "2023-03-01T00:00:00Z"),
        (Monthly, "2100-02-28T12:00:00Z", "2100-02-01T00:00:00Z", "2100-03-01T00:00:00Z"),
        (Monthly, "2000-02-29T12:00:00Z", "2000-02-01T00:00:00Z", "2000-03-01T00:00:00Z"),
        (Monthly, "2024-12-31T23:59:59Z", "2024-12-01T00:00:00Z", "2025-01-01T00:00:00Z"),
        (Monthly, "2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z"),
        (Monthly, "2024-04-30T12:00:00Z", "2024-04-01T00:00:00Z", "2024-05-01T00:00:00Z"),
        (Monthly, "2024-01-31T12:00:00Z", "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"),
        (Total, "2024-02-29T13:00:00Z", "1970-01-01T00:00:00Z", "9999-12-31T00:00:00Z"),
        (Total, "1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "9999-12-31T00:00:00Z"),
        (Total, "9999-12-30T23:59:59Z", "1970-01-01T00:00:00Z", "9999-12-31T00:00:00Z"),
    ];
    for (kind, at, start, end) in rows {
        check("UTC", kind, at, start, end);
        check("Etc/UTC", kind, at, start, end);
    }
}

#[test]
fn month_lengths_in_utc() {
    #[rustfmt::skip]
    let rows = [
        ("2023-02-10T00:00:00Z", 28),
        ("2024-02-10T00:00:00Z", 29),
        ("2000-02-10T00:00:00Z", 29),
        ("1900-02-10T00:00:00Z", 28),
        ("2100-02-10T00:00:00Z", 28),
        ("2024-04-10T00:00:00Z", 30),
        ("2024-06-10T00:00:00Z", 30),
        ("2024-07-10T00:00:00Z", 31),
        ("2024-08-10T00:00:00Z", 31),
        ("2024-12-10T00:00:00Z", 31),
    ];
    for (at, days) in rows {
        assert_eq!(
            duration_of("UTC", Monthly, at),
            TimeDelta::days(days),
            "{at}"
        );
    }
}

// ---------------------------------------------------------------------------
// Europe/Berlin: CET +1, CEST +2; 2024 DST from 03-31 01:00Z to 10-27 01:00Z
// ---------------------------------------------------------------------------

#[test]
fn berlin_table() {
    #[rustfmt::skip]
    let rows = [
        // Winter day.
        (Daily, "2024-01-15T12:00:00Z", "2024-01-14T23:00:00Z", "2024-01-15T23:00:00Z"),
        // Before local midnight in UTC terms, but already the next local day.
        (Daily, "2024-01-15T23:30:00Z", "2024-01-15T23:00:00Z", "2024-01-16T23:00:00Z"),
        // Spring forward: 2024-03-31 has 23 hours.
        (Daily, "2024-03-31T12:00:00Z", "2024-03-30T23:00:00Z", "2024-03-31T22:00:00Z"),
        (Daily, "2024-03-31T00:59:59Z", "2024-03-30T23:00:00Z", "2024-03-31T22:00:00Z"),
        (Daily, "2024-03-31T01:00:00Z", "2024-03-30T23:00:00Z", "2024-03-31T22:00:00Z"),
        (Daily, "2024-03-31T22:00:00Z", "2024-03-31T22:00:00Z", "2024-04-01T22:00:00Z"),
        // Fall back: 2024-10-27 has 25 hours.
        (Daily, "2024-10-27T00:30:00Z", "2024-10-26T22:00:00Z", "2024-10-27T23:00:00Z"),
        (Daily, "2024-10-27T01:30:00Z", "2024-10-26T22:00:00Z", "2024-10-27T23:00:00Z"),
        (Daily, "2024-10-27T22:59:59Z", "2024-10-26T22:00:00Z", "2024-10-27T23:00:00Z"),
        // Week containing the spring change: Mon 03-25 CET .. Mon 04-01 CEST.
        (Weekly, "2024-03-31T12:00:00Z", "2024-03-24T23:00:00Z", "2024-03-31T22:00:00Z"),
        (Weekly, "2024-10-27T12:00:00Z", "2024-10-20T22:00:00Z", "2024-10-27T23:00:00Z"),
        // Months: March starts in CET and ends in CEST.
        (Monthly, "2024-03-15T12:00:00Z", "2024-02-29T23:00:00Z", "2024-03-31T22:00:00Z"),
        // 2024-02-29T23:30Z is 00:30 on 1 March in Berlin.
        (Monthly, "2024-02-29T23:30:00Z", "2024-02-29T23:00:00Z", "2024-03-31T22:00:00Z"),
        (Monthly, "2024-02-29T22:59:59Z", "2024-01-31T23:00:00Z", "2024-02-29T23:00:00Z"),
        (Monthly, "2024-10-31T23:30:00Z", "2024-10-31T23:00:00Z", "2024-11-30T23:00:00Z"),
        (Monthly, "2024-12-31T23:00:00Z", "2024-12-31T23:00:00Z", "2025-01-31T23:00:00Z"),
        // The total period ignores the zone.
        (Total, "2024-03-31T12:00:00Z", "1970-01-01T00:00:00Z", "9999-12-31T00:00:00Z"),
    ];
    for (kind, at, start, end) in rows {
        check("Europe/Berlin", kind, at, start, end);
    }
    let spring = period_containing(Daily, tz("Europe/Berlin"), t("2024-03-31T12:00:00Z"));
    let autumn = period_containing(Daily, tz("Europe/Berlin"), t("2024-10-27T12:00:00Z"));
    assert_eq!(spring.duration(), TimeDelta::hours(23), "{spring:?}");
    assert_eq!(autumn.duration(), TimeDelta::hours(25), "{autumn:?}");
    assert_eq!(
        duration_of("Europe/Berlin", Weekly, "2024-03-31T12:00:00Z"),
        TimeDelta::hours(7 * 24 - 1)
    );
    assert_eq!(
        duration_of("Europe/Berlin", Weekly, "2024-10-27T12:00:00Z"),
        TimeDelta::hours(7 * 24 + 1)
    );
    assert_eq!(
        duration_of("Europe/Berlin", Monthly, "2024-03-15T12:00:00Z"),
        TimeDelta::hours(31 * 24 - 1)
    );
}

// ---------------------------------------------------------------------------
// America/New_York: EST -5, EDT -4; 2024 DST from 03-10 07:00Z to 11-03 06:00Z
// ---------------------------------------------------------------------------

#[test]
fn new_york_table() {
    #[rustfmt::skip]
    let rows = [
        (Daily, "2024-03-10T12:00:00Z", "2024-03-10T05:00:00Z", "2024-03-11T04:00:00Z"),
        (Daily, "2024-11-03T12:00:00Z", "2024-11-03T04:00:00Z", "2024-11-04T05:00:00Z"),
        // Both 01:30 of 2024-11-03 (EDT, then EST) are in the same day.
        (Daily, "2024-11-03T05:30:00Z", "2024-11-03T04:00:00Z", "2024-11-04T05:00:00Z"),
        (Daily, "2024-11-03T06:30:00Z", "2024-11-03T04:00:00Z", "2024-11-04T05:00:00Z"),
        // 03:00Z on 1 March is still 29 February in New York.
        (Daily, "2024-03-01T03:00:00Z", "2024-02-29T05:00:00Z", "2024-03-01T05:00:00Z"),
        (Monthly, "2024-03-01T03:00:00Z", "2024-02-01T05:00:00Z", "2024-03-01T05:00:00Z"),
        (Monthly, "2024-03-20T00:00:00Z", "2024-03-01T05:00:00Z", "2024-04-01T04:00:00Z"),
        (Monthly, "2024-11-20T00:00:00Z", "2024-11-01T04:00:00Z", "2024-12-01T05:00:00Z"),
        // New Year in New York is 05:00Z.
        (Monthly, "2025-01-01T04:59:59Z", "2024-12-01T05:00:00Z", "2025-01-01T05:00:00Z"),
        (Weekly, "2025-01-01T04:59:59Z", "2024-12-30T05:00:00Z", "2025-01-06T05:00:00Z"),
        // Monday 2024-03-04 EST .. Monday 2024-03-11 EDT.
        (Weekly, "2024-03-10T12:00:00Z", "2024-03-04T05:00:00Z", "2024-03-11T04:00:00Z"),
        // Sunday evening local is still the old week although Monday in UTC.
        (Weekly, "2024-03-11T03:59:59Z", "2024-03-04T05:00:00Z", "2024-03-11T04:00:00Z"),
    ];
    for (kind, at, start, end) in rows {
        check("America/New_York", kind, at, start, end);
    }
    assert_eq!(
        duration_of("America/New_York", Daily, "2024-03-10T12:00:00Z"),
        TimeDelta::hours(23)
    );
    assert_eq!(
        duration_of("America/New_York", Daily, "2024-11-03T12:00:00Z"),
        TimeDelta::hours(25)
    );
}

// ---------------------------------------------------------------------------
// Australia/Lord_Howe: +10:30 standard, +11 summer (a 30-minute shift)
// 2024: summer ends 04-07 02:00 local (→ 01:30), starts 10-06 02:00 (→ 02:30)
// ---------------------------------------------------------------------------

#[test]
fn lord_howe_table() {
    #[rustfmt::skip]
    let rows = [
        (Daily, "2024-04-07T06:00:00Z", "2024-04-06T13:00:00Z", "2024-04-07T13:30:00Z"),
        (Daily, "2024-10-06T06:00:00Z", "2024-10-05T13:30:00Z", "2024-10-06T13:00:00Z"),
        (Daily, "2024-07-01T00:00:00Z", "2024-06-30T13:30:00Z", "2024-07-01T13:30:00Z"),
        (Monthly, "2024-04-15T00:00:00Z", "2024-03-31T13:00:00Z", "2024-04-30T13:30:00Z"),
        (Monthly, "2024-10-15T00:00:00Z", "2024-09-30T13:30:00Z", "2024-10-31T13:00:00Z"),
        // 2024-02-29 is a Thursday; Lord Howe is in summer time (+11).
        (Weekly, "2024-02-29T00:00:00Z", "2024-02-25T13:00:00Z", "2024-03-03T13:00:00Z"),
        (Weekly, "2024-04-07T06:00:00Z", "2024-03-31T13:00:00Z", "2024-04-07T13:30:00Z"),
    ];
    for (kind, at, start, end) in rows {
        check("Australia/Lord_Howe", kind, at, start, end);
    }
    assert_eq!(
        duration_of("Australia/Lord_Howe", Daily, "2024-04-07T06:00:00Z"),
        TimeDelta::minutes(24 * 60 + 30)
    );
    assert_eq!(
        duration_of("Australia/Lord_Howe", Daily, "2024-10-06T06:00:00Z"),
        TimeDelta::minutes(24 * 60 - 30)
    );
}

// ---------------------------------------------------------------------------
// Asia/Kolkata: +5:30 all year
// ---------------------------------------------------------------------------

#[test]
fn kolkata_table() {
    #[rustfmt::skip]
    let rows = [
        (Daily, "2024-06-15T12:00:00Z", "2024-06-14T18:30:00Z", "2024-06-15T18:30:00Z"),
        (Daily, "2024-06-15T18:30:00Z", "2024-06-15T18:30:00Z", "2024-06-16T18:30:00Z"),
        (Daily, "2024-06-15T18:29:59.999999999Z", "2024-06-14T18:30:00Z", "2024-06-15T18:30:00Z"),
        (Weekly, "2024-06-15T12:00:00Z", "2024-06-09T18:30:00Z", "2024-06-16T18:30:00Z"),
        (Monthly, "2024-06-15T12:00:00Z", "2024-05-31T18:30:00Z", "2024-06-30T18:30:00Z"),
        (Monthly, "2024-02-29T18:29:59Z", "2024-01-31T18:30:00Z", "2024-02-29T18:30:00Z"),
        (Monthly, "2024-02-29T18:30:00Z", "2024-02-29T18:30:00Z", "2024-03-31T18:30:00Z"),
        (Monthly, "2024-02-28T18:30:00Z", "2024-01-31T18:30:00Z", "2024-02-29T18:30:00Z"),
    ];
    for (kind, at, start, end) in rows {
        check("Asia/Kolkata", kind, at, start, end);
    }
}

// ---------------------------------------------------------------------------
// Pacific/Apia: 2011-12-29 24:00 at -10 was followed by 2011-12-31 00:00 at
// +14; the local day 2011-12-30 never happened.
// ---------------------------------------------------------------------------

#[test]
fn apia_skipped_day() {
    #[rustfmt::skip]
    let rows = [
        (Daily, "2011-12-29T12:00:00Z", "2011-12-29T10:00:00Z", "2011-12-30T10:00:00Z"),
        (Daily, "2011-12-30T09:59:59.999999999Z", "2011-12-29T10:00:00Z", "2011-12-30T10:00:00Z"),
        // The next period is 31 December: no period for the 30th.
        (Daily, "2011-12-30T10:00:00Z", "2011-12-30T10:00:00Z", "2011-12-31T10:00:00Z"),
        (Daily, "2011-12-30T12:00:00Z", "2011-12-30T10:00:00Z", "2011-12-31T10:00:00Z"),
        // The week of Monday 2011-12-26 lasts six days.
        (Weekly, "2011-12-29T12:00:00Z", "2011-12-26T10:00:00Z", "2012-01-01T10:00:00Z"),
        (Weekly, "2011-12-31T12:00:00Z", "2011-12-26T10:00:00Z", "2012-01-01T10:00:00Z"),
        // December 2011 has 30 days in Apia.
        (Monthly, "2011-12-15T00:00:00Z", "2011-12-01T10:00:00Z", "2011-12-31T10:00:00Z"),
        (Monthly, "2012-01-15T00:00:00Z", "2011-12-31T10:00:00Z", "2012-01-31T10:00:00Z"),
    ];
    for (kind, at, start, end) in rows {
        check("Pacific/Apia", kind, at, start, end);
    }
    let apia = tz("Pacific/Apia");
    let dec29 = period_containing(Daily, apia, t("2011-12-29T12:00:00Z"));
    let dec31 = period_containing(Daily, apia, dec29.end);
    assert_eq!(dec29.end, dec31.start);
    assert_eq!(dec29.duration(), TimeDelta::hours(24));
    assert_eq!(dec31.duration(), TimeDelta::hours(24));
    assert_eq!(
        duration_of("Pacific/Apia", Weekly, "2011-12-29T12:00:00Z"),
        TimeDelta::days(6)
    );
    assert_eq!(
        duration_of("Pacific/Apia", Monthly, "2011-12-15T00:00:00Z"),
        TimeDelta::days(30)
    );
}

// ---------------------------------------------------------------------------
// Zones that move the clock at local midnight.
// ---------------------------------------------------------------------------

/// America/Santiago: summer time starts Saturday 24:00 → Sunday 01:00
/// (2024-09-08T04:00Z), ends Saturday 24:00 → Saturday 23:00
/// (2024-04-07T03:00Z).
#[test]
fn santiago_midnight_changes() {
    #[rustfmt::skip]
    let rows = [
        // Sunday 2024-09-08 00:00 does not exist: the day starts at 01:00 (-3).
        (Daily, "2024-09-08T12:00:00Z", "2024-09-08T04:00:00Z", "2024-09-09T03:00:00Z"),
        (Daily, "2024-09-07T12:00:00Z", "2024-09-07T04:00:00Z", "2024-09-08T04:00:00Z"),
        // Saturday 2024-04-06 repeats 23:00-24:00 and lasts 25 hours.
        (Daily, "2024-04-06T12:00:00Z", "2024-04-06T03:00:00Z", "2024-04-07T04:00:00Z"),
        (Daily, "2024-04-07T03:30:00Z", "2024-04-06T03:00:00Z", "2024-04-07T04:00:00Z"),
        (Daily, "2024-04-07T12:00:00Z", "2024-04-07T04:00:00Z", "2024-04-08T04:00:00Z"),
        // Monthly boundaries are unaffected (1 Sep 00:00 -4 = 04:00Z).
        (Monthly, "2024-09-08T12:00:00Z", "2024-09-01T04:00:00Z", "2024-10-01T03:00:00Z"),
    ];
    for (kind, at, start, end) in rows {
        check("America/Santiago", kind, at, start, end);
    }
    assert_eq!(
        duration_of("America/Santiago", Daily, "2024-09-08T12:00:00Z"),
        TimeDelta::hours(23)
    );
    assert_eq!(
        duration_of("America/Santiago", Daily, "2024-04-06T12:00:00Z"),
        TimeDelta::hours(25)
    );
}

/// America/Havana: summer time starts at 00:00 → 01:00 (midnight skipped,
/// 2024-03-10T05:00Z) and ends at 01:00 → 00:00 (midnight happens twice,
/// 2024-11-03T05:00Z): the day starts at the first instant after the gap and
/// at the earlier of the two midnights.
#[test]
fn havana_missing_and_ambiguous_midnight() {
    #[rustfmt::skip]
    let rows = [
        (Daily, "2024-03-10T12:00:00Z", "2024-03-10T05:00:00Z", "2024-03-11T04:00:00Z"),
        (Daily, "2024-03-10T04:59:59Z", "2024-03-09T05:00:00Z", "2024-03-10T05:00:00Z"),
        // Earliest midnight: 00:00 at -4 = 04:00Z, not 00:00 at -5 = 05:00Z.
        (Daily, "2024-11-03T04:00:00Z", "2024-11-03T04:00:00Z", "2024-11-04T05:00:00Z"),
        (Daily, "2024-11-03T04:30:00Z", "2024-11-03T04:00:00Z", "2024-11-04T05:00:00Z"),
        (Daily, "2024-11-03T05:30:00Z", "2024-11-03T04:00:00Z", "2024-11-04T05:00:00Z"),
        (Daily, "2024-11-03T03:59:59Z", "2024-11-02T04:00:00Z", "2024-11-03T04:00:00Z"),
    ];
    for (kind, at, start, end) in rows {
        check("America/Havana", kind, at, start, end);
    }
    assert_eq!(
        period_starting_at(Daily, tz("America/Havana"), t("2024-11-03T05:00:00Z")),
        Err(BudgetError::NotAPeriodStart {
            kind: Daily,
            timezone: "America/Havana".into(),
            start: t("2024-11-03T05:00:00Z"),
            period_start: t("2024-11-03T04:00:00Z"),
        })
    );
}

/// Asia/Beirut (2019): summer time started at 00:00 → 01:00 and ended at
/// 00:00 → 23:00 the evening before.
#[test]
fn beirut_midnight_changes() {
    #[rustfmt::skip]
    let rows = [
        (Daily, "2019-03-31T12:00:00Z", "2019-03-30T22:00:00Z", "2019-03-31T21:00:00Z"),
        (Daily, "2019-10-26T12:00:00Z", "2019-10-25T21:00:00Z", "2019-10-26T22:00:00Z"),
        (Daily, "2019-10-26T21:30:00Z", "2019-10-25T21:00:00Z", "2019-10-26T22:00:00Z"),
        (Monthly, "2019-03-31T12:00:00Z", "2019-02-28T22:00:00Z", "2019-03-31T21:00:00Z"),
    ];
    for (kind, at, start, end) in rows {
        check("Asia/Beirut", kind, at, start, end);
    }
}

/// America/Sitka in 1867 (transfer of Alaska): the clock went back a whole
/// day, so the local day 1867-10-19 started once and the clock reached it
/// again after showing 18 October a second time. That day's period lasts 48
/// hours and still tiles with its neighbours.
#[test]
fn sitka_repeated_day() {
    #[rustfmt::skip]
    let rows = [
        (Daily, "1867-10-17T12:00:00Z", "1867-10-17T09:01:13Z", "1867-10-18T09:01:13Z"),
        (Daily, "1867-10-18T12:00:00Z", "1867-10-18T09:01:13Z", "1867-10-20T09:01:13Z"),
        // Local 1867-10-18 15:58:47 for the second time: still the 48 h period.
        (Daily, "1867-10-19T01:00:00Z", "1867-10-18T09:01:13Z", "1867-10-20T09:01:13Z"),
        (Daily, "1867-10-20T12:00:00Z", "1867-10-20T09:01:13Z", "1867-10-21T09:01:13Z"),
    ];
    for (kind, at, start, end) in rows {
        check("America/Sitka", kind, at, start, end);
    }
}

// ---------------------------------------------------------------------------
// period_starting_at, parse_timezone, ranges
// ---------------------------------------------------------------------------

#[test]
fn period_starting_at_accepts_only_boundaries() {
    let berlin = tz("Europe/Berlin");
    assert_eq!(
        period_starting_at(Daily, berlin, t("2024-03-30T23:00:00Z")),
        Ok(Period {
            start: t("2024-03-30T23:00:00Z"),
            end: t("2024-03-31T22:00:00Z"),
        })
    );
    // UTC midnight is not Berlin midnight.
    let err = period_starting_at(Daily, berlin, t("2024-03-31T00:00:00Z")).unwrap_err();
    assert_eq!(err.code(), "not_a_period_start");
    assert_eq!(
        err,
        BudgetError::NotAPeriodStart {
            kind: Daily,
            timezone: "Europe/Berlin".into(),
            start: t("2024-03-31T00:00:00Z"),
            period_start: t("2024-03-30T23:00:00Z"),
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("Europe/Berlin") && msg.contains("daily"),
        "{msg}"
    );
    // One nanosecond off is not a start either.
    assert_eq!(
        period_starting_at(Daily, berlin, t("2024-03-30T23:00:00.000000001Z"))
            .unwrap_err()
            .code(),
        "not_a_period_start"
    );
    // Weekly needs a Monday, monthly the 1st.
    assert!(period_starting_at(Weekly, Tz::UTC, t("2024-02-26T00:00:00Z")).is_ok());
    assert_eq!(
        period_starting_at(Weekly, Tz::UTC, t("2024-02-27T00:00:00Z"))
            .unwrap_err()
            .code(),
        "not_a_period_start"
    );
    assert!(period_starting_at(Monthly, Tz::UTC, t("2024-02-01T00:00:00Z")).is_ok());
    assert_eq!(
        period_starting_at(Monthly, Tz::UTC, t("2024-02-02T00:00:00Z"))
            .unwrap_err()
            .code(),
        "not_a_period_start"
    );
    // A skipped local midnight: the first instant after it is the start.
    assert!(period_starting_at(Daily, tz("America/Santiago"), t("2024-09-08T04:00:00Z")).is_ok());
    assert_eq!(
        period_starting_at(Daily, tz("America/Santiago"), t("2024-09-08T03:00:00Z"))
            .unwrap_err()
            .code(),
        "not_a_period_start"
    );
    // Total: only TOTAL_START.
    assert_eq!(
        period_starting_at(Total, berlin, TOTAL_START),
        Ok(Period::TOTAL)
    );
    assert_eq!(
        period_starting_at(Total, berlin, t("2024-01-01T00:00:00Z")).unwrap_err(),
        BudgetError::NotAPeriodStart {
            kind: Total,
            timezone: "Europe/Berlin".into(),
            start: t("2024-01-01T00:00:00Z"),
            period_start: TOTAL_START,
        }
    );
}

#[test]
fn total_period_is_fixed() {
    assert_eq!(TOTAL_START, t("1970-01-01T00:00:00Z"));
    assert_eq!(TOTAL_END, t("9999-12-31T00:00:00Z"));
    assert_eq!(
        Period::TOTAL,
        Period {
            start: TOTAL_START,
            end: TOTAL_END
        }
    );
    for zone in ["UTC", "Europe/Berlin", "Pacific/Apia", "Asia/Kolkata"] {
        for at in [
            "1970-01-01T00:00:00Z",
            "2024-05-05T05:05:05Z",
            "9999-12-30T23:59:59.999999999Z",
        ] {
            assert_eq!(period_containing(Total, tz(zone), t(at)), Period::TOTAL);
        }
        // Outside the supported range the single period is still returned.
        assert_eq!(
            period_containing(Total, tz(zone), DateTime::<Utc>::MIN_UTC),
            Period::TOTAL
        );
        assert_eq!(
            period_containing(Total, tz(zone), DateTime::<Utc>::MAX_UTC),
            Period::TOTAL
        );
    }
}

#[test]
fn parse_timezone_accepts_iana_names_only() {
    for name in [
        "UTC",
        "Etc/UTC",
        "Europe/Berlin",
        "America/Argentina/Buenos_Aires",
        "Asia/Kolkata",
    ] {
        assert_eq!(parse_timezone(name).unwrap().name(), name);
    }
    for name in [
        "",
        "utc ",
        " UTC",
        "Europe/Atlantis",
        "Mars/Olympus_Mons",
        "+01:00",
        "CEST",
    ] {
        let err = parse_timezone(name).unwrap_err();
        assert_eq!(err, BudgetError::UnknownTimezone(name.to_owned()));
        assert_eq!(err.code(), "unknown_timezone");
        assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
    }
}

#[test]
fn supported_instant_range() {
    assert_eq!(ensure_supported_instant(TOTAL_START), Ok(TOTAL_START));
    let last = TOTAL_END - one_ns();
    assert_eq!(ensure_supported_instant(last), Ok(last));
    for bad in [
        TOTAL_END,
        TOTAL_START - one_ns(),
        DateTime::<Utc>::MIN_UTC,
        DateTime::<Utc>::MAX_UTC,
    ] {
        let err = ensure_supported_instant(bad).unwrap_err();
        assert_eq!(err, BudgetError::InstantOutOfRange(bad));
        assert_eq!(err.code(), "instant_out_of_range");
    }
}

/// Absurd instants (far outside the supported range) never panic, in any
/// zone, for any kind.
#[test]
fn extreme_instants_do_not_panic() {
    let extremes = [
        DateTime::<Utc>::MIN_UTC,
        DateTime::<Utc>::MIN_UTC + TimeDelta::days(3),
        DateTime::<Utc>::MAX_UTC,
        DateTime::<Utc>::MAX_UTC - TimeDelta::days(3),
        t("0001-01-01T00:00:00Z"),
        t("9999-12-31T23:59:59Z"),
    ];
    for zone in [
        "UTC",
        "Pacific/Kiritimati",
        "Pacific/Pago_Pago",
        "Asia/Manila",
        "America/Sitka",
    ] {
        for kind in PeriodKind::ALL {
            for at in extremes {
                let p = period_containing(kind, tz(zone), at);
                assert!(p.start <= p.end, "{kind} {zone} {at}: {p:?}");
                let _ = period_starting_at(kind, tz(zone), at);
            }
        }
    }
}

#[test]
fn last_periods_before_total_end() {
    let p = period_containing(Daily, Tz::UTC, t("9999-12-30T12:00:00Z"));
    assert_eq!(p.end, TOTAL_END);
    let p = period_containing(Monthly, tz("Pacific/Kiritimati"), t("9999-12-30T12:00:00Z"));
    assert!(p.contains(t("9999-12-30T12:00:00Z")));
    assert_eq!(
        period_containing(Monthly, tz("Pacific/Kiritimati"), p.end - one_ns()),
        p
    );
}
