//! [`Usd`]: a signed amount of US dollars, an `i128` count of 10⁻²⁸ USD.
//!
//! # Invariants
//!
//! * Every value is exact: `units / 10^28` USD, nothing else.
//! * The range is symmetric and decimal: `|amount| <= 10^10 USD`
//!   (`|units| <= 10^38`, inside `i128`), so negation and absolute value
//!   never overflow and every bound has a short decimal form.
//! * No operation rounds. Addition, subtraction and multiplication by a
//!   count either give the exact result or a [`MoneyError::Overflow`]
//!   (`amount_overflow`); there are no operator impls that could panic.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::MoneyError;

/// Digits after the decimal point every [`Usd`] carries (fixed point).
pub const SCALE: u32 = 28;

/// `10^SCALE`: the number of units in one dollar.
pub(crate) const UNITS_PER_USD: u128 = 10_000_000_000_000_000_000_000_000_000;

/// `|units|` of the largest amount, 10¹⁰ USD = 10³⁸ units.
pub(crate) const MAX_UNITS: i128 = 100_000_000_000_000_000_000_000_000_000_000_000_000;

const fn in_range(units: i128) -> bool {
    -MAX_UNITS <= units && units <= MAX_UNITS
}

/// A signed, exact amount of US dollars with 28 fractional digits.
///
/// Ordering, equality and hashing are numeric (`0.50 == 0.5`: the
/// representation is unique). Build one by parsing ([`crate::parse_decimal_str`],
/// [`crate::parse_json_number`], [`FromStr`]) or from integers
/// ([`Usd::from_int`], [`Usd::from_parts`]); combine with the `try_`
/// methods, which fail instead of rounding.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Usd(i128);

impl Usd {
    /// Zero dollars.
    pub const ZERO: Usd = Usd(0);
    /// One dollar.
    pub const ONE: Usd = Usd(UNITS_PER_USD as i128);
    /// The largest amount: 10 000 000 000 USD.
    pub const MAX: Usd = Usd(MAX_UNITS);
    /// The smallest amount (`-MAX`).
    pub const MIN: Usd = Usd(-MAX_UNITS);
    /// The smallest positive amount, 10⁻²⁸ USD.
    pub const EPSILON: Usd = Usd(1);

    /// The amount of `units` × 10⁻²⁸ USD; fails past ±10³⁸ units.
    pub const fn from_units(units: i128) -> Result<Usd, MoneyError> {
        if in_range(units) {
            Ok(Usd(units))
        } else {
            Err(MoneyError::Overflow { op: "from_units" })
        }
    }

    /// The raw count of 10⁻²⁸ USD.
    pub const fn units(self) -> i128 {
        self.0
    }

    /// A whole number of dollars.
    pub fn from_int(dollars: i64) -> Result<Usd, MoneyError> {
        Usd::from_parts(i128::from(dollars), 0)
    }

    /// `mantissa × 10^-scale` USD, exactly (like `Decimal::new`, but
    /// fallible: too many fractional digits or too large a value fail).
    pub fn from_parts(mantissa: i128, scale: u32) -> Result<Usd, MoneyError> {
        let text = || format!("{mantissa}e-{scale}");
        if scale > SCALE {
            let drop = scale - SCALE;
            let p = 10i128
                .checked_pow(drop)
                .ok_or_else(|| MoneyError::TooPrecise {
                    text: text(),
                    scale,
                })?;
            if mantissa % p != 0 {
                return Err(MoneyError::TooPrecise {
                    text: text(),
                    scale,
                });
            }
            return Usd::from_units(mantissa / p).map_err(|_| MoneyError::OutOfRange(text()));
        }
        let p = 10i128.pow(SCALE - scale);
        mantissa
            .checked_mul(p)
            .filter(|u| in_range(*u))
            .map(Usd)
            .ok_or_else(|| MoneyError::OutOfRange(text()))
    }

    /// `mantissa × 10^-scale` USD for **constants** (the `Decimal::new`
    /// spelling). Data goes through [`Usd::from_parts`] or the parsers.
    ///
    /// # Panics
    ///
    /// If the value needs more than 28 fractional digits or is out of range.
    pub fn new(mantissa: i64, scale: u32) -> Usd {
        match Usd::from_parts(i128::from(mantissa), scale) {
            Ok(v) => v,
            Err(e) => panic!("Usd::new({mantissa}, {scale}): {e}"),
        }
    }

