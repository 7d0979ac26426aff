//! [`BusError`]: what can go wrong on the bus, each variant with a stable
//! code (metric labels, logs).

use std::time::Duration;

/// The underlying error of a NATS operation.
pub(crate) type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The configuration is invalid (empty URL, bad prefix, bad token).
    #[error("invalid bus configuration: {0}")]
    Config(String),
    /// Connecting to the NATS server failed.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The server URL(s).
        url: String,
        /// The cause.
        #[source]
        source: Source,
    },
    /// Creating, updating or reading a stream failed.
    #[error("stream {stream}: {source}")]
    Stream {
        /// The stream name.
        stream: String,
        /// The cause.
        #[source]
        source: Source,
    },
    /// Creating, updating or reading a consumer failed.
    #[error("consumer {consumer}: {source}")]
    Consumer {
        /// The consumer name.
        consumer: String,
        /// The cause.
        #[source]
        source: Source,
    },
    /// The server rejected a publish or no stream took it.
    #[error("publish to {subject} failed: {source}")]
    Publish {
        /// The subject.
        subject: String,
        /// The cause.
        #[source]
        source: Source,
    },
    /// No ack for a publish arrived in time; the message may or may not be
    /// stored, so retry with the same message id.
    #[error("publish to {subject}: no ack within {timeout:?}")]
    PublishTimeout {
        /// The subject.
        subject: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// Pulling messages failed.
    #[error("fetch from consumer {consumer} failed: {source}")]
    Fetch {
        /// The consumer name.
        consumer: String,
        /// The cause.
        #[source]
        source: Source,
    },
    /// Acking, naking or extending a message failed (or was not confirmed).
    #[error("ack of stream sequence {stream_sequence} failed: {source}")]
    Ack {
        /// The message's stream sequence.
        stream_sequence: u64,
        /// The cause.
        #[source]
        source: Source,
    },
}

impl BusError {
    /// A stable snake_case code for metrics labels and logs.
    pub fn code(&self) -> &'static str {
        match self {
            BusError::Config(_) => "bus_config",
            BusError::Connect { .. } => "bus_connect",
            BusError::Stream { .. } => "bus_stream",
            BusError::Consumer { .. } => "bus_consumer",
            BusError::Publish { .. } => "bus_publish",
            BusError::PublishTimeout { .. } => "bus_publish_timeout",
            BusError::Fetch { .. } => "bus_fetch",
            BusError::Ack { .. } => "bus_ack",
        }
    }

    /// Whether retrying the same operation later may succeed (everything but
    /// configuration errors).
    pub fn is_transient(&self) -> bool {
        !matches!(self, BusError::Config(_))
    }
}
