//! The delivery loop: claims due deliveries, POSTs each once, records the
//! outcome and schedules the retry.
//!
//! One attempt: open the webhook's sealed secret, check an IP-literal
//! target against the SSRF rules (a host name is checked by the client's
//! [`GuardedResolver`](crate::target::GuardedResolver) as it resolves), and
//! POST the CloudEvent body with `content-type: application/json` and the
//! Standard Webhooks headers ([`crate::signature`]). A 2xx answer is
//! `delivered`; anything else (another status, a timeout, a refused
//! connection, a forbidden address) is retried after [`retry_delay`], until
//! the retry horizon after the event's acceptance has passed, then `failed`.
//! A target that can never become valid (an IP literal that is forbidden, a
//! deleted webhook) fails at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use rand::Rng as _;
use tally_secrets::Keyring;
use tally_store::webhooks::{secret_context, AttemptOutcome, ClaimedDelivery, MAX_EXCERPT_CHARS};
use tally_store::Store;
use tokio::sync::watch;

use crate::signature::{sign, signing_key, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use crate::target::{check_addresses, guarded_resolver, literal_ip};
use crate::{AlertsConfig, AlertsError, Metrics};

/// How often the pending gauge is refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// Extra lease beyond the attempt's timeout before a claimed delivery is
/// due again (an instance that died mid-attempt).
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// The wait after the `attempt`-th failed attempt (1 for the first):
/// `d/2 + jitter` with `d = min(cap, base · 2^(attempt-1))` and `jitter`
/// drawn uniformly from `[0, d/2]` (`unit` in `[0, 1]` picks it).
pub fn retry_delay(attempt: i32, base: Duration, cap: Duration, unit: u32) -> Duration {
    let shift = u32::try_from(attempt.saturating_sub(1).clamp(0, 40)).unwrap_or(40);
    let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
    let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    let d = base_ms.saturating_mul(1u64 << shift).min(cap_ms);
    let half = d / 2;
    // unit / u32::MAX of the other half, in integers.
    let jitter = (u128::from(d - half) * u128::from(unit) / u128::from(u32::MAX)) as u64;
    Duration::from_millis(half + jitter)
}

/// The outcome after a failed attempt: a retry at `now + delay`, capped at
/// the horizon; or failed when the horizon has passed.
pub fn after_failure(
    now: DateTime<Utc>,
    accepted_at: DateTime<Utc>,
    horizon: Duration,
    delay: Duration,
    status: Option<i32>,
    error: String,
    response: Option<String>,
) -> AttemptOutcome {
    let horizon = chrono::Duration::from_std(horizon).unwrap_or(chrono::Duration::MAX);
    let end = accepted_at
        .checked_add_signed(horizon)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if now >= end {
        return AttemptOutcome::Failed {
            status,
            error: format!("retry_horizon_passed: {error}"),
            response,
        };
    }
    let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    let next = now.checked_add_signed(delay).unwrap_or(end).min(end);
    AttemptOutcome::Retry {
        status,
        error,
        response,
        next_attempt_at: next,
    }
}

/// The delivery loop of one instance.
#[derive(Debug, Clone)]
pub struct Deliverer {
    store: Store,
    keyring: Option<Arc<Keyring>>,
    config: AlertsConfig,
    metrics: Arc<Metrics>,
    http: reqwest::Client,
}

/// One attempt's result before the retry decision.
enum Attempt {
    Delivered {
        status: i32,
        response: Option<String>,
    },
    NotDelivered {
        status: Option<i32>,
        error: String,
        response: Option<String>,
    },
    Never {
        error: String,
    },
}

impl Deliverer {
    /// A loop over `store` with its own HTTP client: the configured timeout,
    /// no redirects, no proxy, the guarded resolver unless private targets
    /// are allowed.
    pub fn new(
        store: Store,
        keyring: Option<Arc<Keyring>>,
        config: AlertsConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Deliverer, AlertsError> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("tally-webhooks/", env!("CARGO_PKG_VERSION")));
        if !config.allow_private {
            builder = builder.dns_resolver(guarded_resolver());
        }
        let http = builder
            .build()
            .map_err(|e| AlertsError::Http(e.to_string()))?;
        Ok(Deliverer {
            store,
            keyring,
            config,
            metrics,
            http,
        })
    }

    /// Claims and attempts due deliveries until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), AlertsError> {
        let lease = self.config.timeout + LEASE_MARGIN;
        let mut gauge_at = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= gauge_at {
                match self.store.pending_webhook_deliveries().await {
                    Ok(n) => self.metrics.pending.set(n),
                    Err(e) => self.metrics.errors.with_label_values(&[e.code()]).inc(),
                }
                gauge_at = tokio::time::Instant::now() + GAUGE_INTERVAL;
            }
            let claimed = match self
                .store
                .claim_webhook_deliveries(self.config.concurrency as i64, lease)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    self.metrics.errors.with_label_values(&[e.code()]).inc();
                    tracing::warn!(error = %e, "cannot claim webhook deliveries; retrying");
                    Vec::new()
                }
            };
            if claimed.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                    _ = shutdown.wait_for(|v| *v) => return Ok(()),
                }
                continue;
            }
            futures::future::join_all(claimed.into_iter().map(|d| self.deliver(d))).await;
        }
    }

    /// One attempt of one delivery, and its record.
    pub async fn deliver(&self, d: ClaimedDelivery) {
        let attempt = self.attempt(&d).await;
        let now = Utc::now();
        let outcome = match attempt {
            Attempt::Delivered { status, response } => {
                AttemptOutcome::Delivered { status, response }
            }
            Attempt::Never { error } => AttemptOutcome::Failed {
                status: None,
                error,
                response: None,
            },
            Attempt::NotDelivered {
                status,
                error,
                response,
            } => {
                let delay = retry_delay(
                    d.attempt,
                    self.config.retry_base,
                    self.config.retry_cap,
                    rand::rng().random(),
                );
                after_failure(
                    now,
                    d.accepted_at,
                    self.config.retry_horizon,
                    delay,
                    status,
                    error,
                    response,
                )
            }
        };
        let label = match &outcome {
            AttemptOutcome::Delivered { .. } => "delivered",
            AttemptOutcome::Retry { .. } => "retried",
            AttemptOutcome::Failed { .. } => "failed",
        };
        match self
            .store
            .record_webhook_attempt(d.id, d.attempt, &outcome)
            .await
        {
            Ok(true) => {
                self.metrics.deliveries.with_label_values(&[label]).inc();
                if let AttemptOutcome::Delivered { .. } = outcome {
                    let waited = (now - d.accepted_at).to_std().unwrap_or_default();
                    self.metrics.latency.observe(waited.as_secs_f64());
                }
                match &outcome {
                    AttemptOutcome::Failed { error, .. } => tracing::warn!(
                        delivery = %d.id, webhook = %d.webhook_id, attempt = d.attempt,
                        %error, "webhook delivery given up"
                    ),
                    AttemptOutcome::Retry {
                        error,
                        next_attempt_at,
                        ..
                    } => tracing::info!(
                        delivery = %d.id, webhook = %d.webhook_id, attempt = d.attempt,
                        %error, next = %next_attempt_at, "webhook delivery will be retried"
                    ),
                    AttemptOutcome::Delivered { .. } => tracing::debug!(
                        delivery = %d.id, webhook = %d.webhook_id, attempt = d.attempt,
                        "webhook delivered"
                    ),
                }
            }
            // Another claim took over (our lease ran out) or the webhook was
            // deleted meanwhile: its record stands.
            Ok(false) => {}
            Err(e) => {
                self.metrics.errors.with_label_values(&[e.code()]).inc();
                tracing::warn!(delivery = %d.id, error = %e,
                    "cannot record a webhook attempt; the delivery is retried after its lease");
            }
        }
    }

    async fn attempt(&self, d: &ClaimedDelivery) -> Attempt {
        let Some(sealed) = &d.sealed_secret else {
            return Attempt::Never {
                error: "webhook_deleted: the webhook was deleted".into(),
            };
        };
        let Some(keyring) = &self.keyring else {
            return Attempt::NotDelivered {
                status: None,
                error: "secrets_key_missing: TALLY_SECRETS_KEY is not set".into(),
                response: None,
            };
        };
        let id_text = d.webhook_id.to_string();
        let key = match keyring
            .open(&secret_context(&d.org_id, &id_text), sealed)
            .map_err(AlertsError::from)
            .and_then(|s| signing_key(&s))
        {
            Ok(k) => k,
            Err(e) => {
                return Attempt::NotDelivered {
                    status: None,
                    error: format!("{}: {e}", e.code()),
                    response: None,
                }
            }
        };
        let url = match crate::target::validate_url(&d.url) {
            Ok(u) => u,
            Err(e) => {
                return Attempt::Never {
                    error: format!("{}: {e}", e.code()),
                }
            }
        };
        if !self.config.allow_private {
            if let Some(ip) = literal_ip(&url) {
                if let Err(e) = check_addresses(url.host_str().unwrap_or_default(), &[ip]) {
                    return Attempt::Never {
                        error: format!("{}: {e}", e.code()),
                    };
                }
            }
        }
        let webhook_id = d.id.to_string();
        let timestamp = Utc::now().timestamp();
        let signature = sign(&key, &webhook_id, timestamp, d.payload.as_bytes());
        let sent = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_ID, &webhook_id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(d.payload.clone())
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return Attempt::NotDelivered {
                    status: None,
                    error: describe(&e),
                    response: None,
                }
            }
        };
        let status = i32::from(resp.status().as_u16());
        let ok = resp.status().is_success();
        let response = excerpt(resp).await;
        if ok {
            Attempt::Delivered { status, response }
        } else {
            Attempt::NotDelivered {
                status: Some(status),
                error: format!("http_status: the receiver answered {status}"),
                response,
            }
        }
    }
}

