//! Exact money for tally: the one type every amount is, and the one place
//! where amounts enter and leave the program.
//!
//! Every amount in tally is a [`Usd`]: a signed fixed-point count of
//! 10⁻²⁸ US dollars in an `i128`. This crate turns the textual forms money
//! arrives in into `Usd` without losing a digit, and turns `Usd` back into
//! the one form tally sends:
//!
//! * OpenRouter's JSON **numbers** (`0.00012345678901234567`, `1.425e-7`,
//!   `1.4999999999999999e-05`, `9.999999999999999e-13`): [`parse_json_number`]
//!   reads the literal text of the number (obtained with
//!   `serde_json::value::RawValue`, see [`json_number`]), never an `f64`.
//! * tally's own **decimal strings** (`"0.000123"`, the wire format of every
//!   event and of the HTTP API): [`parse_decimal_str`], matching
//!   `^-?[0-9]+(\.[0-9]+)?$` exactly.
//! * Output: [`to_decimal_string`] (and `Display`), a plain decimal string
//!   without exponent and without trailing zeros.
//! * Postgres `NUMERIC` (feature `sqlx`): [`Usd`] encodes and decodes the
//!   binary `NUMERIC` format itself, digit for digit; a stored value that
//!   `Usd` cannot hold exactly is a decode error, never rounded.
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
//! * Every [`Usd`] is exact; every accepted text denotes exactly the amount
//!   it holds. A text with more than [`MAX_SCALE`] (28) significant
//!   fractional digits is refused (`amount_too_precise`); one whose
//!   magnitude exceeds [`Usd::MAX`] (10¹⁰ USD) is refused
//!   (`amount_out_of_range`).
//! * Arithmetic is exact or fails: `try_add`, `try_sub`, `try_mul_int`,
//!   `try_sum` return [`MoneyError::Overflow`] (`amount_overflow`) past the
//!   range. There is no rounding operation at all.
//! * Costs (what a generation cost, what a budget allows) are never
//!   negative: they are [`Cost`]s, valid by construction; only ledger
//!   adjustments, true-ups and remainders are signed [`Usd`]s.
//!
//! # Decisions
//!
//! * **A fixed-point `i128` at scale 28, not `rust_decimal`.** OpenRouter
//!   prints costs as JavaScript doubles: 17 significant digits with any
//!   exponent, so `9.999999999999999e-13` needs 28 fractional digits, and
//!   `1.4999999999999999e-05` (100 tokens × 1.5e-7 in double arithmetic)
//!   needs 21. Holding those *and* summing them exactly to 10¹⁰ USD needs
//!   28 + 11 = 39 significant digits. `rust_decimal` holds 28–29 and rounds
//!   silently past that (eight × `99999999.99999999999999999999` came out
//!   as `799999999.9999999999999999999`); `i128` holds 38.2 digits, i.e. at
//!   scale 28 every amount up to 1.7 × 10¹⁰ USD, with one representation
//!   per value, so equality, ordering and hashing are the integer's.
//! * **Range ±10¹⁰ USD exactly.** The bound is the decimal 10¹⁰ (10³⁸
//!   units) rather than `i128::MAX`, so it has a short decimal form that
//!   the JSON Schemas' patterns, the Postgres `CHECK`s and people can state
//!   exactly; every amount and every sum up to ten billion dollars is
//!   exact, and one past it fails (`amount_out_of_range` when parsed,
//!   `amount_overflow` when computed). The same choice as
//!   TigerBeetle's and Stripe's integer minor units, with a unit small
//!   enough for every double OpenRouter prints down to `e-12`. Costs of
//!   17 significant digits below `1e-12` (needing more than 28 fractional
//!   digits) are refused with `amount_too_precise`, loudly.
//! * **Cost.** Addition is one `i128` add with an overflow check, with no
//!   rescaling; parsing and printing are digit loops of the same order as
//!   `rust_decimal`'s. `cargo bench -p tally-money --bench money` compares
//!   parse, format and sum with `rust_decimal` on the same inputs.
//! * **Refuse, never round.** An amount with more fractional digits than 28
//!   is *rejected*, not rounded: rounding money silently is the one thing
//!   this crate exists to prevent. The same holds for sums: no operator
//!   `+` exists (it would have to panic or wrap); every sum is a `try_`.
//! * **Two types: [`Cost`] and [`Usd`].** What something cost (a
//!   generation, a price, a budget's limit or spend) is a [`Cost`], which
//!   cannot be negative: it is checked once where it is built (parsed,
//!   decoded from JSON or Postgres) and never again. Signed amounts (a
//!   true-up, a remainder, a ledger adjustment) are [`Usd`]. A cost turns
//!   into an amount for free ([`Cost::usd`]); the other way is a check
//!   ([`Cost::new`]). Sums of costs stay costs; the difference of two
//!   costs is an amount ([`Cost::minus`]). The older helpers
//!   ([`ensure_cost`], [`serde_cost`]) remain for `Usd` fields whose sign
//!   a contract states separately, and Postgres `CHECK` constraints guard
//!   the stored costs.
//! * **Postgres through its own binary format.** sqlx's `rust_decimal`
//!   decoding cannot hold more than 28 digits; decoding `NUMERIC` ourselves
//!   keeps `SUM()` results and stored totals exact on the way out, and the
//!   columns are unconstrained `NUMERIC` so Postgres never rounds on the
//!   way in (a constrained `NUMERIC(p, s)` rounds to `s` silently).
//! * **Strings on the wire.** JSON numbers are decoded as doubles by most
//!   consumers; a decimal string survives every JSON library unchanged. The
//!   serde helpers therefore *refuse* JSON numbers where tally's contract
//!   says string ([`serde_usd`]).

