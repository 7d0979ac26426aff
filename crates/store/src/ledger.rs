//! Applying a batch of generation facts: the projector's one transaction.
//!
//! [`Store::apply_batch`] takes the facts decoded from a batch of messages
//! (completed, reconciled, unresolved), folds them into each generation with
//! the pure rules of `tally-ledger`, and posts the difference between what
//! every matching budget carries and the new net debit as journal entries —
//! all in one transaction, with set-based SQL (one statement per table, not
//! one per message).
//!
//! What to post is planned and written by `crate::posting`, the one path
//! that also books recorded generations into a new budget, so a budget
//! created late and a replayed ledger agree.
//!
//! # Invariants
//!
//! * Idempotent on business keys: facts already known change nothing, and a
//!   generation is debited at most once and adjusted at most once per budget
//!   (enforced by a unique constraint, not only by this code).
//! * Each call is all or nothing; a transient failure
//!   ([`StoreError::is_transient`]) may simply be retried with the same facts.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row, Transaction};
use tally_ledger::{Applied, Basis, Fact, Generation, Placement};
use tally_money::{Cost, Usd};
use uuid::Uuid;

use crate::budgets;
use crate::posting::{attribution_from_row, plan_postings, post, Plan, PlanInput};
pub use crate::posting::{PostedEntry, PostingOptions, MAX_ENTRIES_PER_MESSAGE};
use crate::reservations::{settle_in_tx, SettleCandidate, SettledHold};
use crate::{Store, StoreError};

/// One decoded fact and the generation it is about.
#[derive(Debug, Clone)]
pub struct FactInput {
    /// The generation.
    pub generation_id: String,
    /// The organisation named by the event.
    pub org_id: String,
    /// What the event says.
    pub fact: Fact,
    /// Descriptive fields of a completed event, kept for queries.
    pub details: Option<CompletedDetails>,
}

/// Descriptive fields of a completed event that do not affect money.
#[derive(Debug, Clone, Default)]
pub struct CompletedDetails {
    /// Upstream provider.
    pub provider: Option<String>,
    /// `completed`, `cancelled` or `errored`.
    pub status: String,
    /// Bring-your-own-key generation.
    pub is_byok: bool,
    /// The `generation.requested` request it answers, if any: its
    /// reservation is settled in the same transaction.
    pub request_id: Option<String>,
}

/// What happened to one fact of the batch (same index as the input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FactOutcome {
    /// The fact changed the ledger or the generation.
    Applied,
    /// Already known: nothing changed.
    Duplicate,
    /// A different actual cost was already known; it stands. The rest of
    /// the fact (if any) was applied. The message belongs on the dead
    /// letters with reason `conflicting_actual_cost`.
    ConflictingActual {
        /// The actual that stands.
        kept: Cost,
        /// The actual that was refused.
        refused: Cost,
    },
    /// The generation is recorded under another organisation; nothing was
    /// applied (dead letter `generation_org_mismatch`).
    OrgMismatch {
        /// The organisation on record.
        recorded: String,
    },
}

/// The result of [`Store::apply_batch`].
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    /// Batch id (appears in entries and `ledger.posted`).
    pub batch_id: Uuid,
    /// One outcome per input fact, same order.
    pub outcomes: Vec<FactOutcome>,
    /// Entries posted.
    pub entries: Vec<PostedEntry>,
    /// Threshold alerts written to the outbox.
    pub alerts: usize,
    /// Generations booked at zero because nothing priced them.
    pub newly_unpriced: u64,
    /// Generations that became unresolved.
    pub newly_unresolved: u64,
    /// Net amount newly debited, by basis of the generation after the batch
    /// and the model that served it (for metrics: spend by basis and model).
    pub debited_by_basis: Vec<(Basis, String, Usd)>,
    /// Reservations settled by the batch's completed events.
    pub settled: Vec<SettledHold>,
}

