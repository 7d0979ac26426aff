//! Applying a batch of generation facts: the projector's one transaction.
//!
//! [`Store::apply_batch`] takes the facts decoded from a batch of messages
//! (completed, reconciled, unresolved), folds them into each generation with
//! the pure rules of `tally-ledger`, and posts the difference between what
//! every matching budget carries and the new net debit as journal entries —
//! all in one transaction, with set-based SQL (one statement per table, not
//! one per message).
//!
//! The same posting routine ([`post`]) books recorded generations into a new
//! budget, so a budget created late and a replayed ledger agree.
//!
//! # Invariants
//!
//! * Idempotent on business keys: facts already known change nothing, and a
//!   generation is debited at most once and adjusted at most once per budget
//!   (enforced by a unique constraint, not only by this code).
//! * Each call is all or nothing; a transient failure
//!   ([`StoreError::is_transient`]) may simply be retried with the same facts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row, Transaction};
use tally_budget::{period_containing, thresholds_crossed, GenerationFacts, Period};
use tally_events::{CloudEvent, EventType, LedgerEntry, LedgerPosted, ThresholdCrossed};
use tally_ledger::{entry_needed, Applied, Basis, EntryKind, Fact, Generation, Placement};
use tally_money::Usd;
use uuid::Uuid;

use crate::budgets::{self, Budget};
use crate::reservations::{settle_in_tx, SettleCandidate, SettledHold};
use crate::{org_lock_key, Store, StoreError};

/// Most entries in one `ledger.posted` message; larger batches are split
/// into parts so a message stays far below NATS's 1 MiB payload limit.
pub const MAX_ENTRIES_PER_MESSAGE: usize = 1000;

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
        kept: Usd,
        /// The actual that was refused.
        refused: Usd,
    },
    /// The generation is recorded under another organisation; nothing was
    /// applied (dead letter `generation_org_mismatch`).
    OrgMismatch {
        /// The organisation on record.
        recorded: String,
    },
}

/// A journal entry as posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedEntry {
    /// Entry id (UUID v7, time-ordered).
    pub entry_id: Uuid,
    /// Budget.
    pub budget_id: String,
    /// Organisation of the budget.
    pub org_id: String,
    /// Generation.
    pub generation_id: String,
    /// Debit or adjustment.
    pub kind: EntryKind,
    /// Basis of the generation's net debit after this entry.
    pub basis: Basis,
    /// Amount (an adjustment may be negative).
    pub amount_usd: Usd,
    /// Budget period.
    pub period: Period,
    /// Posting time.
    pub posted_at: DateTime<Utc>,
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

/// How derived events are produced.
#[derive(Debug, Clone)]
pub struct PostingOptions {
    /// Subject prefix (`tally`).
    pub prefix: String,
    /// CloudEvents `source` of derived events.
    pub source: String,
    /// Write `ledger.posted` and alerts to the outbox (false while replaying:
    /// a rebuild must not announce history again).
    pub publish: bool,
}

impl Default for PostingOptions {
    fn default() -> Self {
        PostingOptions {
            prefix: "tally".into(),
            source: "tally/projector".into(),
            publish: true,
        }
    }
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

/// One entry to post, with the budget it goes to.
pub(crate) struct Posting {
    pub budget: Arc<Budget>,
    pub generation_id: String,
    pub kind: EntryKind,
    pub basis: Basis,
    pub amount: Usd,
    /// Change of the actual part of the period total.
    pub d_actual: Usd,
    /// Change of the estimated part of the period total.
    pub d_estimate: Usd,
    pub period: Period,
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
    let mut keys: Vec<i64> = orgs.iter().map(|o| org_lock_key(o)).collect();
    keys.sort();
    keys.dedup();
    sqlx::query(
        "SELECT pg_advisory_xact_lock_shared(k) FROM (SELECT unnest($1::int8[]) AS k ORDER BY 1) s",
    )
    .bind(&keys)
    .execute(&mut **tx)
    .await?;

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
                org_id: row.try_get("org_id")?,
                agent_id: row.try_get("agent_id")?,
                session_id: row.try_get("session_id")?,
                user_id: row.try_get("user_id")?,
                model: row
                    .try_get::<Option<String>, _>("model")?
                    .unwrap_or_default(),
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
    let mut postings = Vec::new();
    let mut dirty: Vec<(&String, &Slot)> = slots.iter().filter(|(_, s)| s.dirty).collect();
    dirty.sort_by(|a, b| a.0.cmp(b.0));
    let mut newly_unpriced = 0;
    let mut newly_unresolved = 0;
    let mut by_basis: BTreeMap<(&'static str, &str), (Basis, Usd)> = BTreeMap::new();
    for (id, slot) in &dirty {
        if slot.gen.unresolved_reason.is_some() && !slot.was_unresolved {
            newly_unresolved += 1;
        }
        let (Some((net, basis)), Some(placement)) = (slot.gen.net_debit(), &slot.gen.placement)
        else {
            continue;
        };
        if slot.booked.is_none() && basis == Basis::None {
            newly_unpriced += 1;
        }
        let old = slot.booked.map(|(d, _)| d);
        let Some((kind, amount)) = entry_needed(old, net)? else {
            continue;
        };
        let e = by_basis
            .entry((basis.as_str(), placement.model.as_str()))
            .or_insert((basis, Usd::ZERO));
        e.1.try_add_assign(amount)?;
        let (mut d_actual, mut d_estimate) = split(basis, net);
        if let Some((old_amount, old_basis)) = slot.booked {
            let (oa, oe) = split(old_basis, old_amount);
            d_actual = d_actual.try_sub(oa)?;
            d_estimate = d_estimate.try_sub(oe)?;
        }
        for b in budgets_matching(&budgets, placement) {
            postings.push(Posting {
                period: period_containing(b.period, b.tz, placement.completed_at),
                budget: b.clone(),
                generation_id: (*id).clone(),
                kind,
                basis,
                amount,
                d_actual,
                d_estimate,
            });
        }
    }
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
            .map_or(Usd::ZERO, |(d, _)| d);
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
        debited_by_basis: by_basis
            .into_iter()
            .map(|((_, model), (basis, amount))| (basis, model.to_owned(), amount))
            .collect(),
        settled,
    })
}

