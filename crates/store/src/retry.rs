//! How callers of the store retry a transaction that failed transiently
//! ([`StoreError::is_transient`](crate::StoreError::is_transient): a
//! serialization failure, a deadlock, a lost connection): exponential
//! backoff with jitter, from `backon`.
//!
//! Every service builds its retries here, so the schedule of each kind of
//! caller is stated once:
//!
//! | caller | first | at most | attempts |
//! |---|---|---|---|
//! | the projector's batch, a replayed batch ([`TRANSACTION`]) | 100 ms | 5 s | until it commits |
//! | a hold batch ([`HOLDS`]) | 5 ms | 80 ms | 5 more |
//! | recording a generation id ([`GENERATION_ID`]) | 20 ms | 160 ms | 3 more |
//!
//! # Decisions
//!
//! * **Batches retry until they commit.** Their messages are not acked
//!   until then and nothing behind them can be booked first (order within
//!   a generation matters), so giving up would only turn a pause into a
//!   redelivery; a batch the store *refuses* is not transient and is split
//!   instead (see the projector).
//! * **Requests in flight retry briefly.** A hold batch or a generation id
//!   is on the path of a live generation request: a few quick attempts,
//!   then the caller's error path (refusal, or the crash-safety warning).
//! * **Jitter** keeps instances that failed together (one Postgres
//!   restart) from retrying in step.

use std::time::Duration;

use backon::ExponentialBuilder;

/// A retry schedule: the first delay, the largest, how many retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Delay before the first retry (doubling after each).
    pub first: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Retries after the first attempt (`None`: until it succeeds).
    pub retries: Option<usize>,
}

/// A transaction that must commit eventually (projector, replay).
pub const TRANSACTION: Schedule = Schedule {
    first: Duration::from_millis(100),
    max: Duration::from_secs(5),
    retries: None,
};

/// A batch of holds for requests that are waiting for it.
pub const HOLDS: Schedule = Schedule {
    first: Duration::from_millis(5),
    max: Duration::from_millis(80),
    retries: Some(5),
};

/// Recording OpenRouter's generation id while the generation streams.
pub const GENERATION_ID: Schedule = Schedule {
    first: Duration::from_millis(20),
    max: Duration::from_millis(160),
    retries: Some(3),
};

impl Schedule {
    /// The `backon` builder of this schedule, with jitter.
    pub fn backoff(self) -> ExponentialBuilder {
        let b = ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .with_jitter();
        match self.retries {
            Some(n) => b.with_max_times(n),
            None => b.without_max_times(),
        }
    }
}
