//! The reconciler's memory in Postgres: first lookups, sweep claims, and
//! what tally booked per time window (for the drift against the provider).
//!
//! # Invariants
//!
//! * **The earliest first lookup wins.** [`Store::record_first_lookup`]
//!   inserts once per generation and never moves the instant later, so the
//!   give-up window measured from it only ever gets longer, whatever the
//!   number of instances or restarts.
//! * **One claim at a time.** [`Store::claim_sweep`] takes a generation only
//!   when nobody holds an unexpired claim on it; the claim is one upsert
//!   whose `WHERE` re-checks the committed row, so two sweepers racing for
//!   the same generation never both get it.
//!
//! # Decisions
//!
//! * **Claims are leases, not row locks.** The sweep asks OpenRouter between
//!   claiming and finishing; holding `FOR UPDATE` locks on `generations`
//!   that long would stall the projector. A lease that simply expires also
//!   needs no clean-up after a crash.
//! * **Swept generations are read from the projection.** "Unresolved or on
//!   its estimate" is exactly a booked generation without an actual cost;
//!   the partial index `generations_missing_actual` keeps the scan to those.

use chrono::{DateTime, Utc};
use sqlx::Row;
use tally_money::{Cost, Usd};

use crate::queries::window_query;
use crate::{Store, StoreError};

/// What the sweep selects and how it claims (see [`Store::claim_sweep`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepFilter {
    /// Only generations completed at or after this instant (the horizon or
    /// `--since`).
    pub completed_since: DateTime<Utc>,
    /// Only generations the live reconciler is done with: unresolved ones,
    /// and others not changed since this instant.
    pub quiet_before: DateTime<Utc>,
    /// Only generations not swept since this instant (the start of the
    /// pass, or half an interval ago for periodic passes).
    pub not_swept_since: DateTime<Utc>,
}

/// A generation claimed by a sweeper.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SweepCandidate {
    /// The generation.
    pub generation_id: String,
    /// Its organisation.
    pub org_id: String,
    /// When it completed.
    pub completed_at: DateTime<Utc>,
    /// The producer's estimate, if any.
    pub estimated_cost_usd: Option<Cost>,
    /// Its accounting state (`provisional`, `unresolved`, `unpriced`).
    pub state: String,
    /// Earlier sweep lookups of it.
    pub sweeps: i32,
}

/// What tally booked for the generations completed in one window.
#[derive(Debug, Clone, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct BookedTotals {
    /// Net debit of every generation in the window (actual, else estimate).
    pub booked_usd: Usd,
    /// The part booked at actual cost.
    pub booked_actual_usd: Usd,
    /// The part booked at the estimate.
    pub booked_estimated_usd: Usd,
    /// Generations in the window.
    pub generations: i64,
    /// Those without an actual cost yet (estimate or unpriced).
    pub without_actual: i64,
}

const SWEEP_FILTER: &str = "g.completed_at IS NOT NULL AND g.actual_cost_usd IS NULL \
     AND g.completed_at >= $1 \
     AND (g.unresolved_reason IS NOT NULL OR g.updated_at < $2) \
     AND (s.generation_id IS NULL OR (s.claimed_until < now() AND (s.swept_at IS NULL OR s.swept_at < $3)))";