/// The first bytes of a response body (at most a few KiB are read), as
/// text; the rest is never read.
async fn excerpt(resp: reqwest::Response) -> Option<String> {
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let limit = MAX_EXCERPT_CHARS * 4;
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            buf.extend_from_slice(&chunk[..chunk.len().min(limit - buf.len())]);
            if buf.len() >= limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    if buf.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&buf);
    Some(text.chars().take(MAX_EXCERPT_CHARS).collect())
}

/// A code and a short description of a failed request, naming a refused
/// target with `webhook_target_forbidden`.
fn describe(e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(a) = s.downcast_ref::<AlertsError>() {
            return format!("{}: {a}", a.code());
        }
        source = s.source();
    }
    let code = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect_failed"
    } else if e.is_redirect() {
        "redirect"
    } else {
        "request_failed"
    };
    let mut text = e.to_string();
    let mut s = std::error::Error::source(e);
    while let Some(inner) = s {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        s = inner.source();
    }
    format!("{code}: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_secs(5);
        let cap = Duration::from_secs(3600);
        assert_eq!(retry_delay(1, base, cap, 0), Duration::from_millis(2500));
        assert_eq!(retry_delay(1, base, cap, u32::MAX), Duration::from_secs(5));
        assert_eq!(retry_delay(2, base, cap, u32::MAX), Duration::from_secs(10));
        assert_eq!(retry_delay(3, base, cap, 0), Duration::from_secs(10));
        assert_eq!(retry_delay(20, base, cap, u32::MAX), cap);
        assert_eq!(retry_delay(20, base, cap, 0), cap / 2);
        assert_eq!(
            retry_delay(i32::MAX, base, cap, 7),
            retry_delay(40, base, cap, 7)
        );
        for a in 1..30 {
            let d = retry_delay(a, base, cap, u32::MAX / 3);
            assert!(d <= cap && d >= Duration::from_millis(2500), "{a}: {d:?}");
        }
    }

    #[test]
    fn a_day_of_failures_takes_about_thirty_attempts() {
        let (base, cap) = (Duration::from_secs(5), Duration::from_secs(3600));
        let mut t = Duration::ZERO;
        let mut attempts = 0;
        while t < Duration::from_secs(24 * 3600) {
            attempts += 1;
            t += retry_delay(attempts, base, cap, u32::MAX / 2);
        }
        assert!((25..=45).contains(&attempts), "{attempts}");
    }

    #[test]
    fn the_horizon_ends_retries() {
        let accepted = Utc::now() - chrono::Duration::hours(23);
        let horizon = Duration::from_secs(24 * 3600);
        let now = Utc::now();
        match after_failure(
            now,
            accepted,
            horizon,
            Duration::from_secs(7200),
            Some(503),
            "x".into(),
            None,
        ) {
            AttemptOutcome::Retry {
                next_attempt_at, ..
            } => {
                // Capped at the horizon: one last attempt there.
                assert!(next_attempt_at <= accepted + chrono::Duration::hours(24));
                assert!(next_attempt_at > now);
            }
            other => panic!("{other:?}"),
        }
        let late = accepted + chrono::Duration::hours(24);
        match after_failure(
            late,
            accepted,
            horizon,
            Duration::from_secs(5),
            None,
            "timeout: t".into(),
            None,
        ) {
            AttemptOutcome::Failed { error, .. } => {
                assert!(error.starts_with("retry_horizon_passed"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }
}
