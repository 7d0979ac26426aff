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
//!   passwords and tokens are [`SecretString`]s.
//! - **Confirmed acks.** [`Delivery::ack`] waits for the server to confirm
//!   the ack (double ack), so a service knows the message will not come back
//!   before it moves on; publish awaits the stream's ack, so a published
//!   event is stored (with `sync_interval: always`, on disk) before a
//!   producer reports success.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use async_nats::{HeaderMap, ServerAddr};
use bytes::Bytes;
use futures::StreamExt as _;
use secrecy::{ExposeSecret, SecretString};

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
/// The JetStream deduplication header.
pub const HEADER_NATS_MSG_ID: &str = "Nats-Msg-Id";

/// Maximum length of the dead-letter detail header, in bytes.
pub const DEAD_LETTER_DETAIL_MAX: usize = 1024;

/// How long a publish waits for the stream's ack.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of JetStream API requests and confirmed acks.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Ack wait of every durable consumer.
pub const ACK_WAIT: Duration = Duration::from_secs(60);
/// Max ack pending of every durable consumer.
pub const MAX_ACK_PENDING: i64 = 20_000;
/// Duplicate window of every stream.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Inactivity after which a replay consumer is removed by the server.
pub const REPLAY_INACTIVE_THRESHOLD: Duration = Duration::from_secs(60);

/// Boxed error from async-nats.
type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

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

/// How tally proves who it is to the NATS server.
///
/// `Debug` never shows a password or token (they are [`SecretString`]s).
#[derive(Debug, Clone, Default)]
pub enum NatsAuth {
    /// No credentials (a server without authorization).
    #[default]
    None,
    /// A `.creds` file (user JWT and nkey seed) or a file holding only a
    /// user nkey seed (`SU…`).
    CredsFile(PathBuf),
    /// User and password.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: SecretString,
    },
    /// A token.
    Token(SecretString),
}

impl NatsAuth {
    /// `none`, `creds`, `user_password` or `token` (for logs: never the secret).
    pub fn kind(&self) -> &'static str {
        match self {
            NatsAuth::None => "none",
            NatsAuth::CredsFile(_) => "creds",
            NatsAuth::UserPassword { .. } => "user_password",
            NatsAuth::Token(_) => "token",
        }
    }
}

/// How to reach the bus.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// NATS server URL; several may be given separated by commas.
    pub url: String,
    /// Subject prefix (default `tally`); stream names derive from it.
    pub prefix: String,
    /// Replicas of every stream (1 on a single server, 3 in a cluster).
    pub replicas: usize,
    /// How long the server waits for an ack before redelivering a message
    /// to another fetch (default [`ACK_WAIT`]): how soon the in-flight
    /// messages of a crashed instance are picked up by the others.
    pub ack_wait: Duration,
    /// Credentials (default none).
    pub auth: NatsAuth,
    /// A PEM file of CA certificates to trust for the servers' TLS
    /// certificates; when set, TLS is required. `tls://` URLs require TLS
    /// anyway (with the system roots when this is `None`).
    pub tls_ca: Option<PathBuf>,
}

impl BusConfig {
    /// A config for `url` with the default prefix and one replica.
    pub fn new(url: impl Into<String>) -> BusConfig {
        BusConfig {
            url: url.into(),
            ..BusConfig::default()
        }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            url: "nats://127.0.0.1:4222".to_string(),
            prefix: "tally".to_string(),
            replicas: 1,
            ack_wait: ACK_WAIT,
            auth: NatsAuth::None,
            tls_ca: None,
        }
    }
}

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

/// A connection to the bus with the topology names of one prefix.
#[derive(Debug, Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
    stream_prefix: String,
    replicas: usize,
    ack_wait: Duration,
}

/// Whether `s` is one valid subject token (`[A-Za-z0-9_-]+`).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Connect options from a `.creds` file or a bare user nkey seed file;
/// errors name the file, never its contents.
async fn credentials_file(path: &Path) -> Result<async_nats::ConnectOptions, BusError> {
    let text = tokio::fs::read_to_string(path).await.map_err(|e| {
        BusError::Config(format!(
            "cannot read NATS credentials {}: {e}",
            path.display()
        ))
    })?;
    if text.contains("-----BEGIN NATS USER JWT-----") {
        return async_nats::ConnectOptions::new()
            .credentials(&text)
            .map_err(|_| {
                BusError::Config(format!(
                    "NATS credentials {} are not a valid .creds file",
                    path.display()
                ))
            });
    }
    let seed = text.trim();
    if seed.starts_with("SU") && seed.len() == 58 && !seed.contains(char::is_whitespace) {
        return Ok(async_nats::ConnectOptions::with_nkey(seed.to_owned()));
    }
    Err(BusError::Config(format!(
        "NATS credentials {} hold neither a .creds file nor a user nkey seed (SU…)",
        path.display()
    )))
}

