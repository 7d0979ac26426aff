//! Exact money for tally: the one place where amounts enter and leave the
//! program.
//!
//! Every amount in tally is a [`rust_decimal::Decimal`] of US dollars. This
//! crate turns the two textual forms money arrives in into `Decimal` without
//! losing a digit, and turns `Decimal` back into the one form tally sends:
//!
//! * OpenRouter's JSON **numbers** (`0.00012345678901234567`, `1.425e-7`):
//!   [`parse_json_number`] reads the literal text of the number (obtained with
//!   `serde_json::value::RawValue`), never an `f64`.
//! * tally's own **decimal strings** (`"0.000123"`, the wire format of every
//!   event and of the HTTP API): [`parse_decimal_str`], matching
//!   `^-?[0-9]+(\.[0-9]+)?$` exactly.
//! * Output: [`to_decimal_string`], a plain decimal string without exponent
//!   and without trailing zeros.
//!
//! # Money rules
//!
//! This crate owns **money rule 1, exact money**: every amount is an exact
//! decimal, never a binary float, in code, in Postgres (`NUMERIC`) and on the
//! wire (JSON strings such as `"0.000123"`). OpenRouter's costs arrive as JSON
//! numbers; they are read from the number's literal text, never through
//! `f64`, and an amount that cannot be held exactly is refused, never
//! rounded. The other rules are stated by the crates that own them:
//! 2–4 in `tally-ledger`, 5 in `tally-budget`, 6 in `tally-bus`, 7 in
//! `tally-store`, 8 in `tally-openrouter`.
//!
//! # Invariants
//!
//! * No function here goes through a binary floating point type.
//! * Every accepted amount has at most [`MAX_SCALE`] digits after the point
//!   and an absolute value below [`MAX_ABS_USD`], so that it fits the
//!   Postgres column type `NUMERIC(38, 20)` and sums of many amounts stay
//!   exact inside `Decimal`'s 96-bit mantissa.
//! * Costs (what a generation cost, what a budget allows) are never negative;
//!   only ledger adjustments may be ([`Sign`]).
//!
//! # Decisions
//!
//! * **Scale 20.** OpenRouter's costs carry up to 17 significant digits and
//!   can be as small as `1e-9` USD per token; 20 fractional digits hold every
//!   such figure exactly. An amount with more fractional digits than that is
//!   *rejected*, not rounded: rounding money silently is the one thing this
//!   crate exists to prevent.
//! * **Range ±10⁸ USD.** `Decimal` holds 28 significant digits; with 20 of
//!   them after the point, 8 remain before it. A single cost or budget limit
//!   of 100 million dollars is far beyond any real generation, and the limit
//!   keeps every balance exact.
//! * **Strings on the wire.** JSON numbers are decoded as doubles by most
//!   consumers; a decimal string survives every JSON library unchanged. The
//!   serde helpers therefore *refuse* JSON numbers where tally's contract
//!   says string ([`serde_usd`]).

use std::str::FromStr;

use rust_decimal::Decimal;

/// Most digits after the decimal point an amount may carry.
pub const MAX_SCALE: u32 = 20;

/// Exclusive upper bound of an amount's absolute value, in USD (10⁸).
pub const MAX_ABS_USD: i64 = 100_000_000;

/// Why a text is not money. Each variant maps to a stable [`code`](MoneyError::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The text is not a number of the expected form.
    #[error("not a decimal amount: {0:?}")]
    Syntax(String),
    /// More digits after the point than tally keeps.
    #[error("amount {text:?} has {scale} digits after the point; at most {MAX_SCALE} are kept")]
    TooPrecise {
        /// The offending text.
        text: String,
        /// How many fractional digits it needs.
        scale: u32,
    },
    /// Absolute value at or above [`MAX_ABS_USD`].
    #[error("amount {0:?} is out of range (|amount| must be below 100000000)")]
    OutOfRange(String),
    /// A negative amount where only costs (≥ 0) are allowed.
    #[error("amount {0:?} is negative; costs must be >= 0")]
    Negative(String),
    /// A JSON number where the contract requires a decimal string.
    #[error("money must be a JSON string such as \"0.000123\", not a JSON number")]
    NumberNotString,
}

impl MoneyError {
    /// Stable machine-readable code (dead-letter reasons, problem types, metric labels).
    pub fn code(&self) -> &'static str {
        match self {
            MoneyError::Syntax(_) => "invalid_amount",
            MoneyError::TooPrecise { .. } => "amount_too_precise",
            MoneyError::OutOfRange(_) => "amount_out_of_range",
            MoneyError::Negative(_) => "negative_amount",
            MoneyError::NumberNotString => "amount_not_string",
        }
    }
}

/// Whether an amount may be negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// Costs, limits, balances: `>= 0`.
    NonNegative,
    /// Adjustments: any sign.
    Any,
}

