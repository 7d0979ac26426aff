//! Read models for the HTTP API: budget period totals, a budget's journal,
//! generations with their entries, spend aggregates and budget checks.
//!
//! Every method is one or two set-based statements; nothing here writes.
//! Money stays `Usd` (`NUMERIC` in Postgres) end to end: sums are taken
//! by Postgres in `NUMERIC` and decoded into `Usd` without rounding.
//!
//! # Invariants
//!
//! * A period without a `budget_periods` row has spent nothing: its totals
//!   are zeros, never an error (a budget with no generations yet).
//! * [`Store::budget_entries`] pages by `entry_id` (UUID v7, time-ordered),
//!   so a page boundary never splits or repeats an entry.
//! * The entries of a generation are read only from budgets of the
//!   generation's own organisation.
//!
//! # Decisions
//!
//! * **Keyset pagination, not offsets.** The journal is append-only and
//!   grows while a client pages through it; a cursor (the last `entry_id`
//!   seen) is stable where an offset would shift.
//! * **Spend comes from `generations`, not from the journal.** Spend per
//!   model, agent, user or day is a property of the organisation's
//!   generations, independent of which budgets exist; summing the journal
//!   would count a generation once per matching budget.
//! * **An unknown check field matches no budget that sets it.** A budget
//!   check that omits (say) `model` cannot know the model, so a budget
//!   scoped to one model is not applied to it; that is the same rule
//!   [`tally_budget::Scope::matches`] applies to a generation that lacks a
//!   field.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::QueryAs;
use sqlx::{FromRow, Postgres, Row};
use tally_budget::{period_containing, Period};
use tally_events::Attribution;
use tally_ledger::{Basis, CostState, EntryKind};
use tally_money::{Cost, Usd};
use uuid::Uuid;

use crate::budgets::Budget;
use crate::decode::parse_basis;
use crate::found::FetchFound;
use crate::page::next_cursor;
use crate::{Store, StoreError};

/// The totals of one budget period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct PeriodTotals {
    /// Everything debited in the period (`actual + estimated`).
    pub spent_usd: Usd,
    /// The part of `spent_usd` booked at actual cost.
    pub spent_actual_usd: Usd,
    /// The part of `spent_usd` booked at estimated cost.
    pub spent_estimated_usd: Usd,
    /// Generations counted in the period.
    pub generations: i64,
    /// Held now by reservations of generations still running (see
    /// [`crate::reservations`]).
    #[sqlx(rename = "held_usd")]
    pub reserved_usd: Usd,
}

/// One journal entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRow {
    /// Entry id (UUID v7, time-ordered).
    pub entry_id: Uuid,
    /// Budget the entry belongs to.
    pub budget_id: String,
    /// Generation the entry is about.
    pub generation_id: String,
    /// Debit or adjustment.
    pub kind: EntryKind,
    /// Basis of the generation's net debit after this entry.
    pub basis: Basis,
    /// Amount (an adjustment may be negative).
    pub amount_usd: Usd,
    /// The budget period the entry counts in.
    pub period: Period,
    /// When it was posted.
    pub posted_at: DateTime<Utc>,
    /// The projector batch (or budget creation) that posted it.
    pub batch_id: Uuid,
}

/// A generation as the ledger knows it, with its journal entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationView {
    /// OpenRouter's generation id.
    pub generation_id: String,
    /// Organisation.
    pub org_id: String,
    /// Agent scope, if any.
    pub agent_id: Option<String>,
    /// Session scope, if any.
    pub session_id: Option<String>,
    /// End user, if any.
    pub user_id: Option<String>,
    /// Model that served it (`None` while only cost facts are known).
    pub model: Option<String>,
    /// Upstream provider, if reported.
    pub provider: Option<String>,
    /// `completed`, `cancelled` or `errored` (`None` while pending).
    pub status: Option<String>,
    /// Bring-your-own-key generation.
    pub is_byok: bool,
    /// Event time (`None` while pending).
    pub completed_at: Option<DateTime<Utc>>,
    /// The producer's estimate.
    pub estimated_cost_usd: Option<Cost>,
    /// The actual cost, once known.
    pub actual_cost_usd: Option<Cost>,
    /// What every matching budget carries (`None` while pending).
    pub debited_usd: Option<Cost>,
    /// How `debited_usd` was determined (`None` while pending).
    pub basis: Option<Basis>,
    /// Accounting state.
    pub state: CostState,
    /// Why the reconciler gave up, if it did.
    pub unresolved_reason: Option<String>,
    /// Last change of the row.
    pub updated_at: DateTime<Utc>,
    /// Journal entries of the generation in every budget, oldest first
    /// (one page of them with [`Store::generation_page`]).
    pub entries: Vec<EntryRow>,
    /// The cursor of the next page of entries, `None` on the last one.
    pub next_entries_cursor: Option<Uuid>,
}

