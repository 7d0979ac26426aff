//! Dead letters: a message a service cannot apply goes to
//! `<prefix>.deadletter.<service>` with its reason, never blocking the
//! messages behind it.
//!
//! Who and why are typed ([`DeadLetterService`], [`DeadLetterReason`]), so a
//! service name, a reason code and a free-text detail cannot be swapped at
//! a call site, and every reason code is a `&'static str` from the error
//! enum of the crate that refused the message (bounded: it is a metric
//! label and a header operators filter on).

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::*;

/// Header: stable, machine-readable reason code of a dead letter.
pub const HEADER_DEAD_LETTER_REASON: &str = "Tally-Dead-Letter-Reason";

/// Header: human-readable detail of a dead letter (at most 1 KiB, one line).
pub const HEADER_DEAD_LETTER_DETAIL: &str = "Tally-Dead-Letter-Detail";

/// Header: subject the dead-lettered message was originally published on.
pub const HEADER_ORIGINAL_SUBJECT: &str = "Tally-Original-Subject";

/// Header: stream the dead-lettered message was read from.
pub const HEADER_ORIGINAL_STREAM: &str = "Tally-Original-Stream";

/// Header: stream sequence of the dead-lettered message.
pub const HEADER_ORIGINAL_STREAM_SEQ: &str = "Tally-Original-Stream-Seq";

/// Header: `Nats-Msg-Id` of the dead-lettered message, when it had one.
pub const HEADER_ORIGINAL_MSG_ID: &str = "Tally-Original-Msg-Id";

/// Header: the service that dead-lettered the message.
pub const HEADER_DEAD_LETTER_SERVICE: &str = "Tally-Dead-Letter-Service";

/// Maximum length of the dead-letter detail header, in bytes.
pub const DEAD_LETTER_DETAIL_MAX: usize = 1024;

/// The service that dead-letters a message: the last token of its
/// dead-letter subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterService {
    /// `<p>.deadletter.projector`.
    Projector,
    /// `<p>.deadletter.reconciler`.
    Reconciler,
    /// `<p>.deadletter.worker`.
    Worker,
    /// `<p>.deadletter.alerts`.
    Alerts,
}

impl DeadLetterService {
    /// Every service that dead-letters.
    pub const ALL: [DeadLetterService; 4] = [
        DeadLetterService::Projector,
        DeadLetterService::Reconciler,
        DeadLetterService::Worker,
        DeadLetterService::Alerts,
    ];

    /// The subject token and header value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterService::Projector => "projector",
            DeadLetterService::Reconciler => "reconciler",
            DeadLetterService::Worker => "worker",
            DeadLetterService::Alerts => "alerts",
        }
    }
}

impl std::fmt::Display for DeadLetterService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message was dead-lettered: a stable snake_case code (the `code()`
/// of the refusing crate's error) and a one-line detail for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterReason {
    code: &'static str,
    detail: String,
}

impl DeadLetterReason {
    /// A reason with its code and detail.
    pub fn new(code: &'static str, detail: impl Into<String>) -> DeadLetterReason {
        DeadLetterReason {
            code,
            detail: detail.into(),
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The detail.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl Bus {
    /// Sends a message the `service` cannot apply to
    /// `<prefix>.deadletter.<service>`: the original payload and headers
    /// plus [`HEADER_DEAD_LETTER_REASON`] (the reason's code),
    /// [`HEADER_DEAD_LETTER_DETAIL`] (its detail on one line, at most 1 KiB),
    /// the original subject, stream, stream sequence and message id.
    ///
    /// Its message id is `dl-<service>-<stream>-<stream_seq>`, so a poison
    /// message that is redelivered before its ack is dead-lettered once. The
    /// caller acks `msg` afterwards.
    pub async fn dead_letter(
        &self,
        service: DeadLetterService,
        msg: &Delivery,
        reason: &DeadLetterReason,
    ) -> Result<(), BusError> {
        let (service, code, detail) = (service.as_str(), reason.code(), reason.detail());
        let mut headers = HeaderMap::new();
        if let Some(original) = msg.headers() {
            for (name, values) in original.iter() {
                let text: &str = name.as_ref();
                // Server-set and dedup headers would interfere; ours are set below.
                if text.starts_with("Nats-") || text.starts_with("Tally-") {
                    continue;
                }
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        headers.insert(HEADER_DEAD_LETTER_REASON, one_line(code, 128).as_str());
        headers.insert(
            HEADER_DEAD_LETTER_DETAIL,
            one_line(detail, DEAD_LETTER_DETAIL_MAX).as_str(),
        );
        headers.insert(HEADER_DEAD_LETTER_SERVICE, service);
        headers.insert(HEADER_ORIGINAL_SUBJECT, msg.subject());
        headers.insert(HEADER_ORIGINAL_STREAM, msg.stream());
        headers.insert(
            HEADER_ORIGINAL_STREAM_SEQ,
            msg.stream_sequence().to_string().as_str(),
        );
        if let Some(id) = msg.msg_id() {
            headers.insert(HEADER_ORIGINAL_MSG_ID, one_line(id, 256).as_str());
        }
        let id = format!("dl-{service}-{}-{}", msg.stream(), msg.stream_sequence());
        let subject = self.subject(&format!("deadletter.{service}"));
        tracing::warn!(
            service,
            reason = code,
            detail = %one_line(detail, DEAD_LETTER_DETAIL_MAX),
            subject = msg.subject(),
            stream_sequence = msg.stream_sequence(),
            "dead-lettering message"
        );
        self.publish_with_headers(
            &subject,
            &id,
            headers,
            Bytes::copy_from_slice(msg.payload()),
        )
        .await
    }
}

/// `s` with control characters replaced by spaces, cut to at most `max`
/// bytes on a character boundary (header values must be one line).
pub(crate) fn one_line(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out.trim().to_string()
}