/// Parses the literal text of a JSON number (as OpenRouter sends costs)
/// exactly, including exponent notation (`1.425e-7`, `2E+3`).
///
/// The result is a non-negative-or-negative amount checked against
/// [`MAX_SCALE`] and [`MAX_ABS_USD`]; use [`ensure_cost`] to also require `>= 0`.
pub fn parse_json_number(text: &str) -> Result<Decimal, MoneyError> {
    let syntax = || MoneyError::Syntax(text.to_owned());
    let t = text.trim();
    let (negative, rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => {
            let exp_text = &rest[i + 1..];
            let exp_digits = exp_text
                .strip_prefix('+')
                .or_else(|| exp_text.strip_prefix('-'))
                .unwrap_or(exp_text);
            if exp_digits.is_empty() || !exp_digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            // Exponents beyond a few hundred cannot produce an acceptable amount
            // (they overflow the range or the scale); clamp so parsing stays cheap.
            let magnitude: i64 = exp_digits
                .get(exp_digits.len().saturating_sub(6)..)
                .and_then(|d| d.parse().ok())
                .filter(|_| exp_digits.trim_start_matches('0').len() <= 6)
                .unwrap_or(1_000_000);
            let exp = if exp_text.starts_with('-') {
                -magnitude
            } else {
                magnitude
            };
            (&rest[..i], exp)
        }
        None => (rest, 0),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
        || (mantissa.contains('.') && frac_part.is_empty())
        || (int_part.len() > 1 && int_part.starts_with('0'))
    {
        return Err(syntax());
    }
    // digits * 10^(exponent - frac_len)
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    let scale_shift = exponent - frac_part.len() as i64;
    // Strip trailing zeros into the exponent so that "1.500e2" and "150" agree.
    let trimmed = digits.trim_end_matches('0');
    let shift = scale_shift + (digits.len() - trimmed.len()) as i64;
    if trimmed.is_empty() {
        return Ok(Decimal::ZERO);
    }
    let integer_digits = trimmed.len() as i64 + shift;
    if integer_digits > 8 {
        return Err(MoneyError::OutOfRange(text.to_owned()));
    }
    let scale = if shift < 0 { (-shift) as u64 } else { 0 };
    if scale > MAX_SCALE as u64 {
        return Err(MoneyError::TooPrecise {
            text: text.to_owned(),
            scale: u32::try_from(scale).unwrap_or(u32::MAX),
        });
    }
    let plain = if shift >= 0 {
        format!("{trimmed}{}", "0".repeat(shift as usize))
    } else {
        trimmed.to_owned()
    };
    let mut value = Decimal::from_str(&plain).map_err(|_| syntax())?;
    value.set_scale(scale as u32).map_err(|_| syntax())?;
    if negative {
        value.set_sign_negative(true);
    }
    check_range(value, text)
}

/// Parses a tally decimal string (`^-?[0-9]+(\.[0-9]+)?$`) exactly.
pub fn parse_decimal_str(text: &str) -> Result<Decimal, MoneyError> {
    let syntax = || MoneyError::Syntax(text.to_owned());
    let rest = text.strip_prefix('-').unwrap_or(text);
    let (int_part, frac_part) = match rest.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (rest, None),
    };
    if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax());
    }
    if let Some(f) = frac_part {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
    }
    // Same digits, no exponent: the JSON-number parser applies every check.
    parse_json_number(text)
}

/// Parses a decimal string that must be a cost (`>= 0`).
pub fn parse_cost_str(text: &str) -> Result<Decimal, MoneyError> {
    ensure_cost(parse_decimal_str(text)?)
}

/// Checks that an amount is a valid cost: `>= 0`, in range, at most [`MAX_SCALE`] digits.
pub fn ensure_cost(value: Decimal) -> Result<Decimal, MoneyError> {
    let value = ensure_amount(value)?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(MoneyError::Negative(to_decimal_string(&value)));
    }
    Ok(value)
}

/// Checks that an amount of any sign is in range and not too precise.
pub fn ensure_amount(value: Decimal) -> Result<Decimal, MoneyError> {
    let normalized = value.normalize();
    if normalized.scale() > MAX_SCALE {
        return Err(MoneyError::TooPrecise {
            text: normalized.to_string(),
            scale: normalized.scale(),
        });
    }
    check_range(normalized, &normalized.to_string())
}

fn check_range(value: Decimal, text: &str) -> Result<Decimal, MoneyError> {
    if value.abs() >= Decimal::from(MAX_ABS_USD) {
        return Err(MoneyError::OutOfRange(text.to_owned()));
    }
    // "-0" is zero.
    if value.is_zero() {
        return Ok(Decimal::ZERO);
    }
    Ok(value)
}