mod cost;
mod usd;

#[cfg(feature = "sqlx")]
mod pg;

pub use cost::Cost;
pub use usd::{Usd, SCALE};

/// A [`Cost`] from a decimal literal written in code: `cost!("0.000123")`.
/// Panics naming the text if it is not a non-negative amount, so it is for
/// literals only.
#[macro_export]
macro_rules! cost {
    ($text:expr) => {{
        let text: &str = $text;
        <$crate::Cost as ::core::str::FromStr>::from_str(text)
            .unwrap_or_else(|e| panic!("cost!({text:?}) is not a cost: {e}"))
    }};
}

/// A [`Usd`] from a decimal literal written in code (tests, fixtures,
/// benchmarks): `usd!("0.000123")`. Panics naming the text if it is not an
/// amount, so it is for literals only; input is parsed with
/// [`Usd::from_str`](std::str::FromStr::from_str) and its error.
#[macro_export]
macro_rules! usd {
    ($text:expr) => {{
        let text: &str = $text;
        <$crate::Usd as ::core::str::FromStr>::from_str(text)
            .unwrap_or_else(|e| panic!("usd!({text:?}) is not an amount: {e}"))
    }};
}

/// Most significant digits after the decimal point an amount may carry
/// (equal to [`SCALE`]).
pub const MAX_SCALE: u32 = SCALE;

/// The largest absolute value of an amount or a sum, in whole dollars
/// (10¹⁰, [`Usd::MAX`]).
pub const MAX_ABS_USD: i64 = 10_000_000_000;

