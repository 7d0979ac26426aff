//! Reservations against a real Postgres: holds taken atomically under
//! concurrency never let a hard budget pass its limit, settle in the
//! projector's transaction, expire, and remember generation ids.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tally_budget::{Enforcement, Scope};
use tally_money::Usd;
use tally_store::ledger::PostingOptions;
use tally_store::{
    Budget, FactInput, HoldBatcher, HoldOutcome, HoldRequest, NewBudget, ReservationState, Store,
};
use tally_testkit::TestDb;

mod support;

const ORG: &str = "acme";
const AGENT: &str = "agent-1";

use tally_money::{cost, usd};

async fn store() -> anyhow::Result<(TestDb, Store)> {
    let (db, store) = tally_testkit::TestDb::migrated(24).await?;
    Ok((db, store))
}

/// A fresh store with one budget of [`ORG`] over everything.
async fn store_with(
    name: &str,
    limit: &str,
    enforcement: Enforcement,
) -> anyhow::Result<(TestDb, Store, Budget)> {
    let (db, store) = store().await?;
    let b = create(&store, budget(name, limit, enforcement)).await?;
    Ok((db, store, b))
}

fn budget(name: &str, limit: &str, enforcement: Enforcement) -> NewBudget {
    scoped_budget(name, limit, enforcement, Scope::default())
}

fn scoped_budget(name: &str, limit: &str, enforcement: Enforcement, scope: Scope) -> NewBudget {
    support::monthly_budget(ORG, name, cost!(limit), enforcement, scope)
}

async fn create(store: &Store, b: NewBudget) -> anyhow::Result<Budget> {
    Ok(store.create_budget(b, &PostingOptions::default()).await?.0)
}

fn hold(id: &str, amount: Option<&str>) -> HoldRequest {
    support::hold_request(ORG, AGENT, id, amount.map(|a| cost!(a)))
}

fn hold_with_ttl(id: &str, amount: Option<&str>, ttl: Duration) -> HoldRequest {
    HoldRequest {
        ttl,
        ..hold(id, amount)
    }
}

fn completed(request_id: &str, generation_id: &str, actual: &str) -> FactInput {
    support::completed(ORG, AGENT, request_id, generation_id, cost!(actual))
}

/// (spent, held) of the budget's current period.
async fn totals(store: &Store, b: &Budget) -> anyhow::Result<(Usd, Usd)> {
    let p = store
        .periods_at(std::slice::from_ref(b), Utc::now())
        .await?
        .remove(0)
        .1;
    Ok((p.spent_usd, p.reserved_usd))
}