/// Formats an amount as tally's wire form: plain decimal, no exponent, no
/// trailing zeros (`"0.000123"`, `"12"`, `"-0.5"`).
pub fn to_decimal_string(value: &Decimal) -> String {
    let n = value.normalize();
    if n.is_zero() {
        "0".to_owned()
    } else {
        n.to_string()
    }
}

/// Serde helpers for `Decimal` fields that are decimal strings on the wire.
///
/// Use as `#[serde(with = "tally_money::serde_usd")]` (any sign) or
/// `tally_money::serde_cost` (`>= 0`); `_opt` variants for `Option<Decimal>`
/// (JSON `null` ↔ `None`). Deserialising a JSON number fails with
/// [`MoneyError::NumberNotString`].
pub mod serde_usd {
    use rust_decimal::Decimal;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    use crate::{parse_decimal_str, to_decimal_string};

    /// Serialises as a decimal string.
    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_decimal_string(value))
    }

    /// Deserialises from a decimal string only.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let v = super::de_string(d)?;
        parse_decimal_str(&v).map_err(D::Error::custom)
    }

    /// `Option<Decimal>` as a decimal string or `null`.
    pub mod opt {
        use super::*;

        /// Serialises `Some` as a decimal string and `None` as `null`.
        pub fn serialize<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(v) => s.serialize_str(&to_decimal_string(v)),
                None => s.serialize_none(),
            }
        }

        /// Deserialises a decimal string or `null`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
            match Option::<super::super::StrOrNumber>::deserialize(d)? {
                None => Ok(None),
                Some(v) => parse_decimal_str(&v.into_string().map_err(D::Error::custom)?)
                    .map(Some)
                    .map_err(D::Error::custom),
            }
        }
    }
}

/// Like [`serde_usd`], but the amount must be a cost (`>= 0`).
pub mod serde_cost {
    use rust_decimal::Decimal;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    use crate::parse_cost_str;

    /// Serialises as a decimal string.
    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        super::serde_usd::serialize(value, s)
    }

    /// Deserialises from a non-negative decimal string only.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let v = super::de_string(d)?;
        parse_cost_str(&v).map_err(D::Error::custom)
    }

    /// `Option<Decimal>` cost as a decimal string or `null`.
    pub mod opt {
        use super::*;

        /// Serialises `Some` as a decimal string and `None` as `null`.
        pub fn serialize<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
            super::super::serde_usd::opt::serialize(value, s)
        }

        /// Deserialises a non-negative decimal string or `null`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
            match Option::<super::super::StrOrNumber>::deserialize(d)? {
                None => Ok(None),
                Some(v) => parse_cost_str(&v.into_string().map_err(D::Error::custom)?)
                    .map(Some)
                    .map_err(D::Error::custom),
            }
        }
    }
}

/// A JSON value that should be a string; numbers are recognised only to give
/// the specific [`MoneyError::NumberNotString`] error.
struct StrOrNumber(Result<String, MoneyError>);

