//! Alert delivery (`tally alerts`, and part of `tally run`): budget alerts
//! and ledger postings from the bus to the HTTP receivers organisations
//! register as webhooks.
//!
//! ```text
//!  <p>.budget.alert.<org>.<budget> ──▶ webhooks-alerts ─┐   one Postgres transaction per batch:
//!  <p>.ledger.posted.<org>        ──▶ webhooks-ledger ─┴─▶ one delivery row per (event, webhook), then ack
//!                                                             │
//!                  delivery loop: claim due rows FOR UPDATE SKIP LOCKED ─▶ POST, signed ─▶ record outcome
//! ```
//!
//! * [`intake`]: the durable JetStream consumers `webhooks-alerts` and
//!   `webhooks-ledger`; each batch becomes delivery rows of every matching
//!   webhook of the event's organisation in one transaction, acked only
//!   after it committed; an unreadable message is dead-lettered
//!   (`<prefix>.deadletter.alerts`) with its reason.
//! * [`delivery`]: the loop that claims due deliveries and POSTs them with
//!   the Standard Webhooks headers ([`signature`]), retrying with backoff.
//! * [`target`]: the URL rules and the SSRF guard (registration and
//!   delivery).
//! * [`metrics`]: every metric of the service.
//!
//! Plain NATS subscribers are untouched: alerts stay on
//! `<prefix>.budget.alert.<org>.<budget>`.
//!
//! # Invariants
//!
//! * **Never lost.** A bus message is acked only after its deliveries are
//!   committed; a delivery stays `pending` until the receiver answers 2xx
//!   or the retry horizon has passed (then `failed`, counted in
//!   `tally_alerts_deliveries_total{outcome="failed"}`).
//! * **Once per acknowledgement.** A delivery that got a 2xx is never sent
//!   again; every attempt of one delivery carries the same `webhook-id`,
//!   so a receiver that acknowledged but whose answer was lost can drop the
//!   repeat. One event is one delivery per webhook however often the bus
//!   redelivers it (`UNIQUE (event_id, webhook_id)`).
//! * **The horizon starts at acceptance.** A delivery is retried until
//!   [`AlertsConfig::retry_horizon`] (24 h) after the event was taken from
//!   the bus (`accepted_at`), then given up; the last attempt happens at
//!   the horizon.
//! * **Private targets are refused at delivery too** (unless allowed):
//!   the addresses a connection uses are checked as they are resolved
//!   ([`target::GuardedResolver`]), and a refusal is recorded in the
//!   delivery log as `webhook_target_forbidden`.
//! * **Bounded attempts.** Every HTTP call has a timeout, follows no
//!   redirect, uses no proxy, and keeps at most a short excerpt of the
//!   response body.
//!
//! # Decisions
//!
//! * **A Postgres delivery queue, claimed with `FOR UPDATE SKIP LOCKED`.**
//!   Retrying a receiver for 24 h cannot live in the JetStream consumer:
//!   holding a message unacked that long (or redelivering it with growing
//!   delays) ties the retry schedule of every webhook to one consumer's ack
//!   window and `max_ack_pending`, and one dead receiver would hold back
//!   the alerts of every other organisation. Instead the consumer only
//!   turns each event into one row per webhook and acks; the rows are the
//!   durable queue and, at the same time, the delivery log `GET
//!   /v1/webhooks/{id}/deliveries` shows. `SKIP LOCKED` lets any number of
//!   instances claim disjoint rows without coordination, and the claim's
//!   lease (moving `next_attempt_at` forward in the claiming statement)
//!   hands a crashed instance's rows to another one.
//! * **Exponential backoff with equal jitter, capped.** After the n-th
//!   failed attempt the next one waits `d/2 + random(0, d/2)` with `d =
//!   min(cap, base · 2ⁿ⁻¹)` (defaults: base 5 s, cap 1 h). Doubling reaches
//!   a receiver that is back within a few seconds quickly and backs off
//!   from one that is down for hours to about one attempt per hour (~30
//!   attempts in 24 h); the jitter spreads the retries of many deliveries
//!   that failed together (a receiver outage), and keeping half of `d`
//!   fixed keeps the schedule predictable. Base, cap and horizon are
//!   settings (`TALLY_WEBHOOK_RETRY_INTERVAL`,
//!   `TALLY_WEBHOOK_RETRY_MAX_INTERVAL`, `TALLY_WEBHOOK_RETRY_HORIZON`).
//! * **Deliveries of one webhook are not ordered.** Each is retried on its
//!   own schedule; receivers order by the event's `time` and deduplicate by
//!   `webhook-id`. Head-of-line blocking a receiver's later alerts behind
//!   one that it refuses would be worse.
//! * **The body is the CloudEvent exactly as on the bus**, so what a
//!   webhook receiver gets is byte for byte what a NATS subscriber gets.
//! * **A webhook gets the events taken from the bus after it was
//!   registered**, not the stream's history.

pub mod delivery;
pub mod intake;
pub mod metrics;
pub mod signature;
pub mod target;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tally_bus::Bus;
use tally_secrets::Keyring;
use tally_store::Store;
use tokio::sync::watch;

pub use metrics::Metrics;

