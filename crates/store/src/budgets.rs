//! Budgets: definition, changes, archiving, and booking the generations
//! already recorded into a new budget.
//!
//! # Invariants
//!
//! * A budget's organisation, scope, period kind and time zone never change
//!   after creation (see the crate's `# Decisions`).
//! * Creating a budget books every recorded generation in its scope, under
//!   the organisation's exclusive lock, in the same transaction: a budget is
//!   never visible without the generations it counts.
//! * Archiving sets `archived_at`; generations completed from then on no
//!   longer count. Nothing is deleted.

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};
use tally_budget::{
    parse_timezone, period_containing, validate_thresholds, Enforcement, PeriodKind, Scope,
};
use tally_ledger::{EntryKind, Placement};
use tally_money::{Cost, Usd};
use uuid::Uuid;

use crate::decode::parse_basis;
use crate::found::FetchFound;
use crate::page::next_cursor;
use crate::posting::{
    attribution_from_row, budgets_matching, post, split, Posting, PostingOptions,
};
use crate::{org_lock_key, Store, StoreError};

/// A stored budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Budget id (`bud_…`), usable in subjects.
    pub id: String,
    /// Organisation.
    pub org_id: String,
    /// Display name.
    pub name: String,
    /// Which generations count.
    pub scope: Scope,
    /// Period kind.
    pub period: PeriodKind,
    /// IANA time zone name of the periods.
    pub timezone: String,
    /// The parsed time zone.
    pub tz: Tz,
    /// Spending limit per period.
    pub limit_usd: Cost,
    /// Alert thresholds in percent of the limit, ascending.
    pub thresholds: Vec<u32>,
    /// Hard budgets block new generations when exhausted; soft ones only alert.
    pub enforcement: Enforcement,
    /// Whether a hard budget lets through requests for models whose price
    /// is dynamic or unknown (holding zero for them); default false.
    pub allow_unpriced_models: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Archive time, if archived.
    pub archived_at: Option<DateTime<Utc>>,
}

/// A budget to create (already validated by [`NewBudget::validate`]).
#[derive(Debug, Clone)]
pub struct NewBudget {
    /// Organisation.
    pub org_id: String,
    /// Display name.
    pub name: String,
    /// Which generations count.
    pub scope: Scope,
    /// Period kind.
    pub period: PeriodKind,
    /// IANA time zone name.
    pub timezone: String,
    /// Limit per period.
    pub limit_usd: Cost,
    /// Thresholds in percent.
    pub thresholds: Vec<u32>,
    /// Enforcement.
    pub enforcement: Enforcement,
    /// Let requests for dynamically priced models through a hard budget.
    pub allow_unpriced_models: bool,
}

/// Changes to a budget; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct BudgetPatch {
    /// New name.
    pub name: Option<String>,
    /// New limit.
    pub limit_usd: Option<Cost>,
    /// New thresholds.
    pub thresholds: Option<Vec<u32>>,
    /// New enforcement.
    pub enforcement: Option<Enforcement>,
    /// New `allow_unpriced_models`.
    pub allow_unpriced_models: Option<bool>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn validate_name(name: &str) -> Result<(), StoreError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(invalid("name", "must be 1 to 200 characters"));
    }
    Ok(())
}

impl NewBudget {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&mut self) -> Result<(), StoreError> {
        if !tally_events::is_valid_id(&self.org_id) {
            return Err(invalid("org_id", "must match ^[A-Za-z0-9_-]{1,64}$"));
        }
        validate_name(&self.name)?;
        parse_timezone(&self.timezone).map_err(|e| invalid("timezone", e.to_string()))?;
        self.thresholds = validate_thresholds(&self.thresholds)
            .map_err(|e| invalid("thresholds_percent", e.to_string()))?;
        for (field, v) in [
            ("scope.agent_id", &self.scope.agent_id),
            ("scope.session_id", &self.scope.session_id),
            ("scope.user_id", &self.scope.user_id),
            ("scope.model", &self.scope.model),
        ] {
            if let Some(v) = v {
                if v.is_empty() || v.len() > 256 {
                    return Err(invalid(field, "must be 1 to 256 characters"));
                }
            }
        }
        Ok(())
    }
}

const COLUMNS: &str = "id, org_id, name, agent_id, session_id, user_id, model, period, timezone, \
                       limit_usd, thresholds_percent, enforcement, allow_unpriced_models, created_at, \
                       updated_at, archived_at";

