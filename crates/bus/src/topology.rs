//! The topology: the streams ([`StreamKind`]) and durable consumers
//! ([`ConsumerName`]) of one prefix, created idempotently by
//! [`Bus::ensure_topology`], and what the server says about them.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};

use crate::*;

/// The streams of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// `<P>_GENERATIONS`: `<p>.generation.>`.
    Generations,
    /// `<P>_COSTS`: `<p>.cost.>`.
    Costs,
    /// `<P>_LEDGER`: `<p>.ledger.>`.
    Ledger,
    /// `<P>_ALERTS`: `<p>.budget.alert.>`.
    Alerts,
    /// `<P>_DEADLETTER`: `<p>.deadletter.>`.
    DeadLetter,
}

impl StreamKind {
    /// Every stream, in creation order.
    pub const ALL: [StreamKind; 5] = [
        StreamKind::Generations,
        StreamKind::Costs,
        StreamKind::Ledger,
        StreamKind::Alerts,
        StreamKind::DeadLetter,
    ];

    /// The stream-name suffix after `<P>_`.
    pub fn suffix(self) -> &'static str {
        match self {
            StreamKind::Generations => "GENERATIONS",
            StreamKind::Costs => "COSTS",
            StreamKind::Ledger => "LEDGER",
            StreamKind::Alerts => "ALERTS",
            StreamKind::DeadLetter => "DEADLETTER",
        }
    }

    /// The subject filter after `<p>.` that the stream captures.
    pub fn subject_pattern(self) -> &'static str {
        match self {
            StreamKind::Generations => "generation.>",
            StreamKind::Costs => "cost.>",
            StreamKind::Ledger => "ledger.>",
            StreamKind::Alerts => "budget.alert.>",
            StreamKind::DeadLetter => "deadletter.>",
        }
    }
}

/// The durable consumers of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsumerName {
    /// `projector-completed`: completed generations into the ledger.
    ProjectorCompleted,
    /// `projector-costs`: reconciled/unresolved costs into the ledger.
    ProjectorCosts,
    /// `reconciler`: completed generations whose cost may be missing.
    Reconciler,
    /// `worker`: generation requests to run against OpenRouter.
    Worker,
    /// `webhooks-alerts`: budget alerts to deliver to webhooks.
    WebhooksAlerts,
    /// `webhooks-ledger`: ledger postings to deliver to webhooks.
    WebhooksLedger,
}

impl ConsumerName {
    /// Every durable consumer.
    pub const ALL: [ConsumerName; 6] = [
        ConsumerName::ProjectorCompleted,
        ConsumerName::ProjectorCosts,
        ConsumerName::Reconciler,
        ConsumerName::Worker,
        ConsumerName::WebhooksAlerts,
        ConsumerName::WebhooksLedger,
    ];

    /// The durable name on the server.
    pub fn durable(self) -> &'static str {
        match self {
            ConsumerName::ProjectorCompleted => "projector-completed",
            ConsumerName::ProjectorCosts => "projector-costs",
            ConsumerName::Reconciler => "reconciler",
            ConsumerName::Worker => "worker",
            ConsumerName::WebhooksAlerts => "webhooks-alerts",
            ConsumerName::WebhooksLedger => "webhooks-ledger",
        }
    }

    /// The stream it reads.
    pub fn stream(self) -> StreamKind {
        match self {
            ConsumerName::ProjectorCompleted | ConsumerName::Reconciler | ConsumerName::Worker => {
                StreamKind::Generations
            }
            ConsumerName::ProjectorCosts => StreamKind::Costs,
            ConsumerName::WebhooksAlerts => StreamKind::Alerts,
            ConsumerName::WebhooksLedger => StreamKind::Ledger,
        }
    }

    /// Its subject filter after `<p>.`.
    pub fn filter_pattern(self) -> &'static str {
        match self {
            ConsumerName::ProjectorCompleted | ConsumerName::Reconciler => "generation.completed.>",
            ConsumerName::ProjectorCosts => "cost.>",
            ConsumerName::Worker => "generation.requested.>",
            ConsumerName::WebhooksAlerts => "budget.alert.>",
            ConsumerName::WebhooksLedger => "ledger.posted.>",
        }
    }
}

