//! The CloudEvents 1.0 envelope ([`CloudEvent`]) and the [`Payload`] trait
//! that ties each `data` type to its event type and subject.
//!
//! # Invariants
//!
//! * The envelope has exactly the attributes `specversion` (`"1.0"`), `id`,
//!   `source`, `type`, `time`, `subject`, `datacontenttype`
//!   (`"application/json"`) and `data`; `type` always equals
//!   `T::TYPE.as_str()` for events built with [`CloudEvent::new`].
//! * `id` is what JetStream deduplicates on (`Nats-Msg-Id`): a producer that
//!   retries publishes the same `id`.
//!
//! # Decisions
//!
//! * **CloudEvents, structured mode.** The whole event, attributes and
//!   data, is one JSON document in the message body. It survives every hop
//!   that only keeps bodies (dead-letter subjects, stream exports, files,
//!   logs) and needs no NATS-header binding, which the CloudEvents SDK only
//!   offers for an old `async-nats`. The standard attribute names let generic
//!   tooling route and inspect tally's events.
//! * **Deterministic ids for derived events.** Events that tally derives
//!   from other events (reconciled, unresolved, ledger posted, alerts) take
//!   their id from business keys ([`derived_event_id`]), not from a random
//!   UUID. A projector or reconciler that crashes after its database commit
//!   and before its ack re-derives the *same* id on redelivery, so JetStream's
//!   duplicate window drops the second publish and consumers' idempotency
//!   keys line up; replays produce the same ids too (money rules 2 and 7,
//!   owned by `tally-ledger` and `tally-store`).
//! * **No extension attributes in v1.** The Rust type cannot carry them, and
//!   silently dropping attributes on a re-publish would be worse than
//!   refusing them; a new attribute means a new, deliberate contract
//!   version.
//! * **`subject` attribute = bus subject, by convention.** Producers put the
//!   NATS subject there ([`CloudEvent::new_on_bus`]) so a body copied out of
//!   the stream still says where it belongs; consumers check the *delivery*
//!   subject instead (see [`crate::decode()`]), because that is what
//!   permissions and filters act on.

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::check::{self, MAX_ATTR_CHARS};
use crate::{EventError, EventType};

/// The only CloudEvents version tally speaks.
pub const SPEC_VERSION: &str = "1.0";

/// The only `datacontenttype` tally speaks.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// The `data` of one event type.
///
/// Implemented by every payload struct of this crate; `validate` enforces
/// everything the type's JSON Schema does that serde alone does not (id
/// patterns, lengths, costs ≥ 0, ranges), plus cross-field rules a schema
/// cannot express (a period ends after it starts).
pub trait Payload: Serialize + DeserializeOwned {
    /// The event type this payload belongs to.
    const TYPE: EventType;

    /// The org the event belongs to (the org token of its subject).
    fn org_id(&self) -> &str;

    /// The budget token of the subject, for types that have one (alerts).
    fn budget_id(&self) -> Option<&str> {
        None
    }

    /// Checks every field; errors name the field (`data.org_id`).
    fn validate(&self) -> Result<(), EventError>;

    /// The NATS subject this event belongs on, e.g.
    /// `tally.generation.completed.acme`.
    fn subject(&self, prefix: &str) -> String {
        Self::TYPE.subject(prefix, self.org_id(), self.budget_id())
    }
}

/// A CloudEvents 1.0 event in structured JSON mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEvent<T> {
    /// Always [`SPEC_VERSION`].
    pub specversion: String,
    /// Unique per source; equals the JetStream `Nats-Msg-Id`.
    pub id: String,
    /// URI-reference naming the producer, e.g. `/tally/reconciler`.
    pub source: String,
    /// The event type, e.g. `tally.generation.completed.v1`.
    #[serde(rename = "type")]
    pub ty: String,
    /// When the producer created the event.
    #[serde(with = "check::rfc3339")]
    pub time: DateTime<Utc>,
    /// By convention the NATS subject the event is published on.
    pub subject: String,
    /// Always [`DATA_CONTENT_TYPE`].
    pub datacontenttype: String,
    /// The payload.
    pub data: T,
}

