//! [`Usd`] as Postgres `NUMERIC`, in both directions, without loss.
//!
//! The binary `NUMERIC` format is base-10000 digits with a weight (the
//! power of 10000 of the first digit), a sign and a display scale. `Usd`'s
//! scale of 28 is exactly 7 base-10000 digits, so encoding is a base
//! conversion of the unit count and decoding is its inverse.
//!
//! # Invariants
//!
//! * Encoding is exact and sends the true display scale, so Postgres never
//!   truncates (it drops digits hidden by a too-small display scale).
//! * Decoding refuses — as a decode error naming the money code — `NaN`,
//!   infinities, values beyond [`Usd::MAX`] (`amount_out_of_range`) and
//!   values with non-zero digits past the 28th fractional place
//!   (`amount_too_precise`). It never rounds.

use sqlx::decode::Decode;
use sqlx::encode::{Encode, IsNull};
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{
    PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueFormat, PgValueRef, Postgres,
};
use sqlx::Type;

use crate::{MoneyError, Usd};

const NUMERIC_OID: Oid = Oid(1700);
const NUMERIC_ARRAY_OID: Oid = Oid(1231);
const SIGN_POS: u16 = 0x0000;
const SIGN_NEG: u16 = 0x4000;
/// Base-10000 digits after the point: `SCALE / 4`.
const FRAC_GROUPS: i32 = 7;

impl Type<Postgres> for Usd {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(NUMERIC_OID)
    }
}

impl PgHasArrayType for Usd {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(NUMERIC_ARRAY_OID)
    }
}

impl Encode<'_, Postgres> for Usd {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&encode_numeric(*self));
        Ok(IsNull::No)
    }

    fn size_hint(&self) -> usize {
        8 + 2 * 10
    }
}

impl<'r> Decode<'r, Postgres> for Usd {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => Ok(decode_numeric(value.as_bytes()?)?),
            PgValueFormat::Text => Ok(crate::parse_decimal_str(value.as_str()?)?),
        }
    }
}

/// The binary `NUMERIC` wire form of `value`.
pub(crate) fn encode_numeric(value: Usd) -> Vec<u8> {
    let mut mag = value.units().unsigned_abs();
    // Base-10000 groups, least significant first; group j has weight j - 7.
    let mut groups: Vec<i16> = Vec::with_capacity(10);
    while mag > 0 {
        groups.push((mag % 10_000) as i16);
        mag /= 10_000;
    }
    // Trailing (least significant) zero groups carry no information.
    let low_zeros = groups.iter().take_while(|g| **g == 0).count();
    let digits: Vec<i16> = groups[low_zeros..].iter().rev().copied().collect();
    let weight: i16 = if digits.is_empty() {
        0
    } else {
        (groups.len() as i32 - 1 - FRAC_GROUPS) as i16
    };
    let dscale = value.scale() as u16;
    let sign = if value.is_negative() {
        SIGN_NEG
    } else {
        SIGN_POS
    };
    let mut out = Vec::with_capacity(8 + 2 * digits.len());
    out.extend_from_slice(&(digits.len() as u16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

/// A [`Usd`] from the binary `NUMERIC` wire form, exactly or not at all.
pub(crate) fn decode_numeric(buf: &[u8]) -> Result<Usd, MoneyError> {
    let bad = || MoneyError::Syntax(format!("malformed NUMERIC ({} bytes)", buf.len()));
    let word = |i: usize| -> Result<u16, MoneyError> {
        buf.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(bad)
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(2)? as i16);
    let sign = word(4)?;
    if buf.len() != 8 + 2 * ndigits {
        return Err(bad());
    }
    let negative = match sign {
        SIGN_POS => false,
        SIGN_NEG => true,
        _ => return Err(MoneyError::Syntax("NUMERIC NaN or infinity".into())),
    };
    let out_of_range = || MoneyError::OutOfRange(format!("NUMERIC with weight {weight}"));
    let mut units: u128 = 0;
    for i in 0..ndigits {
        let digit = word(8 + 2 * i)?;
        if digit >= 10_000 {
            return Err(bad());
        }
        // This digit's power of 10000, counted in units (10^-28 USD).
        let pos = weight - i as i32 + FRAC_GROUPS;
        if pos < 0 {
            if digit != 0 {
                return Err(MoneyError::TooPrecise {
                    text: format!("NUMERIC digit at 10000^{}", weight - i as i32),
                    scale: (4 * (-(weight - i as i32))) as u32,
                });
            }
            continue;
        }
        let p = 10_000u128.checked_pow(pos as u32).ok_or_else(out_of_range);
        if digit == 0 {
            continue;
        }
        units = u128::from(digit)
            .checked_mul(p?)
            .and_then(|x| units.checked_add(x))
            .ok_or_else(out_of_range)?;
    }
    if units > Usd::MAX.units() as u128 {
        return Err(out_of_range());
    }
    let units = units as i128;
    Usd::from_units(if negative { -units } else { units })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        for s in [
            "0",
            "1",
            "-1",
            "0.5",
            "10000",
            "0.0001",
            "0.0000000000000000000000000001",
            "0.0000000000009999999999999999",
            "799999999.99999999999999999992",
            "-10000000000",
            "9999999999.9999999999999999999999999999",
            "12345.6789",
        ] {
            let v: Usd = s.parse().unwrap();
            let bytes = encode_numeric(v);
            assert_eq!(decode_numeric(&bytes).unwrap(), v, "{s}");
        }
    }

    #[test]
    fn encoding_matches_postgres_layout() {
        // 12345.6789 = [1, 2345, 6789], weight 1, dscale 4.
        let b = encode_numeric("12345.6789".parse().unwrap());
        assert_eq!(b, [0, 3, 0, 1, 0, 0, 0, 4, 0, 1, 0x09, 0x29, 0x1a, 0x85]);
        // 0.5 = [5000], weight -1, dscale 1.
        let b = encode_numeric("0.5".parse().unwrap());
        assert_eq!(b, [0, 1, 0xff, 0xff, 0, 0, 0, 1, 0x13, 0x88]);
        // 0 = no digits.
        assert_eq!(encode_numeric(Usd::ZERO), [0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn decoding_refuses_what_it_cannot_hold() {
        // 1e-32: one digit at weight -8.
        let b = [0, 1, 0xff, 0xf8, 0, 0, 0, 32, 0, 1];
        assert_eq!(decode_numeric(&b).unwrap_err().code(), "amount_too_precise");
        // 1e12: digit 1 at weight 3.
        let b = [0, 1, 0, 3, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            decode_numeric(&b).unwrap_err().code(),
            "amount_out_of_range"
        );
        // NaN.
        let b = [0, 0, 0, 0, 0xc0, 0, 0, 0];
        assert_eq!(decode_numeric(&b).unwrap_err().code(), "invalid_amount");
        // Truncated.
        assert_eq!(
            decode_numeric(&[0, 2, 0, 0]).unwrap_err().code(),
            "invalid_amount"
        );
        // Zero digits past the scale are fine: 1.0000...0 with a long dscale.
        let b = [0, 1, 0, 0, 0, 0, 0, 40, 0, 1];
        assert_eq!(decode_numeric(&b).unwrap(), Usd::ONE);
    }
}
