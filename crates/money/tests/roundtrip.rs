//! Property tests: every representable amount survives every textual form,
//! every double OpenRouter can print for a cost is kept exactly, and sums
//! agree with an independent schoolbook decimal addition.
//!
//! `f64` appears here only to *produce literal text* the way OpenRouter's
//! JavaScript backend does (Rust's shortest round-trip digits are the same
//! digits JavaScript prints); the expected value is then derived from that
//! text alone, never from the double.
#![allow(clippy::float_arithmetic, clippy::excessive_precision)]

use proptest::prelude::*;
use tally_money::{
    parse_decimal_str, parse_json_number, to_decimal_string, MoneyError, Usd, MAX_SCALE,
};
use tally_testkit::decimal_text::{add, exact_plain, js_string, python_repr, shortest};

/// Amounts tally holds: up to 10 integer digits and up to 28 fractional ones.
fn amount() -> impl Strategy<Value = Usd> {
    (0u32..=MAX_SCALE).prop_flat_map(|scale| {
        let bound = 10i128.pow(10 + scale);
        (-bound..=bound).prop_map(move |m| Usd::from_parts(m, scale).unwrap())
    })
}

/// Doubles across the cost range: 1e-12 up to 1e10, every exponent equally
/// likely, full 52-bit mantissas (so most print with 16–17 digits).
fn cost_double() -> impl Strategy<Value = f64> {
    double_in(-12..10)
}

/// Doubles `m × 10^e`, `m` in [1, 10) with a full 52-bit fraction.
fn double_in(exponents: std::ops::Range<i32>) -> impl Strategy<Value = f64> {
    (exponents, 0u64..(1u64 << 52)).prop_map(|(e, bits)| {
        let m = 1.0 + (bits as f64) / ((1u64 << 52) as f64) * 9.0; // [1, 10)
        let x = m * 10f64.powi(e);
        x.clamp(1e-12, 9.999_999_999_999_998e9)
    })
}

#[test]
fn the_renderings_match_javascript_and_python() {
    assert_eq!(js_string(1.4999999999999999e-05), "0.000014999999999999999");
    assert_eq!(
        python_repr(1.4999999999999999e-05),
        "1.4999999999999999e-05"
    );
    assert_eq!(js_string(9.999999999999998e-13), "9.999999999999998e-13");
    // `9.999999999999999e-13` denotes the same double as `1e-12`, which
    // JavaScript prints as "1e-12"; the literal itself is still exact.
    assert_eq!(js_string(9.999999999999999e-13), "1e-12");
    assert_eq!(js_string(1.425e-7), "1.425e-7");
    assert_eq!(js_string(0.000001), "0.000001");
    assert_eq!(js_string(123.0), "123");
    assert_eq!(js_string(1e21), "1e+21");
    assert_eq!(
        exact_plain("14999999999999999", -5),
        "0.000014999999999999999"
    );
    assert_eq!(add("0.5", "99.75"), "100.25");
    assert_eq!(
        add("0.0000000000009999999999999999", "0"),
        "0.0000000000009999999999999999"
    );
}

