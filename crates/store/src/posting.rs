//! Posting: the one path by which money enters the journal and the period
//! totals, used by the projector's batch ([`Store::apply_batch`]) and by a
//! budget created or widened late ([`Store::create_budget`]), so a live
//! ledger and a replayed one agree.
//!
//! The planning is pure and tested without a database:
//!
//! 1. [`plan_postings`]: generations whose facts changed, their net debit
//!    before and after, the budgets in play → the entries to post (one per
//!    matching budget) and the counters of the batch;
//! 2. [`period_deltas`]: entries and released holds → the change of every
//!    period total, in `(budget_id, period_start)` order;
//! 3. [`crossings`]: entries and the totals before them → the thresholds
//!    crossed, each naming the generation that crossed it.
//!
//! [`post`] then writes in lock order: entries, the `ledger.posted` outbox
//! rows, the period totals (the contended rows, last), alerts.
//!
//! # Invariants
//!
//! * The change of a period total is the sum of its entries: the actual
//!   and estimated parts are split by [`split`] and nowhere else.
//! * Which budgets a generation counts in is decided by
//!   [`budgets_matching`] alone ([`tally_budget::Scope::matches`], the
//!   organisation, and the archive time).
//!
//! [`Store::apply_batch`]: crate::Store::apply_batch
//! [`Store::create_budget`]: crate::Store::create_budget

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row, Transaction};
use tally_budget::{period_containing, thresholds_crossed, Period};
use tally_events::{
    Attribution, CloudEvent, EventType, LedgerEntry, LedgerPosted, ThresholdCrossed,
};
use tally_ledger::{entry_needed, Basis, EntryKind, Generation, Placement};
use tally_money::{Cost, Usd};
use uuid::Uuid;

use crate::budgets::Budget;
use crate::StoreError;

/// Most entries in one `ledger.posted` message; larger batches are split
/// into parts so a message stays far below NATS's 1 MiB payload limit.
pub const MAX_ENTRIES_PER_MESSAGE: usize = 1000;

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

/// One entry to post, with the budget it goes to.
#[derive(Debug, Clone)]
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

/// The (actual, estimate) parts of a net debit of the given basis.
pub(crate) fn split(basis: Basis, amount: Usd) -> (Usd, Usd) {
    match basis {
        Basis::Actual => (amount, Usd::ZERO),
        Basis::Estimate => (Usd::ZERO, amount),
        Basis::None => (Usd::ZERO, Usd::ZERO),
    }
}

/// The attribution stored on a `generations` row (columns `org_id`,
/// `agent_id`, `session_id`, `user_id`, `model`); a row booked before its
/// completed event has no model yet and reads as `""`, which no model scope
/// matches.
pub(crate) fn attribution_from_row(r: &sqlx::postgres::PgRow) -> Result<Attribution, StoreError> {
    Ok(Attribution {
        org_id: r.try_get("org_id")?,
        agent_id: r.try_get("agent_id")?,
        session_id: r.try_get("session_id")?,
        user_id: r.try_get("user_id")?,
        model: r.try_get::<Option<String>, _>("model")?.unwrap_or_default(),
    })
}

/// The budgets a generation counts in: same organisation, scope matches,
/// and not archived before the generation completed.
pub(crate) fn budgets_matching<'a>(
    budgets: &'a [Arc<Budget>],
    p: &'a Placement,
) -> impl Iterator<Item = &'a Arc<Budget>> + 'a {
    budgets.iter().filter(move |b| {
        b.scope.applies_to(&b.org_id, &p.attribution)
            && b.archived_at.is_none_or(|at| p.completed_at < at)
    })
}

/// One generation whose facts changed in this batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanInput<'a> {
    /// Its id.
    pub generation_id: &'a str,
    /// Its state after the batch's facts.
    pub generation: &'a Generation,
    /// What every matching budget carries for it now: net debit and basis.
    pub booked: Option<(Usd, Basis)>,
    /// Whether it was unresolved before the batch.
    pub was_unresolved: bool,
}