    /// The same amount: the representation is already unique (kept so code
    /// written against `Decimal` reads the same).
    pub const fn normalize(self) -> Usd {
        self
    }

    /// True for zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// True below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// True below zero (the `rust_decimal` spelling of [`Usd::is_negative`];
    /// unlike `Decimal`, zero has no sign).
    pub const fn is_sign_negative(self) -> bool {
        self.0 < 0
    }

    /// True above zero.
    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// The absolute value (never overflows: the range is symmetric).
    pub const fn abs(self) -> Usd {
        Usd(self.0.abs())
    }

    /// The negated amount (never overflows: the range is symmetric).
    #[allow(clippy::should_implement_trait)]
    pub const fn neg(self) -> Usd {
        Usd(-self.0)
    }

    /// `self + other`, or `None` past the range.
    pub fn checked_add(self, other: Usd) -> Option<Usd> {
        self.0
            .checked_add(other.0)
            .filter(|u| in_range(*u))
            .map(Usd)
    }

    /// `self - other`, or `None` past the range.
    pub fn checked_sub(self, other: Usd) -> Option<Usd> {
        self.0
            .checked_sub(other.0)
            .filter(|u| in_range(*u))
            .map(Usd)
    }

    /// `self × count`, or `None` past the range.
    pub fn checked_mul_int(self, count: u64) -> Option<Usd> {
        self.0
            .checked_mul(i128::from(count))
            .filter(|u| in_range(*u))
            .map(Usd)
    }

    /// `self + other`, exactly, or [`MoneyError::Overflow`].
    pub fn try_add(self, other: Usd) -> Result<Usd, MoneyError> {
        self.checked_add(other)
            .ok_or(MoneyError::Overflow { op: "add" })
    }

    /// `self - other`, exactly, or [`MoneyError::Overflow`].
    pub fn try_sub(self, other: Usd) -> Result<Usd, MoneyError> {
        self.checked_sub(other)
            .ok_or(MoneyError::Overflow { op: "subtract" })
    }

    /// `self × count`, exactly, or [`MoneyError::Overflow`].
    pub fn try_mul_int(self, count: u64) -> Result<Usd, MoneyError> {
        self.checked_mul_int(count)
            .ok_or(MoneyError::Overflow { op: "multiply" })
    }

    /// The exact sum of `amounts`, or [`MoneyError::Overflow`] as soon as a
    /// partial sum leaves the range (an intermediate overflow fails even if
    /// later negative terms would bring the total back: fail loudly, never
    /// guess).
    pub fn try_sum<I: IntoIterator<Item = Usd>>(amounts: I) -> Result<Usd, MoneyError> {
        amounts
            .into_iter()
            .try_fold(Usd::ZERO, |acc, x| acc.try_add(x))
    }

    /// Adds `other` in place, exactly, or fails leaving `self` unchanged.
    pub fn try_add_assign(&mut self, other: Usd) -> Result<(), MoneyError> {
        *self = self.try_add(other)?;
        Ok(())
    }

    /// Digits after the decimal point of the shortest exact decimal form
    /// (`0.5` → 1, `12` → 0, `1e-28` → 28).
    pub fn scale(self) -> u32 {
        if self.0 == 0 {
            return 0;
        }
        let mut u = self.0.unsigned_abs();
        let mut zeros = 0;
        while zeros < SCALE && u % 10 == 0 {
            u /= 10;
            zeros += 1;
        }
        SCALE - zeros
    }

    /// The nearest `f64`, **for metrics and figures only** (Prometheus
    /// values are floats). Never feed it back into money: it is correctly
    /// rounded from the exact decimal text, and therefore inexact.
    pub fn to_f64_lossy(self) -> f64 {
        self.to_string().parse().unwrap_or(0.0)
    }

