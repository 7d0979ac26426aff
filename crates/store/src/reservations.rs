//! Reservations: holds on the worst-case cost of a generation request, so a
//! hard budget holds even when many generations start at once.
//!
//! Life of a reservation (one row per `request_id`, see the migration):
//!
//! ```text
//!             take_holds                       apply_batch (completed event with request_id)
//!   (none) ──────────────▶ held ──────────────────────────────────────────▶ settled
//!      │                    │  └── release_expired (expires_at passed) ──▶ released (expired)
//!      │                    └───── release_hold (request failed) ────────▶ released (request_failed)
//!      └── a hard budget refuses ─▶ refused
//! ```
//!
//! * [`Store::take_holds`] takes the holds of many requests in **one
//!   transaction**: the organisation locks (shared), the reservation rows,
//!   then the matching budgets' current period rows in `(budget_id,
//!   period_start)` order, and for every hard budget checks
//!   `spent + held + hold ≤ limit`, requests in the order given. A refused
//!   request names the budget; soft budgets record the hold and never
//!   refuse. [`HoldBatcher`] gathers the requests of concurrent callers into
//!   such transactions (one commit for many holds).
//! * [`Store::record_generation`] stores OpenRouter's generation id as soon
//!   as its response headers arrive; a request that has one is never sent
//!   again ([`HoldOutcome::Generated`]).
//! * Settlement happens inside the projector's transaction
//!   ([`Store::apply_batch`](crate::Store::apply_batch)) that books the
//!   completed event carrying the `request_id`: the hold leaves
//!   `held_usd` in the same statement that adds the spend.
//! * [`Store::extend_holds`] (the worker's heartbeat) pushes `expires_at`
//!   out; [`Store::release_expired`] (the sweeper, safe with any number of
//!   instances: `FOR UPDATE SKIP LOCKED`) releases holds whose time ran out.
//!
//! # Invariants
//!
//! * For every budget period, `budget_periods.held_usd` equals the sum of
//!   the hold rows of its reservations in state `held`: every change of
//!   state and the change of `held_usd` commit together.
//! * A hard budget never admits a hold that would take `spent + held` past
//!   its limit. (Spend that never took a hold — events of other producers —
//!   and actuals above their hold are booked anyway: the books record what
//!   happened.)
//! * A reservation's generation id, once recorded, never changes.
//!
//! # Decisions
//!
//! * **A hold per matching budget, the same amount in each.** The amount
//!   is the request's worst case, computed by the worker from its catalog;
//!   `None` means a dynamic or unknown price: hard budgets refuse it as
//!   `unpriced_model` unless they allow unpriced models, in which case they
//!   hold zero.
//! * **Fallback models widen the match.** A budget scoped to a model holds
//!   a request that names that model as its model or as a fallback: either
//!   may serve it.
//! * **An expired hold without a generation id may be taken again** by a
//!   redelivery of the same request (fresh check against the budgets); a
//!   request refused, failed or with a generation id is never held again.
//! * **As little as possible under the hot row lock.** A busy hard budget
//!   is one period row every hold and every settlement locks, so its lock
//!   is held from a `SELECT … FOR UPDATE` (no new row version; the row is
//!   inserted first only when a period begins) to commit, with one
//!   statement in between that writes the reservations, their hold rows
//!   and `held_usd` together; the reads (reservations, budgets) come
//!   before it. Figures in the README's holds benchmark.
//! * **Budgets created while requests are in flight do not hold them**;
//!   their generations are booked into the new budget when they complete.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};
use tally_budget::{period_containing, Enforcement};
use tally_events::Attribution;
use tally_money::{Cost, Usd};
use tokio::sync::{mpsc, oneshot};

use crate::budgets::{self, Budget};
use crate::found::FetchFound;
use crate::page::next_cursor;
use crate::{Store, StoreError};

/// Longest request id accepted (bytes).
pub const MAX_REQUEST_ID_LEN: usize = 256;

/// The state of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReservationState {
    /// The hold counts against its budgets.
    Held,
    /// The completed event was booked; the hold became spend.
    Settled,
    /// The hold expired or the request failed without a generation.
    Released,
    /// A hard budget refused the request; nothing was held.
    Refused,
}

impl ReservationState {
    /// Every state.
    pub const ALL: [ReservationState; 4] = [
        ReservationState::Held,
        ReservationState::Settled,
        ReservationState::Released,
        ReservationState::Refused,
    ];

    /// The wire and column name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::Held => "held",
            ReservationState::Settled => "settled",
            ReservationState::Released => "released",
            ReservationState::Refused => "refused",
        }
    }

    /// Parses a wire name exactly.
    pub fn parse(s: &str) -> Option<ReservationState> {
        ReservationState::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// Why a hard budget refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `spent + held + hold` would pass the limit.
    BudgetExhausted,
    /// The price is dynamic or unknown and the budget does not allow that.
    UnpricedModel,
}

impl Refusal {
    /// The failed event's reason.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::BudgetExhausted => "budget_exhausted",
            Refusal::UnpricedModel => "unpriced_model",
        }
    }
}

/// A hold to take for one generation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRequest {
    /// The `generation.requested` request id (1 to 256 bytes).
    pub request_id: String,
    /// Organisation, budget scopes and the requested model.
    pub attribution: Attribution,
    /// Fallback models (a budget scoped to any of them matches too).
    pub fallback_models: Vec<String>,
    /// Worst-case cost; `None` when a needed price is dynamic or unknown.
    pub amount_usd: Option<Cost>,
    /// The output token cap sent upstream (recorded for inspection).
    pub max_output_tokens: u32,
    /// How long the hold stands without a heartbeat.
    pub ttl: Duration,
}

impl HoldRequest {
    fn validate(&self) -> Result<(), StoreError> {
        let invalid = |field, reason: &str| StoreError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        if self.request_id.is_empty()
            || self.request_id.len() > MAX_REQUEST_ID_LEN
            || self.request_id.chars().any(char::is_control)
        {
            return Err(invalid(
                "request_id",
                "must be 1 to 256 bytes without control characters",
            ));
        }
        if !tally_events::is_valid_id(&self.attribution.org_id) {
            return Err(invalid("org_id", "must match ^[A-Za-z0-9_-]{1,64}$"));
        }
        if self.attribution.model.is_empty() {
            return Err(invalid("model", "must not be empty"));
        }
        if self.ttl.is_zero() {
            return Err(invalid("ttl", "must be positive"));
        }
        Ok(())
    }
}

/// One budget a reservation holds against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Budget.
    pub budget_id: String,
    /// The period the hold counts in (the one current when it was taken).
    pub period_start: DateTime<Utc>,
    /// End of that period.
    pub period_end: DateTime<Utc>,
    /// Amount held (zero for an unpriced request a budget allows).
    pub amount_usd: Cost,
}

