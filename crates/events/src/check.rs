//! Field checks shared by every payload, mirroring the `$defs` of the JSON
//! Schemas in `schemas/` (ids, references, codes, money, timestamps).
//!
//! # Invariants
//!
//! * Each helper enforces exactly what the schema definition of the same
//!   name enforces, so a payload that passes [`crate::Payload::validate`]
//!   serialises to JSON that its schema accepts (the contract tests prove it
//!   on examples and on mutations of them).
//! * Field names passed in are full paths from the envelope root
//!   (`data.usage.prompt_tokens`).
//!
//! # Decisions
//!
//! * **Hand-written checks, no regex.** The patterns are tiny; byte loops
//!   are cheaper than a regex engine on the hot decode path and obviously
//!   correct.
//! * **Strict RFC 3339.** Timestamps are read with
//!   `DateTime::parse_from_rfc3339`, not chrono's lenient `FromStr`, to
//!   match the schemas' `format: date-time`.

use tally_money::Usd;

use crate::EventError;

/// Longest opaque reference (generation ids, names, scope ids), in characters.
pub(crate) const MAX_REF_CHARS: usize = 256;
/// Longest envelope `id`, `source` and `subject`, in characters.
pub(crate) const MAX_ATTR_CHARS: usize = 512;

/// `^[A-Za-z0-9_-]{1,64}$`: ids that may be NATS subject tokens.
pub fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `^[a-z][a-z0-9_]{0,63}$`: machine-readable reason codes.
pub(crate) fn is_valid_code(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// A NATS subject without wildcards: dot-separated tokens of `[A-Za-z0-9_-]`.
pub(crate) fn is_plain_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

pub(crate) fn id(field: &str, value: &str) -> Result<(), EventError> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(EventError::InvalidId {
            field: field.to_owned(),
            value: crate::strict::excerpt(value),
        })
    }
}

pub(crate) fn opt_id(field: &str, value: Option<&str>) -> Result<(), EventError> {
    value.map_or(Ok(()), |v| id(field, v))
}

/// Non-empty, at most `max` characters, no control character.
pub(crate) fn text(field: &str, value: &str, max: usize) -> Result<(), EventError> {
    if value.is_empty() {
        return Err(EventError::data(field, "must not be empty"));
    }
    if crate::strict::has_control(value) {
        return Err(EventError::ControlCharacter {
            field: field.to_owned(),
        });
    }
    if value.chars().count() > max {
        return Err(EventError::data(
            field,
            format!("longer than {max} characters"),
        ));
    }
    Ok(())
}

/// A reference: non-empty, at most 256 characters.
pub(crate) fn reference(field: &str, value: &str) -> Result<(), EventError> {
    text(field, value, MAX_REF_CHARS)
}

pub(crate) fn opt_reference(field: &str, value: Option<&str>) -> Result<(), EventError> {
    value.map_or(Ok(()), |v| reference(field, v))
}

pub(crate) fn code(field: &str, value: &str) -> Result<(), EventError> {
    if is_valid_code(value) {
        Ok(())
    } else {
        Err(EventError::data(
            field,
            format!(
                "{:?} is not a snake_case code (^[a-z][a-z0-9_]{{0,63}}$)",
                crate::strict::excerpt(value)
            ),
        ))
    }
}

/// A list of references (`null` is fine; items non-empty, ≤ 256 characters).
pub(crate) fn opt_list(field: &str, value: Option<&[String]>) -> Result<(), EventError> {
    for (i, item) in value.unwrap_or_default().iter().enumerate() {
        reference(&format!("{field}[{i}]"), item)?;
    }
    Ok(())
}

pub(crate) fn cost(field: &str, value: &Usd) -> Result<(), EventError> {
    tally_money::ensure_cost(*value)
        .map(|_| ())
        .map_err(|source| EventError::InvalidMoney {
            field: field.to_owned(),
            source,
        })
}

pub(crate) fn amount(field: &str, value: &Usd) -> Result<(), EventError> {
    tally_money::ensure_amount(*value)
        .map(|_| ())
        .map_err(|source| EventError::InvalidMoney {
            field: field.to_owned(),
            source,
        })
}

pub(crate) fn range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), EventError> {
    if value < min || value > max {
        return Err(EventError::data(
            field,
            format!("{value} is outside {min}..={max}"),
        ));
    }
    Ok(())
}

/// An event time that decides a budget period must lie in the accepted
/// window (see [`crate::time`]); reads the clock for its upper bound.
pub(crate) fn event_time(field: &str, t: &chrono::DateTime<chrono::Utc>) -> Result<(), EventError> {
    match crate::time::window_violation(*t, chrono::Utc::now()) {
        None => Ok(()),
        Some(reason) => Err(EventError::TimeOutOfRange {
            field: field.to_owned(),
            reason,
        }),
    }
}

/// Serde helper for *required* nullable fields: `Option<T>` that must be
/// present in the JSON (possibly as `null`). Serde treats a missing
/// `Option` field as `None` unless a `deserialize_with` is given; this is
/// that `deserialize_with`.
pub(crate) fn required_nullable<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d)
}

/// Parses an RFC 3339 timestamp strictly into a normalised UTC instant
/// (see [`crate::time`]).
pub(crate) fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    crate::time::parse_rfc3339(text)
}

/// Formats a timestamp as RFC 3339 in UTC (`2025-05-01T12:00:02.500Z`).
pub(crate) fn format_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    crate::time::format(t)
}

/// Serde helper for `DateTime<Utc>` fields: strict RFC 3339 in, UTC `Z` out.
pub(crate) mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_time(&text).map_err(D::Error::custom)
    }
}

/// Defines a fieldless wire enum: snake_case serde names, `as_str`,
/// `Display`, `FromStr` (error [`crate::UnknownVariant`]) and `ALL`.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire (and database) spelling.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::UnknownVariant;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    _ => Err($crate::UnknownVariant {
                        kind: stringify!($name),
                        value: s.to_owned(),
                    }),
                }
            }
        }
    };
}
pub(crate) use wire_enum;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "acme", "org_B-2", &"x".repeat(64)] {
            assert!(is_valid_id(ok), "{ok}");
        }
        for bad in ["", "a.b", "a b", "a*", ">", "é", &"x".repeat(65)] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn codes_and_subjects() {
        assert!(is_valid_code("deadline_exceeded"));
        assert!(is_valid_code("e2"));
        for bad in ["", "Deadline", "_x", "2x", "a-b", "a b"] {
            assert!(!is_valid_code(bad), "{bad}");
        }
        assert!(is_plain_subject("_INBOX.acme.9f2c"));
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.>", "a b"] {
            assert!(!is_plain_subject(bad), "{bad}");
        }
    }

    #[test]
    fn times_are_strict_rfc3339() {
        let t = parse_time("2025-05-01T14:00:02.5+02:00").unwrap();
        assert_eq!(format_time(&t), "2025-05-01T12:00:02.500Z");
        for bad in [
            "2025-05-01",
            "yesterday",
            "2025-05-01T12:00:00",
            "2025-05-01 12:00:00Z",
            "",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
