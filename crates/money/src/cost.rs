//! [`Cost`]: what something cost, an amount that is never negative.
//!
//! # Invariants
//!
//! * A `Cost` holds a [`Usd`] that is `>= 0`; every way to build one
//!   ([`Cost::new`], [`FromStr`], serde, Postgres decoding, the `try_`
//!   sums) checks it once, so code that holds a `Cost` never checks again.
//! * Sums of costs stay costs (`try_add`, `try_sum`, `try_mul_int`); a
//!   difference of two costs may be negative and is therefore a [`Usd`]
//!   ([`Cost::minus`]).
//! * On the wire a cost is a decimal string like every amount; a JSON
//!   number is refused (`amount_not_string`), a negative text is refused
//!   (`negative_amount`). OpenRouter's JSON-number costs enter through
//!   [`Cost::from_json_number`].

use std::fmt;
use std::str::FromStr;

use crate::{MoneyError, Usd};

/// A non-negative, exact amount of US dollars: a generation's cost, a
/// price, a budget's limit or spend.
///
/// Ordering, equality and hashing are those of the amount.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cost(Usd);

impl Cost {
    /// Nothing.
    pub const ZERO: Cost = Cost(Usd::ZERO);
    /// One dollar.
    pub const ONE: Cost = Cost(Usd::ONE);
    /// The largest cost, 10¹⁰ USD ([`Usd::MAX`]).
    pub const MAX: Cost = Cost(Usd::MAX);

    /// The amount as a cost; a negative amount is refused
    /// ([`MoneyError::Negative`], `negative_amount`).
    pub fn new(amount: Usd) -> Result<Cost, MoneyError> {
        if amount.is_negative() {
            return Err(MoneyError::Negative(amount.to_string()));
        }
        Ok(Cost(amount))
    }

    /// Reads an OpenRouter JSON number literal (`1.425e-7`) exactly, as a
    /// cost.
    pub fn from_json_number(text: &str) -> Result<Cost, MoneyError> {
        Cost::new(crate::parse_json_number(text)?)
    }

    /// The amount, for sums with signed amounts.
    pub const fn usd(self) -> Usd {
        self.0
    }

    /// True for zero.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// True above zero.
    pub const fn is_positive(self) -> bool {
        self.0.is_positive()
    }

    /// `self + other`; fails past [`Cost::MAX`] (`amount_overflow`).
    pub fn try_add(self, other: Cost) -> Result<Cost, MoneyError> {
        self.0.try_add(other.0).map(Cost)
    }

    /// `self × count`; fails past [`Cost::MAX`] (`amount_overflow`).
    pub fn try_mul_int(self, count: u64) -> Result<Cost, MoneyError> {
        self.0.try_mul_int(count).map(Cost)
    }

    /// The sum of costs; fails past [`Cost::MAX`] (`amount_overflow`).
    pub fn try_sum<I: IntoIterator<Item = Cost>>(costs: I) -> Result<Cost, MoneyError> {
        costs.into_iter().try_fold(Cost::ZERO, Cost::try_add)
    }

    /// `self - other`, a signed amount (a true-up, a remainder); never
    /// overflows, since both lie in `0..=MAX`.
    pub fn minus(self, other: Cost) -> Usd {
        // Both are in [0, MAX], so the difference is in [-MAX, MAX].
        self.0.checked_sub(other.0).unwrap_or(Usd::ZERO)
    }

    /// `self - other` when that is still a cost (`other <= self`).
    pub fn checked_sub(self, other: Cost) -> Option<Cost> {
        (other <= self).then(|| Cost(self.minus(other)))
    }
}

impl From<Cost> for Usd {
    fn from(cost: Cost) -> Usd {
        cost.0
    }
}

impl TryFrom<Usd> for Cost {
    type Error = MoneyError;

    fn try_from(amount: Usd) -> Result<Cost, MoneyError> {
        Cost::new(amount)
    }
}

impl PartialEq<Usd> for Cost {
    fn eq(&self, other: &Usd) -> bool {
        self.0 == *other
    }
}