/// A stored reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The request id.
    pub request_id: String,
    /// Organisation.
    pub org_id: String,
    /// Agent scope, if any.
    pub agent_id: Option<String>,
    /// Session scope, if any.
    pub session_id: Option<String>,
    /// End user, if any.
    pub user_id: Option<String>,
    /// Requested model.
    pub model: String,
    /// Worst case held per budget (`None`: unpriced).
    pub amount_usd: Option<Cost>,
    /// Output token cap sent upstream.
    pub max_output_tokens: u32,
    /// State.
    pub state: ReservationState,
    /// OpenRouter's generation id, once its headers arrived.
    pub generation_id: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When a held reservation expires without a heartbeat.
    pub expires_at: DateTime<Utc>,
    /// When it was settled.
    pub settled_at: Option<DateTime<Utc>>,
    /// What the generation was debited when the hold was settled.
    pub settled_usd: Option<Usd>,
    /// When it was released.
    pub released_at: Option<DateTime<Utc>>,
    /// `expired` or `request_failed`.
    pub release_reason: Option<String>,
    /// The failed event's reason (refused or failed requests).
    pub failure_reason: Option<String>,
    /// The failed event's message.
    pub failure_message: Option<String>,
    /// The budget that refused the request.
    pub refused_by: Option<String>,
    /// The budgets it holds (or held) against.
    pub holds: Vec<Hold>,
}

/// What [`Store::take_holds`] decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// The hold stands (taken now, or by an earlier delivery that did not
    /// reach OpenRouter's headers): call OpenRouter.
    Held(Reservation),
    /// A hard budget refused the request; OpenRouter must not be called.
    Refused {
        /// The reservation (state `refused`, `failure_reason`, `refused_by`).
        reservation: Reservation,
        /// Refused by this call (false: by an earlier delivery).
        now: bool,
    },
    /// An earlier delivery already got a generation id: do not call
    /// OpenRouter again.
    Generated(Reservation),
    /// An earlier delivery failed the request (`failure_reason`).
    Failed(Reservation),
}

impl HoldOutcome {
    /// The reservation.
    pub fn reservation(&self) -> &Reservation {
        match self {
            HoldOutcome::Held(r)
            | HoldOutcome::Generated(r)
            | HoldOutcome::Failed(r)
            | HoldOutcome::Refused { reservation: r, .. } => r,
        }
    }
}

const COLUMNS: &str = "request_id, org_id, agent_id, session_id, user_id, model, amount_usd, \
    max_output_tokens, state, generation_id, created_at, updated_at, expires_at, settled_at, \
    settled_usd, released_at, release_reason, failure_reason, failure_message, refused_by";

fn from_row(r: &PgRow) -> Result<Reservation, StoreError> {
    let state: String = r.try_get("state")?;
    let max_output_tokens: i64 = r.try_get("max_output_tokens")?;
    Ok(Reservation {
        request_id: r.try_get("request_id")?,
        org_id: r.try_get("org_id")?,
        agent_id: r.try_get("agent_id")?,
        session_id: r.try_get("session_id")?,
        user_id: r.try_get("user_id")?,
        model: r.try_get("model")?,
        amount_usd: r.try_get("amount_usd")?,
        max_output_tokens: u32::try_from(max_output_tokens)
            .map_err(|_| StoreError::Corrupt(format!("max_output_tokens {max_output_tokens}")))?,
        state: ReservationState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("reservation state {state:?}")))?,
        generation_id: r.try_get("generation_id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        expires_at: r.try_get("expires_at")?,
        settled_at: r.try_get("settled_at")?,
        settled_usd: r.try_get("settled_usd")?,
        released_at: r.try_get("released_at")?,
        release_reason: r.try_get("release_reason")?,
        failure_reason: r.try_get("failure_reason")?,
        failure_message: r.try_get("failure_message")?,
        refused_by: r.try_get("refused_by")?,
        holds: Vec::new(),
    })
}

fn hold_from_row(r: &PgRow) -> Result<(String, Hold), StoreError> {
    Ok((
        r.try_get("request_id")?,
        Hold {
            budget_id: r.try_get("budget_id")?,
            period_start: r.try_get("period_start")?,
            period_end: r.try_get("period_end")?,
            amount_usd: r.try_get("amount_usd")?,
        },
    ))
}