/// What a batch must post, and its counters.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// One entry per generation whose net debit moved and budget it counts in.
    pub postings: Vec<Posting>,
    /// Generations booked at zero because nothing priced them.
    pub newly_unpriced: u64,
    /// Generations that became unresolved.
    pub newly_unresolved: u64,
    /// Net amount newly debited, by basis and model.
    pub debited_by_basis: Vec<(Basis, String, Usd)>,
}

/// Step 1 (pure): the entries that bring every matching budget from what it
/// carries for each generation to the generation's net debit now.
pub(crate) fn plan_postings(
    inputs: &[PlanInput<'_>],
    budgets: &[Arc<Budget>],
) -> Result<Plan, StoreError> {
    let mut plan = Plan::default();
    let mut by_basis: BTreeMap<(&'static str, &str), (Basis, Usd)> = BTreeMap::new();
    for i in inputs {
        if i.generation.unresolved_reason.is_some() && !i.was_unresolved {
            plan.newly_unresolved += 1;
        }
        let (Some((net, basis)), Some(placement)) =
            (i.generation.net_debit(), &i.generation.placement)
        else {
            continue;
        };
        if i.booked.is_none() && basis == Basis::None {
            plan.newly_unpriced += 1;
        }
        let Some((kind, amount)) = entry_needed(i.booked.map(|(d, _)| d), net)? else {
            continue;
        };
        by_basis
            .entry((basis.as_str(), placement.attribution.model.as_str()))
            .or_insert((basis, Usd::ZERO))
            .1
            .try_add_assign(amount)?;
        let (mut d_actual, mut d_estimate) = split(basis, net.usd());
        if let Some((old_amount, old_basis)) = i.booked {
            let (oa, oe) = split(old_basis, old_amount);
            d_actual = d_actual.try_sub(oa)?;
            d_estimate = d_estimate.try_sub(oe)?;
        }
        for b in budgets_matching(budgets, placement) {
            plan.postings.push(Posting {
                period: period_containing(b.period, b.tz, placement.completed_at),
                budget: b.clone(),
                generation_id: i.generation_id.to_owned(),
                kind,
                basis,
                amount,
                d_actual,
                d_estimate,
            });
        }
    }
    plan.debited_by_basis = by_basis
        .into_iter()
        .map(|((_, model), (basis, amount))| (basis, model.to_owned(), amount))
        .collect();
    Ok(plan)
}

/// The change of one period total.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PeriodDelta {
    /// Period end (for a row that does not exist yet).
    pub end: Option<DateTime<Utc>>,
    /// Spend.
    pub total: Usd,
    /// Its actual part.
    pub actual: Usd,
    /// Its estimated part.
    pub estimate: Usd,
    /// Generations debited (adjustments do not count).
    pub generations: i64,
    /// Change of the held amount (negative: holds released).
    pub held: Usd,
}

/// Held amounts released per period: `(budget_id, period_start)` → (end,
/// change of `held_usd`).
pub(crate) type Releases = BTreeMap<(String, DateTime<Utc>), (DateTime<Utc>, Usd)>;

/// Step 2 (pure): the change of every period total, keyed and ordered by
/// `(budget_id, period_start)` (the lock order of period rows).
pub(crate) fn period_deltas(
    postings: &[Posting],
    releases: Releases,
) -> Result<BTreeMap<(String, DateTime<Utc>), PeriodDelta>, StoreError> {
    let mut deltas: BTreeMap<(String, DateTime<Utc>), PeriodDelta> = BTreeMap::new();
    for p in postings {
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
    Ok(deltas)
}

/// A threshold crossed by one entry: the entry, the threshold, the total
/// after it (a crossing is upward to a positive total, so a cost).
pub(crate) type Crossing<'a> = (&'a Posting, u32, Cost);

/// Step 3 (pure): walks each period's entries in order from its total
/// before the batch (`before`), so an alert names the generation that
/// actually crossed.
pub(crate) fn crossings<'a>(
    postings: &'a [Posting],
    mut before: HashMap<(String, DateTime<Utc>), Usd>,
) -> Result<Vec<Crossing<'a>>, StoreError> {
    let mut out = Vec::new();
    for p in postings {
        let Some(total) = before.get_mut(&(p.budget.id.clone(), p.period.start)) else {
            continue;
        };
        let was = *total;
        total.try_add_assign(p.amount)?;
        for t in thresholds_crossed(&p.budget.thresholds, p.budget.limit_usd, was, *total) {
            out.push((p, t, Cost::new(*total)?));
        }
    }
    Ok(out)
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
    releases: Releases,
    opts: &PostingOptions,
    batch_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(Vec<PostedEntry>, usize), StoreError> {
    if postings.is_empty() && releases.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let entries: Vec<PostedEntry> = postings.iter().map(|p| entry_of(p, now)).collect();
    insert_entries(tx, &entries, batch_id, now).await?;
    // The ledger.posted events go to the outbox before the period totals
    // are touched: the totals' rows are the one place concurrent batches of
    // the same organisation wait for each other, so everything else happens
    // before that lock is taken.
    if opts.publish {
        crate::outbox::enqueue(tx, &posted_events(&entries, opts, batch_id, now)).await?;
    }
    let deltas = period_deltas(&postings, releases)?;
    let before = upsert_period_totals(tx, &deltas).await?;
    if !opts.publish {
        return Ok((entries, 0));
    }
    let crossed = crossings(&postings, before)?;
    let alerts = insert_alerts(tx, &crossed, now).await?;
    let alerts_raised = alerts.len();
    let events: Vec<_> = alerts
        .into_iter()
        .map(|(id, c)| alert_event(opts, id, c, now))
        .collect();
    crate::outbox::enqueue(tx, &events).await?;
    Ok((entries, alerts_raised))
}

