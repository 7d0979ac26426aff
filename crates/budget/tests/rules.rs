//! Thresholds, limits, enforcement, scopes, names and error codes.

use std::collections::BTreeMap;
use std::str::FromStr;

use proptest::prelude::*;
use serde::de::value::{Error as DeError, MapDeserializer, StrDeserializer};
use serde::de::IntoDeserializer;
use serde::Deserialize;
use tally_budget::{
    is_exhausted, thresholds_crossed, validate_limit, validate_thresholds, Attribution,
    BudgetError, Enforcement, PeriodKind, Scope, DEFAULT_THRESHOLDS, MAX_THRESHOLDS,
};
use tally_money::MoneyError;
use tally_money::{Cost, Usd};

use tally_money::{cost, usd};

// ---------------------------------------------------------------------------
// Thresholds
// ---------------------------------------------------------------------------

#[test]
fn validate_thresholds_sorts_dedups_and_bounds() {
    assert_eq!(
        validate_thresholds(&DEFAULT_THRESHOLDS),
        Ok(vec![50, 80, 100])
    );
    assert_eq!(
        validate_thresholds(&[100, 50, 80, 50]),
        Ok(vec![50, 80, 100])
    );
    assert_eq!(validate_thresholds(&[1, 1000]), Ok(vec![1, 1000]));
    assert_eq!(validate_thresholds(&[]), Ok(vec![]));
    assert_eq!(validate_thresholds(&[150, 120]), Ok(vec![120, 150]));
    for bad in [0, 1001, u32::MAX] {
        let err = validate_thresholds(&[50, bad]).unwrap_err();
        assert_eq!(err, BudgetError::InvalidThreshold { value: bad });
        assert_eq!(err.code(), "invalid_threshold");
        assert!(err.to_string().contains(&bad.to_string()), "{err}");
    }
    let ten: Vec<u32> = (1..=10).map(|i| i * 10).collect();
    assert_eq!(ten.len(), MAX_THRESHOLDS);
    assert_eq!(validate_thresholds(&ten), Ok(ten.clone()));
    let eleven: Vec<u32> = (1..=11).map(|i| i * 10).collect();
    let err = validate_thresholds(&eleven).unwrap_err();
    assert_eq!(err, BudgetError::TooManyThresholds { count: 11 });
    assert_eq!(err.code(), "too_many_thresholds");
    // Duplicates do not count against the maximum.
    let mut dup = ten.clone();
    dup.extend_from_slice(&ten);
    assert_eq!(validate_thresholds(&dup), Ok(ten));
}

#[test]
fn thresholds_crossed_table() {
    let t = [50, 80, 100];
    #[rustfmt::skip]
    let rows: &[(&str, &str, &str, &[u32])] = &[
        // limit, before, after, crossed
        ("10", "0", "4.99", &[]),
        ("10", "0", "5", &[50]), // reaching the level exactly counts
        ("10", "4.999999", "5.000001", &[50]),
        ("10", "5", "7", &[]), // already at 50 %: not crossed again
        ("10", "5", "8", &[80]),
        ("10", "0", "10", &[50, 80, 100]), // several at once
        ("10", "0", "1000", &[50, 80, 100]),
        ("10", "9.99", "10", &[100]),
        ("10", "10", "11", &[]),
        ("10", "4", "4", &[]),    // no movement
        ("10", "9", "3", &[]),    // going down never crosses
        ("10", "11", "0", &[]),   // not even from above the limit
        ("10", "-1", "5", &[50]), // spend below zero (after an adjustment)
        ("0.000001", "0", "0.0000005", &[50]),
        ("0.000001", "0", "0.00000079999999999999", &[50]),
        ("0.000001", "0", "0.00000099999999999999", &[50, 80]),
        ("0.000001", "0", "0.000001", &[50, 80, 100]),
        // Exactly at the boundary with many fractional digits.
        ("0.00000000000000000003", "0", "0.000000000000000000015", &[50]),
        ("0.00000000000000000003", "0", "0.000000000000000000024", &[50, 80]),
        ("0.00000000000000000003", "0", "0.000000000000000000023", &[50]),
        // Large limits with full precision: no rounding.
        ("99999999.99999999999999999999", "0", "49999999.999999999999999999995", &[50]),
        ("99999999.99999999999999999999", "0", "49999999.99999999999999999999", &[]),
        // 80 % is 79999999.999999999999999999992 (29 digits).
        ("99999999.99999999999999999999", "0", "79999999.99999999999999999999", &[50]),
        ("99999999.99999999999999999999", "79999999.99999999999999999999", "80000000", &[80]),
        ("99999999.99999999999999999999", "0", "99999999.99999999999999999999", &[50, 80, 100]),
        ("99999999.99999999999999999999", "0", "99999999.9999999999999999999", &[50, 80]),
        // Trailing zeros do not matter.
        ("10.000", "0.00", "5.0000", &[50]),
    ];
    for &(limit, before, after, expected) in rows {
        assert_eq!(
            thresholds_crossed(&t, cost!(limit), usd!(before), usd!(after)),
            expected.to_vec(),
            "limit {limit}, {before} -> {after}"
        );
    }
}