impl Bus {
    /// Connects to NATS (bounded by a 5 s connection timeout; reconnects
    /// forever afterwards).
    pub async fn connect(cfg: &BusConfig) -> Result<Bus, BusError> {
        let prefix = cfg.prefix.trim();
        if prefix.is_empty()
            || !prefix
                .split('.')
                .all(|t| is_token(t) && !t.contains(['*', '>']))
        {
            return Err(BusError::Config(format!(
                "subject prefix {:?} must be dot-separated tokens of [A-Za-z0-9_-]",
                cfg.prefix
            )));
        }
        if cfg.replicas == 0 || cfg.replicas > 5 {
            return Err(BusError::Config(format!(
                "replicas must be between 1 and 5, got {}",
                cfg.replicas
            )));
        }
        let addrs = cfg
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ServerAddr>()
                    .map_err(|e| BusError::Config(format!("NATS URL {s:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err(BusError::Config("NATS URL is empty".to_string()));
        }
        let tls = cfg.tls_ca.is_some() || addrs.iter().any(|a| a.tls_required());
        let mut opts = match &cfg.auth {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::CredsFile(path) => credentials_file(path).await?,
            NatsAuth::UserPassword { user, password } => async_nats::ConnectOptions::new()
                .user_and_password(user.clone(), password.expose_secret().to_owned()),
            NatsAuth::Token(token) => {
                async_nats::ConnectOptions::new().token(token.expose_secret().to_owned())
            }
        };
        if let Some(ca) = &cfg.tls_ca {
            if !ca.is_file() {
                return Err(BusError::Config(format!(
                    "TLS CA file {} does not exist",
                    ca.display()
                )));
            }
            opts = opts.add_root_certificates(ca.clone());
        }
        if tls {
            opts = opts.require_tls(true);
        }
        let client = opts
            .name("tally")
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .connect(addrs)
            .await
            .map_err(|e| BusError::Connect {
                url: cfg.url.clone(),
                source: Box::new(e),
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(API_TIMEOUT)
            .build(client.clone());
        let stream_prefix = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        Ok(Bus {
            client,
            js,
            prefix: prefix.to_string(),
            stream_prefix,
            replicas: cfg.replicas,
            ack_wait: cfg.ack_wait,
        })
    }

    /// The subject prefix, e.g. `tally`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.<rest>`.
    pub fn subject(&self, rest: &str) -> String {
        format!("{}.{}", self.prefix, rest)
    }

    /// The server-side name of a stream, e.g. `TALLY_GENERATIONS`.
    pub fn stream_name(&self, kind: StreamKind) -> String {
        format!("{}_{}", self.stream_prefix, kind.suffix())
    }

    /// The underlying NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The underlying JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    fn stream_config(&self, kind: StreamKind) -> stream::Config {
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

    fn consumer_config(&self, name: ConsumerName) -> pull::Config {
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
    async fn stream_handle(
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

    async fn consumer_info(
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

    /// Sends a message the `service` cannot apply to
    /// `<prefix>.deadletter.<service>`: the original payload and headers
    /// plus [`HEADER_DEAD_LETTER_REASON`] (`reason`, a stable snake_case
    /// code), [`HEADER_DEAD_LETTER_DETAIL`] (`detail` on one line, at most
    /// 1 KiB), the original subject, stream, stream sequence and message id.
    ///
    /// Its message id is `dl-<service>-<stream>-<stream_seq>`, so a poison
    /// message that is redelivered before its ack is dead-lettered once. The
    /// caller acks `msg` afterwards.
    pub async fn dead_letter(
        &self,
        service: &str,
        msg: &Delivery,
        reason: &str,
        detail: &str,
    ) -> Result<(), BusError> {
        if !is_token(service) {
            return Err(BusError::Config(format!(
                "dead-letter service {service:?} must match [A-Za-z0-9_-]+"
            )));
        }
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
        headers.insert(HEADER_DEAD_LETTER_REASON, one_line(reason, 128).as_str());
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
            reason,
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
fn one_line(s: &str, max: usize) -> String {
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

/// A pull consumer (durable or replay).
#[derive(Debug)]
pub struct Consumer {
    inner: jetstream::consumer::PullConsumer,
    name: String,
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
    message: jetstream::Message,
    stream: String,
    stream_sequence: u64,
    delivered: i64,
}

impl Delivery {
    fn new(message: jetstream::Message) -> Result<Delivery, String> {
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

    fn ack_error(&self, e: Source) -> BusError {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_strips_newlines_and_truncates_on_char_boundary() {
        assert_eq!(one_line("a\nb\r\nc", 100), "a b  c");
        let long = "é".repeat(1000);
        let cut = one_line(&long, DEAD_LETTER_DETAIL_MAX);
        assert!(cut.len() <= DEAD_LETTER_DETAIL_MAX);
        assert_eq!(cut.len(), DEAD_LETTER_DETAIL_MAX);
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