/// How [`Store::spend`] groups generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupBy {
    /// By the model that served the generation.
    Model,
    /// By agent (generations without an agent form one group, key `None`).
    Agent,
    /// By end user (generations without a user form one group, key `None`).
    User,
    /// By UTC calendar day of `completed_at` (key `YYYY-MM-DD`).
    Day,
}

impl GroupBy {
    /// Every grouping.
    pub const ALL: [GroupBy; 4] = [GroupBy::Model, GroupBy::Agent, GroupBy::User, GroupBy::Day];

    /// The wire name (`model`, `agent`, `user`, `day`).
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Model => "model",
            GroupBy::Agent => "agent",
            GroupBy::User => "user",
            GroupBy::Day => "day",
        }
    }

    /// Parses a wire name exactly.
    pub fn parse(s: &str) -> Option<GroupBy> {
        GroupBy::ALL.into_iter().find(|g| g.as_str() == s)
    }

    /// The SQL expression of the group key (a constant per variant: never
    /// built from input).
    fn key_sql(self) -> &'static str {
        match self {
            GroupBy::Model => "model",
            GroupBy::Agent => "agent_id",
            GroupBy::User => "user_id",
            GroupBy::Day => "to_char(completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        }
    }
}

/// The spend of one group.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SpendRow {
    /// The group key (model, agent, user or `YYYY-MM-DD`); `None` for
    /// generations without the grouped field (and for totals over every
    /// group, which have no `key` column).
    #[sqlx(default)]
    pub key: Option<String>,
    /// Net debits of the group.
    pub spent_usd: Usd,
    /// The part booked at actual cost.
    pub spent_actual_usd: Usd,
    /// The part booked at estimated cost.
    pub spent_estimated_usd: Usd,
    /// Generations in the group.
    pub generations: i64,
}

/// The scope a budget check asks about: the four scope fields of a
/// [`Scope`](tally_budget::Scope), read differently. A field left `None` is
/// unknown, so budgets that set it do not match (see the module's
/// `# Decisions`); in a budget's scope `None` means "any".
pub type CheckScope = tally_budget::Scope;

/// The sums of a spend query (one [`SpendRow`] without its key).
const SPEND_SUMS: &str = "COALESCE(SUM(debited_usd), 0) AS spent_usd, \
     COALESCE(SUM(debited_usd) FILTER (WHERE basis = 'actual'), 0) AS spent_actual_usd, \
     COALESCE(SUM(debited_usd) FILTER (WHERE basis = 'estimate'), 0) AS spent_estimated_usd, \
     COUNT(*) AS generations";

/// The generations a spend query sums: organisation `$1`, completed in
/// `[$2, $3)`.
const SPEND_WINDOW: &str = "FROM generations WHERE org_id = $1 AND completed_at IS NOT NULL \
     AND completed_at >= $2 AND completed_at < $3";

/// A query over the generations of organisation `$1` completed in `[$2,
/// $3)`, decoded as `O` (spend here, booked totals for the reconciler).
pub(crate) fn window_query<'q, O>(
    sql: &'q str,
    org_id: &'q str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> FromRow<'r, PgRow>,
{
    sqlx::query_as(sql).bind(org_id).bind(from).bind(to)
}

const ENTRY_COLUMNS: &str = "entry_id, budget_id, generation_id, kind, basis, amount_usd, \
                             period_start, period_end, posted_at, batch_id";

fn entry_from_row(r: &PgRow) -> Result<EntryRow, StoreError> {
    let kind: String = r.try_get("kind")?;
    let basis: String = r.try_get("basis")?;
    Ok(EntryRow {
        entry_id: r.try_get("entry_id")?,
        budget_id: r.try_get("budget_id")?,
        generation_id: r.try_get("generation_id")?,
        kind: match kind.as_str() {
            "debit" => EntryKind::Debit,
            "adjustment" => EntryKind::Adjustment,
            other => return Err(StoreError::Corrupt(format!("entry kind {other:?}"))),
        },
        basis: parse_basis(&basis, "entry")?,
        amount_usd: r.try_get("amount_usd")?,
        period: Period {
            start: r.try_get("period_start")?,
            end: r.try_get("period_end")?,
        },
        posted_at: r.try_get("posted_at")?,
        batch_id: r.try_get("batch_id")?,
    })
}

fn totals_from_row(r: &PgRow) -> Result<PeriodTotals, StoreError> {
    Ok(PeriodTotals::from_row(r)?)
}