struct Slot {
    org_id: String,
    gen: Generation,
    existed: bool,
    dirty: bool,
    booked: Option<(Usd, Basis)>,
    details: Option<CompletedDetails>,
    was_unresolved: bool,
}

impl Store {
    /// Applies a batch of facts in one transaction (see the module docs).
    pub async fn apply_batch(
        &self,
        facts: &[FactInput],
        opts: &PostingOptions,
    ) -> Result<BatchOutcome, StoreError> {
        let mut tx = self.pool().begin().await?;
        let outcome = apply_in_tx(&mut tx, facts, opts).await?;
        tx.commit().await?;
        Ok(outcome)
    }
}

async fn apply_in_tx(
    tx: &mut Transaction<'_, Postgres>,
    facts: &[FactInput],
    opts: &PostingOptions,
) -> Result<BatchOutcome, StoreError> {
    let batch_id = Uuid::now_v7();
    let now = Utc::now();

    // 1. Organisation locks, shared, sorted.
    let mut orgs: Vec<String> = facts.iter().map(|f| f.org_id.clone()).collect();
    orgs.sort();
    orgs.dedup();
    crate::lock_orgs_shared(tx, orgs.iter().map(String::as_str)).await?;

    // 2. The generations, locked in id order.
    let mut ids: Vec<&str> = facts.iter().map(|f| f.generation_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let rows = sqlx::query(
        "SELECT generation_id, org_id, agent_id, session_id, user_id, model, completed_at, \
                estimated_cost_usd, actual_cost_usd, unresolved_reason, debited_usd, basis \
         FROM generations WHERE generation_id = ANY($1) ORDER BY generation_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut slots: HashMap<String, Slot> = HashMap::with_capacity(ids.len());
    for row in rows {
        let id: String = row.try_get("generation_id")?;
        let completed_at: Option<DateTime<Utc>> = row.try_get("completed_at")?;
        let placement = match completed_at {
            Some(completed_at) => Some(Placement {
                attribution: attribution_from_row(&row)?,
                completed_at,
            }),
            None => None,
        };
        let unresolved_reason: Option<String> = row.try_get("unresolved_reason")?;
        let debited: Option<Usd> = row.try_get("debited_usd")?;
        let basis: Option<String> = row.try_get("basis")?;
        let booked = match (
            debited,
            basis.as_deref().and_then(|b| b.parse::<Basis>().ok()),
        ) {
            (Some(d), Some(b)) => Some((d, b)),
            (None, _) => None,
            (Some(_), None) => {
                return Err(StoreError::Corrupt(format!(
                    "generation {id} is debited without a basis"
                )))
            }
        };
        slots.insert(
            id,
            Slot {
                org_id: row.try_get("org_id")?,
                was_unresolved: unresolved_reason.is_some(),
                gen: Generation {
                    placement,
                    estimate: row.try_get("estimated_cost_usd")?,
                    actual: row.try_get("actual_cost_usd")?,
                    unresolved_reason,
                },
                existed: true,
                dirty: false,
                booked,
                details: None,
            },
        );
    }

    // 3. Fold the facts, in message order.
    let mut outcomes = Vec::with_capacity(facts.len());
    for f in facts {
        let slot = slots
            .entry(f.generation_id.clone())
            .or_insert_with(|| Slot {
                org_id: f.org_id.clone(),
                gen: Generation::default(),
                existed: false,
                dirty: false,
                booked: None,
                details: None,
                was_unresolved: false,
            });
        if slot.org_id != f.org_id {
            outcomes.push(FactOutcome::OrgMismatch {
                recorded: slot.org_id.clone(),
            });
            continue;
        }
        let had_placement = slot.gen.placement.is_some();
        let applied = slot.gen.apply(&f.fact);
        if !had_placement && slot.gen.placement.is_some() {
            slot.details = f.details.clone();
        }
        outcomes.push(match applied {
            Applied::Changed => {
                slot.dirty = true;
                FactOutcome::Applied
            }
            Applied::Duplicate => FactOutcome::Duplicate,
            Applied::ConflictingActual { kept, refused } => {
                if !had_placement && slot.gen.placement.is_some() {
                    slot.dirty = true;
                }
                FactOutcome::ConflictingActual { kept, refused }
            }
        });
    }

    // 4. What every matching budget must carry now.
    let budgets = budgets::load_for_orgs(tx, &orgs).await?;
    let mut dirty: Vec<(&String, &Slot)> = slots.iter().filter(|(_, s)| s.dirty).collect();
    dirty.sort_by(|a, b| a.0.cmp(b.0));
    let inputs: Vec<PlanInput> = dirty
        .iter()
        .map(|(id, slot)| PlanInput {
            generation_id: id.as_str(),
            generation: &slot.gen,
            booked: slot.booked,
            was_unresolved: slot.was_unresolved,
        })
        .collect();
    let Plan {
        postings,
        newly_unpriced,
        newly_unresolved,
        debited_by_basis,
    } = plan_postings(&inputs, &budgets)?;
    // 5. Write the generations back: new rows inserted, known rows updated.
    let mut ins = GenColumns::default();
    let mut upd = GenColumns::default();
    for (id, slot) in &dirty {
        let cols = if slot.existed { &mut upd } else { &mut ins };
        cols.push(id, slot);
    }
    if !ins.ids.is_empty() {
        let inserted = sqlx::query(
            "INSERT INTO generations (generation_id, org_id, agent_id, session_id, user_id, model, \
                 provider, status, is_byok, completed_at, estimated_cost_usd, actual_cost_usd, \
                 unresolved_reason, debited_usd, basis, state) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::text[], $9::bool[], $10::timestamptz[], \
                 $11::numeric[], $12::numeric[], $13::text[], $14::numeric[], $15::text[], $16::text[]) \
             ON CONFLICT (generation_id) DO NOTHING",
        );
        let n = ins.bind(inserted).execute(&mut **tx).await?.rows_affected();
        if n as usize != ins.ids.len() {
            // Another instance recorded one of these generations after our
            // read: our view is stale. Roll back and let the caller retry.
            return Err(StoreError::Transient(
                "a generation was recorded concurrently".into(),
            ));
        }
    }
    if !upd.ids.is_empty() {
        let q = sqlx::query(
            "UPDATE generations g SET agent_id = u.agent_id, session_id = u.session_id, \
                 user_id = u.user_id, model = u.model, \
                 provider = COALESCE(u.provider, g.provider), status = COALESCE(u.status, g.status), \
                 is_byok = u.is_byok OR g.is_byok, completed_at = u.completed_at, \
                 estimated_cost_usd = u.estimated_cost_usd, actual_cost_usd = u.actual_cost_usd, \
                 unresolved_reason = u.unresolved_reason, debited_usd = u.debited_usd, \
                 basis = u.basis, state = u.state, updated_at = now() \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::text[], $9::bool[], $10::timestamptz[], \
                 $11::numeric[], $12::numeric[], $13::text[], $14::numeric[], $15::text[], $16::text[]) \
               AS u(generation_id, org_id, agent_id, session_id, user_id, model, provider, status, \
                    is_byok, completed_at, estimated_cost_usd, actual_cost_usd, unresolved_reason, \
                    debited_usd, basis, state) \
             WHERE g.generation_id = u.generation_id",
        );
        upd.bind(q).execute(&mut **tx).await?;
    }

    // 6. Reservations answered by completed events: settled (their holds
    //    leave the period totals in `post`'s upsert). Locked after the
    //    generations and before the period rows (the crate's lock order).
    let mut candidates = Vec::new();
    for (f, outcome) in facts.iter().zip(&outcomes) {
        let (Fact::Completed { .. }, Some(request_id)) = (
            &f.fact,
            f.details.as_ref().and_then(|d| d.request_id.as_ref()),
        ) else {
            continue;
        };
        if matches!(outcome, FactOutcome::OrgMismatch { .. }) {
            continue;
        }
        let debited = slots
            .get(&f.generation_id)
            .and_then(|s| s.gen.net_debit())
            .map_or(Usd::ZERO, |(d, _)| d.usd());
        candidates.push(SettleCandidate {
            request_id: request_id.clone(),
            org_id: f.org_id.clone(),
            generation_id: f.generation_id.clone(),
            debited_usd: debited,
        });
    }
    let (settled, releases) = settle_in_tx(tx, &candidates).await?;

    // 7. Entries, outbox, and last the contended period totals (see `post`).
    let (entries, alerts) = post(tx, postings, releases, opts, batch_id, now).await?;

    Ok(BatchOutcome {
        batch_id,
        outcomes,
        entries,
        alerts,
        newly_unpriced,
        newly_unresolved,
        debited_by_basis,
        settled,
    })
}

#[derive(Default)]
struct GenColumns {
    ids: Vec<String>,
    org: Vec<String>,
    agent: Vec<Option<String>>,
    session: Vec<Option<String>>,
    user: Vec<Option<String>>,
    model: Vec<Option<String>>,
    provider: Vec<Option<String>>,
    status: Vec<Option<String>>,
    byok: Vec<bool>,
    completed_at: Vec<Option<DateTime<Utc>>>,
    estimate: Vec<Option<Cost>>,
    actual: Vec<Option<Cost>>,
    unresolved: Vec<Option<String>>,
    debited: Vec<Option<Cost>>,
    basis: Vec<Option<String>>,
    state: Vec<String>,
}

impl GenColumns {
    fn push(&mut self, id: &str, slot: &Slot) {
        let p = slot.gen.placement.as_ref();
        let net = slot.gen.net_debit();
        self.ids.push(id.to_owned());
        self.org.push(slot.org_id.clone());
        let a = p.map(|p| &p.attribution);
        self.agent.push(a.and_then(|a| a.agent_id.clone()));
        self.session.push(a.and_then(|a| a.session_id.clone()));
        self.user.push(a.and_then(|a| a.user_id.clone()));
        self.model.push(a.map(|a| a.model.clone()));
        self.provider
            .push(slot.details.as_ref().and_then(|d| d.provider.clone()));
        self.status
            .push(slot.details.as_ref().map(|d| d.status.clone()));
        self.byok
            .push(slot.details.as_ref().is_some_and(|d| d.is_byok));
        self.completed_at.push(p.map(|p| p.completed_at));
        self.estimate.push(slot.gen.estimate);
        self.actual.push(slot.gen.actual);
        self.unresolved.push(slot.gen.unresolved_reason.clone());
        self.debited.push(net.map(|(d, _)| d));
        self.basis.push(net.map(|(_, b)| b.as_str().to_owned()));
        self.state.push(slot.gen.state().as_str().to_owned());
    }

    fn bind<'q>(
        &'q self,
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        q.bind(&self.ids)
            .bind(&self.org)
            .bind(&self.agent)
            .bind(&self.session)
            .bind(&self.user)
            .bind(&self.model)
            .bind(&self.provider)
            .bind(&self.status)
            .bind(&self.byok)
            .bind(&self.completed_at)
            .bind(&self.estimate)
            .bind(&self.actual)
            .bind(&self.unresolved)
            .bind(&self.debited)
            .bind(&self.basis)
            .bind(&self.state)
    }
}

impl Store {
    /// How many generations of an organisation are in each accounting state
    /// (`pending`, `settled`, `provisional`, `unresolved`, `unpriced`).
    pub async fn state_counts(&self, org_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM generations WHERE org_id = $1 GROUP BY state ORDER BY state",
        )
        .bind(org_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }
}

impl Store {
    /// The ids of an organisation's recorded generations (demo and checks).
    pub async fn generation_ids(&self, org_id: &str) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT generation_id FROM generations WHERE org_id = $1 ORDER BY 1",
        )
        .bind(org_id)
        .fetch_all(self.pool())
        .await?;
        Ok(ids)
    }
}