/// Thresholds, limit, spent before, spent after, and the thresholds crossed.
type Crossing<'a> = (&'a [u32], Cost, Usd, Usd, &'a [u32]);

/// Asserts each crossing.
fn assert_crossings(rows: &[Crossing<'_>]) {
    for &(thresholds, limit, before, after, crossed) in rows {
        assert_eq!(
            thresholds_crossed(thresholds, limit, before, after),
            crossed,
            "{thresholds:?} of {limit}, {before} -> {after}"
        );
    }
}

#[test]
fn thresholds_crossed_above_100_percent() {
    let t: &[u32] = &[100, 150, 1000];
    let limit = cost!("99999999.99999999999999999999");
    assert_crossings(&[
        (t, cost!("2"), usd!("1"), usd!("3"), &[100, 150]),
        (t, cost!("2"), usd!("3"), usd!("20"), &[1000]),
        (t, cost!("2"), usd!("3"), usd!("19.99"), &[]),
        // 1000 % of the largest limit lies beyond every amount: never reached.
        (&[1000], Cost::MAX, usd!("0"), Usd::MAX, &[]),
        (&[100], Cost::MAX, usd!("0"), Usd::MAX, &[100]),
        // 1000 % of `limit` is 999999999.9999999999999999999 exactly.
        (
            &[1000],
            limit,
            usd!("0"),
            usd!("999999999.9999999999999999999"),
            &[1000],
        ),
        (
            &[1000],
            limit,
            usd!("0"),
            usd!("999999999.9999999999999999998"),
            &[],
        ),
        // 333 % of it is 332999999.9999999999999999999667: 31 digits, more
        // than a Usd holds; the comparison is still exact.
        (
            &[333],
            limit,
            usd!("0"),
            usd!("332999999.99999999999999999997"),
            &[333],
        ),
        (
            &[333],
            limit,
            usd!("0"),
            usd!("332999999.99999999999999999996"),
            &[],
        ),
        (
            &[333],
            limit,
            usd!("332999999.99999999999999999996"),
            usd!("333000000"),
            &[333],
        ),
    ]);
}

#[test]
fn thresholds_crossed_output_is_sorted_and_unique() {
    assert_crossings(&[
        (
            &[100, 50, 80, 50],
            cost!("10"),
            usd!("0"),
            usd!("10"),
            &[50, 80, 100],
        ),
        (&[], cost!("10"), usd!("0"), usd!("10"), &[]),
    ]);
}

/// The function is pure: spend that falls below a level and rises again
/// crosses it again here; the store keeps one alert per (budget, period,
/// threshold).
#[test]
fn down_and_up_crosses_again_in_the_pure_function() {
    let t: &[u32] = &DEFAULT_THRESHOLDS;
    assert_crossings(&[
        (t, cost!("10"), usd!("4"), usd!("6"), &[50]),
        (t, cost!("10"), usd!("6"), usd!("4"), &[]),
        (t, cost!("10"), usd!("4"), usd!("6"), &[50]),
    ]);
}

#[test]
fn zero_limit_crosses_everything_on_first_positive_spend() {
    let t: &[u32] = &DEFAULT_THRESHOLDS;
    let all: &[u32] = &[50, 80, 100];
    let zero = cost!("0");
    assert_crossings(&[
        (t, zero, usd!("0"), usd!("0.00000000000000000001"), all),
        (t, zero, usd!("0"), usd!("5"), all),
        (t, zero, usd!("-1"), usd!("1"), all),
        (t, zero, usd!("0"), usd!("0"), &[]),
        (t, zero, usd!("-1"), usd!("0"), &[]),
        // Already positive: crossed before, not again.
        (t, zero, usd!("1"), usd!("2"), &[]),
        (t, zero, usd!("2"), usd!("0"), &[]),
        (t, cost!("0.000"), usd!("0"), usd!("1"), all),
    ]);
}

proptest! {
    /// Crossing is additive: going a -> b -> c crosses exactly what a -> c
    /// crosses when a <= b <= c; and nothing is crossed going down.
    #[test]
    fn crossing_is_additive_and_upward_only(
        limit in 0i64..1_000_000_000,
        scale in 2u32..12,
        mut xs in proptest::collection::vec(-1_000_000_000i64..3_000_000_000, 3),
        thresholds in proptest::collection::vec(1u32..=1000, 0..10),
    ) {
        xs.sort_unstable();
        let limit = Cost::new(Usd::new(limit, scale)).unwrap();
        let [a, b, c] = [xs[0], xs[1], xs[2]].map(|x| Usd::new(x, scale));
        let ab = thresholds_crossed(&thresholds, limit, a, b);
        let bc = thresholds_crossed(&thresholds, limit, b, c);
        let ac = thresholds_crossed(&thresholds, limit, a, c);
        let mut joined = ab.clone();
        joined.extend(&bc);
        joined.sort_unstable();
        prop_assert_eq!(&joined, &ac, "a->b and b->c cross each threshold at most once in total");
        prop_assert!(thresholds_crossed(&thresholds, limit, c, a).is_empty());
        // Agrees with the plain definition `a < limit × pct / 100 <= c`,
        // computed in integer units (these magnitudes fit an i128).
        for &pct in &thresholds {
            let crossed = ac.contains(&pct);
            let expected = if limit.is_zero() {
                a <= Usd::ZERO && c > Usd::ZERO
            } else {
                let level = limit.usd().units() * i128::from(pct);
                a.units() * 100 < level && level <= c.units() * 100
            };
            prop_assert_eq!(crossed, expected, "pct {} limit {} {} -> {}", pct, limit, a, c);
        }
    }
}

// ---------------------------------------------------------------------------
// Limits and exhaustion
// ---------------------------------------------------------------------------

#[test]
fn validate_limit_accepts_costs_only() {
    assert_eq!(validate_limit(usd!("0")), Ok(Cost::ZERO));
    assert_eq!(validate_limit(usd!("10.50")), Ok(cost!("10.5")));
    assert_eq!(validate_limit(usd!("10.50")).unwrap().to_string(), "10.5");
    assert_eq!(
        validate_limit(usd!("99999999.99999999999999999999")),
        Ok(cost!("99999999.99999999999999999999"))
    );
    // Range and precision are the parser's (every `Usd` holds them); the
    // sign is the limit's own rule.
    for (limit, money_code) in [
        ("10000000001", "amount_out_of_range"),
        ("0.00000000000000000000000000001", "amount_too_precise"),
    ] {
        assert_eq!(
            tally_money::parse_cost_str(limit).unwrap_err().code(),
            money_code
        );
    }
    let cases = [("-0.01", "negative_amount")];
    for (limit, money_code) in cases {
        let err = validate_limit(usd!(limit)).unwrap_err();
        assert_eq!(err.code(), "invalid_limit", "{limit}");
        match &err {
            BudgetError::InvalidLimit(m) => assert_eq!(m.code(), money_code),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().starts_with("invalid limit: "), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }
    assert!(matches!(
        validate_limit(usd!("-1")),
        Err(BudgetError::InvalidLimit(MoneyError::Negative(_)))
    ));
}

#[test]
fn exhaustion_and_enforcement() {
    #[rustfmt::skip]
    let rows = [
        // limit, spent, exhausted
        ("10", "0", false),
        ("10", "9.99999999999999999999", false),
        ("10", "10", true),
        ("10", "10.00", true),
        ("10", "10.00000000000000000001", true),
        ("10", "-5", false),
        ("0", "0", true), // a zero budget blocks from the start
        ("0", "0.01", true),
        ("0.00000000000000000001", "0", false),
    ];
    for (limit, spent, exhausted) in rows {
        assert_eq!(
            is_exhausted(cost!(limit), usd!(spent)),
            exhausted,
            "{limit} / {spent}"
        );
        assert_eq!(
            Enforcement::Hard.blocks(cost!(limit), usd!(spent)),
            exhausted
        );
        assert!(!Enforcement::Soft.blocks(cost!(limit), usd!(spent)));
    }
}

// ---------------------------------------------------------------------------
// Scopes
// ---------------------------------------------------------------------------

fn scope(
    agent: Option<&str>,
    session: Option<&str>,
    user: Option<&str>,
    model: Option<&str>,
) -> Scope {
    Scope {
        agent_id: agent.map(str::to_owned),
        session_id: session.map(str::to_owned),
        user_id: user.map(str::to_owned),
        model: model.map(str::to_owned),
    }
}

fn attribution(
    agent: Option<&str>,
    session: Option<&str>,
    user: Option<&str>,
    model: &str,
) -> Attribution {
    Attribution {
        org_id: "org-1".into(),
        agent_id: agent.map(str::to_owned),
        session_id: session.map(str::to_owned),
        user_id: user.map(str::to_owned),
        model: model.into(),
    }
}

#[test]
fn scope_matching_table() {
    #[rustfmt::skip]
    let rows = [
        // scope, matches g, matches g_bare
        (scope(None, None, None, None), true, true),
        (scope(Some("agent-a"), None, None, None), true, false),
        (scope(Some("agent-b"), None, None, None), false, false),
        (scope(None, Some("sess-1"), None, None), true, false),
        (scope(None, Some("sess-2"), None, None), false, false),
        (scope(None, None, Some("user-9"), None), true, false),
        (scope(None, None, Some("USER-9"), None), false, false), // case matters
        (scope(None, None, None, Some("openai/gpt-4o")), true, false),
        (scope(None, None, None, Some("anthropic/claude-sonnet-4")), false, true),
        (scope(None, None, None, Some("openai/gpt-4")), false, false), // no prefix match
        (scope( Some("agent-a"), Some("sess-1"), Some("user-9"), Some("openai/gpt-4o")),
            true,
            false,
        ),
        (scope( Some("agent-a"), Some("sess-1"), Some("user-9"), Some("openai/gpt-4o-mini")),
            false,
            false,
        ),
        (scope(Some("agent-a"), None, Some("user-8"), None), false, false),
        (scope(Some("agent-a"), None, None, Some("openai/gpt-4o")), true, false),
        (scope(Some(""), None, None, None), false, false), // "" is not "unset"
    ];
    let g = attribution(
        Some("agent-a"),
        Some("sess-1"),
        Some("user-9"),
        "openai/gpt-4o",
    );
    let g_bare = attribution(None, None, None, "anthropic/claude-sonnet-4");
    for (s, m, m_bare) in rows {
        assert_eq!(s.matches(&g), m, "{s:?} vs g");
        assert_eq!(s.matches(&g_bare), m_bare, "{s:?} vs g_bare");
        // The organisation is checked by applies_to, not by matches.
        assert_eq!(s.applies_to("org-1", &g), m);
        assert!(!s.applies_to("org-2", &g));
        assert!(!s.applies_to("org-1 ", &g));
        // A hold counts where any of its models would: served_by decides
        // by the model given, not the attribution's own.
        assert_eq!(
            s.matches_served_by(&g_bare, "openai/gpt-4o"),
            s.matches(&attribution(None, None, None, "openai/gpt-4o"))
        );
    }
}

#[test]
fn scope_width() {
    let all = scope(None, None, None, None);
    let agent = scope(Some("a"), None, None, None);
    let agent_model = scope(Some("a"), None, None, Some("m"));
    let other_agent = scope(Some("b"), None, None, None);
    let model = scope(None, None, None, Some("m"));
    assert!(all.is_org_wide() && !agent.is_org_wide());
    assert!(all.is_wider_or_equal(&agent));
    assert!(all.is_wider_or_equal(&all));
    assert!(agent.is_wider_or_equal(&agent));
    assert!(agent.is_wider_or_equal(&agent_model));
    assert!(model.is_wider_or_equal(&agent_model));
    assert!(!agent_model.is_wider_or_equal(&agent));
    assert!(!agent.is_wider_or_equal(&all));
    assert!(!agent.is_wider_or_equal(&other_agent));
    assert!(!agent.is_wider_or_equal(&model));
}

proptest! {
    /// If `wide` is wider-or-equal to `narrow`, every generation `narrow`
    /// matches, `wide` matches too.
    #[test]
    fn wider_scopes_match_supersets(
        w in proptest::collection::vec(proptest::option::of(0u8..3), 4),
        n in proptest::collection::vec(proptest::option::of(0u8..3), 4),
        g in proptest::collection::vec(proptest::option::of(0u8..3), 4),
    ) {
        let name = |v: Option<u8>| v.map(|x| format!("v{x}"));
        let wide = Scope { agent_id: name(w[0]), session_id: name(w[1]), user_id: name(w[2]), model: name(w[3]) };
        let narrow = Scope { agent_id: name(n[0]), session_id: name(n[1]), user_id: name(n[2]), model: name(n[3]) };
        let gv: Vec<Option<String>> = g.iter().map(|&v| name(v)).collect();
        let model = gv[3].clone().unwrap_or_else(|| "v0".into());
        let facts = Attribution {
            org_id: "o".into(),
            agent_id: gv[0].clone(),
            session_id: gv[1].clone(),
            user_id: gv[2].clone(),
            model,
        };
        if wide.is_wider_or_equal(&narrow) && narrow.matches(&facts) {
            prop_assert!(wide.matches(&facts));
        }
        prop_assert!(Scope::default().matches(&facts));
        prop_assert!(Scope::default().is_wider_or_equal(&narrow));
    }
}

#[test]
fn scope_validation() {
    assert_eq!(Scope::default().validate(), Ok(()));
    assert_eq!(
        scope(Some("agent-a"), Some("s"), Some("u"), Some("openai/gpt-4o")).validate(),
        Ok(())
    );
    let long = "x".repeat(257);
    let ok_long = "x".repeat(256);
    assert_eq!(scope(Some(&ok_long), None, None, None).validate(), Ok(()));
    // Characters, not bytes: 256 two-byte characters fit, 257 do not.
    let ok_wide = "é".repeat(256);
    assert_eq!(scope(None, Some(&ok_wide), None, None).validate(), Ok(()));
    let wide = "é".repeat(257);
    assert_eq!(
        scope(None, Some(&wide), None, None)
            .validate()
            .unwrap_err()
            .code(),
        "invalid_scope"
    );
    let cases = [
        (scope(Some(""), None, None, None), "agent_id"),
        (scope(None, Some(&long), None, None), "session_id"),
        (scope(None, None, Some("a\nb"), None), "user_id"),
        (scope(None, None, None, Some(" openai/gpt-4o")), "model"),
        (scope(None, None, None, Some("openai/gpt-4o\t")), "model"),
    ];
    for (s, field) in cases {
        let err = s.validate().unwrap_err();
        assert_eq!(err.code(), "invalid_scope");
        match err {
            BudgetError::InvalidScope { field: f, .. } => assert_eq!(f, field),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn scope_fields_default_and_unknown_fields_are_rejected() {
    fn from_map(entries: &[(&'static str, &'static str)]) -> Result<Scope, DeError> {
        let map: BTreeMap<&str, &str> = entries.iter().copied().collect();
        Scope::deserialize(MapDeserializer::<_, DeError>::new(map.into_iter()))
    }
    // Every field may be left out.
    assert_eq!(from_map(&[]).unwrap(), Scope::default());
    let err = from_map(&[("agent", "a")]).unwrap_err();
    assert!(err.to_string().contains("agent"), "{err}");
}

// ---------------------------------------------------------------------------
// Names and codes
// ---------------------------------------------------------------------------

fn de_str<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, DeError> {
    T::deserialize(IntoDeserializer::<DeError>::into_deserializer(s) as StrDeserializer<'_, DeError>)
}

#[test]
fn period_kind_names() {
    let names = ["total", "daily", "weekly", "monthly"];
    for (kind, name) in PeriodKind::ALL.into_iter().zip(names) {
        assert_eq!(kind.as_str(), name);
        assert_eq!(kind.to_string(), name);
        assert_eq!(PeriodKind::from_str(name), Ok(kind));
        assert_eq!(de_str::<PeriodKind>(name).unwrap(), kind);
    }
    for bad in ["", "Daily", "DAILY", " daily", "day", "yearly", "hourly"] {
        let err = PeriodKind::from_str(bad).unwrap_err();
        assert_eq!(err, BudgetError::InvalidPeriodKind(bad.to_owned()));
        assert_eq!(err.code(), "invalid_period_kind");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        assert!(de_str::<PeriodKind>(bad).is_err());
    }
}

#[test]
fn enforcement_names() {
    for (e, name) in [(Enforcement::Hard, "hard"), (Enforcement::Soft, "soft")] {
        assert_eq!(e.as_str(), name);
        assert_eq!(e.to_string(), name);
        assert_eq!(Enforcement::from_str(name), Ok(e));
        assert_eq!(de_str::<Enforcement>(name).unwrap(), e);
    }
    for bad in ["", "Hard", "strict", "none"] {
        let err = Enforcement::from_str(bad).unwrap_err();
        assert_eq!(err, BudgetError::InvalidEnforcement(bad.to_owned()));
        assert_eq!(err.code(), "invalid_enforcement");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
}

#[test]
fn error_codes_are_stable_and_distinct() {
    let at = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
    let errors = [
        (BudgetError::UnknownTimezone("x".into()), "unknown_timezone"),
        (
            BudgetError::InvalidPeriodKind("x".into()),
            "invalid_period_kind",
        ),
        (
            BudgetError::InvalidEnforcement("x".into()),
            "invalid_enforcement",
        ),
        (
            BudgetError::InvalidThreshold { value: 0 },
            "invalid_threshold",
        ),
        (
            BudgetError::TooManyThresholds { count: 11 },
            "too_many_thresholds",
        ),
        (
            BudgetError::NotAPeriodStart {
                kind: PeriodKind::Daily,
                timezone: "UTC".into(),
                start: at,
                period_start: at,
            },
            "not_a_period_start",
        ),
        (
            BudgetError::InvalidLimit(MoneyError::Negative("-1".into())),
            "invalid_limit",
        ),
        (
            BudgetError::InvalidScope {
                field: "model",
                reason: "r",
            },
            "invalid_scope",
        ),
        (BudgetError::InstantOutOfRange(at), "instant_out_of_range"),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (err, code) in errors {
        assert_eq!(err.code(), code);
        assert!(seen.insert(code), "duplicate code {code}");
        assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        assert!(!err.to_string().is_empty());
    }
}