impl fmt::Display for ConsumerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.durable())
    }
}

/// Whether `s` is one valid subject token (`[A-Za-z0-9_-]+`).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Bus {
    pub(crate) fn stream_config(&self, kind: StreamKind) -> stream::Config {
        stream::Config {
            name: self.stream_name(kind),
            description: Some(format!("tally {} events", kind.suffix().to_lowercase())),
            subjects: vec![self.subject(kind.subject_pattern())],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            max_age: Duration::ZERO,
            max_bytes: -1,
            max_messages: -1,
            max_messages_per_subject: -1,
            max_consumers: -1,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    pub(crate) fn consumer_config(&self, name: ConsumerName) -> pull::Config {
        pull::Config {
            durable_name: Some(name.durable().to_string()),
            description: Some(format!("tally {}", name.durable())),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: -1,
            max_ack_pending: MAX_ACK_PENDING,
            filter_subject: self.subject(name.filter_pattern()),
            ..Default::default()
        }
    }

    /// Creates or updates every stream and durable consumer. Idempotent; safe
    /// to run from several instances at once.
    pub async fn ensure_topology(&self) -> Result<(), BusError> {
        for kind in StreamKind::ALL {
            let config = self.stream_config(kind);
            self.js
                .create_or_update_stream(config)
                .await
                .map_err(|e| BusError::Stream {
                    stream: self.stream_name(kind),
                    source: Box::new(e),
                })?;
        }
        for name in ConsumerName::ALL {
            self.js
                .create_consumer_on_stream(
                    self.consumer_config(name),
                    self.stream_name(name.stream()),
                )
                .await
                .map_err(|e| BusError::Consumer {
                    consumer: name.durable().to_string(),
                    source: Box::new(e),
                })?;
        }
        Ok(())
    }

    /// The sequence of the last message in `stream` (0 when empty).
    pub async fn stream_last_sequence(&self, stream: StreamKind) -> Result<u64, BusError> {
        let name = self.stream_name(stream);
        let s = self.stream_handle(stream).await?;
        let info = s.get_info().await.map_err(|e| BusError::Stream {
            stream: name.clone(),
            source: Box::new(e),
        })?;
        Ok(info.state.last_sequence)
    }

    /// Messages of a durable consumer not yet acknowledged: not yet delivered
    /// plus delivered and awaiting ack. For metrics and for tests that wait
    /// until a service caught up. The server updates it asynchronously: it
    /// may lag a just-acknowledged publish by a few milliseconds.
    pub async fn pending(&self, name: ConsumerName) -> Result<u64, BusError> {
        let info = self.consumer_info(name).await?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    /// Pull requests waiting on a durable consumer right now: above zero
    /// while some instance of its service is running and fetching.
    pub async fn waiting_fetches(&self, name: ConsumerName) -> Result<u64, BusError> {
        Ok(self.consumer_info(name).await?.num_waiting as u64)
    }

    /// A handle on one of the topology's streams (no info request).
    pub(crate) async fn stream_handle(
        &self,
        kind: StreamKind,
    ) -> Result<jetstream::stream::Stream<()>, BusError> {
        let stream_name = self.stream_name(kind);
        self.js
            .get_stream_no_info(&stream_name)
            .await
            .map_err(|e| BusError::Stream {
                stream: stream_name.clone(),
                source: Box::new(e),
            })
    }

    pub(crate) async fn consumer_info(
        &self,
        name: ConsumerName,
    ) -> Result<jetstream::consumer::Info, BusError> {
        let stream = self.stream_handle(name.stream()).await?;
        let info = stream
            .consumer_info(name.durable())
            .await
            .map_err(|e| BusError::Consumer {
                consumer: name.durable().to_string(),
                source: Box::new(e),
            })?;
        Ok(info)
    }
}