impl PartialEq<Cost> for Usd {
    fn eq(&self, other: &Cost) -> bool {
        *self == other.0
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl FromStr for Cost {
    type Err = MoneyError;

    /// A non-negative tally decimal string (`^[0-9]+(\.[0-9]+)?$`).
    fn from_str(s: &str) -> Result<Cost, MoneyError> {
        Cost::new(crate::parse_decimal_str(s)?)
    }
}

impl serde::Serialize for Cost {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cost {
    /// A non-negative decimal string; a JSON number is refused
    /// (`amount_not_string`), a negative one too (`negative_amount`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cost, D::Error> {
        crate::serde_cost::deserialize(d).map(Cost)
    }
}

#[cfg(feature = "sqlx")]
mod pg {
    use sqlx::decode::Decode;
    use sqlx::encode::{Encode, IsNull};
    use sqlx::error::BoxDynError;
    use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef, Postgres};
    use sqlx::Type;

    use super::Cost;
    use crate::Usd;

    impl Type<Postgres> for Cost {
        fn type_info() -> PgTypeInfo {
            <Usd as Type<Postgres>>::type_info()
        }
    }

    impl PgHasArrayType for Cost {
        fn array_type_info() -> PgTypeInfo {
            <Usd as PgHasArrayType>::array_type_info()
        }
    }

    impl Encode<'_, Postgres> for Cost {
        fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
            self.0.encode_by_ref(buf)
        }

        fn size_hint(&self) -> usize {
            self.0.size_hint()
        }
    }

    impl<'r> Decode<'r, Postgres> for Cost {
        /// A stored negative value is a decode error (`negative_amount`),
        /// never a cost.
        fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
            Ok(Cost::new(Usd::decode(value)?)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost;

    #[test]
    fn only_non_negative_amounts_are_costs() {
        assert_eq!(cost!("0.000123").to_string(), "0.000123");
        assert_eq!(cost!("0"), Cost::ZERO);
        assert_eq!(
            "-0.000001".parse::<Cost>().unwrap_err().code(),
            "negative_amount"
        );
        assert_eq!(
            Cost::new(-Usd::EPSILON).unwrap_err().code(),
            "negative_amount"
        );
        assert_eq!(
            Cost::from_json_number("1.425e-7").unwrap(),
            cost!("0.0000001425")
        );
        assert_eq!(
            Cost::from_json_number("-1e-7").unwrap_err().code(),
            "negative_amount"
        );
    }

    #[test]
    fn sums_stay_costs_and_differences_are_signed() {
        assert_eq!(cost!("0.1").try_add(cost!("0.2")).unwrap(), cost!("0.3"));
        assert_eq!(
            Cost::MAX.try_add(cost!("0.0000000001")).unwrap_err().code(),
            "amount_overflow"
        );
        assert_eq!(
            Cost::try_sum([cost!("1"), cost!("2.5")]).unwrap(),
            cost!("3.5")
        );
        assert_eq!(cost!("1.5").try_mul_int(3).unwrap(), cost!("4.5"));
        assert_eq!(
            cost!("1").minus(cost!("1.25")),
            "-0.25".parse::<Usd>().unwrap()
        );
        assert_eq!(Cost::ZERO.minus(Cost::MAX), Usd::MIN);
        assert_eq!(cost!("1").checked_sub(cost!("1.25")), None);
        assert_eq!(cost!("1.25").checked_sub(cost!("1")), Some(cost!("0.25")));
    }

    #[test]
    fn wire_form_is_a_non_negative_decimal_string() {
        assert_eq!(
            serde_json::to_string(&cost!("0.000123")).unwrap(),
            "\"0.000123\""
        );
        assert_eq!(
            serde_json::from_str::<Cost>("\"0.5\"").unwrap(),
            cost!("0.5")
        );
        for (text, code) in [
            ("0.5", "JSON string"),
            ("\"-0.5\"", "negative"),
            ("\"1e-3\"", "not a decimal"),
        ] {
            let e = serde_json::from_str::<Cost>(text).unwrap_err().to_string();
            assert!(e.contains(code), "{text}: {e}");
        }
    }
}
