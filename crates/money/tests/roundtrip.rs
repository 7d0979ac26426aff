//! Property tests: every representable amount survives every textual form.

use std::str::FromStr;

use proptest::prelude::*;
use rust_decimal::Decimal;
use tally_money::{parse_decimal_str, parse_json_number, to_decimal_string, MAX_SCALE};

/// Amounts tally accepts: up to 8 integer digits and up to 20 fractional digits.
fn amount() -> impl Strategy<Value = Decimal> {
    (
        any::<bool>(),
        0u64..100_000_000,
        0u128..100_000_000_000_000_000_000u128,
        0u32..=MAX_SCALE,
    )
        .prop_map(|(neg, int, frac, scale)| {
            let frac_digits = if scale == 0 {
                String::new()
            } else {
                let f = format!("{:020}", frac);
                format!(".{}", &f[..scale as usize])
            };
            let text = format!("{}{}{}", if neg { "-" } else { "" }, int, frac_digits);
            Decimal::from_str(&text).unwrap()
        })
}

proptest! {
    #[test]
    fn decimal_string_round_trips(x in amount()) {
        let text = to_decimal_string(&x);
        prop_assert!(!text.contains('e') && !text.contains('E'));
        let back = parse_decimal_str(&text).unwrap();
        prop_assert_eq!(back, x);
    }

    #[test]
    fn exponent_notation_is_exact(x in amount(), shift in 0i32..6) {
        // Write x as mantissa × 10^shift, e.g. 0.000123 = 0.000000123e3.
        let mut m = x;
        let new_scale = m.scale() + shift as u32;
        prop_assume!(new_scale <= 28);
        m.set_scale(new_scale).unwrap();
        let text = format!("{}e{}", m, shift);
        let back = parse_json_number(&text).unwrap();
        prop_assert_eq!(back, x);
        let upper = format!("{}E+{}", m, shift);
        prop_assert_eq!(parse_json_number(&upper).unwrap(), x);
    }

    #[test]
    fn json_number_text_equals_decimal_string(x in amount()) {
        let text = to_decimal_string(&x);
        prop_assert_eq!(parse_json_number(&text).unwrap(), parse_decimal_str(&text).unwrap());
    }

    #[test]
    fn sums_of_many_costs_stay_exact(xs in proptest::collection::vec(0u64..10_000_000_000_000_000, 1..200)) {
        // Costs of 17 significant digits at scale 20: the sum of the parsed
        // decimals equals the integer sum of their digits.
        let mut total = Decimal::ZERO;
        let mut digits: u128 = 0;
        for x in &xs {
            let text = format!("0.{:020}", x);
            total += parse_decimal_str(&text).unwrap();
            digits += u128::from(*x);
        }
        let mut expected = Decimal::from_i128_with_scale(digits as i128, 20);
        expected = expected.normalize();
        prop_assert_eq!(total.normalize(), expected);
    }
}