/// Writes one batch's decisions in **one statement** (the hot period rows
/// are locked from step 4 until commit, so every round trip here is time
/// the next batch waits): the reservation rows (new or revived), their
/// hold rows, and `held_usd` of the period rows (already locked).
///
/// Fails with [`StoreError::Transient`] when another delivery of one of
/// the requests inserted its reservation after our read (our view is
/// stale: the caller rolls back and retries).
async fn write_decisions(
    tx: &mut Transaction<'_, Postgres>,
    rows: &ReservationColumns,
    revived: &[String],
    holds: &[(String, Hold)],
    deltas: &BTreeMap<(String, DateTime<Utc>), Usd>,
) -> Result<HashMap<String, Reservation>, StoreError> {
    let mut written = HashMap::new();
    if rows.request_id.is_empty() {
        return Ok(written);
    }
    let deltas: Vec<_> = deltas.iter().filter(|(_, d)| !d.is_zero()).collect();
    let out = rows
        .bind(sqlx::query(&format!(
            "WITH res AS ( \
                 INSERT INTO reservations (request_id, org_id, agent_id, session_id, user_id, \
                     model, amount_usd, max_output_tokens, state, expires_at, failure_reason, \
                     failure_message, refused_by) \
                 SELECT i, o, a, se, u, m, am, mo, st, now() + ttl * interval '1 millisecond', \
                     fr, fm, rb \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                     $5::text[], $6::text[], $7::numeric[], $8::int8[], $9::text[], \
                     $10::int8[], $11::text[], $12::text[], $13::text[]) \
                   AS t(i, o, a, se, u, m, am, mo, st, ttl, fr, fm, rb) \
                 ON CONFLICT (request_id) DO UPDATE SET \
                     amount_usd = excluded.amount_usd, \
                     max_output_tokens = excluded.max_output_tokens, \
                     state = excluded.state, expires_at = excluded.expires_at, \
                     failure_reason = excluded.failure_reason, \
                     failure_message = excluded.failure_message, \
                     refused_by = excluded.refused_by, released_at = NULL, \
                     release_reason = NULL, updated_at = now() \
                 WHERE reservations.state = 'released' \
                   AND reservations.generation_id IS NULL \
                   AND reservations.request_id = ANY($14) \
                 RETURNING {COLUMNS}), \
             h AS ( \
                 INSERT INTO reservation_holds (request_id, budget_id, period_start, \
                     period_end, amount_usd) \
                 SELECT * FROM unnest($15::text[], $16::text[], $17::timestamptz[], \
                     $18::timestamptz[], $19::numeric[]) \
                 RETURNING 1), \
             p AS ( \
                 UPDATE budget_periods bp SET held_usd = bp.held_usd + d.a \
                 FROM unnest($20::text[], $21::timestamptz[], $22::numeric[]) AS d(b, s, a) \
                 WHERE bp.budget_id = d.b AND bp.period_start = d.s \
                 RETURNING 1) \
             SELECT res.*, (SELECT count(*) FROM p) AS periods_written \
             FROM res"
        )))
        .bind(revived)
        .bind(holds.iter().map(|h| h.0.as_str()).collect::<Vec<_>>())
        .bind(
            holds
                .iter()
                .map(|h| h.1.budget_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(holds.iter().map(|h| h.1.period_start).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.1.period_end).collect::<Vec<_>>())
        .bind(holds.iter().map(|h| h.1.amount_usd).collect::<Vec<_>>())
        .bind(
            deltas
                .iter()
                .map(|((b, _), _)| b.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(deltas.iter().map(|((_, s), _)| *s).collect::<Vec<_>>())
        .bind(deltas.iter().map(|(_, d)| **d).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
    if out.len() != rows.request_id.len() {
        // Another delivery of one of these requests inserted it after our
        // read: our view is stale. Roll back and retry.
        return Err(StoreError::Transient(
            "a reservation was taken concurrently".into(),
        ));
    }
    let periods_written: i64 = out[0].try_get("periods_written")?;
    if periods_written as usize != deltas.len() {
        return Err(StoreError::Corrupt(format!(
            "{} of {} held period rows are missing",
            deltas.len() - periods_written as usize,
            deltas.len()
        )));
    }
    for r in &out {
        let r = from_row(r)?;
        written.insert(r.request_id.clone(), r);
    }
    Ok(written)
}

/// Locks the period rows of `periods` (`(budget_id, start)` → end) in key
/// order and returns their `(spent, held)`. The rows of a period that has
/// just begun are created first; the usual case (every row there) is one
/// `SELECT … FOR UPDATE`, which writes no new row version.
async fn lock_periods(
    tx: &mut Transaction<'_, Postgres>,
    periods: &BTreeMap<(String, DateTime<Utc>), DateTime<Utc>>,
) -> Result<HashMap<(String, DateTime<Utc>), (Usd, Usd)>, StoreError> {
    let mut out = HashMap::with_capacity(periods.len());
    if periods.is_empty() {
        return Ok(out);
    }
    let budgets: Vec<&str> = periods.keys().map(|k| k.0.as_str()).collect();
    let starts: Vec<DateTime<Utc>> = periods.keys().map(|k| k.1).collect();
    let lock = || {
        // Row locks in (budget_id, period_start) order: LockRows sits
        // above the sort.
        sqlx::query(
            "SELECT bp.budget_id, bp.period_start, bp.spent_usd, bp.held_usd \
             FROM budget_periods bp \
             JOIN unnest($1::text[], $2::timestamptz[]) AS k(b, s) \
               ON bp.budget_id = k.b AND bp.period_start = k.s \
             ORDER BY bp.budget_id, bp.period_start FOR UPDATE OF bp",
        )
        .bind(&budgets)
        .bind(&starts)
    };
    let mut rows = lock().fetch_all(&mut **tx).await?;
    if rows.len() < periods.len() {
        sqlx::query(
            "INSERT INTO budget_periods (budget_id, period_start, period_end) \
             SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) \
             ORDER BY 1, 2 ON CONFLICT (budget_id, period_start) DO NOTHING",
        )
        .bind(&budgets)
        .bind(&starts)
        .bind(periods.values().copied().collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
        rows = lock().fetch_all(&mut **tx).await?;
    }
    for r in &rows {
        out.insert(
            (r.try_get("budget_id")?, r.try_get("period_start")?),
            (r.try_get("spent_usd")?, r.try_get("held_usd")?),
        );
    }
    if out.len() != periods.len() {
        return Err(StoreError::Corrupt(format!(
            "{} of {} period rows are missing after creating them",
            periods.len() - out.len(),
            periods.len()
        )));
    }
    Ok(out)
}

async fn load_holds(
    conn: &mut sqlx::PgConnection,
    reservations: &mut [Reservation],
) -> Result<(), StoreError> {
    if reservations.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = reservations.iter().map(|r| r.request_id.as_str()).collect();
    let rows = sqlx::query(
        "SELECT request_id, budget_id, period_start, period_end, amount_usd \
         FROM reservation_holds WHERE request_id = ANY($1) ORDER BY request_id, budget_id",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_id: HashMap<String, Vec<Hold>> = HashMap::new();
    for r in &rows {
        let (id, h) = hold_from_row(r)?;
        by_id.entry(id).or_default().push(h);
    }
    for r in reservations {
        r.holds = by_id.remove(&r.request_id).unwrap_or_default();
    }
    Ok(())
}

/// Adds `delta` to `held_usd` of each period row (which must exist and be
/// locked by the caller, or be locked here in key order).
async fn add_held(
    tx: &mut Transaction<'_, Postgres>,
    deltas: &BTreeMap<(String, DateTime<Utc>), Usd>,
    lock_first: bool,
) -> Result<(), StoreError> {
    let deltas: Vec<_> = deltas.iter().filter(|(_, d)| !d.is_zero()).collect();
    if deltas.is_empty() {
        return Ok(());
    }
    let budgets: Vec<&str> = deltas.iter().map(|((b, _), _)| b.as_str()).collect();
    let starts: Vec<DateTime<Utc>> = deltas.iter().map(|((_, s), _)| *s).collect();
    let amounts: Vec<Usd> = deltas.iter().map(|(_, d)| **d).collect();
    if lock_first {
        // Row locks in (budget_id, period_start) order: LockRows sits above
        // the sort.
        sqlx::query(
            "SELECT 1 FROM budget_periods bp \
             JOIN unnest($1::text[], $2::timestamptz[]) AS k(b, s) \
               ON bp.budget_id = k.b AND bp.period_start = k.s \
             ORDER BY bp.budget_id, bp.period_start FOR UPDATE OF bp",
        )
        .bind(&budgets)
        .bind(&starts)
        .execute(&mut **tx)
        .await?;
    }
    let rows = sqlx::query(
        "UPDATE budget_periods bp SET held_usd = bp.held_usd + d.a \
         FROM unnest($1::text[], $2::timestamptz[], $3::numeric[]) AS d(b, s, a) \
         WHERE bp.budget_id = d.b AND bp.period_start = d.s \
         RETURNING bp.budget_id, bp.held_usd",
    )
    .bind(&budgets)
    .bind(&starts)
    .bind(&amounts)
    .fetch_all(&mut **tx)
    .await?;
    if rows.len() != deltas.len() {
        return Err(StoreError::Corrupt(format!(
            "{} of {} held period rows are missing",
            deltas.len() - rows.len(),
            deltas.len()
        )));
    }
    for r in &rows {
        let held: Usd = r.try_get("held_usd")?;
        if held < Usd::ZERO {
            let b: String = r.try_get("budget_id")?;
            return Err(StoreError::Corrupt(format!(
                "budget {b} would hold a negative amount ({held})"
            )));
        }
    }
    Ok(())
}

/// The held amounts of `reservations` per period, negated (to release them).
fn releases(holds: &[Hold]) -> Result<BTreeMap<(String, DateTime<Utc>), Usd>, StoreError> {
    let mut out: BTreeMap<(String, DateTime<Utc>), Usd> = BTreeMap::new();
    for h in holds {
        out.entry((h.budget_id.clone(), h.period_start))
            .or_default()
            .try_add_assign(h.amount_usd.usd().neg())?;
    }
    Ok(out)
}

/// A time-to-live in whole milliseconds, for `now() + ms * interval '1
/// millisecond'`: expiry is always measured on the database's clock, the
/// one the sweeper compares with.
fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// What one request of a batch turned into, before it is written.
enum Decision {
    /// Insert (or revive) as held with these holds.
    Hold(Vec<Hold>),
    /// Insert as refused.
    Refuse {
        refusal: Refusal,
        budget: Arc<Budget>,
    },
    /// Already decided by an earlier delivery.
    Existing(Box<Reservation>),
    /// Same request id earlier in this batch.
    SameAs(usize),
}

/// Locks the reservations `reqs` name (in request id order) and returns
/// those that exist, with their holds.
async fn load_known(
    tx: &mut Transaction<'_, Postgres>,
    reqs: &[HoldRequest],
) -> Result<HashMap<String, Reservation>, StoreError> {
    // 2. Reservations already known, locked in request id order.
    let ids: BTreeSet<&str> = reqs.iter().map(|r| r.request_id.as_str()).collect();
    let ids: Vec<&str> = ids.into_iter().collect();
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM reservations WHERE request_id = ANY($1) \
         ORDER BY request_id FOR UPDATE"
    ))
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut known: HashMap<String, Reservation> = HashMap::new();
    for r in &rows {
        let r = from_row(r)?;
        known.insert(r.request_id.clone(), r);
    }
    {
        let mut list: Vec<Reservation> = known.values().cloned().collect();
        load_holds(tx, &mut list).await?;
        for r in list {
            known.insert(r.request_id.clone(), r);
        }
    }
    Ok(known)
}

/// One batch of hold requests on its way through [`Store::take_holds`]:
/// the decision of each request (same index), the budgets each must hold
/// against, and the period rows in play. Everything but the reads and
/// writes around it is pure.
struct HoldBatch {
    decisions: Vec<Option<Decision>>,
    matching: Vec<Vec<Arc<Budget>>>,
    periods: BTreeMap<(String, DateTime<Utc>), DateTime<Utc>>,
}

impl HoldBatch {
    /// Sorts out the requests already decided (an earlier delivery, or the
    /// same id earlier in the batch) and, for the others, the budgets they
    /// match and the periods current at `now`.
    fn triage(
        reqs: &[HoldRequest],
        known: &HashMap<String, Reservation>,
        all_budgets: &[Arc<Budget>],
        now: DateTime<Utc>,
    ) -> HoldBatch {
        let mut matching: Vec<Vec<Arc<Budget>>> = Vec::with_capacity(reqs.len());
        let mut periods: BTreeMap<(String, DateTime<Utc>), DateTime<Utc>> = BTreeMap::new();
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        let mut decisions: Vec<Option<Decision>> = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            if let Some(&j) = first_seen.get(r.request_id.as_str()) {
                decisions.push(Some(Decision::SameAs(j)));
                matching.push(Vec::new());
                continue;
            }
            first_seen.insert(&r.request_id, i);
            if let Some(existing) = known.get(&r.request_id) {
                let revivable = existing.state == ReservationState::Released
                    && existing.generation_id.is_none()
                    && existing.release_reason.as_deref() == Some("expired")
                    && existing.org_id == r.attribution.org_id;
                if !revivable {
                    decisions.push(Some(Decision::Existing(Box::new(existing.clone()))));
                    matching.push(Vec::new());
                    continue;
                }
            }
            let m = matching_budgets(all_budgets, r, now);
            for b in &m {
                let p = period_containing(b.period, b.tz, now);
                periods.insert((b.id.clone(), p.start), p.end);
            }
            matching.push(m);
            decisions.push(None);
        }
        HoldBatch {
            decisions,
            matching,
            periods,
        }
    }

    /// Decides the undecided requests in order against the running
    /// `(spent, held)` of their periods; returns the held amount to add
    /// per period.
    fn decide(
        &mut self,
        reqs: &[HoldRequest],
        mut spent_held: HashMap<(String, DateTime<Utc>), (Usd, Usd)>,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<(String, DateTime<Utc>), Usd>, StoreError> {
        let mut deltas: BTreeMap<(String, DateTime<Utc>), Usd> = BTreeMap::new();
        for (i, r) in reqs.iter().enumerate() {
            if self.decisions[i].is_some() {
                continue;
            }
            let mut refusal = None;
            let mut holds = Vec::with_capacity(self.matching[i].len());
            for b in &self.matching[i] {
                let p = period_containing(b.period, b.tz, now);
                let key = (b.id.clone(), p.start);
                let (spent, held) = spent_held.get(&key).copied().unwrap_or_default();
                let amount = match r.amount_usd {
                    Some(a) => a,
                    None if b.enforcement == Enforcement::Hard && !b.allow_unpriced_models => {
                        refusal = Some((Refusal::UnpricedModel, b.clone()));
                        break;
                    }
                    None => Cost::ZERO,
                };
                if b.enforcement == Enforcement::Hard {
                    let total = spent
                        .checked_add(held)
                        .and_then(|t| t.checked_add(amount.usd()))
                        .ok_or_else(|| StoreError::Corrupt("held total overflows".into()))?;
                    if total > b.limit_usd.usd() {
                        refusal = Some((Refusal::BudgetExhausted, b.clone()));
                        break;
                    }
                }
                holds.push(Hold {
                    budget_id: b.id.clone(),
                    period_start: p.start,
                    period_end: p.end,
                    amount_usd: amount,
                });
            }
            self.decisions[i] = Some(match refusal {
                Some((refusal, budget)) => Decision::Refuse { refusal, budget },
                None => {
                    for h in &holds {
                        let key = (h.budget_id.clone(), h.period_start);
                        if let Some(v) = spent_held.get_mut(&key) {
                            v.1.try_add_assign(h.amount_usd.usd())?;
                        }
                        deltas
                            .entry(key)
                            .or_default()
                            .try_add_assign(h.amount_usd.usd())?;
                    }
                    Decision::Hold(holds)
                }
            });
        }
        Ok(deltas)
    }

    /// The rows to write: reservations (new or revived), hold rows, and
    /// the ids of revived reservations.
    fn writes(
        &self,
        reqs: &[HoldRequest],
        known: &HashMap<String, Reservation>,
    ) -> (ReservationColumns, Vec<(String, Hold)>, Vec<String>) {
        let mut out_rows = ReservationColumns::default();
        let mut hold_rows: Vec<(String, Hold)> = Vec::new();
        let mut revived: Vec<String> = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let expires = ttl_ms(r.ttl);
            match self.decisions[i].as_ref() {
                Some(Decision::Hold(holds)) => {
                    if known.contains_key(&r.request_id) {
                        revived.push(r.request_id.clone());
                    }
                    out_rows.push(r, "held", expires, None);
                    hold_rows.extend(holds.iter().map(|h| (r.request_id.clone(), h.clone())));
                }
                Some(Decision::Refuse { refusal, budget }) => {
                    if known.contains_key(&r.request_id) {
                        revived.push(r.request_id.clone());
                    }
                    let message = match refusal {
                        Refusal::BudgetExhausted => format!(
                            "budget {} ({}) is exhausted: its spend and holds leave no room for \
                             this request's worst case; OpenRouter was not called",
                            budget.name, budget.id
                        ),
                        Refusal::UnpricedModel => format!(
                            "model {} has a dynamic or unknown price and hard budget {} ({}) \
                             does not allow unpriced models; OpenRouter was not called",
                            r.attribution.model, budget.name, budget.id
                        ),
                    };
                    out_rows.push(
                        r,
                        "refused",
                        expires,
                        Some((refusal.code(), message, &budget.id)),
                    );
                }
                _ => {}
            }
        }
        (out_rows, hold_rows, revived)
    }

    /// One outcome per request, in request order.
    fn outcomes(
        mut self,
        reqs: &[HoldRequest],
        known: &HashMap<String, Reservation>,
        written: &mut HashMap<String, Reservation>,
    ) -> Result<Vec<HoldOutcome>, StoreError> {
        let mut outcomes: Vec<HoldOutcome> = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            let outcome = match self.decisions[i].take() {
                Some(Decision::SameAs(j)) => match outcomes[j].clone() {
                    HoldOutcome::Refused { reservation, .. } => HoldOutcome::Refused {
                        reservation,
                        now: false,
                    },
                    o => o,
                },
                Some(Decision::Existing(_)) => {
                    let e = known.get(&r.request_id).cloned().ok_or_else(|| {
                        StoreError::Corrupt("a known reservation vanished".into())
                    })?;
                    classify(e, false)
                }
                Some(Decision::Hold(holds)) => {
                    let mut res = written.remove(&r.request_id).ok_or_else(|| {
                        StoreError::Corrupt("a written reservation vanished".into())
                    })?;
                    res.holds = holds;
                    HoldOutcome::Held(res)
                }
                Some(Decision::Refuse { .. }) => {
                    let res = written.remove(&r.request_id).ok_or_else(|| {
                        StoreError::Corrupt("a written reservation vanished".into())
                    })?;
                    HoldOutcome::Refused {
                        reservation: res,
                        now: true,
                    }
                }
                None => return Err(StoreError::Corrupt("an undecided hold request".into())),
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}

/// Extends the holds that an earlier delivery of a request took and that
/// still stand (this delivery is a retry of the same request).
async fn extend_standing(
    tx: &mut Transaction<'_, Postgres>,
    reqs: &[HoldRequest],
    decisions: &[Option<Decision>],
    known: &mut HashMap<String, Reservation>,
) -> Result<(), StoreError> {
    let standing: Vec<(&str, Duration)> = reqs
        .iter()
        .zip(decisions)
        .filter_map(|(r, d)| match d {
            Some(Decision::Existing(e)) if e.state == ReservationState::Held => {
                Some((r.request_id.as_str(), r.ttl))
            }
            _ => None,
        })
        .collect();
    if !standing.is_empty() {
        let rows = sqlx::query(&format!(
            "UPDATE reservations r SET expires_at = now() + u.ttl * interval '1 millisecond', \
                 updated_at = now() \
             FROM unnest($1::text[], $2::int8[]) AS u(id, ttl) \
             WHERE r.request_id = u.id AND r.state = 'held' RETURNING {}",
            COLUMNS
                .split(", ")
                .map(|c| format!("r.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(standing.iter().map(|s| s.0).collect::<Vec<_>>())
        .bind(standing.iter().map(|s| ttl_ms(s.1)).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        for r in &rows {
            let mut r = from_row(r)?;
            if let Some(k) = known.get(&r.request_id) {
                r.holds = k.holds.clone();
            }
            known.insert(r.request_id.clone(), r);
        }
    }
    Ok(())
}

impl Store {
    /// Takes the holds of `reqs` in one transaction (see the module docs),
    /// one outcome per request in the same order. Requests are decided in
    /// the order given. A transient failure ([`StoreError::is_transient`])
    /// may be retried with the same requests.
    pub async fn take_holds(&self, reqs: &[HoldRequest]) -> Result<Vec<HoldOutcome>, StoreError> {
        for r in reqs {
            r.validate()?;
        }
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let now = Utc::now();
        let mut tx = self.pool().begin().await?;
        // The crate's lock order: organisations (shared), the reservation
        // rows, the period rows (the contended ones, as late as possible).
        crate::lock_orgs_shared(&mut tx, reqs.iter().map(|r| r.attribution.org_id.as_str()))
            .await?;
        let mut known = load_known(&mut tx, reqs).await?;
        let mut orgs: Vec<String> = reqs.iter().map(|r| r.attribution.org_id.clone()).collect();
        orgs.sort();
        orgs.dedup();
        let all_budgets = budgets::load_for_orgs(&mut tx, &orgs).await?;
        let mut batch = HoldBatch::triage(reqs, &known, &all_budgets, now);
        let spent_held = lock_periods(&mut tx, &batch.periods).await?;
        let deltas = batch.decide(reqs, spent_held, now)?;
        let (rows, holds, revived) = batch.writes(reqs, &known);
        if !revived.is_empty() {
            // An expired hold taken again: its old hold rows were released
            // with it; the new decision replaces them.
            sqlx::query("DELETE FROM reservation_holds WHERE request_id = ANY($1)")
                .bind(&revived)
                .execute(&mut *tx)
                .await?;
        }
        let mut written = write_decisions(&mut tx, &rows, &revived, &holds, &deltas).await?;
        extend_standing(&mut tx, reqs, &batch.decisions, &mut known).await?;
        tx.commit().await?;
        batch.outcomes(reqs, &known, &mut written)
    }

    /// Records OpenRouter's generation id for a request as soon as the
    /// response headers arrive, and extends a standing hold by `ttl`.
    /// Idempotent; a different id already recorded stays (and is returned).
    pub async fn record_generation(
        &self,
        request_id: &str,
        generation_id: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let recorded: Option<Option<String>> = sqlx::query_scalar(
            "UPDATE reservations SET generation_id = COALESCE(generation_id, $2), \
                 expires_at = CASE WHEN state = 'held' \
                     THEN greatest(expires_at, now() + $3 * interval '1 millisecond') \
                     ELSE expires_at END, \
                 updated_at = now() \
             WHERE request_id = $1 RETURNING generation_id",
        )
        .bind(request_id)
        .bind(generation_id)
        .bind(ttl_ms(ttl))
        .fetch_optional(self.pool())
        .await?;
        match recorded {
            Some(id) => Ok(id),
            None => Err(StoreError::NotFound {
                what: "reservation",
            }),
        }
    }

    /// Extends the holds of `request_ids` that are still held to `now +
    /// ttl` (the worker's heartbeat while their generations run). Returns
    /// how many were extended.
    pub async fn extend_holds(
        &self,
        request_ids: &[String],
        ttl: Duration,
    ) -> Result<u64, StoreError> {
        if request_ids.is_empty() {
            return Ok(0);
        }
        let mut ids = request_ids.to_vec();
        ids.sort();
        ids.dedup();
        let n = sqlx::query(
            "UPDATE reservations SET expires_at = now() + $2 * interval '1 millisecond', \
                 updated_at = now() \
             WHERE request_id = ANY($1) AND state = 'held'",
        )
        .bind(&ids)
        .bind(ttl_ms(ttl))
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Releases the hold of a request that failed without a generation
    /// (reason and message of its failed event are kept, so a redelivery
    /// answers the same). Returns the reservation; one no longer held is
    /// left as it is.
    pub async fn release_hold(
        &self,
        request_id: &str,
        failure_reason: &str,
        failure_message: &str,
    ) -> Result<Reservation, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM reservations WHERE request_id = $1 FOR UPDATE"
        ))
        .bind(request_id)
        .fetch_found(&mut *tx, "reservation")
        .await?;
        let mut res = vec![from_row(&row)?];
        load_holds(&mut tx, &mut res).await?;
        let mut res = res.remove(0);
        if res.state != ReservationState::Held {
            tx.commit().await?;
            return Ok(res);
        }
        add_held(&mut tx, &releases(&res.holds)?, true).await?;
        let row = sqlx::query(&format!(
            "UPDATE reservations SET state = 'released', released_at = now(), \
                 release_reason = 'request_failed', failure_reason = $2, failure_message = $3, \
                 updated_at = now() \
             WHERE request_id = $1 RETURNING {COLUMNS}"
        ))
        .bind(request_id)
        .bind(failure_reason)
        .bind(failure_message)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let holds = std::mem::take(&mut res.holds);
        let mut res = from_row(&row)?;
        res.holds = holds;
        Ok(res)
    }

    /// Releases up to `limit` held reservations whose `expires_at` has
    /// passed, skipping rows another transaction holds (several sweepers may
    /// run). Returns the released reservations.
    pub async fn release_expired(&self, limit: i64) -> Result<Vec<Reservation>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM reservations WHERE state = 'held' AND expires_at < now() \
             ORDER BY request_id LIMIT $1 FOR UPDATE SKIP LOCKED"
        ))
        .bind(limit.max(1))
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let mut res = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        load_holds(&mut tx, &mut res).await?;
        let all: Vec<Hold> = res.iter().flat_map(|r| r.holds.clone()).collect();
        add_held(&mut tx, &releases(&all)?, true).await?;
        let ids: Vec<&str> = res.iter().map(|r| r.request_id.as_str()).collect();
        sqlx::query(
            "UPDATE reservations SET state = 'released', released_at = now(), \
                 release_reason = 'expired', updated_at = now() \
             WHERE request_id = ANY($1)",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        for r in &mut res {
            r.state = ReservationState::Released;
            r.release_reason = Some("expired".into());
        }
        Ok(res)
    }

    /// One reservation with its holds.
    pub async fn reservation(&self, request_id: &str) -> Result<Reservation, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM reservations WHERE request_id = $1"
        ))
        .bind(request_id)
        .fetch_found(self.pool(), "reservation")
        .await?;
        let mut res = vec![from_row(&row)?];
        let mut conn = self.pool().acquire().await?;
        load_holds(&mut conn, &mut res).await?;
        Ok(res.remove(0))
    }

    /// An organisation's reservations, newest first, optionally in one
    /// state: at most `limit` after `cursor` (the `request_id` returned as
    /// the previous page's cursor), and the cursor of the next page.
    pub async fn list_reservations(
        &self,
        org_id: &str,
        state: Option<ReservationState>,
        cursor: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<Reservation>, Option<String>), StoreError> {
        let limit = limit.max(1);
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM reservations r \
             WHERE org_id = $1 AND ($2::text IS NULL OR state = $2) \
               AND ($3::text IS NULL OR (created_at, request_id) < \
                    (SELECT created_at, request_id FROM reservations WHERE request_id = $3)) \
             ORDER BY created_at DESC, request_id DESC LIMIT $4"
        ))
        .bind(org_id)
        .bind(state.map(|s| s.as_str()))
        .bind(cursor)
        .bind(limit.saturating_add(1))
        .fetch_all(self.pool())
        .await?;
        let mut res = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        let next = next_cursor(&mut res, limit, |r| r.request_id.clone());
        let mut conn = self.pool().acquire().await?;
        load_holds(&mut conn, &mut res).await?;
        Ok((res, next))
    }

    /// How many reservations are held now, and the sum of their worst cases
    /// (each counted once, however many budgets it holds against).
    pub async fn held_totals(&self) -> Result<(i64, Usd), StoreError> {
        let row = sqlx::query(
            "SELECT count(*) AS n, COALESCE(sum(amount_usd), 0) AS usd \
             FROM reservations WHERE state = 'held'",
        )
        .fetch_one(self.pool())
        .await?;
        Ok((row.try_get("n")?, row.try_get("usd")?))
    }
}

/// The outcome a stored reservation stands for when a delivery finds it.
fn classify(r: Reservation, now: bool) -> HoldOutcome {
    if r.generation_id.is_some() {
        return HoldOutcome::Generated(r);
    }
    match r.state {
        ReservationState::Held => HoldOutcome::Held(r),
        ReservationState::Refused => HoldOutcome::Refused {
            reservation: r,
            now,
        },
        // Settled without a generation id cannot happen (settlement records
        // it); released without one failed (expired ones are revived).
        ReservationState::Settled | ReservationState::Released => HoldOutcome::Failed(r),
    }
}

/// The non-archived budgets of the request's organisation whose scope
/// matches the request with its model or any fallback model.
fn matching_budgets(
    budgets: &[Arc<Budget>],
    r: &HoldRequest,
    now: DateTime<Utc>,
) -> Vec<Arc<Budget>> {
    budgets
        .iter()
        .filter(|b| {
            let a = &r.attribution;
            b.org_id == a.org_id
                && b.archived_at.is_none_or(|at| now < at)
                && std::iter::once(&a.model)
                    .chain(&r.fallback_models)
                    .any(|model| b.scope.matches_served_by(a, model))
        })
        .cloned()
        .collect()
}

#[derive(Default)]
struct ReservationColumns {
    request_id: Vec<String>,
    org_id: Vec<String>,
    agent_id: Vec<Option<String>>,
    session_id: Vec<Option<String>>,
    user_id: Vec<Option<String>>,
    model: Vec<String>,
    amount: Vec<Option<Usd>>,
    max_output: Vec<i64>,
    state: Vec<&'static str>,
    ttl_ms: Vec<i64>,
    failure_reason: Vec<Option<&'static str>>,
    failure_message: Vec<Option<String>>,
    refused_by: Vec<Option<String>>,
}

impl ReservationColumns {
    fn push(
        &mut self,
        r: &HoldRequest,
        state: &'static str,
        ttl_ms: i64,
        refusal: Option<(&'static str, String, &String)>,
    ) {
        self.request_id.push(r.request_id.clone());
        let a = &r.attribution;
        self.org_id.push(a.org_id.clone());
        self.agent_id.push(a.agent_id.clone());
        self.session_id.push(a.session_id.clone());
        self.user_id.push(a.user_id.clone());
        self.model.push(a.model.clone());
        self.amount.push(r.amount_usd.map(Cost::usd));
        self.max_output.push(i64::from(r.max_output_tokens));
        self.state.push(state);
        self.ttl_ms.push(ttl_ms);
        match refusal {
            Some((reason, message, by)) => {
                self.failure_reason.push(Some(reason));
                self.failure_message.push(Some(message));
                self.refused_by.push(Some(by.clone()));
            }
            None => {
                self.failure_reason.push(None);
                self.failure_message.push(None);
                self.refused_by.push(None);
            }
        }
    }

    fn bind<'q>(
        &'q self,
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        q.bind(&self.request_id)
            .bind(&self.org_id)
            .bind(&self.agent_id)
            .bind(&self.session_id)
            .bind(&self.user_id)
            .bind(&self.model)
            .bind(&self.amount)
            .bind(&self.max_output)
            .bind(&self.state)
            .bind(&self.ttl_ms)
            .bind(&self.failure_reason)
            .bind(&self.failure_message)
            .bind(&self.refused_by)
    }
}

/// A hold settled inside the projector's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledHold {
    /// The request.
    pub request_id: String,
    /// The generation that settled it.
    pub generation_id: String,
    /// The worst case that was held (`None`: unpriced).
    pub held_usd: Option<Usd>,
    /// What the generation was debited.
    pub debited_usd: Usd,
}

