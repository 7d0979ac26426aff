//! Periods tile time: property tests over random instants and zones, and
//! exhaustive walks checked against an independent oracle built from
//! `chrono`'s own local-time resolution.

mod common;

use chrono::{
    DateTime, Datelike, Days, LocalResult, Months, NaiveDate, NaiveTime, TimeDelta, TimeZone,
    Timelike, Utc, Weekday,
};
use chrono_tz::{GapInfo, Tz};
use common::{assert_tiles, one_ns, tz};
use proptest::prelude::*;
use tally_budget::{
    period_containing, period_starting_at, Period, PeriodKind, TOTAL_END, TOTAL_START,
};

/// Zones with every kind of oddity: none, DST at 01:00/02:00/03:00, DST at
/// local midnight (skipped and repeated midnights), 30- and 45-minute
/// offsets, 30-minute DST, 2-hour DST, skipped whole days, +14 and -11.
const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/St_Johns",
    "America/Santiago",
    "America/Havana",
    "America/Sao_Paulo",
    "America/Nuuk",
    "Asia/Beirut",
    "Asia/Gaza",
    "Asia/Tehran",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Africa/Casablanca",
    "Antarctica/Troll",
    "Australia/Lord_Howe",
    "Australia/Adelaide",
    "Pacific/Apia",
    "Pacific/Kwajalein",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
];

const KINDS: [PeriodKind; 3] = [PeriodKind::Daily, PeriodKind::Weekly, PeriodKind::Monthly];

fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

/// Independent definition of "the instant local date `d` begins": chrono's
/// resolution of local midnight, taking the earlier of two midnights and the
/// end of the gap for a midnight that does not exist.
fn oracle_start(zone: Tz, d: NaiveDate) -> DateTime<Utc> {
    let local = d.and_time(NaiveTime::MIN);
    match zone.from_local_datetime(&local) {
        LocalResult::Single(x) => x.with_timezone(&Utc),
        LocalResult::Ambiguous(a, b) => a.with_timezone(&Utc).min(b.with_timezone(&Utc)),
        LocalResult::None => GapInfo::new(&local, &zone)
            .and_then(|gap| gap.end)
            .unwrap_or_else(|| panic!("{zone}: no end of the gap at {local}"))
            .with_timezone(&Utc),
    }
}

fn first_day(kind: PeriodKind, d: NaiveDate) -> NaiveDate {
    match kind {
        PeriodKind::Daily => d,
        PeriodKind::Weekly => d - Days::new(u64::from(d.weekday().num_days_from_monday())),
        PeriodKind::Monthly => d.with_day(1).unwrap(),
        PeriodKind::Total => unreachable!(),
    }
}

fn next_first_day(kind: PeriodKind, d: NaiveDate) -> NaiveDate {
    match kind {
        PeriodKind::Daily => d + Days::new(1),
        PeriodKind::Weekly => d + Days::new(7),
        PeriodKind::Monthly => d + Months::new(1),
        PeriodKind::Total => unreachable!(),
    }
}

/// The invariants every period must satisfy, plus its shape in local time.
fn assert_period(kind: PeriodKind, zone: Tz, p: Period) {
    assert!(p.start < p.end, "{kind} {zone}: empty period {p:?}");
    if kind == PeriodKind::Total {
        assert_eq!(p, Period::TOTAL);
        assert_eq!(period_starting_at(kind, zone, p.start), Ok(p));
        return;
    }
    assert_tiles(kind, zone, p);
    let local = p.start.with_timezone(&zone);
    // Local midnight, or the first instant after a skipped midnight.
    assert!(
        local.hour() < 3,
        "{kind} {zone}: {p:?} starts at local {local}"
    );
    let (min, max) = match kind {
        PeriodKind::Daily => (TimeDelta::hours(20), TimeDelta::hours(28)),
        PeriodKind::Weekly => (TimeDelta::days(6), TimeDelta::days(7) + TimeDelta::hours(3)),
        PeriodKind::Monthly => (TimeDelta::days(27), TimeDelta::days(32)),
        PeriodKind::Total => unreachable!(),
    };
    assert!(
        (min..=max).contains(&p.duration()),
        "{kind} {zone}: {p:?} lasts {}",
        p.duration()
    );
    match kind {
        PeriodKind::Weekly => assert_eq!(local.weekday(), Weekday::Mon, "{zone}: {p:?}"),
        PeriodKind::Monthly => assert_eq!(local.day(), 1, "{zone}: {p:?}"),
        _ => {}
    }
    // Agrees with the oracle.
    let d = local.date_naive();
    assert_eq!(
        p.start,
        oracle_start(zone, first_day(kind, d)),
        "{kind} {zone}: start of {p:?}"
    );
}

