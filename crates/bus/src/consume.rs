//! Consuming: pull consumers (durable or replay), and [`Delivery`], one
//! message to ack, nak or dead-letter.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use async_nats::HeaderMap;
use futures::StreamExt as _;

use crate::*;

impl Bus {
    /// A handle on a durable consumer; creates it (with the topology's
    /// config) when missing, so its stream must exist (`tally migrate`).
    pub async fn consumer(&self, name: ConsumerName) -> Result<Consumer, BusError> {
        let stream_name = self.stream_name(name.stream());
        let stream = self.stream_handle(name.stream()).await?;
        let inner = stream
            .get_or_create_consumer(name.durable(), self.consumer_config(name))
            .await
            .map_err(|e| BusError::Consumer {
                consumer: name.durable().to_string(),
                source: format!("{e} (does stream {stream_name} exist? run `tally migrate`)")
                    .into(),
            })?;
        Ok(Consumer {
            inner,
            name: name.durable().to_string(),
        })
    }

    /// An ephemeral consumer reading `stream` from its first message, for
    /// rebuilding projections (`tally replay`). `filter` is a full subject
    /// filter (e.g. `tally.generation.completed.>`); empty means the whole
    /// stream. Explicit ack; the server removes it after one minute without
    /// a fetch.
    pub async fn replay_consumer(
        &self,
        stream: StreamKind,
        filter: &str,
    ) -> Result<Consumer, BusError> {
        let stream_name = self.stream_name(stream);
        let config = pull::Config {
            durable_name: None,
            name: None,
            description: Some("tally replay".to_string()),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_deliver: -1,
            max_ack_pending: MAX_ACK_PENDING,
            filter_subject: filter.to_string(),
            inactive_threshold: REPLAY_INACTIVE_THRESHOLD,
            ..Default::default()
        };
        let inner = self
            .js
            .create_consumer_on_stream(config, &stream_name)
            .await
            .map_err(|e| BusError::Consumer {
                consumer: format!("replay of {stream_name}"),
                source: Box::new(e),
            })?;
        let name = inner.cached_info().name.clone();
        Ok(Consumer { inner, name })
    }
}

/// A pull consumer (durable or replay).
#[derive(Debug)]
pub struct Consumer {
    pub(crate) inner: jetstream::consumer::PullConsumer,
    pub(crate) name: String,
}

impl Consumer {
    /// The consumer's name on the server.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One pull request: up to `max` messages. Returns as soon as messages
    /// are there (possibly fewer than `max`), or an empty batch when none
    /// arrived within `wait`. Never blocks much longer than `wait`.
    pub async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let fetch_error = |e: Source| BusError::Fetch {
            consumer: self.name.clone(),
            source: e,
        };
        // The server needs some expiry; very short ones are rejected.
        let wait = wait.max(Duration::from_millis(10));
        let max = max.max(1);
        let run = async {
            let mut batch = self
                .inner
                .fetch()
                .max_messages(max)
                .expires(wait)
                .messages()
                .await
                .map_err(|e| fetch_error(Box::new(e)))?;
            let mut out = Vec::with_capacity(max.min(1024));
            while let Some(next) = batch.next().await {
                let message = next.map_err(fetch_error)?;
                out.push(Delivery::new(message).map_err(|e| fetch_error(e.into()))?);
            }
            Ok(out)
        };
        match tokio::time::timeout(wait + Duration::from_secs(10), run).await {
            Ok(result) => result,
            Err(_) => Err(BusError::Fetch {
                consumer: self.name.clone(),
                source: format!(
                    "no answer to a pull request within {:?}",
                    wait + Duration::from_secs(10)
                )
                .into(),
            }),
        }
    }

    /// The underlying async-nats consumer.
    pub fn inner(&self) -> &jetstream::consumer::PullConsumer {
        &self.inner
    }
}

/// One delivered message, to be acked, naked or dead-lettered.
#[derive(Debug)]
pub struct Delivery {
    pub(crate) message: jetstream::Message,
    pub(crate) stream: String,
    pub(crate) stream_sequence: u64,
    pub(crate) delivered: i64,
}

impl Delivery {
    pub(crate) fn new(message: jetstream::Message) -> Result<Delivery, String> {
        let (stream, stream_sequence, delivered) = {
            let info = message
                .info()
                .map_err(|e| format!("not a JetStream message: {e}"))?;
            (
                info.stream.to_string(),
                info.stream_sequence,
                info.delivered,
            )
        };
        Ok(Delivery {
            message,
            stream,
            stream_sequence,
            delivered,
        })
    }

    /// The subject it was published on.
    pub fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    /// The body.
    pub fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    /// The headers, if any.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.message.headers.as_ref()
    }

    /// The `Nats-Msg-Id` it was published with (the CloudEvent id).
    pub fn msg_id(&self) -> Option<&str> {
        self.headers()
            .and_then(|h| h.get(HEADER_NATS_MSG_ID))
            .map(|v| v.as_str())
    }

    /// The stream it came from.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Its sequence in the stream.
    pub fn stream_sequence(&self) -> u64 {
        self.stream_sequence
    }

    /// How many times it has been delivered (1 on the first delivery).
    pub fn delivered(&self) -> i64 {
        self.delivered
    }

    pub(crate) fn ack_error(&self, e: Source) -> BusError {
        BusError::Ack {
            stream_sequence: self.stream_sequence,
            source: e,
        }
    }

    /// Acknowledges it and waits for the server to confirm, so it will not
    /// be redelivered. Call only after its effect is durable.
    pub async fn ack(&self) -> Result<(), BusError> {
        self.message
            .double_ack()
            .await
            .map_err(|e| self.ack_error(e))
    }

    /// Asks for redelivery, after `delay` when given (else at once).
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.message
            .ack_with(jetstream::AckKind::Nak(delay))
            .await
            .map_err(|e| self.ack_error(e))
    }

    /// Tells the server work is still going on: resets the ack wait.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.message
            .ack_with(jetstream::AckKind::Progress)
            .await
            .map_err(|e| self.ack_error(e))
    }

    /// The underlying async-nats message.
    pub fn message(&self) -> &jetstream::Message {
        &self.message
    }
}