impl Store {
    /// Records `at` as the first lookup of `generation_id` unless an earlier
    /// one is stored, and returns the stored (earliest) instant.
    pub async fn record_first_lookup(
        &self,
        generation_id: &str,
        org_id: &str,
        at: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let row = sqlx::query(
            "INSERT INTO reconcile_first_lookups (generation_id, org_id, first_lookup_at) \
             VALUES ($1, $2, $3) \
             ON CONFLICT (generation_id) DO UPDATE \
                 SET first_lookup_at = LEAST(reconcile_first_lookups.first_lookup_at, EXCLUDED.first_lookup_at) \
             RETURNING first_lookup_at",
        )
        .bind(generation_id)
        .bind(org_id)
        .bind(at)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get("first_lookup_at")?)
    }

    /// Forgets first lookups older than `before` (their generations are past
    /// the sweep horizon). Returns how many were removed.
    pub async fn prune_first_lookups(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let a = sqlx::query("DELETE FROM reconcile_first_lookups WHERE first_lookup_at < $1")
            .bind(before)
            .execute(self.pool())
            .await?
            .rows_affected();
        let b = sqlx::query(
            "DELETE FROM reconcile_sweeps s WHERE claimed_until < $1 \
             AND NOT EXISTS (SELECT 1 FROM generations g WHERE g.generation_id = s.generation_id \
                             AND g.completed_at >= $1)",
        )
        .bind(before)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(a + b)
    }

    /// How many generations a sweep with `filter` would look at now.
    pub async fn count_sweep_candidates(&self, filter: &SweepFilter) -> Result<i64, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM generations g \
             LEFT JOIN reconcile_sweeps s ON s.generation_id = g.generation_id \
             WHERE {SWEEP_FILTER}"
        ))
        .bind(filter.completed_since)
        .bind(filter.quiet_before)
        .bind(filter.not_swept_since)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Claims up to `limit` generations matching `filter` for `lease`
    /// (oldest completion first). Generations another sweeper holds are
    /// skipped; the claim ends with [`finish_sweep`](Self::finish_sweep) or
    /// when the lease expires.
    pub async fn claim_sweep(
        &self,
        filter: &SweepFilter,
        limit: i64,
        lease: std::time::Duration,
    ) -> Result<Vec<SweepCandidate>, StoreError> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let candidates = sqlx::query_as(&format!(
            "WITH candidates AS ( \
                 SELECT g.generation_id, g.org_id, g.completed_at, g.estimated_cost_usd, g.state, \
                        COALESCE(s.sweeps, 0) AS sweeps \
                 FROM generations g \
                 LEFT JOIN reconcile_sweeps s ON s.generation_id = g.generation_id \
                 WHERE {SWEEP_FILTER} \
                 ORDER BY g.completed_at, g.generation_id \
                 LIMIT $4 \
             ), claimed AS ( \
                 INSERT INTO reconcile_sweeps (generation_id, claimed_until) \
                 SELECT generation_id, now() + make_interval(secs => $5::double precision / 1000) \
                 FROM candidates \
                 ON CONFLICT (generation_id) DO UPDATE SET claimed_until = EXCLUDED.claimed_until \
                     WHERE reconcile_sweeps.claimed_until < now() \
                 RETURNING generation_id \
             ) \
             SELECT c.* FROM candidates c JOIN claimed USING (generation_id) \
             ORDER BY c.completed_at, c.generation_id"
        ))
        .bind(filter.completed_since)
        .bind(filter.quiet_before)
        .bind(filter.not_swept_since)
        .bind(limit)
        .bind(lease_ms)
        .fetch_all(self.pool())
        .await?;
        Ok(candidates)
    }

    /// Ends the claim on `generation_id`, recording that it was asked about
    /// now and with what `outcome` (`reconciled` or the lookup's error code).
    pub async fn finish_sweep(&self, generation_id: &str, outcome: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE reconcile_sweeps SET claimed_until = now(), swept_at = now(), \
                 sweeps = sweeps + 1, last_outcome = $2 \
             WHERE generation_id = $1",
        )
        .bind(generation_id)
        .bind(outcome)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// What tally booked for `org_id`'s generations completed in
    /// `[from, to)`: the generations made with that organisation's own
    /// OpenRouter key.
    pub async fn booked_between(
        &self,
        org_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<BookedTotals, StoreError> {
        let sql = "SELECT COALESCE(SUM(debited_usd), 0) AS booked_usd, \
                    COALESCE(SUM(debited_usd) FILTER (WHERE basis = 'actual'), 0) AS booked_actual_usd, \
                    COALESCE(SUM(debited_usd) FILTER (WHERE basis = 'estimate'), 0) AS booked_estimated_usd, \
                    COUNT(*) AS generations, \
                    COUNT(*) FILTER (WHERE basis <> 'actual') AS without_actual \
             FROM generations WHERE org_id = $1 AND completed_at >= $2 AND completed_at < $3";
        Ok(window_query(sql, org_id, from, to)
            .fetch_one(self.pool())
            .await?)
    }
}