#[test]
fn openrouter_examples_are_exact() {
    for (text, want) in [
        ("1.4999999999999999e-05", "0.000014999999999999999"),
        ("0.000014999999999999999", "0.000014999999999999999"),
        ("9.999999999999999e-13", "0.0000000000009999999999999999"),
        ("1.2345678901234567e-12", "0.0000000000012345678901234567"),
    ] {
        assert_eq!(to_decimal_string(&parse_json_number(text).unwrap()), want);
    }
    // 17 digits below e-12 need 29 fractional digits: refused, not rounded.
    assert!(matches!(
        parse_json_number("9.9999999999999999e-13"),
        Err(MoneyError::TooPrecise { scale: 29, .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

    /// Every double in the cost range, printed as JavaScript and as Python
    /// print it, parses to exactly the decimal its text denotes.
    #[test]
    fn every_cost_double_is_kept_exactly(x in cost_double()) {
        let (digits, exp) = shortest(x);
        let want = exact_plain(&digits, exp);
        for text in [js_string(x), python_repr(x), format!("{x:e}"), format!("{x:E}")] {
            let got = parse_json_number(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(to_decimal_string(&got), want.clone(), "{}", text);
        }
    }

    /// Below 1e-12 a double is either kept exactly or refused as too
    /// precise: never rounded.
    #[test]
    fn tiny_doubles_are_exact_or_refused(e in -20i32..-12, bits in 0u64..(1u64 << 52)) {
        let x = (1.0 + (bits as f64) / ((1u64 << 52) as f64) * 9.0) * 10f64.powi(e);
        let (digits, exp) = shortest(x);
        match parse_json_number(&js_string(x)) {
            Ok(v) => prop_assert_eq!(to_decimal_string(&v), exact_plain(&digits, exp)),
            Err(MoneyError::TooPrecise { scale, .. }) => prop_assert!(scale > MAX_SCALE),
            Err(other) => prop_assert!(false, "{other}"),
        }
    }

    #[test]
    fn decimal_string_round_trips(x in amount()) {
        let text = to_decimal_string(&x);
        prop_assert!(!text.contains('e') && !text.contains('E'));
        let back = parse_decimal_str(&text).unwrap();
        prop_assert_eq!(back, x);
    }

    #[test]
    fn exponent_notation_is_exact(x in amount(), shift in -10i32..10) {
        // Write x as mantissa × 10^shift by moving the point in its text.
        let text = to_decimal_string(&x);
        let negative = text.starts_with('-');
        let body = text.trim_start_matches('-');
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let digits = format!("{int}{frac}");
        let digits_t = digits.trim_start_matches('0');
        prop_assume!(!digits_t.is_empty());
        // value = 0.digits_t × 10^(int_len - leading zeros of the whole)
        let lead = (digits.len() - digits_t.len()) as i32;
        let n = int.len() as i32 - lead;
        let m = format!("0.{digits_t}");
        let lit = format!("{}{}e{}", if negative { "-" } else { "" }, m, n);
        prop_assert_eq!(parse_json_number(&lit).unwrap(), x, "{}", lit);
        let shifted = format!("{}{}E+{}", if negative { "-" } else { "" }, m, n + shift);
        if let Ok(v) = parse_json_number(&shifted) {
            // Moving the point by `shift` multiplies by 10^shift, exactly.
            if shift >= 0 {
                prop_assert_eq!(Some(v), x.checked_mul_int(10u64.pow(shift as u32)));
            }
        }
    }

    #[test]
    fn json_number_text_equals_decimal_string(x in amount()) {
        let text = to_decimal_string(&x);
        prop_assert_eq!(parse_json_number(&text).unwrap(), parse_decimal_str(&text).unwrap());
    }

    /// Sums of 17-significant-digit costs across the exponent range equal a
    /// schoolbook decimal sum of their texts.
    #[test]
    fn sums_of_many_costs_stay_exact(xs in proptest::collection::vec(double_in(-12..7), 1..200)) {
        let mut total = Usd::ZERO;
        let mut independent = "0".to_owned();
        for x in &xs {
            let (digits, exp) = shortest(*x);
            let text = exact_plain(&digits, exp);
            total = total.try_add(parse_json_number(&js_string(*x)).unwrap()).unwrap();
            independent = add(&independent, &text);
        }
        prop_assert_eq!(to_decimal_string(&total), independent);
    }

    /// Past the range, a sum fails; it never wraps or rounds.
    #[test]
    fn overflow_is_an_error(x in amount()) {
        let r = Usd::MAX.try_add(x);
        if x.is_positive() {
            prop_assert_eq!(r.unwrap_err().code(), "amount_overflow");
        } else {
            prop_assert_eq!(r.unwrap().try_sub(x).unwrap(), Usd::MAX);
        }
    }
}

#[test]
fn a_million_random_costs_sum_exactly() {
    // xorshift-driven 17-digit costs d.dddddddddddddddd × 10^e, e in -12..=-2:
    // the exact sum equals the integer sum of their digits at scale 28.
    let mut s: u64 = 0x2545_F491_4F6C_DD1D;
    let mut total = Usd::ZERO;
    let mut units: u128 = 0;
    for _ in 0..1_000_000 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let mantissa = 10_000_000_000_000_000 + s % 90_000_000_000_000_000;
        let e = -12 + (s >> 60) as i32 % 11;
        let text = format!(
            "{}.{:016}e{e}",
            mantissa / 10u64.pow(16),
            mantissa % 10u64.pow(16)
        );
        total = total.try_add(parse_json_number(&text).unwrap()).unwrap();
        // mantissa × 10^(e - 16) USD = mantissa × 10^(e + 12) units.
        units += u128::from(mantissa) * 10u128.pow((e + 12) as u32);
    }
    assert_eq!(total.units() as u128, units);
}