fn from_row(r: &PgRow) -> Result<Budget, StoreError> {
    let timezone: String = r.try_get("timezone")?;
    let period: String = r.try_get("period")?;
    let enforcement: String = r.try_get("enforcement")?;
    let thresholds: Vec<i32> = r.try_get("thresholds_percent")?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("budget has invalid {what}"));
    Ok(Budget {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        name: r.try_get("name")?,
        scope: Scope {
            agent_id: r.try_get("agent_id")?,
            session_id: r.try_get("session_id")?,
            user_id: r.try_get("user_id")?,
            model: r.try_get("model")?,
        },
        period: PeriodKind::from_str(&period).map_err(|_| corrupt("period"))?,
        tz: parse_timezone(&timezone).map_err(|_| corrupt("timezone"))?,
        timezone,
        limit_usd: r.try_get("limit_usd")?,
        thresholds: thresholds.into_iter().map(|t| t.max(0) as u32).collect(),
        enforcement: Enforcement::from_str(&enforcement).map_err(|_| corrupt("enforcement"))?,
        allow_unpriced_models: r.try_get("allow_unpriced_models")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        archived_at: r.try_get("archived_at")?,
    })
}

/// Every budget (archived too) of the given organisations.
pub(crate) async fn load_for_orgs(
    tx: &mut Transaction<'_, Postgres>,
    orgs: &[String],
) -> Result<Vec<Arc<Budget>>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM budgets WHERE org_id = ANY($1) ORDER BY id"
    ))
    .bind(orgs)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(|r| from_row(r).map(Arc::new)).collect()
}

impl Store {
    /// Creates a budget and books every recorded generation in its scope
    /// into it (see the module docs). Returns the budget and the number of
    /// generations booked.
    pub async fn create_budget(
        &self,
        nb: NewBudget,
        opts: &PostingOptions,
    ) -> Result<(Budget, u64), StoreError> {
        self.create_budget_within(nb, opts, None).await
    }

    /// Like [`Store::create_budget`], refusing with
    /// [`StoreError::LimitExceeded`] (`budgets_per_org`) when the
    /// organisation already has `max_budgets` budgets that are not
    /// archived (counted under the organisation's lock, so concurrent
    /// creations cannot overshoot).
    pub async fn create_budget_within(
        &self,
        mut nb: NewBudget,
        opts: &PostingOptions,
        max_budgets: Option<u32>,
    ) -> Result<(Budget, u64), StoreError> {
        nb.validate()?;
        let id = format!("bud_{}", Uuid::now_v7().simple());
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(org_lock_key(&nb.org_id))
            .execute(&mut *tx)
            .await?;
        if let Some(max) = max_budgets {
            let live: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM budgets WHERE org_id = $1 AND archived_at IS NULL",
            )
            .bind(&nb.org_id)
            .fetch_one(&mut *tx)
            .await?;
            if live >= i64::from(max) {
                return Err(StoreError::LimitExceeded {
                    limit: "budgets_per_org",
                    max,
                });
            }
        }
        let thresholds: Vec<i32> = nb.thresholds.iter().map(|t| *t as i32).collect();
        let row = sqlx::query(&format!(
            "INSERT INTO budgets (id, org_id, name, agent_id, session_id, user_id, model, period, \
                 timezone, limit_usd, thresholds_percent, enforcement, allow_unpriced_models) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING {COLUMNS}"
        ))
        .bind(&id)
        .bind(&nb.org_id)
        .bind(&nb.name)
        .bind(&nb.scope.agent_id)
        .bind(&nb.scope.session_id)
        .bind(&nb.scope.user_id)
        .bind(&nb.scope.model)
        .bind(nb.period.as_str())
        .bind(&nb.timezone)
        .bind(nb.limit_usd)
        .bind(&thresholds)
        .bind(nb.enforcement.as_str())
        .bind(nb.allow_unpriced_models)
        .fetch_one(&mut *tx)
        .await?;
        let budget = Arc::new(from_row(&row)?);