fn instant_1990_2100() -> impl Strategy<Value = DateTime<Utc>> {
    let lo = ymd(1990, 1, 1)
        .and_time(NaiveTime::MIN)
        .and_utc()
        .timestamp();
    let hi = ymd(2100, 1, 1)
        .and_time(NaiveTime::MIN)
        .and_utc()
        .timestamp();
    (lo..hi, 0u32..1_000_000_000).prop_map(|(s, ns)| DateTime::from_timestamp(s, ns).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn periods_tile(
        at in instant_1990_2100(),
        zone in proptest::sample::select(ZONES),
        kind in proptest::sample::select(PeriodKind::ALL.to_vec()),
    ) {
        let zone = tz(zone);
        let p = period_containing(kind, zone, at);
        prop_assert!(p.contains(at), "{} {}: {:?} does not contain {}", kind, zone, p, at);
        assert_period(kind, zone, p);
        // The next period starts where this one ends and is itself valid.
        if kind != PeriodKind::Total {
            let next = period_containing(kind, zone, p.end);
            prop_assert_eq!(next.start, p.end);
            prop_assert_ne!(next, p);
            assert_period(kind, zone, next);
        }
    }

    /// Any instant is either a period start (and then its period starts
    /// there) or not (and then the error names the containing period's start).
    #[test]
    fn starting_at_agrees_with_containing(
        at in instant_1990_2100(),
        zone in proptest::sample::select(ZONES),
        kind in proptest::sample::select(PeriodKind::ALL.to_vec()),
    ) {
        let zone = tz(zone);
        let p = period_containing(kind, zone, at);
        match period_starting_at(kind, zone, at) {
            Ok(q) => { prop_assert_eq!(q, p); prop_assert_eq!(p.start, at); }
            Err(tally_budget::BudgetError::NotAPeriodStart { period_start, start, .. }) => {
                prop_assert_eq!(period_start, p.start);
                prop_assert_eq!(start, at);
                prop_assert_ne!(p.start, at);
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    /// Instants anywhere in chrono's range never panic.
    #[test]
    fn any_instant_is_safe(
        secs in DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp(),
        zone in proptest::sample::select(ZONES),
        kind in proptest::sample::select(PeriodKind::ALL.to_vec()),
    ) {
        let at = DateTime::from_timestamp(secs, 0).unwrap();
        let p = period_containing(kind, tz(zone), at);
        prop_assert!(p.start <= p.end);
        if (TOTAL_START..TOTAL_END).contains(&at) {
            prop_assert!(p.contains(at));
        }
    }
}

/// Walks every period of every kind from 1970 to 2100 in the tricky zones,
/// checking each one and that consecutive periods share their boundary.
#[test]
fn walk_all_periods_1970_2100() {
    let until = ymd(2100, 1, 1).and_time(NaiveTime::MIN).and_utc();
    for &name in ZONES {
        let zone = tz(name);
        for kind in KINDS {
            let mut p = period_containing(kind, zone, TOTAL_START);
            assert!(p.contains(TOTAL_START));
            let mut count = 0u32;
            while p.start < until {
                assert_period(kind, zone, p);
                let next = period_containing(kind, zone, p.end);
                assert_eq!(next.start, p.end, "{kind} {name}");
                p = next;
                count += 1;
            }
            assert!(count > 0);
        }
    }
}

/// Every local day from 1970 to 2100 in the tricky zones: its period is
/// exactly [oracle(day), oracle(next non-skipped day)).
#[test]
fn every_local_day_matches_the_oracle() {
    for &name in ZONES {
        let zone = tz(name);
        let mut d = ymd(1970, 1, 1);
        let mut start = oracle_start(zone, d);
        while d < ymd(2100, 1, 1) {
            let next_day = d + Days::new(1);
            let next_start = oracle_start(zone, next_day);
            assert!(start <= next_start, "{name}: {d} starts after {next_day}");
            if start < next_start {
                let expected = Period {
                    start,
                    end: next_start,
                };
                assert_eq!(
                    period_containing(PeriodKind::Daily, zone, start),
                    expected,
                    "{name} {d}"
                );
                assert_eq!(
                    period_containing(PeriodKind::Daily, zone, next_start - one_ns()),
                    expected,
                    "{name} {d}"
                );
            } else {
                // A skipped day: its instant belongs to the next day's period.
                assert_eq!(
                    period_containing(PeriodKind::Daily, zone, start).start,
                    start
                );
            }
            d = next_day;
            start = next_start;
        }
    }
}

/// Every zone in the database: each month and each ISO week from 1970 to
/// 2100 is exactly [oracle(first day), oracle(next first day)), and days
/// whose length is not 24 h (the days of offset changes) match the oracle
/// too.
#[test]
fn every_zone_months_weeks_and_irregular_days_match_the_oracle() {
    for zone in chrono_tz::TZ_VARIANTS {
        for kind in [PeriodKind::Weekly, PeriodKind::Monthly] {
            let mut d = first_day(kind, ymd(1970, 1, 1));
            let mut start = oracle_start(zone, d);
            while d < ymd(2100, 1, 1) {
                let next = next_first_day(kind, d);
                let end = oracle_start(zone, next);
                assert!(start < end, "{kind} {zone}: {d}");
                let expected = Period { start, end };
                assert_eq!(
                    period_containing(kind, zone, start),
                    expected,
                    "{kind} {zone} {d}"
                );
                assert_eq!(
                    period_containing(kind, zone, end - one_ns()),
                    expected,
                    "{kind} {zone} {d}"
                );
                d = next;
                start = end;
            }
        }
        let mut d = ymd(1970, 1, 1);
        let mut start = oracle_start(zone, d);
        while d < ymd(2100, 1, 1) {
            let next_day = d + Days::new(1);
            let next_start = oracle_start(zone, next_day);
            assert!(start <= next_start, "{zone}: {d}");
            if next_start - start != TimeDelta::hours(24) {
                let p = period_containing(PeriodKind::Daily, zone, next_start - one_ns());
                if start < next_start {
                    assert_eq!(
                        p,
                        Period {
                            start,
                            end: next_start
                        },
                        "{zone} {d}"
                    );
                } else {
                    assert_eq!(p.end, next_start, "{zone} {d} (skipped)");
                }
                assert_eq!(
                    period_containing(PeriodKind::Daily, zone, next_start).start,
                    next_start
                );
            }
            d = next_day;
            start = next_start;
        }
    }
}
