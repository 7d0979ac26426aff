//! Publishing with a message id: JetStream drops a repeat of the same
//! `Nats-Msg-Id` within the duplicate window, so a producer that retries
//! publishes once.

use std::time::Duration;

use async_nats::jetstream::{self};
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::*;

/// The JetStream deduplication header.
pub const HEADER_NATS_MSG_ID: &str = "Nats-Msg-Id";

impl Bus {
    /// Publishes `payload` on `subject` with `Nats-Msg-Id: msg_id` and waits
    /// for the stream's ack. A duplicate (same id within the window) is
    /// acknowledged without being stored again and counts as success.
    pub async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.publish_with_headers(subject, msg_id, HeaderMap::new(), payload)
            .await
    }

    /// Like [`Bus::publish`], with extra headers.
    pub async fn publish_with_headers(
        &self,
        subject: &str,
        msg_id: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), BusError> {
        if msg_id.is_empty() {
            return Err(BusError::Config(format!(
                "publish to {subject}: empty message id"
            )));
        }
        let message = jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(headers)
            .message_id(msg_id);
        let publish_error = |e: jetstream::context::PublishError| {
            if matches!(e.kind(), jetstream::context::PublishErrorKind::TimedOut) {
                BusError::PublishTimeout {
                    subject: subject.to_string(),
                    timeout: PUBLISH_TIMEOUT,
                }
            } else {
                BusError::Publish {
                    subject: subject.to_string(),
                    source: Box::new(e),
                }
            }
        };
        let attempt = async {
            let ack = self
                .js
                .send_publish(subject.to_string(), message)
                .await
                .map_err(publish_error)?;
            ack.await.map_err(publish_error)
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT + Duration::from_secs(1), attempt).await {
            Ok(Ok(_ack)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BusError::PublishTimeout {
                subject: subject.to_string(),
                timeout: PUBLISH_TIMEOUT,
            }),
        }
    }
}