/// Errors of the alert delivery, each with a stable [`code`](AlertsError::code).
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    /// The URL does not parse, has no host, or has a fragment.
    #[error("invalid webhook URL: {0}")]
    UrlInvalid(String),
    /// The URL's scheme is neither http nor https.
    #[error("webhook URL scheme {0:?} is not http or https")]
    UrlScheme(String),
    /// The URL carries a user name or password.
    #[error("a webhook URL must not carry credentials (user:password@)")]
    UrlCredentials,
    /// The URL is too long.
    #[error("a webhook URL has at most {max} bytes")]
    UrlTooLong {
        /// The limit.
        max: usize,
    },
    /// The host does not resolve.
    #[error("webhook host {host:?} does not resolve: {reason}")]
    Unresolvable {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The host resolves to an address webhooks may not reach.
    #[error("webhook host {host:?} resolves to {ip}, a {reason} address (set TALLY_WEBHOOK_ALLOW_PRIVATE to allow)")]
    TargetForbidden {
        /// The host.
        host: String,
        /// The forbidden address.
        ip: IpAddr,
        /// What kind of address it is (`loopback`, `private`, …).
        reason: &'static str,
    },
    /// A stored signing secret is not `whsec_<base64>`.
    #[error("webhook signing secret is malformed")]
    SecretMalformed,
    /// The signing secret cannot be opened (no or wrong key-encryption key).
    #[error("webhook signing secret cannot be opened: {0}")]
    Secret(#[from] tally_secrets::SecretsError),
    /// Postgres failed.
    #[error(transparent)]
    Store(#[from] tally_store::StoreError),
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] tally_bus::BusError),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(String),
}

impl AlertsError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AlertsError::UrlInvalid(_) => "webhook_url_invalid",
            AlertsError::UrlScheme(_) => "webhook_url_scheme",
            AlertsError::UrlCredentials => "webhook_url_credentials",
            AlertsError::UrlTooLong { .. } => "webhook_url_too_long",
            AlertsError::Unresolvable { .. } => "webhook_host_unresolvable",
            AlertsError::TargetForbidden { .. } => "webhook_target_forbidden",
            AlertsError::SecretMalformed => "webhook_secret_malformed",
            AlertsError::Secret(e) => e.code(),
            AlertsError::Store(e) => e.code(),
            AlertsError::Bus(e) => e.code(),
            AlertsError::Http(_) => "http_client",
        }
    }
}

/// How alerts are delivered.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// Subject prefix (`TALLY_SUBJECT_PREFIX`).
    pub prefix: String,
    /// Allow receivers on private, loopback and other non-public addresses
    /// (`TALLY_WEBHOOK_ALLOW_PRIVATE`).
    pub allow_private: bool,
    /// Time one HTTP attempt may take, connection included
    /// (`TALLY_WEBHOOK_TIMEOUT`, default 10 s).
    pub timeout: Duration,
    /// Wait before the first retry; doubles per attempt
    /// (`TALLY_WEBHOOK_RETRY_INTERVAL`, default 5 s).
    pub retry_base: Duration,
    /// Longest wait between two attempts (`TALLY_WEBHOOK_RETRY_MAX_INTERVAL`,
    /// default 1 h).
    pub retry_cap: Duration,
    /// How long after its acceptance a delivery is retried
    /// (`TALLY_WEBHOOK_RETRY_HORIZON`, default 24 h).
    pub retry_horizon: Duration,
    /// Deliveries attempted at once per instance.
    pub concurrency: usize,
    /// How often the loop looks for due deliveries when there were none.
    pub poll_interval: Duration,
    /// Messages per bus fetch.
    pub batch: usize,
}

impl Default for AlertsConfig {
    fn default() -> AlertsConfig {
        AlertsConfig {
            prefix: "tally".to_owned(),
            allow_private: false,
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(3600),
            retry_horizon: Duration::from_secs(24 * 3600),
            concurrency: 16,
            poll_interval: Duration::from_millis(500),
            batch: 200,
        }
    }
}

/// The alert delivery service: the intake consumers and the delivery loop.
#[derive(Debug, Clone)]
pub struct Alerts {
    bus: Bus,
    store: Store,
    keyring: Option<Arc<Keyring>>,
    config: AlertsConfig,
    metrics: Arc<Metrics>,
}

impl Alerts {
    /// A service over `bus` and `store`, opening signing secrets with
    /// `keyring` (without one, every delivery waits and is retried: the
    /// secrets cannot be read).
    pub fn new(
        bus: Bus,
        store: Store,
        keyring: Option<Arc<Keyring>>,
        config: AlertsConfig,
        metrics: Arc<Metrics>,
    ) -> Alerts {
        Alerts {
            bus,
            store,
            keyring,
            config,
            metrics,
        }
    }

    /// Runs the intake consumers and the delivery loop until `shutdown`
    /// becomes true; then finishes the attempts in flight.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), AlertsError> {
        if self.keyring.is_none() {
            tracing::warn!(
                "TALLY_SECRETS_KEY is not set: webhook signing secrets cannot be read, \
                 so no webhook is delivered"
            );
        }
        let deliverer = delivery::Deliverer::new(
            self.store.clone(),
            self.keyring.clone(),
            self.config.clone(),
            self.metrics.clone(),
        )?;
        let intake = |consumer| {
            intake::run(
                self.bus.clone(),
                self.store.clone(),
                consumer,
                self.config.clone(),
                self.metrics.clone(),
                shutdown.clone(),
            )
        };
        let alerts = intake(tally_bus::ConsumerName::WebhooksAlerts);
        let ledger = intake(tally_bus::ConsumerName::WebhooksLedger);
        let deliver = deliverer.run(shutdown);
        let (a, l, d) = tokio::join!(alerts, ledger, deliver);
        a?;
        l?;
        d
    }
}