fn entry_of(p: &Posting, now: DateTime<Utc>) -> PostedEntry {
    PostedEntry {
        entry_id: Uuid::now_v7(),
        budget_id: p.budget.id.clone(),
        org_id: p.budget.org_id.clone(),
        generation_id: p.generation_id.clone(),
        kind: p.kind,
        basis: p.basis,
        amount_usd: p.amount,
        period: p.period,
        posted_at: now,
    }
}

async fn insert_entries(
    tx: &mut Transaction<'_, Postgres>,
    entries: &[PostedEntry],
    batch_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
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
            .map(|e| e.budget_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(entries.iter().map(|e| e.entry_id).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|e| e.generation_id.as_str())
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
    Ok(())
}

/// The `ledger.posted` outbox rows of a batch: per organisation, in parts
/// of at most [`MAX_ENTRIES_PER_MESSAGE`] entries.
fn posted_events(
    entries: &[PostedEntry],
    opts: &PostingOptions,
    batch_id: Uuid,
    now: DateTime<Utc>,
) -> Vec<(String, String, Vec<u8>)> {
    let mut by_org: BTreeMap<&str, Vec<&PostedEntry>> = BTreeMap::new();
    for e in entries {
        by_org.entry(e.org_id.as_str()).or_default().push(e);
    }
    let mut rows = Vec::new();
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
    rows
}

/// Moves the period totals in one upsert (in key order, taking the row
/// locks) and returns each period's spend before this batch.
async fn upsert_period_totals(
    tx: &mut Transaction<'_, Postgres>,
    deltas: &BTreeMap<(String, DateTime<Utc>), PeriodDelta>,
) -> Result<HashMap<(String, DateTime<Utc>), Usd>, StoreError> {
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
    .bind(deltas.keys().map(|k| k.0.as_str()).collect::<Vec<_>>())
    .bind(deltas.keys().map(|k| k.1).collect::<Vec<_>>())
    .bind(deltas.values().map(|d| d.end).collect::<Vec<_>>())
    .bind(deltas.values().map(|d| d.total).collect::<Vec<_>>())
    .bind(deltas.values().map(|d| d.actual).collect::<Vec<_>>())
    .bind(deltas.values().map(|d| d.estimate).collect::<Vec<_>>())
    .bind(deltas.values().map(|d| d.generations).collect::<Vec<_>>())
    .bind(deltas.values().map(|d| d.held).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    let mut before = HashMap::with_capacity(rows.len());
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
        let total = deltas.get(&key).map(|d| d.total).unwrap_or_default();
        before.insert(key, after.try_sub(total)?);
    }
    Ok(before)
}

/// Records the crossings (at most once per budget, period and threshold:
/// a unique key) and returns the new ones with their alert ids.
async fn insert_alerts<'a>(
    tx: &mut Transaction<'_, Postgres>,
    crossed: &[Crossing<'a>],
    now: DateTime<Utc>,
) -> Result<Vec<(Uuid, Crossing<'a>)>, StoreError> {
    if crossed.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = crossed.iter().map(|_| Uuid::now_v7()).collect();
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
        crossed
            .iter()
            .map(|c| c.0.budget.id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(crossed.iter().map(|c| c.0.period.start).collect::<Vec<_>>())
    .bind(crossed.iter().map(|c| c.1 as i32).collect::<Vec<_>>())
    .bind(crossed.iter().map(|c| c.2).collect::<Vec<_>>())
    .bind(
        crossed
            .iter()
            .map(|c| c.0.generation_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let fresh: std::collections::HashSet<Uuid> = inserted
        .iter()
        .map(|r| r.try_get::<Uuid, _>("alert_id"))
        .collect::<Result<_, _>>()?;
    Ok(ids
        .into_iter()
        .zip(crossed.iter().copied())
        .filter(|(id, _)| fresh.contains(id))
        .collect())
}

/// The `budget.threshold_crossed` outbox row of one new alert.
fn alert_event(
    opts: &PostingOptions,
    id: Uuid,
    (p, threshold, spent): Crossing<'_>,
    now: DateTime<Utc>,
) -> (String, String, Vec<u8>) {
    let b = &p.budget;
    let data = ThresholdCrossed {
        alert_id: id.to_string(),
        budget_id: b.id.clone(),
        org_id: b.org_id.clone(),
        budget_name: b.name.clone(),
        threshold_percent: threshold,
        limit_usd: b.limit_usd,
        spent_usd: spent,
        period_start: p.period.start,
        period_end: p.period.end,
        generation_id: p.generation_id.clone(),
        crossed_at: now,
    };
    let subject = EventType::BudgetThresholdCrossed.subject(&opts.prefix, &b.org_id, Some(&b.id));
    outbox_row(opts, subject, format!("alert-{id}"), now, data)
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

#[cfg(test)]
mod tests {
    //! The planning rules, given generations and budgets, without a
    //! database.

    use tally_budget::Enforcement::Soft;
    use tally_money::{cost, usd};

    use super::*;
    use crate::fixtures::{at, budget};

    fn generation(agent: &str, estimate: Option<&str>, actual: Option<&str>) -> Generation {
        Generation {
            placement: Some(Placement {
                attribution: Attribution {
                    agent_id: Some(agent.into()),
                    ..Attribution::new("acme", "m")
                },
                completed_at: at(15),
            }),
            estimate: estimate.map(|e| cost!(e)),
            actual: actual.map(|a| cost!(a)),
            unresolved_reason: None,
        }
    }

    fn input<'a>(id: &'a str, g: &'a Generation, booked: Option<(Usd, Basis)>) -> PlanInput<'a> {
        PlanInput {
            generation_id: id,
            generation: g,
            booked,
            was_unresolved: false,
        }
    }

    #[test]
    fn an_estimate_is_debited_then_trued_up_to_the_actual() {
        let all = [budget("b", "acme", None, "10", Soft)];
        let g = generation("a", Some("0.3"), None);
        let plan = plan_postings(&[input("g1", &g, None)], &all).unwrap();
        let p = &plan.postings[..];
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].kind, p[0].basis, p[0].amount),
            (EntryKind::Debit, Basis::Estimate, usd!("0.3"))
        );
        assert_eq!((p[0].d_actual, p[0].d_estimate), (Usd::ZERO, usd!("0.3")));

        let g = generation("a", Some("0.3"), Some("0.25"));
        let booked = Some((usd!("0.3"), Basis::Estimate));
        let plan = plan_postings(&[input("g1", &g, booked)], &all).unwrap();
        let p = &plan.postings[..];
        assert_eq!(
            (p[0].kind, p[0].amount),
            (EntryKind::Adjustment, usd!("-0.05"))
        );
        // The period's parts move from estimate to actual, exactly.
        assert_eq!(
            (p[0].d_actual, p[0].d_estimate),
            (usd!("0.25"), usd!("-0.3"))
        );
        assert_eq!(
            plan.debited_by_basis,
            vec![(Basis::Actual, "m".to_owned(), usd!("-0.05"))]
        );

        // Booked as it is now: nothing to post.
        let booked = Some((usd!("0.25"), Basis::Actual));
        assert!(plan_postings(&[input("g1", &g, booked)], &all)
            .unwrap()
            .postings
            .is_empty());
    }

    #[test]
    fn a_generation_posts_to_every_matching_budget_and_no_other() {
        let mut archived = (*budget("archived", "acme", None, "1", Soft)).clone();
        archived.archived_at = Some(at(10));
        let all = [
            budget("org-wide", "acme", None, "1", Soft),
            budget("agent-a", "acme", Some("a"), "1", Soft),
            budget("agent-b", "acme", Some("b"), "1", Soft),
            budget("other-org", "globex", None, "1", Soft),
            Arc::new(archived),
        ];
        let g = generation("a", None, Some("0.1"));
        let plan = plan_postings(&[input("g1", &g, None)], &all).unwrap();
        let ids: Vec<&str> = plan.postings.iter().map(|p| p.budget.id.as_str()).collect();
        assert_eq!(ids, ["org-wide", "agent-a"]);
    }

    #[test]
    fn unpriced_and_unresolved_generations_are_counted_once() {
        let all = [budget("b", "acme", None, "1", Soft)];
        let unpriced = generation("a", None, None);
        let mut unresolved = generation("a", Some("0.1"), None);
        unresolved.unresolved_reason = Some("deadline".into());
        let plan = plan_postings(
            &[input("g1", &unpriced, None), input("g2", &unresolved, None)],
            &all,
        )
        .unwrap();
        assert_eq!((plan.newly_unpriced, plan.newly_unresolved), (1, 1));
        // Zero is debited too: the generation shows in the journal.
        assert_eq!(plan.postings[0].amount, Usd::ZERO);
        let again = PlanInput {
            was_unresolved: true,
            ..input("g2", &unresolved, Some((usd!("0.1"), Basis::Estimate)))
        };
        let plan = plan_postings(&[again], &all).unwrap();
        assert_eq!((plan.newly_unresolved, plan.postings.len()), (0, 0));
    }

    #[test]
    fn period_deltas_sum_entries_and_releases_per_period() {
        let all = [budget("b", "acme", None, "10", Soft)];
        let g1 = generation("a", Some("0.3"), None);
        let g2 = generation("a", None, Some("0.2"));
        let g3 = generation("a", Some("0.3"), Some("0.1"));
        let plan = plan_postings(
            &[
                input("g1", &g1, None),
                input("g2", &g2, None),
                input("g3", &g3, Some((usd!("0.3"), Basis::Estimate))),
            ],
            &all,
        )
        .unwrap();
        let start = plan.postings[0].period.start;
        let end = plan.postings[0].period.end;
        let releases = Releases::from([(("b".to_owned(), start), (end, usd!("-0.5")))]);
        let deltas = period_deltas(&plan.postings, releases).unwrap();
        assert_eq!(deltas.len(), 1);
        let d = &deltas[&("b".to_owned(), start)];
        assert_eq!(d.total, usd!("0.3"));
        assert_eq!((d.actual, d.estimate), (usd!("0.3"), Usd::ZERO));
        assert_eq!((d.generations, d.held, d.end), (2, usd!("-0.5"), Some(end)));
    }

    #[test]
    fn a_crossing_names_the_generation_that_crossed() {
        let all = [budget("b", "acme", None, "10", Soft)];
        let g1 = generation("a", None, Some("2"));
        let g2 = generation("a", None, Some("5"));
        let plan = plan_postings(&[input("g1", &g1, None), input("g2", &g2, None)], &all).unwrap();
        let start = plan.postings[0].period.start;
        let before = HashMap::from([(("b".to_owned(), start), usd!("4"))]);
        let crossed = crossings(&plan.postings, before).unwrap();
        let got: Vec<(&str, u32, Cost)> = crossed
            .iter()
            .map(|(p, t, total)| (p.generation_id.as_str(), *t, *total))
            .collect();
        assert_eq!(got, [("g1", 50, cost!("6")), ("g2", 100, cost!("11"))]);
    }
}