impl<T: Payload> CloudEvent<T> {
    /// Builds an event; `type`, `specversion` and `datacontenttype` follow
    /// from `T`.
    pub fn new(
        id: impl Into<String>,
        source: impl Into<String>,
        subject: impl Into<String>,
        time: DateTime<Utc>,
        data: T,
    ) -> Self {
        CloudEvent {
            specversion: SPEC_VERSION.to_owned(),
            id: id.into(),
            source: source.into(),
            ty: T::TYPE.as_str().to_owned(),
            time,
            subject: subject.into(),
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            data,
        }
    }

    /// Builds an event whose `subject` attribute is its NATS subject under
    /// `prefix` (the convention every tally producer follows).
    pub fn new_on_bus(
        prefix: &str,
        id: impl Into<String>,
        source: impl Into<String>,
        time: DateTime<Utc>,
        data: T,
    ) -> Self {
        let subject = data.subject(prefix);
        Self::new(id, source, subject, time, data)
    }

    /// The event type.
    pub fn event_type(&self) -> EventType {
        T::TYPE
    }

    /// The NATS subject to publish the event on under `prefix`.
    pub fn bus_subject(&self, prefix: &str) -> String {
        self.data.subject(prefix)
    }

    /// The structured-mode JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising these types cannot fail: every map key is a string and
        // every value has an infallible `Serialize` implementation.
        serde_json::to_vec(self).expect("CloudEvent serialises to JSON infallibly")
    }

    /// Checks the envelope and the payload as [`crate::decode()`] would, so a
    /// producer can refuse to publish what consumers would dead-letter.
    pub fn validate(&self) -> Result<(), EventError> {
        if self.specversion != SPEC_VERSION {
            return Err(EventError::UnsupportedSpecVersion(format!(
                "{:?}",
                self.specversion
            )));
        }
        if self.ty != T::TYPE.as_str() {
            return Err(EventError::WrongType {
                expected: T::TYPE.as_str().to_owned(),
                found: self.ty.clone(),
            });
        }
        attribute("id", &self.id)?;
        attribute("source", &self.source)?;
        attribute("subject", &self.subject)?;
        if self.datacontenttype != DATA_CONTENT_TYPE {
            return Err(EventError::envelope(
                "datacontenttype",
                format!("must be {DATA_CONTENT_TYPE:?}"),
            ));
        }
        self.data.validate()
    }
}

/// Checks a string attribute: non-empty, at most 512 characters.
pub(crate) fn attribute(field: &str, value: &str) -> Result<(), EventError> {
    if value.is_empty() {
        return Err(EventError::envelope(field, "must not be empty"));
    }
    if crate::strict::has_control(value) {
        return Err(EventError::ControlCharacter {
            field: field.to_owned(),
        });
    }
    if value.chars().count() > MAX_ATTR_CHARS {
        return Err(EventError::envelope(
            field,
            format!("longer than {MAX_ATTR_CHARS} characters"),
        ));
    }
    Ok(())
}

/// The deterministic CloudEvent `id` of a derived event: the type, then the
/// business keys that make it unique, joined by `:` (with `%` and `:` inside
/// a key percent-encoded, so distinct key lists never collide).
///
/// `derived_event_id(EventType::CostReconciled, &["gen-1"])` =
/// `"tally.cost.reconciled.v1:gen-1"`.
pub fn derived_event_id(ty: EventType, keys: &[&str]) -> String {
    let mut id = ty.as_str().to_owned();
    for key in keys {
        id.push(':');
        for c in key.chars() {
            match c {
                '%' => id.push_str("%25"),
                ':' => id.push_str("%3A"),
                c => id.push(c),
            }
        }
    }
    id
}

/// A fresh, time-ordered event id (UUID v7) for events that are not derived
/// from others (e.g. a producer's first publish of a completed generation).
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_deterministic_and_unambiguous() {
        assert_eq!(
            derived_event_id(EventType::CostReconciled, &["gen-1"]),
            "tally.cost.reconciled.v1:gen-1"
        );
        assert_ne!(
            derived_event_id(EventType::LedgerPosted, &["a:b", "c"]),
            derived_event_id(EventType::LedgerPosted, &["a", "b:c"])
        );
        assert_eq!(
            derived_event_id(EventType::LedgerPosted, &["50%:x"]),
            "tally.ledger.posted.v1:50%25%3Ax"
        );
    }

    #[test]
    fn fresh_ids_differ() {
        assert_ne!(new_event_id(), new_event_id());
    }
}