    /// `self / den` as an `f64` (exact long division to 20 fractional
    /// digits, then one rounding), **for metrics only**; `None` for a zero
    /// denominator.
    pub fn ratio_lossy(self, den: Usd) -> Option<f64> {
        if den.0 == 0 {
            return None;
        }
        let negative = (self.0 < 0) != (den.0 < 0) && self.0 != 0;
        let (mut a, mut b) = (self.0.unsigned_abs(), den.0.unsigned_abs());
        // Keep 10 × remainder inside u128; the lost low bits are far below
        // an f64's precision.
        while b > u128::MAX / 10 {
            a >>= 4;
            b >>= 4;
        }
        let mut text = String::with_capacity(64);
        if negative {
            text.push('-');
        }
        text.push_str(&(a / b).to_string());
        text.push('.');
        let mut r = a % b;
        for _ in 0..20 {
            let x = r * 10;
            text.push(char::from(b'0' + (x / b) as u8));
            r = x % b;
        }
        text.parse().ok()
    }

    /// Compares `self` with `limit × pct / 100`, exactly, for any `limit`
    /// and `pct` (the level may lie outside [`Usd`]'s range; the comparison
    /// still holds). Used for budget thresholds.
    pub fn cmp_percent_of(self, limit: Usd, pct: u32) -> Ordering {
        // level = limit × pct / 100 = (q × pct) + (r × pct) / 100 with
        // limit = 100 q + r, |r| < 100, all in units.
        let negative = limit.0 < 0 && pct != 0;
        let mag = limit.0.unsigned_abs();
        let (q, r) = (mag / 100, mag % 100);
        let rp = r * u128::from(pct); // < 100 × 2^32
        let whole = q
            .checked_mul(u128::from(pct))
            .and_then(|w| w.checked_add(rp / 100));
        let has_frac = rp % 100 != 0;
        // |level| = whole + (has_frac ? a fraction in (0, 1) : 0) units.
        let Some(whole) = whole.filter(|w| *w <= MAX_UNITS as u128) else {
            // |level| > every |amount|.
            return if negative {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        };
        let whole = whole as i128;
        if negative {
            // level = -(whole + f): self vs that.
            match self.0.cmp(&-whole) {
                Ordering::Less => Ordering::Less,
                Ordering::Equal if has_frac => Ordering::Greater,
                o => o,
            }
        } else {
            match self.0.cmp(&whole) {
                Ordering::Equal if has_frac => Ordering::Less,
                o => o,
            }
        }
    }
}

macro_rules! from_small_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Usd {
            /// Whole dollars; every value of this type is in range.
            fn from(v: $t) -> Usd {
                Usd(i128::from(v) * UNITS_PER_USD as i128)
            }
        }
    )*};
}
from_small_int!(u8, u16, u32, i8, i16, i32);

impl std::ops::Neg for Usd {
    type Output = Usd;
    fn neg(self) -> Usd {
        Usd(-self.0)
    }
}

impl fmt::Display for Usd {
    /// tally's wire form: plain decimal, no exponent, no trailing zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mag = self.0.unsigned_abs();
        let int = mag / UNITS_PER_USD;
        let frac = mag % UNITS_PER_USD;
        let sign = if self.0 < 0 { "-" } else { "" };
        if frac == 0 {
            return write!(f, "{sign}{int}");
        }
        let digits = format!("{frac:028}");
        write!(f, "{sign}{int}.{}", digits.trim_end_matches('0'))
    }
}

impl fmt::Debug for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Usd({self})")
    }
}

impl FromStr for Usd {
    type Err = MoneyError;

    /// A tally decimal string (`^-?[0-9]+(\.[0-9]+)?$`).
    fn from_str(s: &str) -> Result<Usd, MoneyError> {
        crate::parse_decimal_str(s)
    }
}

impl TryFrom<rust_decimal::Decimal> for Usd {
    type Error = MoneyError;

    /// Exact: a `Decimal` has at most 28 fractional digits, so only its
    /// magnitude can fail (`amount_out_of_range`).
    fn try_from(d: rust_decimal::Decimal) -> Result<Usd, MoneyError> {
        Usd::from_parts(d.mantissa(), d.scale())
    }
}

impl serde::Serialize for Usd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Usd {
    /// A decimal string of any sign; a JSON number is refused
    /// (`amount_not_string`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Usd, D::Error> {
        crate::serde_usd::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Usd {
        s.parse().unwrap()
    }