/// Why a text is not money, or why an operation on money cannot be exact.
/// Each variant maps to a stable [`code`](MoneyError::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The text is not a number of the expected form.
    #[error("not a decimal amount: {0:?}")]
    Syntax(String),
    /// More significant digits after the point than tally keeps.
    #[error("amount {text:?} has {scale} digits after the point; at most {MAX_SCALE} are kept")]
    TooPrecise {
        /// The offending text.
        text: String,
        /// How many fractional digits it needs.
        scale: u32,
    },
    /// Absolute value beyond [`Usd::MAX`].
    #[error("amount {0:?} is out of range (|amount| must be at most 10000000000)")]
    OutOfRange(String),
    /// A negative amount where only costs (≥ 0) are allowed.
    #[error("amount {0:?} is negative; costs must be >= 0")]
    Negative(String),
    /// A JSON number where the contract requires a decimal string.
    #[error("money must be a JSON string such as \"0.000123\", not a JSON number")]
    NumberNotString,
    /// An arithmetic result beyond [`Usd::MAX`]: refused, never rounded or
    /// wrapped.
    #[error("money {op} overflows the exact range (|amount| <= 10000000000)")]
    Overflow {
        /// The operation (`add`, `subtract`, `multiply`, ...).
        op: &'static str,
    },
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
            MoneyError::Overflow { .. } => "amount_overflow",
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
/// exactly, including exponent notation (`1.425e-7`, `2E+3`,
/// `9.999999999999999e-13`).
///
/// Use [`ensure_cost`] to also require `>= 0`.
pub fn parse_json_number(text: &str) -> Result<Usd, MoneyError> {
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
    // value = digits × 10^(exponent - frac_len); units = value × 10^SCALE.
    let int_digits = int_part.trim_start_matches('0');
    let all = int_digits.bytes().chain(frac_part.bytes());
    let mut leading = true;
    let mut sig: Vec<u8> = Vec::with_capacity(int_part.len() + frac_part.len());
    for b in all {
        if leading && b == b'0' {
            continue;
        }
        leading = false;
        sig.push(b);
    }
    let len_before = sig.len();
    while sig.last() == Some(&b'0') {
        sig.pop();
    }
    if sig.is_empty() {
        return Ok(Usd::ZERO);
    }
    let trailing = (len_before - sig.len()) as i64;
    // Power of ten the significant digits are multiplied by, in units.
    let shift = i64::from(SCALE) + exponent - frac_part.len() as i64 + trailing;
    if shift < 0 {
        return Err(MoneyError::TooPrecise {
            text: text.to_owned(),
            scale: u32::try_from(i64::from(SCALE) - shift).unwrap_or(u32::MAX),
        });
    }
    let out_of_range = || MoneyError::OutOfRange(text.to_owned());
    if sig.len() as i64 + shift > 39 {
        return Err(out_of_range());
    }
    let mut units: u128 = 0;
    for b in &sig {
        units = units
            .checked_mul(10)
            .and_then(|u| u.checked_add(u128::from(b - b'0')))
            .ok_or_else(out_of_range)?;
    }
    let units = units
        .checked_mul(10u128.pow(shift as u32))
        .filter(|u| *u <= Usd::MAX.units() as u128)
        .ok_or_else(out_of_range)? as i128;
    Usd::from_units(if negative { -units } else { units }).map_err(|_| out_of_range())
}

