//! The JSON shapes the API answers with, and the input checks shared by the
//! handlers.
//!
//! Money is always a decimal string (`tally_money::serde_usd`), times are
//! RFC 3339 in UTC.
//!
//! # Decisions
//!
//! * **`remaining_usd` is clamped at zero.** "Remaining" is what may still
//!   be spent; a negative remainder would read as a credit. How far a period
//!   overshot its limit (a late actual can push it past) is reported
//!   separately as `over_by_usd`, so nothing is hidden.
//! * **Past periods are measured against the current limit.** Budgets keep
//!   no history of their limits; the spend figures themselves are exact.
//! * **`available_usd` = limit − spent − reserved, clamped at zero.** It is
//!   what a new generation may still hold: `reserved_usd` is the worst case
//!   of the generations running now (their holds), so a hard budget admits
//!   a request only when its worst case fits in `available_usd`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tally_budget::{is_exhausted, Enforcement, Period, PeriodKind, Scope};
use tally_ledger::Basis;
use tally_money::{Cost, Usd};
use tally_store::queries::{EntryRow, PeriodTotals};
use tally_store::Budget;

use crate::error::ApiError;
use crate::openapi::{BasisDoc, EnforcementDoc, EntryKindDoc, PeriodKindDoc, ScopeDoc, UsdDoc};

/// Longest generation id accepted in a path.
const MAX_GENERATION_ID_LEN: usize = 256;

/// A budget period with its totals.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Period)]
pub(crate) struct PeriodBody {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    pub spent_usd: Usd,
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    pub spent_actual_usd: Usd,
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    pub spent_estimated_usd: Usd,
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    pub remaining_usd: Usd,
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    pub over_by_usd: Usd,
    /// What running generations hold on the period (their worst case).
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    pub reserved_usd: Usd,
    /// `limit − spent − reserved`, at least zero: what a new generation
    /// can still hold.
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    pub available_usd: Usd,
    pub generations: i64,
    pub exhausted: bool,
}

impl PeriodBody {
    /// The period's figures; `remaining` and `over_by` are exact
    /// differences (an error naming `amount_overflow` if one leaves the
    /// range, never a rounded figure).
    pub fn new(limit_cost: Cost, period: Period, t: PeriodTotals) -> Result<PeriodBody, ApiError> {
        let money = |e| ApiError::money_not_exact(&e);
        let limit = limit_cost.usd();
        Ok(PeriodBody {
            start: period.start,
            end: period.end,
            spent_usd: t.spent_usd,
            spent_actual_usd: t.spent_actual_usd,
            spent_estimated_usd: t.spent_estimated_usd,
            remaining_usd: limit.try_sub(t.spent_usd).map_err(money)?.max(Usd::ZERO),
            over_by_usd: t.spent_usd.try_sub(limit).map_err(money)?.max(Usd::ZERO),
            reserved_usd: t.reserved_usd,
            available_usd: limit
                .try_sub(t.spent_usd)
                .and_then(|r| r.try_sub(t.reserved_usd))
                .map_err(money)?
                .max(Usd::ZERO),
            generations: t.generations,
            exhausted: is_exhausted(limit_cost, t.spent_usd),
        })
    }
}

/// A budget with its current period.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Budget)]
pub(crate) struct BudgetBody {
    pub id: String,
    pub org_id: String,
    pub name: String,
    #[schema(value_type = ScopeDoc)]
    pub scope: Scope,
    #[schema(value_type = PeriodKindDoc)]
    pub period: PeriodKind,
    pub timezone: String,
    #[schema(value_type = UsdDoc)]
    pub limit_usd: Cost,
    pub thresholds_percent: Vec<u32>,
    #[schema(value_type = EnforcementDoc)]
    pub enforcement: Enforcement,
    pub allow_unpriced_models: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
    pub current_period: PeriodBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booked_generations: Option<u64>,
}

impl BudgetBody {
    pub fn new(b: Budget, period: Period, totals: PeriodTotals) -> Result<BudgetBody, ApiError> {
        Ok(BudgetBody {
            current_period: PeriodBody::new(b.limit_usd, period, totals)?,
            id: b.id,
            org_id: b.org_id,
            name: b.name,
            scope: b.scope,
            period: b.period,
            timezone: b.timezone,
            limit_usd: b.limit_usd,
            thresholds_percent: b.thresholds,
            enforcement: b.enforcement,
            allow_unpriced_models: b.allow_unpriced_models,
            created_at: b.created_at,
            updated_at: b.updated_at,
            archived_at: b.archived_at,
            booked_generations: None,
        })
    }
}