impl<'de> serde::Deserialize<'de> for StrOrNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StrOrNumber;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a decimal string such as \"0.000123\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StrOrNumber, E> {
                Ok(StrOrNumber(Ok(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<StrOrNumber, E> {
                Ok(StrOrNumber(Ok(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<StrOrNumber, E> {
                Ok(StrOrNumber(Err(MoneyError::NumberNotString)))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<StrOrNumber, E> {
                Ok(StrOrNumber(Err(MoneyError::NumberNotString)))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<StrOrNumber, E> {
                Ok(StrOrNumber(Err(MoneyError::NumberNotString)))
            }
        }
        d.deserialize_any(V)
    }
}

impl StrOrNumber {
    fn into_string(self) -> Result<String, MoneyError> {
        self.0
    }
}

fn de_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::{de::Error as _, Deserialize};
    StrOrNumber::deserialize(d)?
        .into_string()
        .map_err(D::Error::custom)
}

/// Serde helper for OpenRouter's cost fields: a JSON *number* (or `null`)
/// read from its literal text, exactly.
///
/// Use as `#[serde(default, with = "tally_money::json_number::opt")]` on
/// `Option<Decimal>` fields of OpenRouter reply types.
pub mod json_number {
    use rust_decimal::Decimal;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};
    use serde_json::value::RawValue;

    use crate::parse_json_number;

    /// Reads a JSON number literal exactly.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let raw: Box<RawValue> = Box::deserialize(d)?;
        from_raw(&raw).map_err(D::Error::custom)
    }

    /// Writes the amount as a JSON number with its exact digits.
    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        use serde::Serialize;
        let text = crate::to_decimal_string(value);
        let raw = RawValue::from_string(text).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }

    /// Parses a raw JSON value that must be a number.
    pub fn from_raw(raw: &RawValue) -> Result<Decimal, crate::MoneyError> {
        let text = raw.get();
        if text.starts_with('"') {
            return Err(crate::MoneyError::Syntax(text.to_owned()));
        }
        parse_json_number(text)
    }

    /// `Option<Decimal>`: a JSON number or `null`.
    pub mod opt {
        use super::*;

        /// Reads a JSON number literal exactly, or `null`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
            let raw: Option<Box<RawValue>> = Option::deserialize(d)?;
            match raw {
                None => Ok(None),
                Some(r) if r.get() == "null" => Ok(None),
                Some(r) => from_raw(&r).map(Some).map_err(D::Error::custom),
            }
        }

        /// Writes a JSON number or `null`.
        pub fn serialize<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn json_numbers_parse_exactly() {
        let cases = [
            ("0.00012345678901234567", "0.00012345678901234567"),
            ("1.425e-7", "0.0000001425"),
            ("1.425E-7", "0.0000001425"),
            ("0.00000285", "0.00000285"),
            ("2e3", "2000"),
            ("2E+3", "2000"),
            ("1.50", "1.5"),
            ("0", "0"),
            ("-0", "0"),
            ("0.0", "0"),
            ("12345678.9", "12345678.9"),
            ("1e-20", "0.00000000000000000001"),
            ("-3.5", "-3.5"),
            ("100e-22", "0.000000000000000000010"),
        ];
        for (text, want) in cases {
            let got = parse_json_number(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got, d(want), "{text}");
            assert_eq!(to_decimal_string(&got), to_decimal_string(&d(want)));
        }
    }

    #[test]
    fn rejects_what_is_not_money() {
        for text in [
            "",
            "-",
            ".5",
            "5.",
            "01",
            "1e",
            "1e+",
            "NaN",
            "Infinity",
            "-Infinity",
            "0x10",
            "1,5",
            " 1 2",
            "+1",
            "1.2.3",
            "\"1\"",
            "1e1.5",
        ] {
            assert!(
                matches!(parse_json_number(text), Err(MoneyError::Syntax(_))),
                "{text:?} should be a syntax error, got {:?}",
                parse_json_number(text)
            );
        }
        assert!(matches!(
            parse_json_number("1e-21"),
            Err(MoneyError::TooPrecise { scale: 21, .. })
        ));
        assert!(matches!(
            parse_json_number("0.000000000000000000001"),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(matches!(
            parse_json_number("1e8"),
            Err(MoneyError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_json_number("100000000"),
            Err(MoneyError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_json_number("1e999999999999"),
            Err(MoneyError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_json_number("1e-999999999999"),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert_eq!(
            parse_json_number("99999999.99999999999999999999")
                .unwrap()
                .to_string(),
            "99999999.99999999999999999999"
        );
    }

    #[test]
    fn decimal_strings_follow_the_contract_pattern() {
        assert_eq!(parse_decimal_str("0.000123").unwrap(), d("0.000123"));
        assert_eq!(parse_decimal_str("-1.5").unwrap(), d("-1.5"));
        for bad in ["1e-7", "1.", ".1", "+1", "1 ", "", "abc", "1_000"] {
            assert!(parse_decimal_str(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_cost_str("-0.1").unwrap_err().code(),
            "negative_amount"
        );
        assert_eq!(parse_cost_str("-0").unwrap(), Decimal::ZERO);
    }

    #[test]
    fn serde_helpers_refuse_numbers_and_write_strings() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct T {
            #[serde(with = "serde_cost")]
            a: Decimal,
            #[serde(with = "serde_usd::opt", default)]
            b: Option<Decimal>,
        }
        let t: T = serde_json::from_str(r#"{"a":"0.00012345678901234567","b":null}"#).unwrap();
        assert_eq!(t.a, d("0.00012345678901234567"));
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"a":"0.00012345678901234567","b":null}"#
        );
        let err = serde_json::from_str::<T>(r#"{"a":0.1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a JSON number"), "{err}");
        let err = serde_json::from_str::<T>(r#"{"a":"0.1","b":2}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a JSON number"), "{err}");
        assert!(serde_json::from_str::<T>(r#"{"a":"-1"}"#).is_err());
    }

    #[test]
    fn json_number_helper_reads_openrouter_costs() {
        #[derive(serde::Deserialize)]
        struct R {
            #[serde(default, with = "json_number::opt")]
            cost: Option<Decimal>,
        }
        let r: R = serde_json::from_str(r#"{"cost":1.425e-7}"#).unwrap();
        assert_eq!(r.cost, Some(d("0.0000001425")));
        let r: R = serde_json::from_str(r#"{"cost":null}"#).unwrap();
        assert_eq!(r.cost, None);
        let r: R = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(r.cost, None);
        assert!(serde_json::from_str::<R>(r#"{"cost":"0.1"}"#).is_err());
    }
}
