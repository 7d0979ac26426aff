//! Writing exact amounts as JSON numbers the way OpenRouter does.
//!
//! OpenRouter's backend is JavaScript: it prints a cost with
//! `Number.prototype.toString`, which switches to exponent notation for
//! magnitudes below `1e-6` (`1.425e-7`) and at or above `1e21`. The simulator
//! reproduces that rendering from a `Usd` by moving the decimal point
//! only, so the text always denotes exactly the registered amount (the
//! digits are never re-derived through a double).

use serde_json::value::RawValue;
use tally_money::Usd;

use crate::config::NumberFormat;

/// The JSON number text of `value` in `format`.
///
/// `Js` follows ECMAScript's Number-to-String rules on the decimal digits of
/// `value`; `Plain` never uses an exponent; `Exponent` always does (for
/// non-zero values). Every output parses back to exactly `value`.
pub fn format_number(value: &Usd, format: NumberFormat) -> String {
    if value.is_zero() {
        return "0".to_owned();
    }
    let sign = if value.is_negative() { "-" } else { "" };
    let plain = value.abs().to_string();
    let (int, frac) = plain.split_once('.').unwrap_or((plain.as_str(), ""));
    // value = 0.<digits> × 10^e  (ECMAScript's "n").
    let (e, all_digits) = if int != "0" {
        (int.len() as i64, format!("{int}{frac}"))
    } else {
        let zeros = frac.len() - frac.trim_start_matches('0').len();
        (-(zeros as i64), frac[zeros..].to_owned())
    };
    let digits = all_digits.trim_end_matches('0');
    let k = digits.len() as i64;
    let exponent = match format {
        NumberFormat::Js => !(-6 < e && e <= 21),
        NumberFormat::Plain => false,
        NumberFormat::Exponent => true,
    };
    let body = if exponent {
        let exp = e - 1;
        let (first, rest) = digits.split_at(1);
        let mantissa = if rest.is_empty() {
            first.to_owned()
        } else {
            format!("{first}.{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{exp_sign}{}", exp.abs())
    } else if e >= k {
        format!("{digits}{}", "0".repeat((e - k) as usize))
    } else if e > 0 {
        let (int, frac) = digits.split_at(e as usize);
        format!("{int}.{frac}")
    } else {
        format!("0.{}{digits}", "0".repeat((-e) as usize))
    };
    format!("{sign}{body}")
}

/// `value × num / den`, cut to whole units of 10⁻²⁸ USD: how the simulator,
/// playing the provider, *makes up* derived amounts (a BYOK fee, a drifted
/// estimate). tally never does this; it only reads amounts exactly. Falls
/// back to `value` if the product leaves the range.
pub fn scaled(value: Usd, num: u32, den: u32) -> Usd {
    let units = value.units();
    units
        .checked_mul(i128::from(num))
        .map(|p| p / i128::from(den.max(1)))
        .or_else(|| Some(units / i128::from(den.max(1)) * i128::from(num)))
        .and_then(|u| Usd::from_units(u).ok())
        .unwrap_or(value)
}

/// [`format_number`] as a raw JSON value, ready to embed in a reply.
pub fn raw_number(value: &Usd, format: NumberFormat) -> Box<RawValue> {
    raw(format_number(value, format))
}

/// A raw JSON value from text that is known to be valid JSON.
pub(crate) fn raw(text: String) -> Box<RawValue> {
    RawValue::from_string(text).expect("the simulator only embeds valid JSON literals")
}

#[cfg(test)]
mod tests {
    use super::*;

    use tally_money::usd;

    #[test]
    fn js_rendering_matches_javascript() {
        // Expected strings are what `String(x)` prints in JavaScript.
        for (value, js) in [
            ("0.0000001425", "1.425e-7"),
            ("0.00000285", "0.00000285"),
            ("0.000001", "0.000001"),
            ("0.0000001", "1e-7"),
            ("0.00012345678901234567", "0.00012345678901234567"),
            ("1.5", "1.5"),
            ("12", "12"),
            ("1200", "1200"),
            ("0", "0"),
            ("0.00000000000000000001", "1e-20"),
            ("-0.0000001425", "-1.425e-7"),
            ("0.000000123456789012345", "1.23456789012345e-7"),
            ("0.000014999999999999999", "0.000014999999999999999"),
            ("0.0000000000009999999999999999", "9.999999999999999e-13"),
            ("1234567890.1234567", "1234567890.1234567"),
        ] {
            assert_eq!(format_number(&usd!(value), NumberFormat::Js), js, "{value}");
        }
    }

    #[test]
    fn other_formats() {
        assert_eq!(
            format_number(&usd!("0.0000001425"), NumberFormat::Plain),
            "0.0000001425"
        );
        assert_eq!(
            format_number(&usd!("0.00000285"), NumberFormat::Exponent),
            "2.85e-6"
        );
        assert_eq!(
            format_number(&usd!("1200"), NumberFormat::Exponent),
            "1.2e+3"
        );
        assert_eq!(format_number(&usd!("5"), NumberFormat::Exponent), "5e+0");
    }

    #[test]
    fn every_rendering_parses_back_exactly() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..5000u32 {
            // xorshift: deterministic pseudo-random mantissas and scales
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mantissa = i64::try_from(x % 100_000_000_000_000_000).unwrap();
            let scale = 8 + (i % 21);
            let value = Usd::new(mantissa, scale);
            if tally_money::ensure_cost(value).is_err() {
                continue;
            }
            for f in [
                NumberFormat::Js,
                NumberFormat::Plain,
                NumberFormat::Exponent,
            ] {
                let text = format_number(&value, f);
                let back = tally_money::parse_json_number(&text).unwrap();
                assert_eq!(back, value.normalize(), "{value} as {text}");
                assert!(
                    serde_json::from_str::<serde_json::Value>(&text).is_ok(),
                    "{text}"
                );
            }
        }
    }
}