/// A completed fact that may settle a reservation.
pub(crate) struct SettleCandidate {
    pub request_id: String,
    pub org_id: String,
    pub generation_id: String,
    pub debited_usd: Usd,
}

/// Settles the held reservations of `candidates` in the projector's
/// transaction (after the generation rows are locked, before the period
/// rows). Returns the settled holds and the releases of `held_usd` to fold
/// into the period upsert.
pub(crate) async fn settle_in_tx(
    tx: &mut Transaction<'_, Postgres>,
    candidates: &[SettleCandidate],
) -> Result<
    (
        Vec<SettledHold>,
        BTreeMap<(String, DateTime<Utc>), (DateTime<Utc>, Usd)>,
    ),
    StoreError,
> {
    let mut out = Vec::new();
    let mut released: BTreeMap<(String, DateTime<Utc>), (DateTime<Utc>, Usd)> = BTreeMap::new();
    if candidates.is_empty() {
        return Ok((out, released));
    }
    let mut ids: Vec<&str> = candidates.iter().map(|c| c.request_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let rows = sqlx::query(
        "SELECT request_id, org_id, state, generation_id, amount_usd FROM reservations \
         WHERE request_id = ANY($1) ORDER BY request_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    if rows.is_empty() {
        return Ok((out, released));
    }
    struct Row_ {
        org_id: String,
        state: String,
        generation_id: Option<String>,
        amount: Option<Usd>,
    }
    let mut known: HashMap<String, Row_> = HashMap::new();
    for r in &rows {
        known.insert(
            r.try_get("request_id")?,
            Row_ {
                org_id: r.try_get("org_id")?,
                state: r.try_get("state")?,
                generation_id: r.try_get("generation_id")?,
                amount: r.try_get("amount_usd")?,
            },
        );
    }
    let mut settle: Vec<&SettleCandidate> = Vec::new();
    let mut record: Vec<&SettleCandidate> = Vec::new();
    for c in candidates {
        let Some(k) = known.get_mut(&c.request_id) else {
            continue;
        };
        // Another organisation's request id settles nothing; a different
        // generation for the same request is not this request's answer.
        if k.org_id != c.org_id
            || k.generation_id
                .as_deref()
                .is_some_and(|g| g != c.generation_id)
        {
            continue;
        }
        if k.state == "held" {
            k.state = "settled".into();
            k.generation_id = Some(c.generation_id.clone());
            settle.push(c);
            out.push(SettledHold {
                request_id: c.request_id.clone(),
                generation_id: c.generation_id.clone(),
                held_usd: k.amount,
                debited_usd: c.debited_usd,
            });
        } else if k.generation_id.is_none() {
            k.generation_id = Some(c.generation_id.clone());
            record.push(c);
        }
    }
    if !settle.is_empty() {
        let ids: Vec<&str> = settle.iter().map(|c| c.request_id.as_str()).collect();
        let holds = sqlx::query(
            "SELECT request_id, budget_id, period_start, period_end, amount_usd \
             FROM reservation_holds WHERE request_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?;
        for r in &holds {
            let (_, h) = hold_from_row(r)?;
            let e = released
                .entry((h.budget_id, h.period_start))
                .or_insert((h.period_end, Usd::ZERO));
            e.1.try_add_assign(h.amount_usd.usd().neg())?;
        }
        sqlx::query(
            "UPDATE reservations r SET state = 'settled', settled_at = now(), updated_at = now(), \
                 generation_id = u.g, settled_usd = u.d \
             FROM unnest($1::text[], $2::text[], $3::numeric[]) AS u(id, g, d) \
             WHERE r.request_id = u.id",
        )
        .bind(&ids)
        .bind(
            settle
                .iter()
                .map(|c| c.generation_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(settle.iter().map(|c| c.debited_usd).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !record.is_empty() {
        sqlx::query(
            "UPDATE reservations r SET generation_id = u.g, updated_at = now() \
             FROM unnest($1::text[], $2::text[]) AS u(id, g) \
             WHERE r.request_id = u.id AND r.generation_id IS NULL",
        )
        .bind(
            record
                .iter()
                .map(|c| c.request_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            record
                .iter()
                .map(|c| c.generation_id.as_str())
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok((out, released))
}

/// Recomputes every period's `held_usd` from the holds of the reservations
/// in state `held` (after `tally replay` replaced the period rows).
pub async fn recompute_held(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query("UPDATE budget_periods SET held_usd = 0 WHERE held_usd <> 0")
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO budget_periods AS bp (budget_id, period_start, period_end, held_usd) \
         SELECT h.budget_id, h.period_start, max(h.period_end), sum(h.amount_usd) \
         FROM reservation_holds h JOIN reservations r USING (request_id) \
         WHERE r.state = 'held' GROUP BY 1, 2 ORDER BY 1, 2 \
         ON CONFLICT (budget_id, period_start) DO UPDATE SET held_usd = excluded.held_usd",
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

type Reply = oneshot::Sender<Result<HoldOutcome, StoreError>>;

/// Gathers the hold requests of concurrent callers into shared
/// transactions: while [`HOLD_BATCHES_IN_FLIGHT`] transactions run, the
/// next requests queue and go together into the next one (up to
/// `max_batch`), so a hot budget row is locked once per batch rather than
/// once per request. Batches in flight take their locks in the one lock
/// order, so they wait for each other and never deadlock. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HoldBatcher {
    tx: mpsc::Sender<(HoldRequest, Reply)>,
}

/// Batches in flight at once per batcher. One: every batch contends for
/// the same hot period rows, so a second batch in flight only waits on the
/// first's row lock while splitting the waiting requests into two smaller
/// commits (measured with 16 requesters on one hot budget: one in flight
/// with `GATHER_YIELDS` gathered full batches of 16 and took 1.6–1.9 k
/// holds/s on a loaded machine; two in flight gathered ~8 and took
/// 1.2 k/s; three, ~4 and 1.1 k/s).
pub const HOLD_BATCHES_IN_FLIGHT: usize = 1;

/// How often the batcher yields to the runtime while gathering a batch
/// before it stops at an empty queue: the callers answered by the previous
/// batch are runnable but not yet re-queued, and a few yields (microseconds,
/// no timer) let them join this batch instead of the next (without them
/// a third of all batches held a single request).
const GATHER_YIELDS: usize = 4;

impl HoldBatcher {
    /// Starts the batching task on the current runtime. It ends when every
    /// clone of the batcher is dropped.
    pub fn spawn(store: Store, max_batch: usize) -> HoldBatcher {
        let max_batch = max_batch.max(1);
        let (tx, mut rx) = mpsc::channel::<(HoldRequest, Reply)>(max_batch * 4);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(HOLD_BATCHES_IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Wait for a free slot before gathering: the requests that
                // come while every slot is busy join this batch.
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let mut batch: Vec<(HoldRequest, Reply)> = Vec::with_capacity(max_batch);
                batch.push(first);
                let mut yields = 0;
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) if yields < GATHER_YIELDS => {
                            yields += 1;
                            tokio::task::yield_now().await;
                        }
                        Err(_) => break,
                    }
                }
                let store = store.clone();
                tokio::spawn(async move {
                    run_batch(&store, batch).await;
                    drop(permit);
                });
            }
        });
        HoldBatcher { tx }
    }

    /// Takes the hold of one request (in a transaction shared with the
    /// requests of other callers).
    pub async fn hold(&self, req: HoldRequest) -> Result<HoldOutcome, StoreError> {
        req.validate()?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((req, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the hold batcher stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the hold batcher stopped".into()))?
    }
}

/// Takes the holds of one batch (retrying transient conflicts) and answers
/// each caller.
async fn run_batch(store: &Store, batch: Vec<(HoldRequest, Reply)>) {
    let (reqs, replies): (Vec<HoldRequest>, Vec<Reply>) = batch.into_iter().unzip();
    let result = (|| store.take_holds(&reqs))
        .retry(crate::retry::HOLDS.backoff())
        .when(StoreError::is_transient)
        .await;
    match result {
        Ok(outcomes) => {
            for (reply, o) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(o));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The decision rules of a hold batch, given budgets and their period
    //! totals, without a database.
    use std::time::Duration;

    use tally_budget::Enforcement::{Hard, Soft};
    use tally_money::{cost, usd};

    use super::*;
    use crate::fixtures::{at, budget};

    fn request(id: &str, amount: Option<&str>) -> HoldRequest {
        HoldRequest {
            request_id: id.into(),
            attribution: Attribution {
                agent_id: Some("a".into()),
                ..Attribution::new("acme", "m")
            },
            fallback_models: Vec::new(),
            amount_usd: amount.map(|a| cost!(a)),
            max_output_tokens: 100,
            ttl: Duration::from_secs(60),
        }
    }

    /// Decides `reqs` against `budgets` whose current periods carry
    /// `(spent, held)`; the refusal code (or `held`) of each request.
    fn decide(budgets: &[Arc<Budget>], totals: (&str, &str), reqs: &[HoldRequest]) -> Vec<String> {
        let now = at(15);
        let mut batch = HoldBatch::triage(reqs, &HashMap::new(), budgets, now);
        let spent_held = batch
            .periods
            .keys()
            .map(|k| (k.clone(), (usd!(totals.0), usd!(totals.1))))
            .collect();
        batch.decide(reqs, spent_held, now).unwrap();
        batch
            .decisions
            .iter()
            .map(|d| match d {
                Some(Decision::Hold(_)) => "held".to_owned(),
                Some(Decision::Refuse { refusal, budget }) => {
                    format!("{} by {}", refusal.code(), budget.id)
                }
                Some(Decision::SameAs(j)) => format!("same as {j}"),
                _ => "other".to_owned(),
            })
            .collect()
    }

    #[test]
    fn a_hard_budget_admits_holds_until_spent_and_held_reach_its_limit() {
        let hard = [budget("b", "acme", None, "1", Hard)];
        let reqs: Vec<HoldRequest> = (0..4)
            .map(|i| request(&format!("r{i}"), Some("0.3")))
            .collect();
        // 0.2 spent and 0.1 held leave room for two holds of 0.3 (0.9 ≤ 1).
        assert_eq!(
            decide(&hard, ("0.2", "0.1"), &reqs),
            [
                "held",
                "held",
                "budget_exhausted by b",
                "budget_exhausted by b"
            ]
        );
    }

    #[test]
    fn soft_budgets_record_and_never_refuse() {
        let soft = [budget("b", "acme", None, "1", Soft)];
        let reqs = [request("r1", Some("5")), request("r2", None)];
        assert_eq!(decide(&soft, ("2", "0"), &reqs), ["held", "held"]);
    }

    #[test]
    fn an_unknown_price_is_refused_by_a_hard_budget_that_does_not_allow_it() {
        let mut allowing = (*budget("allows", "acme", None, "1", Hard)).clone();
        allowing.allow_unpriced_models = true;
        let reqs = [request("r1", None)];
        assert_eq!(decide(&[Arc::new(allowing)], ("0", "0"), &reqs), ["held"]);
        let strict = [budget("strict", "acme", None, "1", Hard)];
        assert_eq!(
            decide(&strict, ("0", "0"), &reqs),
            ["unpriced_model by strict"]
        );
    }

    #[test]
    fn a_request_twice_in_one_batch_is_decided_once() {
        let hard = [budget("b", "acme", None, "1", Hard)];
        let reqs = [request("r1", Some("0.6")), request("r1", Some("0.6"))];
        assert_eq!(decide(&hard, ("0", "0"), &reqs), ["held", "same as 0"]);
    }

    #[test]
    fn only_budgets_of_the_request_scope_hold_it() {
        let budgets = [
            budget("mine", "acme", Some("a"), "1", Hard),
            budget("theirs", "acme", Some("b"), "0", Hard),
            budget("other-org", "globex", None, "0", Hard),
        ];
        let reqs = [request("r1", Some("0.5"))];
        assert_eq!(decide(&budgets, ("0", "0"), &reqs), ["held"]);
    }
}
