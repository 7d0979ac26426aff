//! The Postgres adapter: tally's ledger, budgets and their projections.
//!
//! A thin, typed layer over sqlx. The money rules themselves live in the
//! pure crates (`tally-ledger` for what a generation's net debit is,
//! `tally-budget` for periods, scopes and thresholds); this crate applies
//! them to whole batches with set-based SQL inside one transaction and keeps
//! the tables consistent with each other.
//!
//! Modules:
//! * [`ledger`]: applying a batch of facts (the projector's transaction).
//! * [`budgets`]: creating, changing and archiving budgets, including
//!   booking the already recorded generations into a new budget.
//! * [`queries`]: read models for the HTTP API.
//! * [`outbox`]: derived events waiting to be published.
//! * [`providers`]: provider connections (sealed credentials), OAuth
//!   states, per-organisation model catalogs and routing profiles —
//!   configuration, not projections (`tally replay` leaves them alone).
//! * [`tenancy`]: organisations and their API keys (configuration, not a
//!   projection: replays leave it alone).
//! * [`reconcile`]: the reconciler's first lookups and sweep claims, and
//!   the booked totals per window that the provider drift compares.
//! * [`reservations`]: holds on the worst-case cost of running generations,
//!   so hard budgets hold under concurrency, and the generation id of every
//!   request, so none is run twice.
//! * [`webhooks`]: organisations' webhooks (sealed signing secrets) and
//!   the durable queue and log of their deliveries — configuration and
//!   delivery state, not projections.
//!
//! # Money rules
//!
//! * **Money rule 7, conservation and rebuild.** For every budget period,
//!   `spent = Σ ledger entries = Σ net debits of the generations in scope`;
//!   dropping the projections and replaying the streams rebuilds identical
//!   balances (`tally replay --verify` checks it).
//! * **Money rule 2, exactly-once effect**, in Postgres: idempotency keys are
//!   business ids (`UNIQUE (budget_id, generation_id, kind)`, one alert per
//!   budget, period and threshold), and one transaction applies a whole batch,
//!   committed before any of its messages is acked. The rules of a single
//!   generation (2–4) are [`tally_ledger`]'s; periods (rule 5) are
//!   [`tally_budget`]'s.
//!
//! # Invariants
//!
//! * `ledger_entries` is append-only (a trigger refuses UPDATE and DELETE).
//! * At most one debit and one adjustment per budget and generation
//!   (`UNIQUE (budget_id, generation_id, kind)`): a redelivered, duplicated
//!   or replayed message cannot post twice.
//! * For every budget period, `budget_periods.spent_usd` equals the sum of
//!   its entries, and for every matching budget the entries of a generation
//!   sum to `generations.debited_usd` (conservation, money rule 7 below).
//! * Derived events (ledger.posted, threshold alerts) are written to the
//!   outbox in the same transaction as the entries they describe.
//! * For every budget period, `budget_periods.held_usd` equals the sum of
//!   the holds of its reservations in state `held`, and a hard budget never
//!   admits a hold past `spent + held ≤ limit` (see [`reservations`]).
//!
//! # Decisions
//!
//! * **Lock order.** Every transaction takes its locks in this one order,
//!   each kind sorted, and skips the kinds it does not need:
//!   1. advisory locks per organisation (sorted keys): *shared* for
//!      projector batches and hold takers, *exclusive* for creating or
//!      archiving a budget;
//!   2. generation rows (`FOR UPDATE`, by `generation_id`) — projector;
//!   3. reservation rows (`FOR UPDATE`, by `request_id`) — hold takers,
//!      the projector's settlement, releases and the sweeper;
//!   4. budget period rows (upserted or `FOR UPDATE` in `(budget_id,
//!      period_start)` order) — projector postings, hold takers, releases.
//!
//!   Creating a budget takes the organisation's lock exclusively, so the
//!   recorded generations it books are exactly those committed before it,
//!   and every later batch or hold sees the new budget. Projector instances
//!   and hold takers never block each other on the org lock, and a hold
//!   taker (reservations → period rows) composes with a projector batch
//!   (generations → reservations → period rows) because both go down the
//!   list in the same direction: no cycle is possible. A hold taker inserts
//!   new reservation rows after its period locks; such an insert can only
//!   wait for a concurrent insert of the *same* request id, whose taker
//!   already holds the same period rows — so it never waits while holding a
//!   lock the other needs. If Postgres still reports a deadlock or
//!   serialization failure, the transaction is retried
//!   ([`StoreError::is_transient`]).
//! * **Budget scope and period are immutable.** Changing them would move
//!   money already booked between budgets; create a new budget instead.
//!   Archiving stops counting generations completed after the archive time,
//!   which a replay reproduces exactly.
//! * **Unconstrained `NUMERIC`, read as `Usd`.** Money columns are plain
//!   `NUMERIC` (a `NUMERIC(p, s)` would round to `s` digits silently), with
//!   `CHECK`s holding every stored amount to what `tally_money::Usd` keeps
//!   (28 fractional digits, at most 10¹⁰ USD). Values travel in Postgres's
//!   binary `NUMERIC` format through `tally-money`'s own codec (feature
//!   `sqlx`), so `SUM()` results and stored totals come back digit for
//!   digit; a value past the range is [`StoreError::Money`]
//!   (`amount_overflow`), never rounded.
//! * **Replays rebuild into a schema.** [`Store::connect_in_schema`] points
//!   a store at another schema (search_path), so `tally replay` can rebuild
//!   the projections beside the live ones and compare them.

