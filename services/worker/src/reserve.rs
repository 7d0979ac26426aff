//! The worker's side of reservations: holds taken in Postgres before
//! OpenRouter is called, and the sweeper that releases the holds of
//! crashed workers.
//!
//! [`Reservations`] wraps the store and a [`HoldBatcher`], which puts the
//! holds of the requests in flight at the same moment into one transaction
//! (one commit, one lock of a hot budget row, for many holds). The rules
//! themselves — lock order, `spent + held + hold ≤ limit`, settlement in
//! the projector's transaction — live in `tally_store::reservations`.
//!
//! Per request the worker (see the crate docs):
//!
//! 1. computes the worst case ([`crate::worst_case`]) and takes the hold;
//!    a refusal fails the request with the store's reason
//!    (`budget_exhausted`, `unpriced_model`) naming the budget, and
//!    OpenRouter is not called;
//! 2. records OpenRouter's generation id the moment the response headers
//!    arrive, and extends the hold every third of `reservation_ttl` while
//!    the generation runs;
//! 3. publishes the completed event with the `request_id`: the projector
//!    settles the hold when it books it.
//!
//! A redelivered request finds its reservation: a generation id means the
//! generation exists and is published (null actual) without running again;
//! a refusal or failure is answered the same way again.
//!
//! # Decisions
//!
//! * **The worker talks to Postgres itself**: a budget hold must not depend
//!   on the API being up, and it must be atomic with the other holds of the
//!   same budget, which only the database can give.
//! * **The sweeper runs in every worker.** Releasing is `FOR UPDATE SKIP
//!   LOCKED` over expired holds, so any number of workers sweep without
//!   blocking each other or releasing a hold twice; a hold expires
//!   `reservation_ttl` after its last heartbeat, which only a live worker
//!   gives.

use std::time::Duration;

use tally_store::{HoldBatcher, HoldOutcome, HoldRequest, Store, StoreError};
use tokio::sync::watch;

use crate::Metrics;

/// Most holds taken in one transaction.
pub const HOLD_BATCH: usize = 64;

/// Most expired holds released in one transaction by the sweeper.
const SWEEP_BATCH: i64 = 500;

/// Budget holds and request claims in Postgres. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reservations {
    store: Store,
    batcher: HoldBatcher,
}

impl Reservations {
    /// Reservations in `store` (starts the hold batcher on the current
    /// runtime).
    pub fn new(store: Store) -> Reservations {
        Reservations {
            batcher: HoldBatcher::spawn(store.clone(), HOLD_BATCH),
            store,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes (or finds) the hold of one request.
    pub async fn hold(&self, req: HoldRequest) -> Result<HoldOutcome, StoreError> {
        self.batcher.hold(req).await
    }

    /// Releases expired holds every `interval` until `shutdown`, and keeps
    /// the gauges of what is held.
    pub async fn sweep(
        self,
        interval: Duration,
        metrics: std::sync::Arc<Metrics>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            loop {
                match self.store.release_expired(SWEEP_BATCH).await {
                    Ok(released) => {
                        if !released.is_empty() {
                            metrics.holds_expired.inc_by(released.len() as u64);
                            tracing::info!(
                                released = released.len(),
                                "released expired budget holds"
                            );
                        }
                        if (released.len() as i64) < SWEEP_BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sweeping expired holds failed; will retry");
                        break;
                    }
                }
            }
            match self.store.held_totals().await {
                Ok((n, usd)) => {
                    metrics.reservations_held.set(n);
                    metrics.reserved_usd.set(usd.to_f64_lossy());
                }
                Err(e) => tracing::debug!(error = %e, "reading held totals failed"),
            }
        }
    }
}