impl Store {
    /// The totals of one period of a budget (zeros when nothing was booked
    /// in it).
    pub async fn budget_period(
        &self,
        budget: &Budget,
        period: Period,
    ) -> Result<PeriodTotals, StoreError> {
        let row = sqlx::query(
            "SELECT spent_usd, spent_actual_usd, spent_estimated_usd, generations, held_usd \
             FROM budget_periods WHERE budget_id = $1 AND period_start = $2",
        )
        .bind(&budget.id)
        .bind(period.start)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(r) => totals_from_row(&r),
            None => Ok(PeriodTotals::default()),
        }
    }

    /// The period containing `at` of each budget, with its totals, in the
    /// order of `budgets` (one statement for all of them).
    pub async fn periods_at(
        &self,
        budgets: &[Budget],
        at: DateTime<Utc>,
    ) -> Result<Vec<(Period, PeriodTotals)>, StoreError> {
        let periods: Vec<Period> = budgets
            .iter()
            .map(|b| period_containing(b.period, b.tz, at))
            .collect();
        if budgets.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT k.ord, bp.spent_usd, bp.spent_actual_usd, bp.spent_estimated_usd, bp.generations, \
                    bp.held_usd \
             FROM unnest($1::text[], $2::timestamptz[]) WITH ORDINALITY AS k(budget_id, period_start, ord) \
             JOIN budget_periods bp \
               ON bp.budget_id = k.budget_id AND bp.period_start = k.period_start",
        )
        .bind(budgets.iter().map(|b| b.id.clone()).collect::<Vec<_>>())
        .bind(periods.iter().map(|p| p.start).collect::<Vec<_>>())
        .fetch_all(self.pool())
        .await?;
        let mut totals = vec![PeriodTotals::default(); budgets.len()];
        for r in &rows {
            let ord: i64 = r.try_get("ord")?;
            let slot = usize::try_from(ord - 1)
                .ok()
                .and_then(|i| totals.get_mut(i))
                .ok_or_else(|| StoreError::Corrupt(format!("ordinality {ord} out of range")))?;
            *slot = totals_from_row(r)?;
        }
        Ok(periods.into_iter().zip(totals).collect())
    }

    /// The journal of a budget, oldest first: at most `limit` entries after
    /// `cursor` (an `entry_id` returned as the previous page's cursor), and
    /// the cursor of the next page (`None` on the last page).
    ///
    /// Does not check that the budget exists (an unknown budget has no
    /// entries); callers that need a 404 load the budget first.
    pub async fn budget_entries(
        &self,
        budget_id: &str,
        cursor: Option<Uuid>,
        limit: i64,
    ) -> Result<(Vec<EntryRow>, Option<Uuid>), StoreError> {
        let limit = limit.max(1);
        let rows = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM ledger_entries \
             WHERE budget_id = $1 AND ($2::uuid IS NULL OR entry_id > $2) \
             ORDER BY entry_id LIMIT $3"
        ))
        .bind(budget_id)
        .bind(cursor)
        .bind(limit.saturating_add(1))
        .fetch_all(self.pool())
        .await?;
        let mut entries = rows
            .iter()
            .map(entry_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = next_cursor(&mut entries, limit, |e| e.entry_id);
        Ok((entries, next))
    }

    /// One generation with its journal entries in the budgets of its
    /// organisation. A generation for which only cost facts arrived is
    /// returned with state `pending` and no entries.
    pub async fn generation(&self, generation_id: &str) -> Result<GenerationView, StoreError> {
        self.generation_page(generation_id, None, i64::MAX).await
    }

    /// Like [`Store::generation`], with at most `limit` entries after the
    /// entry id `after`, and the cursor of the next page.
    pub async fn generation_page(
        &self,
        generation_id: &str,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<GenerationView, StoreError> {
        let limit = limit.max(1);
        let row = sqlx::query(
            "SELECT generation_id, org_id, agent_id, session_id, user_id, model, provider, status, \
                    is_byok, completed_at, estimated_cost_usd, actual_cost_usd, debited_usd, basis, \
                    state, unresolved_reason, updated_at \
             FROM generations WHERE generation_id = $1",
        )
        .bind(generation_id)
        .fetch_found(self.pool(), "generation")
        .await?;
        let org_id: String = row.try_get("org_id")?;
        let basis: Option<String> = row.try_get("basis")?;
        let state: String = row.try_get("state")?;
        let entries = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM ledger_entries \
             WHERE generation_id = $1 AND budget_id IN (SELECT id FROM budgets WHERE org_id = $2) \
               AND ($3::uuid IS NULL OR entry_id > $3) \
             ORDER BY entry_id LIMIT $4"
        ))
        .bind(generation_id)
        .bind(&org_id)
        .bind(after)
        .bind(limit.saturating_add(1))
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(entry_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let mut entries = entries;
        let next_entries_cursor = next_cursor(&mut entries, limit, |e| e.entry_id);
        Ok(GenerationView {
            generation_id: row.try_get("generation_id")?,
            org_id,
            agent_id: row.try_get("agent_id")?,
            session_id: row.try_get("session_id")?,
            user_id: row.try_get("user_id")?,
            model: row.try_get("model")?,
            provider: row.try_get("provider")?,
            status: row.try_get("status")?,
            is_byok: row.try_get("is_byok")?,
            completed_at: row.try_get("completed_at")?,
            estimated_cost_usd: row.try_get("estimated_cost_usd")?,
            actual_cost_usd: row.try_get("actual_cost_usd")?,
            debited_usd: row.try_get("debited_usd")?,
            basis: basis.map(|b| parse_basis(&b, "generation")).transpose()?,
            state: CostState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("generation state {state:?}")))?,
            unresolved_reason: row.try_get("unresolved_reason")?,
            updated_at: row.try_get("updated_at")?,
            entries,
            next_entries_cursor,
        })
    }

    /// The spend of an organisation's generations completed in
    /// `[from, to)`, grouped, ordered by key (`None` last).
    pub async fn spend(
        &self,
        org_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        group_by: GroupBy,
    ) -> Result<Vec<SpendRow>, StoreError> {
        let key = group_by.key_sql();
        let sql = format!(
            "SELECT {key} AS key, {SPEND_SUMS} {SPEND_WINDOW} GROUP BY 1 ORDER BY 1 NULLS LAST"
        );
        Ok(window_query(&sql, org_id, from, to)
            .fetch_all(self.pool())
            .await?)
    }

    /// One page of [`Store::spend`]: at most `limit` groups whose key comes
    /// after `after` (`None`: the first page; `Some(None)`: after the
    /// `null` group, which is last, so nothing), the totals over *every*
    /// group, and whether more groups follow.
    pub async fn spend_page(
        &self,
        org_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        group_by: GroupBy,
        after: Option<Option<&str>>,
        limit: i64,
    ) -> Result<(Vec<SpendRow>, SpendRow, bool), StoreError> {
        let limit = limit.max(1);
        let key = group_by.key_sql();
        let (skip_all, after_key) = match after {
            None => (false, None),
            Some(None) => (true, None),
            Some(Some(k)) => (false, Some(k)),
        };
        let sql = format!("SELECT {SPEND_SUMS} {SPEND_WINDOW}");
        let total: SpendRow = window_query(&sql, org_id, from, to)
            .fetch_one(self.pool())
            .await?;
        if skip_all {
            return Ok((Vec::new(), total, false));
        }
        let sql = format!(
            "SELECT * FROM (SELECT {key} AS key, {SPEND_SUMS} {SPEND_WINDOW} GROUP BY 1) g \
             WHERE $4::text IS NULL OR g.key > $4 OR g.key IS NULL \
             ORDER BY g.key NULLS LAST LIMIT $5"
        );
        let mut groups: Vec<SpendRow> = window_query(&sql, org_id, from, to)
            .bind(after_key)
            .bind(limit.saturating_add(1))
            .fetch_all(self.pool())
            .await?;
        let more = groups.len() as i64 > limit;
        groups.truncate(limit as usize);
        Ok((groups, total, more))
    }

    /// The non-archived budgets of an organisation that would count a
    /// generation with the given scope, each with its current period (the
    /// one containing `now`) and that period's totals, oldest budget first.
    pub async fn check_budgets(
        &self,
        org_id: &str,
        scope: &CheckScope,
        now: DateTime<Utc>,
    ) -> Result<Vec<(Budget, PeriodTotals, Period)>, StoreError> {
        let facts = Attribution {
            org_id: org_id.to_owned(),
            agent_id: scope.agent_id.clone(),
            session_id: scope.session_id.clone(),
            user_id: scope.user_id.clone(),
            // An unknown model: no model-scoped budget may match. Scope
            // values are never empty, so "" matches no set model.
            model: scope.model.clone().unwrap_or_default(),
        };
        // The pure rule decides (so the API and the projector can never
        // disagree); an organisation has few budgets.
        let matching: Vec<Budget> = self
            .list_budgets(org_id, false)
            .await?
            .into_iter()
            .filter(|b| {
                b.scope.applies_to(&b.org_id, &facts)
                    && (scope.model.is_some() || b.scope.model.is_none())
            })
            .collect();
        let periods = self.periods_at(&matching, now).await?;
        Ok(matching
            .into_iter()
            .zip(periods)
            .map(|(b, (p, t))| (b, t, p))
            .collect())
    }
}
