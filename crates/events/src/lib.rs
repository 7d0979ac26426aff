//! tally's event contract in Rust: the CloudEvents envelope, one payload
//! type per event, and a decoder that turns bytes from the bus into
//! validated events or a precise, coded rejection.
//!
//! The JSON Schemas in `schemas/` at the repository root are the source of
//! truth of the wire format; the types here mirror them field by field, and
//! `tests/contract.rs` proves it on every example in `schemas/examples/`
//! (valid ones decode, re-encode to schema-valid JSON and round-trip; invalid
//! ones are refused by both the schema and [`decode()`], with the expected
//! [`EventError::code`]).
//!
//! ```
//! use tally_events::{decode, AnyEvent};
//!
//! let body = br#"{"specversion":"1.0","id":"e1","source":"/tally/reconciler",
//!   "type":"tally.cost.unresolved.v1","time":"2025-05-02T00:15:00Z",
//!   "subject":"tally.cost.unresolved.acme","datacontenttype":"application/json",
//!   "data":{"generation_id":"gen-1","org_id":"acme","reason":"deadline_exceeded",
//!           "attempts":27,"last_status":404,"gave_up_at":"2025-05-02T00:15:00Z"}}"#;
//! let event = decode("tally", "tally.cost.unresolved.acme", body).unwrap();
//! assert!(matches!(event, AnyEvent::Unresolved(_)));
//!
//! let err = decode("tally", "tally.cost.unresolved.other", body).unwrap_err();
//! assert_eq!(err.code(), "subject_mismatch");
//! ```
//!
//! # Invariants
//!
//! * Pure: no I/O, no clocks except [`new_event_id`] and the upper bound
//!   of the event-time window (`completed_at` ≤ now + 1 day, see [`time`]),
//!   read once per validation.
//! * Every amount is a [`tally_money::Usd`] and travels as a decimal
//!   string through `tally_money`'s serde helpers; a JSON number where money
//!   is expected is refused, never rounded through `f64`.
//! * Costs are ≥ 0; only ledger adjustments may be negative.
//! * A decoded event has passed [`Payload::validate`] and its subject check.
//!
//! # Decisions
//!
//! * **CloudEvents 1.0 in structured mode** (see [`envelope`]): one JSON body
//!   carries attributes and data, so events survive dead-letter subjects,
//!   exports and logs intact, and generic tooling understands them.
//! * **Deterministic ids for derived events** ([`derived_event_id`]):
//!   redelivery and replay re-derive the same id, so JetStream deduplication
//!   and consumer idempotency make the effect exactly-once.
//! * **The org token check** (see [`decode`](mod@decode)): the subject's org
//!   must equal `data.org_id`, because permissions act on subjects and money
//!   is booked by `data.org_id`; a mismatch is rejected, booked to neither.
//! * **One strict reading of JSON** ([`strict`]), shared with the HTTP
//!   API: duplicate keys and control characters are refused at decode with
//!   their own reasons (`duplicate_key`, `control_character`), so nothing a
//!   Postgres `text` column cannot hold ever reaches the store.
//! * **Event times in a window** ([`time`]): `completed_at` must lie in
//!   `[2020-01-01T00:00:00Z, now + 1 day]` (`time_out_of_range`), leap
//!   seconds and sub-microsecond digits are normalised so the budget and
//!   `/v1/spend` agree on the period of every instant.
//! * **One attribution type, flattened.** The organisation, agent,
//!   session, user and model of a generation are one [`Attribution`],
//!   `#[serde(flatten)]`ed into the generation events: the wire keeps flat
//!   `data` properties, and every consumer passes the value on whole
//!   instead of copying five fields. Unknown fields are still refused: the
//!   outer struct keeps `deny_unknown_fields` and refuses whatever neither
//!   it nor the attribution consumed (tested in `tests/decode.rs`).
//! * **Strict, versioned payloads.** Unknown fields are refused, matching
//!   the schemas' `additionalProperties: false`; a new field is a new
//!   version, so producers and consumers never silently disagree about what
//!   an event says.

pub mod attribution;
pub mod budget;
mod check;
pub mod cost;
pub mod decode;
pub mod envelope;
pub mod error;
pub mod event_type;
pub mod generation;
pub mod ledger;
pub mod strict;
pub mod time;

pub use attribution::Attribution;
pub use budget::ThresholdCrossed;
pub use check::is_valid_id;
pub use cost::{CostReconciled, CostUnresolved};
pub use decode::{decode, decode_as, decode_body_as, AnyEvent};
pub use envelope::{
    derived_event_id, new_event_id, CloudEvent, Payload, DATA_CONTENT_TYPE, SPEC_VERSION,
};
pub use error::{EventError, UnknownVariant};
pub use event_type::EventType;
pub use generation::{
    Capacity, DataCollection, GenerationCompleted, GenerationFailed, GenerationRequested,
    GenerationResult, GenerationStatus, Input, InputMessage, MaxPrice, ProviderPrefs, ResultError,
    ResultStatus, Role, Routing, Sort, Usage,
};
pub use ledger::{Basis, EntryKind, LedgerEntry, LedgerPosted};
pub use tally_money::MoneyError;