        // Book the recorded generations in scope: the SQL narrows by the
        // scope's columns (an index-friendly superset), `budgets_matching`
        // decides, as for every other posting.
        let rows = sqlx::query(
            "SELECT generation_id, org_id, agent_id, session_id, user_id, model, completed_at, \
                    debited_usd, basis FROM generations \
             WHERE org_id = $1 AND completed_at IS NOT NULL \
               AND ($2::text IS NULL OR agent_id = $2) AND ($3::text IS NULL OR session_id = $3) \
               AND ($4::text IS NULL OR user_id = $4) AND ($5::text IS NULL OR model = $5) \
             ORDER BY completed_at, generation_id",
        )
        .bind(&budget.org_id)
        .bind(&budget.scope.agent_id)
        .bind(&budget.scope.session_id)
        .bind(&budget.scope.user_id)
        .bind(&budget.scope.model)
        .fetch_all(&mut *tx)
        .await?;
        let this = std::slice::from_ref(&budget);
        let mut postings = Vec::with_capacity(rows.len());
        for r in &rows {
            let placement = Placement {
                attribution: attribution_from_row(r)?,
                completed_at: r.try_get("completed_at")?,
            };
            if budgets_matching(this, &placement).next().is_none() {
                continue;
            }
            let amount: Usd = r.try_get("debited_usd")?;
            let basis = parse_basis(r.try_get("basis")?, "generation")?;
            let (d_actual, d_estimate) = split(basis, amount);
            postings.push(Posting {
                budget: budget.clone(),
                generation_id: r.try_get("generation_id")?,
                kind: EntryKind::Debit,
                basis,
                amount,
                d_actual,
                d_estimate,
                period: period_containing(budget.period, budget.tz, placement.completed_at),
            });
        }
        let booked = postings.len() as u64;
        post(
            &mut tx,
            postings,
            Default::default(),
            opts,
            Uuid::now_v7(),
            Utc::now(),
        )
        .await?;
        tx.commit().await?;
        Ok((Arc::unwrap_or_clone(budget), booked))
    }

    /// One budget by id.
    pub async fn get_budget(&self, id: &str) -> Result<Budget, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM budgets WHERE id = $1"))
            .bind(id)
            .fetch_found(self.pool(), "budget")
            .await?;
        from_row(&row)
    }

    /// The budgets of an organisation, oldest first (ids are time-ordered
    /// UUID v7s, so id order is creation order).
    pub async fn list_budgets(
        &self,
        org_id: &str,
        include_archived: bool,
    ) -> Result<Vec<Budget>, StoreError> {
        Ok(self
            .list_budgets_page(org_id, include_archived, None, i64::MAX)
            .await?
            .0)
    }

    /// One page of [`Store::list_budgets`]: at most `limit` budgets with an
    /// id after `after`, and the cursor (the last id) of the next page, or
    /// `None` on the last page.
    pub async fn list_budgets_page(
        &self,
        org_id: &str,
        include_archived: bool,
        after: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<Budget>, Option<String>), StoreError> {
        let limit = limit.max(1);
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM budgets WHERE org_id = $1 AND ($2 OR archived_at IS NULL) \
               AND ($3::text IS NULL OR id > $3) \
             ORDER BY id LIMIT $4"
        ))
        .bind(org_id)
        .bind(include_archived)
        .bind(after)
        .bind(limit.saturating_add(1))
        .fetch_all(self.pool())
        .await?;
        let mut budgets = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        let next = next_cursor(&mut budgets, limit, |b| b.id.clone());
        Ok((budgets, next))
    }

    /// Changes name, limit, thresholds, enforcement or
    /// `allow_unpriced_models`; an archived budget cannot change
    /// ([`StoreError::Archived`]).
    pub async fn update_budget(&self, id: &str, patch: BudgetPatch) -> Result<Budget, StoreError> {
        if let Some(name) = &patch.name {
            validate_name(name)?;
        }
        let limit = patch.limit_usd;
        let thresholds = match &patch.thresholds {
            Some(t) => Some(
                validate_thresholds(t)
                    .map_err(|e| invalid("thresholds_percent", e.to_string()))?
                    .into_iter()
                    .map(|t| t as i32)
                    .collect::<Vec<i32>>(),
            ),
            None => None,
        };
        let row = sqlx::query(&format!(
            "UPDATE budgets SET name = COALESCE($2, name), limit_usd = COALESCE($3, limit_usd), \
                 thresholds_percent = COALESCE($4, thresholds_percent), \
                 enforcement = COALESCE($5, enforcement), \
                 allow_unpriced_models = COALESCE($6, allow_unpriced_models), updated_at = now() \
             WHERE id = $1 AND archived_at IS NULL RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(&patch.name)
        .bind(limit)
        .bind(thresholds)
        .bind(patch.enforcement.map(|e| e.as_str()))
        .bind(patch.allow_unpriced_models)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(row) => from_row(&row),
            None => {
                // Unknown, or archived: tell them apart.
                self.get_budget(id).await?;
                Err(StoreError::Archived { what: "budget" })
            }
        }
    }

    /// Archives a budget (idempotent: the first archive time and the
    /// `updated_at` of that first archive stay).
    pub async fn archive_budget(&self, id: &str) -> Result<Budget, StoreError> {
        let budget = self.get_budget(id).await?;
        // Under the organisation's exclusive lock, so no batch that still
        // sees the budget unarchived is in flight (replays must agree).
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(org_lock_key(&budget.org_id))
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!(
            "UPDATE budgets SET archived_at = COALESCE(archived_at, now()), \
                 updated_at = CASE WHEN archived_at IS NULL THEN now() ELSE updated_at END \
             WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .fetch_found(&mut *tx, "budget")
        .await?;
        tx.commit().await?;
        from_row(&row)
    }
}