/// Conservation of holds: every period's held_usd equals the holds of its
/// reservations still held.
async fn held_matches_holds(store: &Store) -> anyhow::Result<()> {
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM budget_periods bp WHERE bp.held_usd <> COALESCE(( \
             SELECT sum(h.amount_usd) FROM reservation_holds h JOIN reservations r USING (request_id) \
             WHERE r.state = 'held' AND h.budget_id = bp.budget_id \
               AND h.period_start = bp.period_start), 0)",
    )
    .fetch_one(store.pool())
    .await?;
    assert_eq!(bad, 0, "held_usd differs from the holds");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_holds_never_pass_a_hard_limit() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    // Room for three worst cases of 1.00 (and a bit).
    let hard = create(&store, budget("hard", "3.50", Enforcement::Hard)).await?;
    let soft = create(&store, budget("soft", "1", Enforcement::Soft)).await?;
    let batcher = HoldBatcher::spawn(store.clone(), 8);
    // Half through the batcher, half one transaction each: both paths race.
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            let batcher = batcher.clone();
            tokio::spawn(async move {
                let req = hold(&format!("req-{i}"), Some("1.00"));
                if i % 2 == 0 {
                    batcher.hold(req).await
                } else {
                    let mut delay = Duration::from_millis(5);
                    loop {
                        match store.take_holds(std::slice::from_ref(&req)).await {
                            Err(e) if e.is_transient() => {
                                tokio::time::sleep(delay).await;
                                delay *= 2;
                            }
                            r => break r.map(|mut v| v.remove(0)),
                        }
                    }
                }
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await?? {
            HoldOutcome::Held(r) => held.push(r),
            HoldOutcome::Refused { reservation, now } => {
                assert!(now);
                assert_eq!(reservation.state, ReservationState::Refused);
                assert_eq!(
                    reservation.failure_reason.as_deref(),
                    Some("budget_exhausted")
                );
                assert_eq!(reservation.refused_by.as_deref(), Some(hard.id.as_str()));
                assert!(
                    reservation
                        .failure_message
                        .as_deref()
                        .unwrap()
                        .contains("hard"),
                    "the message names the budget"
                );
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(held.len(), 3, "exactly three worst cases fit");
    assert_eq!(refused, 47);
    assert_eq!(totals(&store, &hard).await?, (usd!("0"), usd!("3.00")));
    // The soft budget recorded every admitted hold and refused none.
    assert_eq!(totals(&store, &soft).await?, (usd!("0"), usd!("3.00")));
    for r in &held {
        assert_eq!(r.holds.len(), 2, "one hold per matching budget");
    }
    held_matches_holds(&store).await?;

    // Settled by the projector's transaction: the hold becomes spend.
    let facts: Vec<FactInput> = held
        .iter()
        .enumerate()
        .map(|(i, r)| completed(&r.request_id, &format!("gen-{i}"), "0.25"))
        .collect();
    let out = store
        .apply_batch(&facts, &PostingOptions::default())
        .await?;
    assert_eq!(out.settled.len(), 3);
    for s in &out.settled {
        assert_eq!(s.held_usd, Some(usd!("1.00")));
        assert_eq!(s.debited_usd, usd!("0.25"));
    }
    assert_eq!(totals(&store, &hard).await?, (usd!("0.75"), usd!("0")));
    for r in &held {
        let r = store.reservation(&r.request_id).await?;
        assert_eq!(r.state, ReservationState::Settled);
        assert!(r.generation_id.is_some());
        assert_eq!(r.settled_usd, Some(usd!("0.25")));
    }
    // A redelivered completed event settles nothing twice.
    let again = store
        .apply_batch(&facts, &PostingOptions::default())
        .await?;
    assert!(again.settled.is_empty());
    assert_eq!(totals(&store, &hard).await?, (usd!("0.75"), usd!("0")));
    held_matches_holds(&store).await?;

    // Room again: 0.75 spent leaves room for two more worst cases.
    let more = store
        .take_holds(&[
            hold("late-1", Some("1.00")),
            hold("late-2", Some("1.00")),
            hold("late-3", Some("1.00")),
        ])
        .await?;
    assert!(matches!(more[0], HoldOutcome::Held(_)));
    assert!(matches!(more[1], HoldOutcome::Held(_)));
    assert!(matches!(more[2], HoldOutcome::Refused { .. }));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_and_settlements_race_without_overrun_or_deadlock() -> anyhow::Result<()> {
    let (_db, store, hard) = store_with("hard", "2.00", Enforcement::Hard).await?;
    let batcher = HoldBatcher::spawn(store.clone(), 16);
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(std::sync::Mutex::new(Usd::ZERO));
    let watcher = {
        let (store, hard, stop, max_seen) =
            (store.clone(), hard.clone(), stop.clone(), max_seen.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (spent, held) = totals(&store, &hard).await.unwrap();
                {
                    let mut m = max_seen.lock().unwrap();
                    *m = (*m).max(spent.try_add(held).expect("in range"));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let settled = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (store, batcher, settled) = (store.clone(), batcher.clone(), settled.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let id = format!("w{w}-{i}");
                // Worst case 0.10, actual 0.01: twenty holds fit at once.
                match batcher.hold(hold(&id, Some("0.10"))).await.unwrap() {
                    HoldOutcome::Held(_) => {
                        let f = completed(&id, &format!("gen-{id}"), "0.01");
                        loop {
                            match store
                                .apply_batch(std::slice::from_ref(&f), &PostingOptions::default())
                                .await
                            {
                                Err(e) if e.is_transient() => continue,
                                r => {
                                    assert_eq!(r.unwrap().settled.len(), 1);
                                    break;
                                }
                            }
                        }
                        settled.fetch_add(1, Ordering::Relaxed);
                    }
                    HoldOutcome::Refused { reservation, .. } => {
                        assert_eq!(
                            reservation.failure_reason.as_deref(),
                            Some("budget_exhausted")
                        );
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    stop.store(true, Ordering::Relaxed);
    watcher.await?;
    let (spent, held) = totals(&store, &hard).await?;
    assert_eq!(held, Usd::ZERO);
    assert!(spent <= usd!("2.00"), "spent {spent}");
    assert_eq!(
        spent,
        usd!("0.01").try_mul_int(settled.load(Ordering::Relaxed))?
    );
    assert!(settled.load(Ordering::Relaxed) > 0);
    let m = *max_seen.lock().unwrap();
    assert!(m <= usd!("2.00"), "spent + held reached {m}");
    held_matches_holds(&store).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpriced_models_are_refused_by_hard_budgets_unless_allowed() -> anyhow::Result<()> {
    let (_db, store, hard) = store_with("strict", "10", Enforcement::Hard).await?;
    let out = store.take_holds(&[hold("dyn-1", None)]).await?;
    let HoldOutcome::Refused { reservation, now } = &out[0] else {
        panic!("{out:?}")
    };
    assert!(now);
    assert_eq!(
        reservation.failure_reason.as_deref(),
        Some("unpriced_model")
    );
    assert_eq!(reservation.refused_by.as_deref(), Some(hard.id.as_str()));
    // A redelivery answers the same, without deciding again.
    let again = store.take_holds(&[hold("dyn-1", None)]).await?;
    assert!(matches!(again[0], HoldOutcome::Refused { now: false, .. }));

    store
        .update_budget(
            &hard.id,
            tally_store::BudgetPatch {
                allow_unpriced_models: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let soft_only = store.take_holds(&[hold("dyn-2", None)]).await?;
    let HoldOutcome::Held(r) = &soft_only[0] else {
        panic!("{soft_only:?}")
    };
    assert_eq!(r.amount_usd, None);
    assert_eq!(r.holds[0].amount_usd, Usd::ZERO);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_budgets_record_holds_and_never_refuse() -> anyhow::Result<()> {
    let (_db, store, soft) = store_with("soft", "1", Enforcement::Soft).await?;
    let reqs: Vec<HoldRequest> = (0..10)
        .map(|i| hold(&format!("s-{i}"), Some("5")))
        .collect();
    let out = store.take_holds(&reqs).await?;
    assert!(out.iter().all(|o| matches!(o, HoldOutcome::Held(_))));
    assert_eq!(totals(&store, &soft).await?, (usd!("0"), usd!("50")));
    let unpriced = store.take_holds(&[hold("s-dyn", None)]).await?;
    assert!(matches!(unpriced[0], HoldOutcome::Held(_)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_holds_free_the_budget_and_may_be_taken_again() -> anyhow::Result<()> {
    let (_db, store, hard) = store_with("hard", "1", Enforcement::Hard).await?;
    let crashed = hold_with_ttl("crashed", Some("1"), Duration::from_millis(200));
    assert!(matches!(
        store.take_holds(std::slice::from_ref(&crashed)).await?[0],
        HoldOutcome::Held(_)
    ));
    assert!(matches!(
        store.take_holds(&[hold("other", Some("1"))]).await?[0],
        HoldOutcome::Refused { .. }
    ));
    // Not yet expired: the sweeper leaves it.
    assert!(store.release_expired(100).await?.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = store.release_expired(100).await?;
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].request_id, "crashed");
    assert_eq!(totals(&store, &hard).await?, (usd!("0"), usd!("0")));
    let r = store.reservation("crashed").await?;
    assert_eq!(r.state, ReservationState::Released);
    assert_eq!(r.release_reason.as_deref(), Some("expired"));
    held_matches_holds(&store).await?;
    // A redelivery of the crashed request (no generation id) holds again.
    assert!(matches!(
        store.take_holds(&[crashed]).await?[0],
        HoldOutcome::Held(_)
    ));
    assert_eq!(totals(&store, &hard).await?, (usd!("0"), usd!("1")));
    held_matches_holds(&store).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_generation_is_never_held_again() -> anyhow::Result<()> {
    let (_db, store, hard) = store_with("hard", "1", Enforcement::Hard).await?;
    let req = hold_with_ttl("r1", Some("1"), Duration::from_millis(200));
    store.take_holds(std::slice::from_ref(&req)).await?;
    let ttl = Duration::from_millis(200);
    // The first id is recorded; a second one never replaces it.
    for id in ["gen-1", "gen-2"] {
        let recorded = store.record_generation("r1", id, ttl).await?;
        assert_eq!(recorded.as_deref(), Some("gen-1"), "after recording {id}");
    }
    assert!(matches!(
        store.take_holds(std::slice::from_ref(&req)).await?[0],
        HoldOutcome::Generated(ref r) if r.generation_id.as_deref() == Some("gen-1")
    ));
    // Even after the hold expired.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.release_expired(10).await?.len(), 1);
    assert!(matches!(
        store.take_holds(std::slice::from_ref(&req)).await?[0],
        HoldOutcome::Generated(_)
    ));
    // The late completed event books the spend; the released hold stays released.
    let out = store
        .apply_batch(
            &[completed("r1", "gen-1", "0.5")],
            &PostingOptions::default(),
        )
        .await?;
    assert!(out.settled.is_empty());
    assert_eq!(totals(&store, &hard).await?, (usd!("0.5"), usd!("0")));
    assert_eq!(
        store
            .record_generation("nope", "gen-x", ttl)
            .await
            .unwrap_err()
            .code(),
        "not_found"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_releases_its_hold_and_stays_failed() -> anyhow::Result<()> {
    let (_db, store, hard) = store_with("hard", "1", Enforcement::Hard).await?;
    store.take_holds(&[hold("f1", Some("1"))]).await?;
    let r = store
        .release_hold("f1", "upstream_bad_request", "OpenRouter refused it")
        .await?;
    assert_eq!(r.state, ReservationState::Released);
    assert_eq!(r.release_reason.as_deref(), Some("request_failed"));
    assert_eq!(totals(&store, &hard).await?, (usd!("0"), usd!("0")));
    let again = store.take_holds(&[hold("f1", Some("1"))]).await?;
    let HoldOutcome::Failed(r) = &again[0] else {
        panic!("{again:?}")
    };
    assert_eq!(r.failure_reason.as_deref(), Some("upstream_bad_request"));
    // Releasing twice changes nothing.
    store.release_hold("f1", "x", "y").await?;
    assert_eq!(totals(&store, &hard).await?, (usd!("0"), usd!("0")));
    held_matches_holds(&store).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_and_fallbacks_decide_which_budgets_hold() -> anyhow::Result<()> {
    let (_db, store) = store().await?;
    let agent_2 = Scope {
        agent_id: Some("agent-2".into()),
        ..Default::default()
    };
    let r1_only = Scope {
        model: Some("deepseek/deepseek-r1".into()),
        ..Default::default()
    };
    let other_agent = create(
        &store,
        scoped_budget("agent-2", "0", Enforcement::Hard, agent_2),
    )
    .await?;
    let r1 = create(
        &store,
        scoped_budget("r1 only", "0.5", Enforcement::Hard, r1_only),
    )
    .await?;
    // Not in either scope: nothing holds, nothing refuses.
    let out = store.take_holds(&[hold("a", Some("1"))]).await?;
    let HoldOutcome::Held(r) = &out[0] else {
        panic!("{out:?}")
    };
    assert!(r.holds.is_empty());
    // A fallback on the model-scoped budget's model brings it in.
    let mut fb = hold("b", Some("1"));
    fb.fallback_models = vec!["deepseek/deepseek-r1".into()];
    let out = store.take_holds(&[fb]).await?;
    let HoldOutcome::Refused { reservation, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(reservation.refused_by.as_deref(), Some(r1.id.as_str()));
    let _ = other_agent;
    // Input that breaks a rule is refused before any transaction.
    let bad = hold("", Some("1"));
    assert_eq!(
        store.take_holds(&[bad]).await.unwrap_err().code(),
        "invalid_input"
    );
    // A negative hold cannot be expressed: the amount is a cost.
    assert_eq!(
        "-1".parse::<tally_money::Cost>().unwrap_err().code(),
        "negative_amount"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_list_by_state_in_pages() -> anyhow::Result<()> {
    let (_db, store, _) = store_with("hard", "2", Enforcement::Hard).await?;
    let reqs: Vec<HoldRequest> = (0..5).map(|i| hold(&format!("p-{i}"), Some("1"))).collect();
    store.take_holds(&reqs).await?;
    let (page, next) = store
        .list_reservations(ORG, Some(ReservationState::Held), None, 1)
        .await?;
    assert_eq!(page.len(), 1);
    let (rest, end) = store
        .list_reservations(ORG, Some(ReservationState::Held), next.as_deref(), 10)
        .await?;
    assert_eq!(rest.len(), 1);
    assert!(end.is_none());
    assert_ne!(page[0].request_id, rest[0].request_id);
    let (refused, _) = store
        .list_reservations(ORG, Some(ReservationState::Refused), None, 10)
        .await?;
    assert_eq!(refused.len(), 3);
    let (all, _) = store.list_reservations(ORG, None, None, 100).await?;
    assert_eq!(all.len(), 5);
    let (n, held) = store.held_totals().await?;
    assert_eq!((n, held), (2, usd!("2")));
    Ok(())
}