/// One journal entry.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Entry)]
pub(crate) struct EntryBody {
    pub entry_id: String,
    pub budget_id: String,
    pub generation_id: String,
    #[schema(value_type = EntryKindDoc)]
    pub kind: &'static str,
    #[schema(value_type = BasisDoc)]
    pub basis: &'static str,
    #[serde(with = "tally_money::serde_usd")]
    #[schema(value_type = UsdDoc)]
    pub amount_usd: Usd,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub posted_at: DateTime<Utc>,
    pub batch_id: String,
}

impl From<EntryRow> for EntryBody {
    fn from(e: EntryRow) -> EntryBody {
        EntryBody {
            entry_id: e.entry_id.to_string(),
            budget_id: e.budget_id,
            generation_id: e.generation_id,
            kind: e.kind.as_str(),
            basis: e.basis.as_str(),
            amount_usd: e.amount_usd,
            period_start: e.period.start,
            period_end: e.period.end,
            posted_at: e.posted_at,
            batch_id: e.batch_id.to_string(),
        }
    }
}

/// A whole number a client may spell `80` or `80.0`: JSON Schema's
/// `integer` (what the OpenAPI document says) admits both, serde's `u32`
/// only the first. A fraction, a negative or a number past `u32` is
/// refused (422 naming the field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Whole(pub u32);