pub mod budgets;
mod decode;
#[cfg(test)]
mod fixtures;
mod found;
pub mod ledger;
pub mod outbox;
mod page;
mod posting;
pub mod providers;
pub mod queries;
pub mod reconcile;
pub mod reservations;
pub mod retry;
mod sealed;
pub mod stats;
pub mod tenancy;
pub mod webhooks;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

pub use budgets::{Budget, BudgetPatch, NewBudget};
pub use ledger::{BatchOutcome, FactInput, FactOutcome, PostedEntry};
pub use reservations::{
    Hold, HoldBatcher, HoldOutcome, HoldRequest, Refusal, Reservation, ReservationState,
    SettledHold,
};
pub use tenancy::{IssuedKey, KeyInfo, Org, Role};

/// Errors of the store. Each maps to a stable [`code`](StoreError::code).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not valid.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// Could not connect or the connection broke.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// Deadlock or serialization failure: retry the transaction.
    #[error("transient conflict, retry: {0}")]
    Transient(String),
    /// A row the caller named does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: &'static str,
    },
    /// The request conflicts with stored state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The input breaks a rule (budget definition, scope, ...).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// An organisation already has as many of something as it may have.
    #[error("limit {limit} reached: at most {max}")]
    LimitExceeded {
        /// The limit, e.g. `budgets_per_org`.
        limit: &'static str,
        /// Its value.
        max: u32,
    },
    /// The row is archived and can no longer change.
    #[error("{what} is archived")]
    Archived {
        /// What was to be changed.
        what: &'static str,
    },
    /// Stored data violates an invariant (a bug or manual tampering).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(String),
    /// An amount that cannot be held or computed exactly: a sum past the
    /// range of `Usd`, or a stored value with more digits than it keeps.
    /// Refused, never rounded; the code is the money code
    /// (`amount_overflow`, `amount_out_of_range`, `amount_too_precise`).
    #[error("money cannot be exact: {0}")]
    Money(#[from] tally_money::MoneyError),
}

impl StoreError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::InvalidUrl(_) => "invalid_database_url",
            StoreError::Unavailable(_) => "database_unavailable",
            StoreError::Migration(_) => "migration_failed",
            StoreError::Transient(_) => "transient_conflict",
            StoreError::NotFound { .. } => "not_found",
            StoreError::Conflict(_) => "conflict",
            StoreError::Invalid { .. } => "invalid_input",
            StoreError::LimitExceeded { .. } => "limit_exceeded",
            StoreError::Archived { .. } => "archived",
            StoreError::Corrupt(_) => "corrupt_data",
            StoreError::Database(_) => "database_error",
            StoreError::Money(e) => e.code(),
        }
    }

    /// Whether retrying the same work may succeed (deadlock, serialization
    /// failure, lost connection).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_) | StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // serialization_failure, deadlock_detected
                Some("40001") | Some("40P01") => StoreError::Transient(db.to_string()),
                Some("23505") => StoreError::Conflict(db.to_string()),
                // A money CHECK (`*_exact`): a total past what `Usd` holds.
                Some("23514") if db.constraint().is_some_and(|c| c.ends_with("_exact")) => {
                    StoreError::Money(tally_money::MoneyError::Overflow { op: "store" })
                }
                Some(c) if c.starts_with("08") || c.starts_with("57") => {
                    StoreError::Unavailable(db.to_string())
                }
                _ => StoreError::Database(db.to_string()),
            },
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
            sqlx::Error::RowNotFound => StoreError::NotFound { what: "row" },
            sqlx::Error::ColumnDecode { source, .. } => {
                match source.downcast_ref::<tally_money::MoneyError>() {
                    Some(m) => StoreError::Money(m.clone()),
                    None => StoreError::Database(e.to_string()),
                }
            }
            sqlx::Error::Configuration(_) => StoreError::InvalidUrl(e.to_string()),
            _ => StoreError::Database(e.to_string()),
        }
    }
}

/// The migrations of tally's schema, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A handle on tally's Postgres database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects a pool of at most `max_connections` to `url`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        Self::connect_in_schema(url, max_connections, None).await
    }

    /// Connects with `search_path` set to `schema` (created if missing), so
    /// that every table lives there: used by `tally replay` to rebuild
    /// projections beside the live ones.
    pub async fn connect_in_schema(
        url: &str,
        max_connections: u32,
        schema: Option<&str>,
    ) -> Result<Store, StoreError> {
        let mut opts: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::InvalidUrl(e.to_string()))?;
        opts = opts.log_statements(tracing::log::LevelFilter::Trace);
        if let Some(schema) = schema {
            if !schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(StoreError::Invalid {
                    field: "schema",
                    reason: format!("{schema:?} must be lowercase letters, digits and _"),
                });
            }
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts.clone())
                .await?;
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .execute(&admin)
                .await?;
            admin.close().await;
            opts = opts.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        Ok(Store { pool })
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> Store {
        Store { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations. Idempotent.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Takes the shared advisory locks of `orgs` in key order (the first step
/// of the crate's lock order; organisation-wide changes take them
/// exclusively).
pub(crate) async fn lock_orgs_shared<'a>(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    orgs: impl Iterator<Item = &'a str>,
) -> Result<(), StoreError> {
    let mut keys: Vec<i64> = orgs.map(org_lock_key).collect();
    keys.sort_unstable();
    keys.dedup();
    sqlx::query(
        "SELECT pg_advisory_xact_lock_shared(k) FROM (SELECT unnest($1::int8[]) AS k ORDER BY 1) s",
    )
    .bind(&keys)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The advisory-lock key of an organisation (see the lock order in the
/// crate docs).
pub(crate) fn org_lock_key(org_id: &str) -> i64 {
    // FNV-1a, 64 bit: stable across processes and versions (unlike std's hasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"tally.org:".iter().chain(org_id.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}