/// The (actual, estimate) parts of a net debit of the given basis.
fn split(basis: Basis, amount: Usd) -> (Usd, Usd) {
    match basis {
        Basis::Actual => (amount, Usd::ZERO),
        Basis::Estimate => (Usd::ZERO, amount),
        Basis::None => (Usd::ZERO, Usd::ZERO),
    }
}

/// The budgets a generation counts in: same organisation, scope matches,
/// and not archived before the generation completed.
pub(crate) fn budgets_matching<'a>(
    budgets: &'a [Arc<Budget>],
    p: &'a Placement,
) -> impl Iterator<Item = &'a Arc<Budget>> + 'a {
    let facts = GenerationFacts {
        org_id: &p.org_id,
        agent_id: p.agent_id.as_deref(),
        session_id: p.session_id.as_deref(),
        user_id: p.user_id.as_deref(),
        model: &p.model,
    };
    budgets.iter().filter(move |b| {
        b.org_id == p.org_id
            && b.scope.matches(&facts)
            && b.archived_at.is_none_or(|at| p.completed_at < at)
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
    estimate: Vec<Option<Usd>>,
    actual: Vec<Option<Usd>>,
    unresolved: Vec<Option<String>>,
    debited: Vec<Option<Usd>>,
    basis: Vec<Option<String>>,
    state: Vec<String>,
}

impl GenColumns {
    fn push(&mut self, id: &str, slot: &Slot) {
        let p = slot.gen.placement.as_ref();
        let net = slot.gen.net_debit();
        self.ids.push(id.to_owned());
        self.org.push(slot.org_id.clone());
        self.agent.push(p.and_then(|p| p.agent_id.clone()));
        self.session.push(p.and_then(|p| p.session_id.clone()));
        self.user.push(p.and_then(|p| p.user_id.clone()));
        self.model.push(p.map(|p| p.model.clone()));
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

/// Posts entries: inserts them, writes `ledger.posted` to the outbox, then
/// moves the period totals (spend up, and `held_usd` down by `releases`, in
/// one upsert), detects threshold crossings and writes the alerts to the
/// outbox. Returns the entries and the number of alerts raised.
///
/// Call it last in a transaction: from the period upsert on, the
/// transaction holds the row locks that concurrent batches of the same
/// organisation wait for, so it should commit right after.
pub(crate) async fn post(
    tx: &mut Transaction<'_, Postgres>,
    postings: Vec<Posting>,
    releases: BTreeMap<(String, DateTime<Utc>), (DateTime<Utc>, Usd)>,
    opts: &PostingOptions,
    batch_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(Vec<PostedEntry>, usize), StoreError> {
    if postings.is_empty() && releases.is_empty() {
        return Ok((Vec::new(), 0));
    }
    // Entries.
    let mut entries = Vec::with_capacity(postings.len());
    for p in &postings {
        entries.push(PostedEntry {
            entry_id: Uuid::now_v7(),
            budget_id: p.budget.id.clone(),
            org_id: p.budget.org_id.clone(),
            generation_id: p.generation_id.clone(),
            kind: p.kind,
            basis: p.basis,
            amount_usd: p.amount,
            period: p.period,
            posted_at: now,
        });
    }
    if !entries.is_empty() {
        sqlx::query(
        "INSERT INTO ledger_entries (budget_id, entry_id, generation_id, kind, basis, amount_usd, \
             period_start, period_end, posted_at, batch_id) \
         SELECT b, e, g, k, s, a, ps, pe, $9, $10 FROM unnest($1::text[], $2::uuid[], $3::text[], \
             $4::text[], $5::text[], $6::numeric[], $7::timestamptz[], $8::timestamptz[]) \
           AS t(b, e, g, k, s, a, ps, pe)",
    )
    .bind(
        entries
            .iter()
            .map(|e| e.budget_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(entries.iter().map(|e| e.entry_id).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|e| e.generation_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(entries.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.basis.as_str()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.amount_usd).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.period.start).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.period.end).collect::<Vec<_>>())
    .bind(now)
    .bind(batch_id)
    .execute(&mut **tx)
    .await?;
    }

    // The ledger.posted events go to the outbox before the period totals
    // are touched: the totals' rows are the one place concurrent batches of
    // the same organisation wait for each other, so everything else happens
    // before that lock is taken.
    if opts.publish {
        let mut rows: Vec<(String, String, Vec<u8>)> = Vec::new();
        let mut by_org: BTreeMap<&str, Vec<&PostedEntry>> = BTreeMap::new();
        for e in &entries {
            by_org.entry(e.org_id.as_str()).or_default().push(e);
        }
        for (org, list) in by_org {
            for (part, chunk) in list.chunks(MAX_ENTRIES_PER_MESSAGE).enumerate() {
                let msg_id = format!("ledger-{batch_id}-{org}-{part}");
                let subject = EventType::LedgerPosted.subject(&opts.prefix, org, None);
                let data = LedgerPosted {
                    org_id: org.to_owned(),
                    batch_id: batch_id.to_string(),
                    entries: chunk.iter().map(|e| wire_entry(e)).collect(),
                };
                rows.push(outbox_row(opts, subject, msg_id, now, data));
            }
        }
        crate::outbox::enqueue(tx, &rows).await?;
    }

    // Period totals, upserted in (budget, period) order.
    #[derive(Default)]
    struct Delta {
        end: Option<DateTime<Utc>>,
        total: Usd,
        actual: Usd,
        estimate: Usd,
        generations: i64,
        held: Usd,
    }
    let mut deltas: BTreeMap<(String, DateTime<Utc>), Delta> = BTreeMap::new();
    for p in &postings {
        let d = deltas
            .entry((p.budget.id.clone(), p.period.start))
            .or_default();
        d.end = Some(p.period.end);
        d.total.try_add_assign(p.amount)?;
        d.actual.try_add_assign(p.d_actual)?;
        d.estimate.try_add_assign(p.d_estimate)?;
        if p.kind == EntryKind::Debit {
            d.generations += 1;
        }
    }
    for (key, (end, held)) in releases {
        let d = deltas.entry(key).or_default();
        d.end.get_or_insert(end);
        d.held.try_add_assign(held)?;
    }
    let rows = sqlx::query(
        "INSERT INTO budget_periods AS bp (budget_id, period_start, period_end, spent_usd, \
             spent_actual_usd, spent_estimated_usd, generations, held_usd) \
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::numeric[], \
             $5::numeric[], $6::numeric[], $7::int8[], $8::numeric[]) \
         ON CONFLICT (budget_id, period_start) DO UPDATE SET \
             spent_usd = bp.spent_usd + excluded.spent_usd, \
             spent_actual_usd = bp.spent_actual_usd + excluded.spent_actual_usd, \
             spent_estimated_usd = bp.spent_estimated_usd + excluded.spent_estimated_usd, \
             generations = bp.generations + excluded.generations, \
             held_usd = bp.held_usd + excluded.held_usd \
         RETURNING budget_id, period_start, spent_usd, held_usd",
    )
    .bind(deltas.keys().map(|k| k.0.clone()).collect::<Vec<_>>())
    .bind(deltas.keys().map(|k| k.1).collect::<Vec<_>>())
    .bind(deltas.values().map(|d| d.end).collect::<Vec<_>>())
    .bind(deltas.values().map(|d| d.total).collect::<Vec<_>>())
    .bind(deltas.values().map(|d| d.actual).collect::<Vec<_>>())
    .bind(deltas.values().map(|d| d.estimate).collect::<Vec<_>>())
    .bind(deltas.values().map(|d| d.generations).collect::<Vec<_>>())
    .bind(deltas.values().map(|d| d.held).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;

    // Threshold crossings: walk each period's postings in order from the
    // total before this batch, so an alert names the generation that
    // actually crossed.
    let mut running: HashMap<(String, DateTime<Utc>), Usd> = HashMap::new();
    for row in rows {
        let key: (String, DateTime<Utc>) =
            (row.try_get("budget_id")?, row.try_get("period_start")?);
        let after: Usd = row.try_get("spent_usd")?;
        let held: Usd = row.try_get("held_usd")?;
        if held.is_negative() {
            return Err(StoreError::Corrupt(format!(
                "budget {} would hold a negative amount ({held}) after settling",
                key.0
            )));
        }
        let before = after.try_sub(deltas.get(&key).map(|d| d.total).unwrap_or_default())?;
        running.insert(key, before);
    }
    let mut crossings = Vec::new();
    for p in &postings {
        let key = (p.budget.id.clone(), p.period.start);
        let Some(total) = running.get_mut(&key) else {
            continue;
        };
        let before = *total;
        total.try_add_assign(p.amount)?;
        if opts.publish {
            for t in thresholds_crossed(&p.budget.thresholds, p.budget.limit_usd, before, *total) {
                crossings.push((p, t, *total));
            }
        }
    }
    let mut alert_events = Vec::new();
    let mut alerts_raised = 0;
    if !crossings.is_empty() {
        let ids: Vec<Uuid> = crossings.iter().map(|_| Uuid::now_v7()).collect();
        let inserted = sqlx::query(
            "INSERT INTO alerts (alert_id, budget_id, period_start, threshold_percent, spent_usd, \
                 generation_id, crossed_at) \
             SELECT a, b, p, t, s, g, $7 FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], \
                 $4::int4[], $5::numeric[], $6::text[]) AS u(a, b, p, t, s, g) \
             ON CONFLICT (budget_id, period_start, threshold_percent) DO NOTHING \
             RETURNING alert_id",
        )
        .bind(&ids)
        .bind(
            crossings
                .iter()
                .map(|c| c.0.budget.id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            crossings
                .iter()
                .map(|c| c.0.period.start)
                .collect::<Vec<_>>(),
        )
        .bind(crossings.iter().map(|c| c.1 as i32).collect::<Vec<_>>())
        .bind(crossings.iter().map(|c| c.2).collect::<Vec<_>>())
        .bind(
            crossings
                .iter()
                .map(|c| c.0.generation_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(now)
        .fetch_all(&mut **tx)
        .await?;
        let fresh: std::collections::HashSet<Uuid> = inserted
            .iter()
            .map(|r| r.try_get::<Uuid, _>("alert_id"))
            .collect::<Result<_, _>>()?;
        for (id, (p, t, spent)) in ids.iter().zip(&crossings) {
            if !fresh.contains(id) {
                continue;
            }
            alerts_raised += 1;
            let b = &p.budget;
            let data = ThresholdCrossed {
                alert_id: id.to_string(),
                budget_id: b.id.clone(),
                org_id: b.org_id.clone(),
                budget_name: b.name.clone(),
                threshold_percent: *t,
                limit_usd: b.limit_usd,
                spent_usd: *spent,
                period_start: p.period.start,
                period_end: p.period.end,
                generation_id: p.generation_id.clone(),
                crossed_at: now,
            };
            let subject =
                EventType::BudgetThresholdCrossed.subject(&opts.prefix, &b.org_id, Some(&b.id));
            let msg_id = format!("alert-{id}");
            alert_events.push(outbox_row(opts, subject, msg_id, now, data));
        }
    }

    if opts.publish {
        crate::outbox::enqueue(tx, &alert_events).await?;
    }
    Ok((entries, alerts_raised))
}

/// An outbox row (subject, msg id, CloudEvent JSON) for a derived event
/// whose CloudEvent id is its `Nats-Msg-Id`.
fn outbox_row<T: tally_events::Payload>(
    opts: &PostingOptions,
    subject: String,
    msg_id: String,
    now: DateTime<Utc>,
    data: T,
) -> (String, String, Vec<u8>) {
    let json = CloudEvent::new(
        msg_id.clone(),
        opts.source.clone(),
        subject.clone(),
        now,
        data,
    )
    .to_json();
    (subject, msg_id, json)
}

fn wire_entry(e: &PostedEntry) -> LedgerEntry {
    LedgerEntry {
        entry_id: e.entry_id.to_string(),
        budget_id: e.budget_id.clone(),
        generation_id: e.generation_id.clone(),
        kind: e.kind,
        basis: e.basis,
        amount_usd: e.amount_usd,
        period_start: e.period.start,
        period_end: e.period.end,
        posted_at: e.posted_at,
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