impl<'de> serde::Deserialize<'de> for Whole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Whole, D::Error> {
        use serde::de::{Error, Unexpected, Visitor};
        struct V;
        impl Visitor<'_> for V {
            type Value = Whole;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number from 0 to 4294967295")
            }

            fn visit_u64<E: Error>(self, v: u64) -> Result<Whole, E> {
                u32::try_from(v)
                    .map(Whole)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }

            fn visit_i64<E: Error>(self, v: i64) -> Result<Whole, E> {
                u64::try_from(v)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
                    .and_then(|v| self.visit_u64(v))
            }

            fn visit_f64<E: Error>(self, v: f64) -> Result<Whole, E> {
                if v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v) {
                    // In range and whole: the cast is exact.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Ok(Whole(v as u32))
                } else {
                    Err(E::invalid_value(Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The values of a list of [`Whole`]s.
pub(crate) fn wholes(list: &[Whole]) -> Vec<u32> {
    list.iter().map(|w| w.0).collect()
}

/// The wire spelling of a basis.
pub(crate) fn basis_str(b: Option<Basis>) -> Option<&'static str> {
    b.map(|b| b.as_str())
}

/// Whether `s` is an id usable in subjects: `^[A-Za-z0-9_-]{1,64}$`.
pub(crate) fn is_subject_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks an organisation or budget id (422 `invalid_id` naming `field`).
pub(crate) fn check_id(field: &str, value: &str) -> Result<(), ApiError> {
    if is_subject_id(value) {
        Ok(())
    } else {
        Err(ApiError::field(
            "invalid_id",
            field,
            format!(
                "{field} {:?} must match ^[A-Za-z0-9_-]{{1,64}}$",
                tally_events::strict::excerpt(value)
            ),
        ))
    }
}

/// Checks a generation id: 1 to 256 characters (as the document's
/// `maxLength` counts them), no control characters.
pub(crate) fn check_generation_id(value: &str) -> Result<(), ApiError> {
    if value.is_empty()
        || value.chars().count() > MAX_GENERATION_ID_LEN
        || value.chars().any(char::is_control)
    {
        Err(ApiError::field(
            "invalid_id",
            "generation_id",
            "generation_id must be 1 to 256 characters without control characters",
        ))
    } else {
        Ok(())
    }
}

/// Parses a strict RFC 3339 time, normalised as the bus normalises event
/// times (leap seconds, sub-microsecond digits: `tally_events::time`), so
/// a query bound and an event time at the same instant always agree (422
/// `invalid_time` naming `field`).
pub(crate) fn parse_time(field: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    tally_events::time::parse_rfc3339(value).map_err(|e| {
        ApiError::field(
            "invalid_time",
            field,
            format!(
                "{field}: {e}; expected a time such as 2026-01-01T00:00:00Z \
                 (in a query string, encode '+' as %2B)"
            ),
        )
    })
}

/// Parses an instant that must lie in the window event times lie in,
/// `[2020-01-01T00:00:00Z, now + 1 day]` (422 `time_out_of_range`).
pub(crate) fn parse_instant(field: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let t = parse_time(field, value)?;
    match tally_events::time::window_violation(t, Utc::now()) {
        None => Ok(t),
        Some(reason) => Err(ApiError::field(
            "time_out_of_range",
            field,
            format!("{field}: {reason}"),
        )),
    }
}

/// Checks a name or scope value: no control character at all (422
/// `control_character` naming `field`).
pub(crate) fn check_text(field: &str, value: &str) -> Result<(), ApiError> {
    if tally_events::strict::has_control(value) {
        return Err(ApiError::field(
            "control_character",
            field,
            format!("{field} must not hold control characters"),
        ));
    }
    Ok(())
}

/// Parses a money field given as any JSON value: only a decimal string is
/// accepted; a JSON number is refused with `amount_not_string`.
pub(crate) fn parse_money(field: &str, value: &serde_json::Value) -> Result<Cost, ApiError> {
    use tally_money::MoneyError;
    let parsed = match value {
        serde_json::Value::String(s) => s.parse::<Cost>(),
        serde_json::Value::Number(_) => Err(MoneyError::NumberNotString),
        other => {
            return Err(ApiError::invalid(
                field,
                format!("{field} must be a decimal string such as \"10.50\", not {other}"),
            ))
        }
    };
    parsed.map_err(|e| ApiError::field(e.code(), field, format!("{field}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn money_must_be_a_string() {
        assert_eq!(
            parse_money("limit_usd", &json!("0.00012345678901234567"))
                .unwrap()
                .to_string(),
            "0.00012345678901234567"
        );
        let e = parse_money("limit_usd", &json!(10.5)).unwrap_err();
        assert_eq!(e.code(), "amount_not_string");
        assert_eq!(e.problem().field.as_deref(), Some("limit_usd"));
        assert_eq!(
            parse_money("x", &json!("-1")).unwrap_err().code(),
            "negative_amount"
        );
        assert_eq!(
            parse_money("x", &json!("1e3")).unwrap_err().code(),
            "invalid_amount"
        );
        assert_eq!(
            parse_money("x", &json!(null)).unwrap_err().code(),
            "invalid_field"
        );
    }

    #[test]
    fn remaining_is_clamped() {
        let p = Period::TOTAL;
        let t = PeriodTotals {
            spent_usd: Usd::new(15, 1),
            spent_actual_usd: Usd::new(15, 1),
            ..Default::default()
        };
        let body = PeriodBody::new(Cost::ONE, p, t).unwrap();
        assert_eq!(body.remaining_usd, Usd::ZERO);
        assert_eq!(body.over_by_usd, Usd::new(5, 1));
        assert_eq!(body.available_usd, Usd::ZERO);
        assert!(body.exhausted);
        let held = PeriodTotals {
            spent_usd: Usd::new(25, 2),
            reserved_usd: Usd::new(5, 1),
            ..Default::default()
        };
        let body = PeriodBody::new(Cost::ONE, p, held).unwrap();
        assert_eq!(body.remaining_usd, Usd::new(75, 2));
        assert_eq!(body.available_usd, Usd::new(25, 2));
        assert!(!body.exhausted);
    }

    #[test]
    fn whole_numbers_may_be_written_with_a_zero_fraction() {
        let w: Vec<Whole> = serde_json::from_value(json!([80, 80.0, 0, 4294967295_u64])).unwrap();
        assert_eq!(wholes(&w), vec![80, 80, 0, 4_294_967_295]);
        for bad in [
            json!(80.5),
            json!(-1),
            json!(-1.0),
            json!(4294967296_u64),
            json!("80"),
        ] {
            assert!(
                serde_json::from_value::<Whole>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids() {
        let code = |r: Result<(), ApiError>| r.map_err(|e| e.code());
        assert_eq!(code(check_id("org_id", "acme-1_x")), Ok(()));
        assert_eq!(code(check_id("org_id", "")), Err("invalid_id"));
        assert_eq!(code(check_id("org_id", "a.b")), Err("invalid_id"));
        assert_eq!(code(check_id("org_id", &"a".repeat(65))), Err("invalid_id"));
        assert_eq!(code(check_generation_id("gen-123")), Ok(()));
        assert_eq!(code(check_generation_id("a\nb")), Err("invalid_id"));
    }
}