/// Parses a tally decimal string (`^-?[0-9]+(\.[0-9]+)?$`) exactly.
pub fn parse_decimal_str(text: &str) -> Result<Usd, MoneyError> {
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
pub fn parse_cost_str(text: &str) -> Result<Usd, MoneyError> {
    ensure_cost(parse_decimal_str(text)?)
}

/// Checks that an amount is a valid cost: `>= 0`.
pub fn ensure_cost(value: Usd) -> Result<Usd, MoneyError> {
    if value.is_negative() {
        return Err(MoneyError::Negative(to_decimal_string(&value)));
    }
    Ok(value)
}

/// Checks that an amount of any sign is valid. Every [`Usd`] is (range and
/// precision are guaranteed by construction); kept so callers can state
/// the check where an amount enters.
pub fn ensure_amount(value: Usd) -> Result<Usd, MoneyError> {
    Ok(value)
}

/// Formats an amount as tally's wire form: plain decimal, no exponent, no
/// trailing zeros (`"0.000123"`, `"12"`, `"-0.5"`).
pub fn to_decimal_string(value: &Usd) -> String {
    value.to_string()
}

/// Serde helpers for [`Usd`] fields that are decimal strings on the wire.
///
/// Use as `#[serde(with = "tally_money::serde_usd")]` (any sign) or
/// `tally_money::serde_cost` (`>= 0`); `_opt` variants for `Option<Usd>`
/// (JSON `null` ↔ `None`). Deserialising a JSON number fails with
/// [`MoneyError::NumberNotString`].
pub mod serde_usd {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    use crate::{parse_decimal_str, Usd};

    /// Serialises as a decimal string.
    pub fn serialize<S: Serializer>(value: &Usd, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    /// Deserialises from a decimal string only.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Usd, D::Error> {
        let v = super::de_string(d)?;
        parse_decimal_str(&v).map_err(D::Error::custom)
    }

    /// `Option<Usd>` as a decimal string or `null`.
    pub mod opt {
        use super::*;

        /// Serialises `Some` as a decimal string and `None` as `null`.
        pub fn serialize<S: Serializer>(value: &Option<Usd>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(v) => s.collect_str(v),
                None => s.serialize_none(),
            }
        }

        /// Deserialises a decimal string or `null`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Usd>, D::Error> {
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
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    use crate::{parse_cost_str, Usd};

    /// Serialises as a decimal string.
    pub fn serialize<S: Serializer>(value: &Usd, s: S) -> Result<S::Ok, S::Error> {
        super::serde_usd::serialize(value, s)
    }

    /// Deserialises from a non-negative decimal string only.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Usd, D::Error> {
        let v = super::de_string(d)?;
        parse_cost_str(&v).map_err(D::Error::custom)
    }

    /// `Option<Usd>` cost as a decimal string or `null`.
    pub mod opt {
        use super::*;

        /// Serialises `Some` as a decimal string and `None` as `null`.
        pub fn serialize<S: Serializer>(value: &Option<Usd>, s: S) -> Result<S::Ok, S::Error> {
            super::super::serde_usd::opt::serialize(value, s)
        }

        /// Deserialises a non-negative decimal string or `null`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Usd>, D::Error> {
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
            #[allow(clippy::float_arithmetic)]
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
/// `Option<Usd>` fields of OpenRouter reply types. serde_json must be built
/// with `raw_value` (it is, workspace-wide) so the literal text reaches
/// [`parse_json_number`] untouched; `arbitrary_precision` is not needed.
pub mod json_number {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};
    use serde_json::value::RawValue;

    use crate::{parse_json_number, Usd};

    /// Reads a JSON number literal exactly.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Usd, D::Error> {
        let raw: Box<RawValue> = Box::deserialize(d)?;
        from_raw(&raw).map_err(D::Error::custom)
    }

    /// Writes the amount as a JSON number with its exact digits.
    pub fn serialize<S: Serializer>(value: &Usd, s: S) -> Result<S::Ok, S::Error> {
        use serde::Serialize;
        let text = crate::to_decimal_string(value);
        let raw = RawValue::from_string(text).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }

    /// Parses a raw JSON value that must be a number.
    pub fn from_raw(raw: &RawValue) -> Result<Usd, crate::MoneyError> {
        let text = raw.get();
        if text.starts_with('"') {
            return Err(crate::MoneyError::Syntax(text.to_owned()));
        }
        parse_json_number(text)
    }

    /// Parses a raw JSON value that must be a non-negative number.
    pub fn cost_from_raw(raw: &RawValue) -> Result<crate::Cost, crate::MoneyError> {
        crate::Cost::new(from_raw(raw)?)
    }

    /// `Option<Cost>`: a non-negative JSON number or `null`.
    pub mod cost_opt {
        use super::*;
        use crate::Cost;

        /// Reads a non-negative JSON number literal exactly, or `null`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cost>, D::Error> {
            let amount = super::opt::deserialize(d)?;
            amount.map(Cost::new).transpose().map_err(D::Error::custom)
        }

        /// Writes a JSON number or `null`.
        pub fn serialize<S: Serializer>(value: &Option<Cost>, s: S) -> Result<S::Ok, S::Error> {
            super::opt::serialize(&value.map(Cost::usd), s)
        }
    }

    /// `Option<Usd>`: a JSON number or `null`.
    pub mod opt {
        use super::*;

        /// Reads a JSON number literal exactly, or `null`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Usd>, D::Error> {
            let raw: Option<Box<RawValue>> = Option::deserialize(d)?;
            match raw {
                None => Ok(None),
                Some(r) if r.get() == "null" => Ok(None),
                Some(r) => from_raw(&r).map(Some).map_err(D::Error::custom),
            }
        }

        /// Writes a JSON number or `null`.
        pub fn serialize<S: Serializer>(value: &Option<Usd>, s: S) -> Result<S::Ok, S::Error> {
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
            ("100e-22", "0.00000000000000000001"),
            ("1.4999999999999999e-05", "0.000014999999999999999"),
            ("9.999999999999999e-13", "0.0000000000009999999999999999"),
            ("1e-28", "0.0000000000000000000000000001"),
            ("1.2345678901234567e+9", "1234567890.1234567"),
            ("10000000000", "10000000000"),
            ("-1e10", "-10000000000"),
            (
                "9999999999.9999999999999999999999999999",
                "9999999999.9999999999999999999999999999",
            ),
            (
                "99999999.99999999999999999999",
                "99999999.99999999999999999999",
            ),
        ];
        for (text, want) in cases {
            let got = parse_json_number(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got, usd!(want), "{text}");
            assert_eq!(to_decimal_string(&got), want, "{text}");
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
            parse_json_number("1e-29"),
            Err(MoneyError::TooPrecise { scale: 29, .. })
        ));
        assert!(matches!(
            parse_json_number("9.9999999999999999e-13"),
            Err(MoneyError::TooPrecise { scale: 29, .. })
        ));
        assert!(matches!(
            parse_json_number("0.00000000000000000000000000001"),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(matches!(
            parse_json_number("10000000000.0000000000000000000000000001"),
            Err(MoneyError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_json_number("1.0000000000000001e10"),
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
        // Trailing zeros past the scale are not precision.
        assert_eq!(
            parse_json_number("1.00000000000000000000000000000000").unwrap(),
            Usd::ONE
        );
        assert_eq!(
            parse_json_number("1e10").unwrap().to_string(),
            "10000000000"
        );
    }

    #[test]
    fn decimal_strings_follow_the_contract_pattern() {
        assert_eq!(
            parse_decimal_str("0.000123").unwrap().to_string(),
            "0.000123"
        );
        assert_eq!(parse_decimal_str("-1.5").unwrap().to_string(), "-1.5");
        for bad in [
            "1e-7", "1.", ".1", "+1", "1 ", "", "abc", "1_000", "-", "--1",
        ] {
            assert!(parse_decimal_str(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_cost_str("-0.1").unwrap_err().code(),
            "negative_amount"
        );
        assert_eq!(parse_cost_str("-0").unwrap(), Usd::ZERO);
        assert_eq!(
            parse_decimal_str("0.00000000000000000000000000001")
                .unwrap_err()
                .code(),
            "amount_too_precise"
        );
        assert_eq!(
            parse_decimal_str("10000000001").unwrap_err().code(),
            "amount_out_of_range"
        );
    }

    #[test]
    fn serde_helpers_refuse_numbers_and_write_strings() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct T {
            #[serde(with = "serde_cost")]
            a: Usd,
            #[serde(with = "serde_usd::opt", default)]
            b: Option<Usd>,
            #[serde(default)]
            c: Usd,
        }
        let t: T =
            serde_json::from_str(r#"{"a":"0.0000000000009999999999999999","b":null,"c":"-2"}"#)
                .unwrap();
        assert_eq!(t.a, usd!("0.0000000000009999999999999999"));
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"a":"0.0000000000009999999999999999","b":null,"c":"-2"}"#
        );
        let err = serde_json::from_str::<T>(r#"{"a":0.1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a JSON number"), "{err}");
        let err = serde_json::from_str::<T>(r#"{"a":"0.1","b":2}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a JSON number"), "{err}");
        let err = serde_json::from_str::<T>(r#"{"a":"0.1","c":2}"#)
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
            cost: Option<Usd>,
        }
        let r: R = serde_json::from_str(r#"{"cost":1.425e-7}"#).unwrap();
        assert_eq!(r.cost, Some(usd!("0.0000001425")));
        let r: R = serde_json::from_str(r#"{"cost":1.4999999999999999e-05}"#).unwrap();
        assert_eq!(r.cost, Some(usd!("0.000014999999999999999")));
        let r: R = serde_json::from_str(r#"{"cost":null}"#).unwrap();
        assert_eq!(r.cost, None);
        let r: R = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(r.cost, None);
        assert!(serde_json::from_str::<R>(r#"{"cost":"0.1"}"#).is_err());
    }

    #[test]
    fn from_rust_decimal_is_exact() {
        use std::str::FromStr;
        let x = rust_decimal::Decimal::from_str("0.0000000000000000000000000001").unwrap();
        assert_eq!(Usd::try_from(x).unwrap(), Usd::EPSILON);
        let big = rust_decimal::Decimal::MAX;
        assert_eq!(
            Usd::try_from(big).unwrap_err().code(),
            "amount_out_of_range"
        );
    }
}
