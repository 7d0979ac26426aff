//! Where the reconciler remembers its first lookup of a generation: in
//! Postgres (`reconcile_first_lookups`), or, for a reconciler built without
//! a store, in this process's memory.
//!
//! # Invariants
//!
//! * The instant returned for a generation never moves later: the earliest
//!   recorded lookup wins (the store keeps the least of concurrent writes).
//! * When the record cannot be read or written, the current instant is
//!   returned: the window then counts from now, which only adds patience.
//!
//! # Decisions
//!
//! * **Postgres, not the message.** JetStream cannot attach data to a
//!   message it redelivers (a nak carries only a delay), and the stream's
//!   storage time is *before* the first lookup, so it cannot stand in for
//!   it after an outage. A row per generation, written only close to the
//!   deadline, is shared by every instance and outlives restarts; rows older
//!   than the sweep horizon are pruned by the sweep.
//! * **Memory only without a store** (embedded uses and tests that need no
//!   database): it survives neither a restart nor a change of instance, and
//!   `tally reconciler` always runs with the store.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tally_store::Store;

use crate::Metrics;

/// The first-lookup memory.
#[derive(Debug)]
pub(crate) enum FirstLookups {
    /// Shared by every instance, kept across restarts.
    Store(Store),
    /// This process only.
    Memory(Mutex<HashMap<String, DateTime<Utc>>>),
}

impl FirstLookups {
    /// Records a lookup of `generation_id` at `now` and returns the first
    /// one known.
    pub(crate) async fn record(
        &self,
        generation_id: &str,
        org_id: &str,
        now: DateTime<Utc>,
        metrics: &Metrics,
    ) -> DateTime<Utc> {
        match self {
            FirstLookups::Store(store) => {
                match store.record_first_lookup(generation_id, org_id, now).await {
                    Ok(first) => first.min(now),
                    Err(e) => {
                        metrics.store_errors.with_label_values(&[e.code()]).inc();
                        tracing::warn!(
                            error = %e,
                            code = e.code(),
                            generation_id,
                            "cannot record the first lookup; counting the window from now"
                        );
                        now
                    }
                }
            }
            FirstLookups::Memory(map) => *map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(generation_id.to_owned())
                .or_insert(now),
        }
    }

    /// Forgets a settled generation (memory only; rows in the store are
    /// pruned with the sweep horizon).
    pub(crate) fn forget(&self, generation_id: &str) {
        if let FirstLookups::Memory(map) = self {
            map.lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(generation_id);
        }
    }
}
