//! tally-bus: a thin, typed adapter over NATS JetStream (async-nats).
//!
//! Every tally service talks to the bus through this crate only. It owns the
//! stream and consumer layout (the *topology*), publishes with deduplication
//! ids and confirmed acks, pulls batches from durable consumers, and sends
//! poison messages to the dead-letter subject with machine-readable reasons.
//!
//! ```no_run
//! # async fn example() -> Result<(), tally_bus::BusError> {
//! use std::time::Duration;
//! use tally_bus::{Bus, BusConfig, ConsumerName};
//!
//! let bus = Bus::connect(&BusConfig::new("nats://127.0.0.1:4222")).await?;
//! bus.ensure_topology().await?;
//! bus.publish(&bus.subject("generation.completed.acme"), "event-1", "{}".into()).await?;
//!
//! let consumer = bus.consumer(ConsumerName::ProjectorCompleted).await?;
//! for delivery in consumer.fetch(100, Duration::from_secs(1)).await? {
//!     // ... apply it durably, then:
//!     delivery.ack().await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Topology
//!
//! With prefix `p` (default `tally`) and `P` its stream-name form (upper case,
//! every character other than `A-Z`/`0-9` replaced by `_`):
//!
//! | stream | subjects |
//! |---|---|
//! | `P_GENERATIONS` | `p.generation.>` |
//! | `P_COSTS` | `p.cost.>` |
//! | `P_LEDGER` | `p.ledger.>` |
//! | `P_ALERTS` | `p.budget.alert.>` |
//! | `P_DEADLETTER` | `p.deadletter.>` |
//!
//! | durable consumer | stream | filter |
//! |---|---|---|
//! | `projector-completed` | `P_GENERATIONS` | `p.generation.completed.>` |
//! | `projector-costs` | `P_COSTS` | `p.cost.>` |
//! | `reconciler` | `P_GENERATIONS` | `p.generation.completed.>` |
//! | `worker` | `P_GENERATIONS` | `p.generation.requested.>` |
//! | `webhooks-alerts` | `P_ALERTS` | `p.budget.alert.>` |
//! | `webhooks-ledger` | `P_LEDGER` | `p.ledger.posted.>` |
//!
//! All streams: file storage, limits retention, no age/size/count limit,
//! discard old, a 2-minute duplicate window, replicas from [`BusConfig`].
//! All consumers: pull, explicit ack, deliver all, ack wait 60 s,
//! max ack pending 20 000, unlimited redeliveries.
//!
//! # Money rules
//!
//! This crate owns **money rule 6, nothing is lost**: every message ends
//! either applied or on the dead-letter subject `<prefix>.deadletter.<service>`
//! with its original payload and a machine-readable reason; bad input never
//! crashes a service and never blocks the messages behind it. The bus half
//! of money rule 2 (ack only after the effect is committed) is here too:
//! [`Delivery::ack`] is the consumer's last step, after its Postgres commit.
//!
//! # Decisions
//!
//! - **One stream per kind of fact.** Generations, costs, ledger postings,
//!   alerts and dead letters have different producers, consumers and volumes.
//!   Separate streams let each be inspected, replayed (`tally replay` reads
//!   `GENERATIONS` and `COSTS` from the start) and, if ever needed, limited or
//!   placed on its own. `generation.requested`, `.completed` and `.failed`
//!   share one stream because they are one generation's life cycle and the
//!   filters of the consumers separate them cheaply.
//! - **Limits retention, no limits set.** The streams are the event log the
//!   ledger is rebuilt from (money rule 7), so a message must outlive its
//!   consumption: work-queue or interest retention would delete it once acked.
//!   Several durable consumers (projector, reconciler) read the same subjects
//!   independently, which limits retention allows. Discard-old only matters
//!   if an operator adds limits later.
//! - **2-minute duplicate window.** Producers retry a publish with the same
//!   `Nats-Msg-Id` (the CloudEvent `id`) when an ack is lost; the window must
//!   cover those retries (publish timeout 10 s, a few backoff rounds, a
//!   reconnect) and the re-publish of a batch after a crash between publish
//!   and commit. Two minutes (the server default) covers that with room,
//!   while keeping the id index small at high rates. Correctness does not
//!   rest on it: consumers are idempotent on business ids (money rule 2), so
//!   a duplicate outside the window costs work, never money.
//! - **Explicit ack, deliver all, unlimited redelivery.** A message is acked
//!   only after its effect is committed in Postgres (money rule 2); anything
//!   unacked comes back. Messages are never silently dropped after N tries
//!   (money rule 6): a service that cannot apply a message dead-letters it
//!   explicitly with a reason and then acks it.
//! - **max_ack_pending 20 000.** The projector commits many messages per
//!   transaction and several instances pull in parallel; a high ceiling keeps
//!   batches full while still bounding what one stuck instance can hold.
//! - **ack_wait 60 s.** Longer than one projector batch plus its Postgres
//!   commit under load, and than one reconciler attempt, so healthy work is
//!   not redelivered while in flight; short enough that work held by a
//!   crashed instance moves to another within a minute. Long-running work
//!   extends it with [`Delivery::in_progress`].
//! - **Credentials and TLS come from [`BusConfig`], NATS enforces them.**
//!   tally authenticates with one of [`NatsAuth`] (a `.creds` or nkey seed
//!   file, user + password, a token); `tls://` URLs or a CA file require
//!   TLS. Which subjects a connection may use is the server's
//!   authorization (`deploy/nats-authorization.conf`), not tally's: a
//!   producer of one organisation is refused by NATS when it publishes into
//!   another's subjects. Errors name a credentials file, never its content;
//!   passwords and tokens are [`SecretString`](secrecy::SecretString)s.
//! - **Confirmed acks.** [`Delivery::ack`] waits for the server to confirm
//!   the ack (double ack), so a service knows the message will not come back
//!   before it moves on; publish awaits the stream's ack, so a published
//!   event is stored (with `sync_interval: always`, on disk) before a
//!   producer reports success.