    #[test]
    fn arithmetic_is_exact_or_fails() {
        assert_eq!(
            u("0.1").try_add(u("0.2")).unwrap(),
            u("0.3"),
            "no binary fractions"
        );
        assert_eq!(
            Usd::MAX.try_add(Usd::EPSILON).unwrap_err().code(),
            "amount_overflow"
        );
        assert_eq!(
            Usd::MIN.try_sub(Usd::EPSILON).unwrap_err().code(),
            "amount_overflow"
        );
        assert_eq!(
            Usd::MAX.try_mul_int(2).unwrap_err().code(),
            "amount_overflow"
        );
        assert_eq!(u("1.5").try_mul_int(3).unwrap(), u("4.5"));
        assert_eq!(-Usd::MAX, Usd::MIN);
        assert_eq!(Usd::MIN.abs(), Usd::MAX);
        assert_eq!(
            Usd::from_units(i128::MIN).unwrap_err().code(),
            "amount_overflow"
        );
        assert_eq!(
            Usd::from_units(MAX_UNITS + 1).unwrap_err().code(),
            "amount_overflow"
        );
        assert_eq!(Usd::MAX.to_string(), "10000000000");
        assert_eq!(Usd::MIN.to_string(), "-10000000000");
        assert_eq!(
            Usd::MAX.try_sub(Usd::EPSILON).unwrap().to_string(),
            "9999999999.9999999999999999999999999999"
        );
    }

    #[test]
    fn from_parts_is_exact() {
        assert_eq!(Usd::from_parts(15, 1).unwrap(), u("1.5"));
        assert_eq!(
            Usd::from_parts(300, 30).unwrap(),
            u("0.0000000000000000000000000003")
        );
        assert_eq!(
            Usd::from_parts(151, 30).unwrap_err().code(),
            "amount_too_precise"
        );
        assert_eq!(
            Usd::from_parts(1, 29).unwrap_err().code(),
            "amount_too_precise"
        );
        assert_eq!(
            Usd::from_int(10_000_000_001).unwrap_err().code(),
            "amount_out_of_range"
        );
        assert_eq!(Usd::from_int(-3).unwrap(), u("-3"));
    }

    #[test]
    fn lossy_figures_for_metrics() {
        assert_eq!(u("1.5").ratio_lossy(u("3")), Some(0.5));
        assert_eq!(u("-1").ratio_lossy(u("4")), Some(-0.25));
        assert_eq!(Usd::MAX.ratio_lossy(Usd::MAX), Some(1.0));
        assert_eq!(u("1").ratio_lossy(Usd::ZERO), None);
        assert_eq!(u("0.25").to_f64_lossy(), 0.25);
    }

    #[test]
    fn scale_counts_significant_fractional_digits() {
        assert_eq!(u("0").scale(), 0);
        assert_eq!(u("12").scale(), 0);
        assert_eq!(u("0.5").scale(), 1);
        assert_eq!(u("0.0000000000000000000000000001").scale(), 28);
    }

    #[test]
    fn percent_comparison_is_exact() {
        use Ordering::{Equal, Greater, Less};
        // 333 % of a 28-digit limit is 332999999.9999999999999999999667.
        let limit = u("99999999.99999999999999999999");
        // Negative limits: 50 % of this one is -1.5e-28.
        let neg = u("-0.0000000000000000000000000003");
        for (spent, limit, percent, expected) in [
            (u("332999999.99999999999999999996"), limit, 333, Less),
            (u("332999999.99999999999999999997"), limit, 333, Greater),
            (u("999999999.9999999999999999999"), limit, 1000, Equal),
            // Level beyond the range: everything is below it.
            (Usd::MAX, Usd::MAX, 101, Less),
            (Usd::MAX, Usd::MAX, 100, Equal),
            (u("1"), u("0.01"), 50, Greater),
            // Levels of a fraction of a unit: 1e-28 × 50 % = 0.5e-28.
            (Usd::ZERO, Usd::EPSILON, 50, Less),
            (Usd::EPSILON, Usd::EPSILON, 50, Greater),
            (u("-0.0000000000000000000000000001"), neg, 50, Greater),
            (u("-0.0000000000000000000000000002"), neg, 50, Less),
            (Usd::ZERO, neg, 0, Equal),
        ] {
            assert_eq!(
                spent.cmp_percent_of(limit, percent),
                expected,
                "{spent} against {percent} % of {limit}"
            );
        }
    }
}
