//! Aggregate figures about the ledger for metrics: how close budgets are to
//! their limits. Read-only, one aggregate query, never per-budget rows out.
//!
//! # Invariants
//!
//! * Bands are decided by exact `NUMERIC` comparisons of a budget's current
//!   period total with fractions of its limit; only the reported maximum
//!   ratio is a rounded figure (it is for dashboards).
//! * A budget counts once: active (not archived), in the band of the period
//!   that contains now; a budget with nothing booked in that period is in the
//!   lowest band. A zero limit counts as exhausted.

use crate::{Store, StoreError};

/// The utilisation bands reported, lowest first (label values).
pub const UTILISATION_BANDS: [&str; 5] = ["lt_50", "50_80", "80_90", "90_100", "ge_100"];

/// How many active budgets are in each band of utilisation of their
/// current period, and the highest utilisation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetUtilisation {
    /// Counts in the order of [`UTILISATION_BANDS`].
    pub bands: [i64; 5],
    /// Highest `spent / limit` of a budget with a positive limit (0 if
    /// none): a gauge value, not money, so a float.
    pub max_ratio: f64,
}

impl Store {
    /// Utilisation of every active budget's current period.
    pub async fn budget_utilisation(&self) -> Result<BudgetUtilisation, StoreError> {
        let row: (i64, i64, i64, i64, i64, Option<f64>) = sqlx::query_as(
            "WITH u AS ( \
                 SELECT b.limit_usd AS l, COALESCE(p.spent_usd, 0) AS s \
                 FROM budgets b \
                 LEFT JOIN budget_periods p ON p.budget_id = b.id \
                     AND p.period_start <= now() AND p.period_end > now() \
                 WHERE b.archived_at IS NULL) \
             SELECT \
                 count(*) FILTER (WHERE s < l * 0.5), \
                 count(*) FILTER (WHERE s >= l * 0.5 AND s < l * 0.8), \
                 count(*) FILTER (WHERE s >= l * 0.8 AND s < l * 0.9), \
                 count(*) FILTER (WHERE s >= l * 0.9 AND s < l), \
                 count(*) FILTER (WHERE s >= l), \
                 (max(round(s / l, 6)) FILTER (WHERE l > 0))::float8 \
             FROM u",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(BudgetUtilisation {
            bands: [row.0, row.1, row.2, row.3, row.4],
            max_ratio: row.5.unwrap_or_default(),
        })
    }
}