mod client;
mod config;
mod consume;
mod dead_letter;
mod error;
mod publish;
mod topology;

pub use client::Bus;
pub(crate) use config::credentials_file;
pub use config::{
    BusConfig, NatsAuth, ACK_WAIT, API_TIMEOUT, DUPLICATE_WINDOW, MAX_ACK_PENDING, PUBLISH_TIMEOUT,
    REPLAY_INACTIVE_THRESHOLD,
};
pub use consume::{Consumer, Delivery};
pub use dead_letter::{
    DeadLetterReason, DeadLetterService, DEAD_LETTER_DETAIL_MAX, HEADER_DEAD_LETTER_DETAIL,
    HEADER_DEAD_LETTER_REASON, HEADER_DEAD_LETTER_SERVICE, HEADER_ORIGINAL_MSG_ID,
    HEADER_ORIGINAL_STREAM, HEADER_ORIGINAL_STREAM_SEQ, HEADER_ORIGINAL_SUBJECT,
};
pub use error::BusError;
pub(crate) use error::Source;
pub use publish::HEADER_NATS_MSG_ID;
pub(crate) use topology::is_token;
pub use topology::{ConsumerName, StreamKind};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dead_letter::one_line;

    #[test]
    fn one_line_strips_newlines_and_truncates_on_char_boundary() {
        assert_eq!(one_line("a\nb\r\nc", 100), "a b  c");
        let long = "é".repeat(1000);
        let cut = one_line(&long, DEAD_LETTER_DETAIL_MAX);
        assert!(cut.len() <= DEAD_LETTER_DETAIL_MAX);
        assert_eq!(cut.len(), DEAD_LETTER_DETAIL_MAX);
    }

    #[test]
    fn every_dead_letter_service_is_one_subject_token() {
        for s in DeadLetterService::ALL {
            assert!(is_token(s.as_str()), "{s}");
        }
    }

    #[test]
    fn codes_are_stable_snake_case() {
        let e = BusError::PublishTimeout {
            subject: "x".into(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(e.code(), "bus_publish_timeout");
        assert_eq!(BusError::Config("x".into()).code(), "bus_config");
    }

    #[test]
    fn consumers_map_to_streams_and_filters() {
        assert_eq!(ConsumerName::Worker.durable(), "worker");
        assert_eq!(ConsumerName::ProjectorCosts.stream(), StreamKind::Costs);
        assert_eq!(
            ConsumerName::Reconciler.filter_pattern(),
            "generation.completed.>"
        );
    }
}
