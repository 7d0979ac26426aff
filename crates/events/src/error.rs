//! Why a message is not a valid tally event.
//!
//! Every rejection names the offending field as a path from the envelope
//! root (`data.actual_cost_usd`, `data.entries[0].amount_usd`, `time`) and
//! maps to a stable snake_case [`code`](EventError::code), used as the
//! dead-letter reason header, as a metric label and in logs.
//!
//! # Invariants
//!
//! * Codes never change meaning; a new kind of rejection gets a new variant
//!   and a new code.
//! * Decoding never panics: every malformed input becomes an [`EventError`].
//!
//! # Decisions
//!
//! * **Money errors keep their cause.** [`EventError::InvalidMoney`] carries
//!   the [`MoneyError`] so callers can tell a JSON number from a negative
//!   cost (`money_code()`), while the event-level code stays `invalid_money`.
//! * **Ids are their own code.** An id that cannot be a subject token
//!   (`org_id`, `budget_id`, `request_id`) is `invalid_id`, because it is the
//!   check that keeps one org's message out of another org's subjects.

use tally_money::MoneyError;

/// Why a message was rejected. See [`EventError::code`] for the stable codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The body is not JSON at all.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// `specversion` is not `"1.0"`; holds the JSON text found (`"0.3"`, `1.0`).
    #[error("specversion: unsupported CloudEvents version {0}; only \"1.0\" is accepted")]
    UnsupportedSpecVersion(String),
    /// `type` names no event tally knows.
    #[error("type: unknown event type {0:?}")]
    UnknownType(String),
    /// A known event type, but not the one the caller expects.
    #[error("type: expected {expected:?}, found {found:?}")]
    WrongType {
        /// The type the caller asked for.
        expected: String,
        /// The type the message carries.
        found: String,
    },
    /// A CloudEvents attribute is missing, of the wrong type or not allowed.
    #[error("{field}: {reason}")]
    InvalidEnvelope {
        /// The attribute, e.g. `time`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `data` field is missing, unknown, of the wrong type or out of range.
    #[error("{field}: {reason}")]
    InvalidData {
        /// Path of the field, e.g. `data.usage.prompt_tokens`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A money field is not an exact, in-range decimal string (or is negative
    /// where only costs are allowed).
    #[error("{field}: {source}")]
    InvalidMoney {
        /// Path of the field, e.g. `data.actual_cost_usd`.
        field: String,
        /// Why the amount was refused.
        source: MoneyError,
    },
    /// An id does not match `^[A-Za-z0-9_-]{1,64}$`.
    #[error("{field}: {value:?} is not a valid id (1 to 64 of A-Z a-z 0-9 _ -)")]
    InvalidId {
        /// Path of the field, e.g. `data.org_id`.
        field: String,
        /// The offending value.
        value: String,
    },
    /// An object holds the same key twice (tally reads JSON strictly, see
    /// [`crate::strict`]).
    #[error("{field}: the key is given more than once")]
    DuplicateKey {
        /// Path of the repeated key, e.g. `data.usage.prompt_tokens`.
        field: String,
    },
    /// A string holds a control character: NUL or another C0 control
    /// anywhere (tab, line feed and carriage return excepted in free text),
    /// or any control character in an id, reference or attribute.
    #[error("{field}: holds a control character")]
    ControlCharacter {
        /// Path of the field, e.g. `data.agent_id`.
        field: String,
    },
    /// An event time that decides a budget period is outside
    /// `[2020-01-01T00:00:00Z, now + 1 day]` (see [`crate::time`]).
    #[error("{field}: {reason}")]
    TimeOutOfRange {
        /// Path of the field, e.g. `data.completed_at`.
        field: String,
        /// Which bound it violates.
        reason: String,
    },
    /// The subject the message arrived on does not belong to the event's org
    /// (or budget, or type).
    #[error("subject {subject:?} does not match the event; expected {expected:?}")]
    SubjectMismatch {
        /// The delivery subject.
        subject: String,
        /// The subject the event belongs on.
        expected: String,
    },
}

impl EventError {
    /// Stable machine-readable code: `malformed_json`,
    /// `unsupported_specversion`, `unknown_type`, `wrong_type`,
    /// `invalid_envelope`, `invalid_data`, `invalid_money`, `invalid_id`,
    /// `subject_mismatch`, `duplicate_key`, `control_character`,
    /// `time_out_of_range`.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::MalformedJson(_) => "malformed_json",
            EventError::UnsupportedSpecVersion(_) => "unsupported_specversion",
            EventError::UnknownType(_) => "unknown_type",
            EventError::WrongType { .. } => "wrong_type",
            EventError::InvalidEnvelope { .. } => "invalid_envelope",
            EventError::InvalidData { .. } => "invalid_data",
            EventError::InvalidMoney { .. } => "invalid_money",
            EventError::InvalidId { .. } => "invalid_id",
            EventError::SubjectMismatch { .. } => "subject_mismatch",
            EventError::DuplicateKey { .. } => "duplicate_key",
            EventError::ControlCharacter { .. } => "control_character",
            EventError::TimeOutOfRange { .. } => "time_out_of_range",
        }
    }

    /// The offending field's path, when the error is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            EventError::InvalidEnvelope { field, .. }
            | EventError::InvalidData { field, .. }
            | EventError::InvalidMoney { field, .. }
            | EventError::InvalidId { field, .. }
            | EventError::DuplicateKey { field }
            | EventError::ControlCharacter { field }
            | EventError::TimeOutOfRange { field, .. } => Some(field),
            EventError::UnsupportedSpecVersion(_) => Some("specversion"),
            EventError::UnknownType(_) | EventError::WrongType { .. } => Some("type"),
            EventError::MalformedJson(_) | EventError::SubjectMismatch { .. } => None,
        }
    }

    /// The money crate's code (`amount_not_string`, `negative_amount`, ...)
    /// for [`EventError::InvalidMoney`].
    pub fn money_code(&self) -> Option<&'static str> {
        match self {
            EventError::InvalidMoney { source, .. } => Some(source.code()),
            _ => None,
        }
    }

    pub(crate) fn data(field: impl Into<String>, reason: impl Into<String>) -> Self {
        EventError::InvalidData {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn envelope(field: impl Into<String>, reason: impl Into<String>) -> Self {
        EventError::InvalidEnvelope {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A string that names no variant of a wire enum (from `FromStr`, e.g. a
/// database column holding `"credit"` where [`crate::EntryKind`] is expected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownVariant {
    /// The enum, e.g. `EntryKind`.
    pub kind: &'static str,
    /// The unrecognised text.
    pub value: String,
}
