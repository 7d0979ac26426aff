//! Configuration: every setting is a flag with an environment variable
//! (the README's settings table), validated once at start.
//!
//! Clap reads the raw strings; [`Settings::validate`] turns them into typed
//! values. A bad value stops the process with exactly one line that names
//! the setting, its flag and what is wrong, e.g.
//! `tally: invalid TALLY_HTTP_ADDR (--http-addr): "localhost" is not an address like 127.0.0.1:8080`.
//!
//! # Decisions
//!
//! * **Strings first, types second.** Clap's own value errors span several
//!   lines and name only the flag; operators set these through the
//!   environment, so the error must name the variable too.
//! * **The database URL has no default.** A cost ledger written to the
//!   wrong database is worse than one that refuses to start.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use clap::Args;
use tally_secrets::SecretString;

/// Settings shared by every subcommand.
#[derive(Args, Debug, Clone)]
pub struct Settings {
    /// NATS server URL(s), comma-separated for a cluster.
    #[arg(
        long,
        env = "TALLY_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    /// Postgres URL, e.g. postgres://tally:tally@127.0.0.1:5432/tally.
    #[arg(long, env = "TALLY_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// OpenRouter API base URL.
    #[arg(
        long,
        env = "TALLY_OPENROUTER_BASE_URL",
        default_value = "https://openrouter.ai/api/v1",
        global = true
    )]
    pub openrouter_base_url: String,
    /// OpenRouter API key (sent as a bearer token).
    #[arg(
        long,
        env = "TALLY_OPENROUTER_API_KEY",
        global = true,
        hide_env_values = true
    )]
    pub openrouter_api_key: Option<String>,
    /// Address of the HTTP API.
    #[arg(
        long,
        env = "TALLY_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub http_addr: String,
    /// Address of the Prometheus /metrics endpoint of non-HTTP services (off when unset).
    #[arg(long, env = "TALLY_METRICS_ADDR", global = true)]
    pub metrics_addr: Option<String>,
    /// Prefix of every NATS subject and stream.
    #[arg(
        long,
        env = "TALLY_SUBJECT_PREFIX",
        default_value = "tally",
        global = true
    )]
    pub subject_prefix: String,
    /// How long the reconciler keeps asking OpenRouter for a missing cost (e.g. 15m, 1h).
    #[arg(
        long,
        env = "TALLY_RECONCILE_DEADLINE",
        default_value = "15m",
        global = true
    )]
    pub reconcile_deadline: String,
    /// How long after tally's own first lookup of a generation the
    /// reconciler keeps asking at least, however old the generation (e.g. 2m).
    #[arg(
        long,
        env = "TALLY_RECONCILE_MIN_WINDOW",
        default_value = "2m",
        global = true
    )]
    pub reconcile_min_window: String,
    /// Time between two sweeps that ask OpenRouter again about unresolved and
    /// estimate-basis generations (e.g. 1h).
    #[arg(
        long,
        env = "TALLY_SWEEP_INTERVAL",
        default_value = "1h",
        global = true
    )]
    pub sweep_interval: String,
    /// How old a generation may be and still be swept (e.g. 7d).
    #[arg(long, env = "TALLY_SWEEP_HORIZON", default_value = "7d", global = true)]
    pub sweep_horizon: String,
    /// Time between two discoveries of every connected organisation's
    /// OpenRouter models by the API (e.g. 6h; between 1m and 7d).
    #[arg(
        long,
        env = "TALLY_MODELS_SYNC_INTERVAL",
        default_value = "6h",
        global = true
    )]
    pub models_sync_interval: String,
    /// JetStream stream replicas (3 in a cluster).
    #[arg(long, env = "TALLY_NATS_REPLICAS", default_value = "1", global = true)]
    pub nats_replicas: String,
    /// How long a budget hold stands without the worker's heartbeat (a
    /// running generation extends it every third of this; a crashed
    /// worker's holds are released after it), e.g. 10m.
    #[arg(
        long,
        env = "TALLY_RESERVATION_TTL",
        default_value = "10m",
        global = true
    )]
    pub reservation_ttl: String,
    /// Allow webhook receivers on private, loopback, link-local and other
    /// non-public addresses (`true` or `false`): for receivers inside your
    /// own network; leave off when organisations you do not control
    /// register webhooks.
    #[arg(
        long,
        env = "TALLY_WEBHOOK_ALLOW_PRIVATE",
        default_value = "false",
        global = true
    )]
    pub webhook_allow_private: String,
    /// Time one webhook delivery attempt may take, connecting included.
    #[arg(
        long,
        env = "TALLY_WEBHOOK_TIMEOUT",
        default_value = "10s",
        global = true
    )]
    pub webhook_timeout: String,
    /// Wait before a webhook delivery's first retry; doubles per attempt
    /// (with jitter).
    #[arg(
        long,
        env = "TALLY_WEBHOOK_RETRY_INTERVAL",
        default_value = "5s",
        global = true
    )]
    pub webhook_retry_interval: String,
    /// Longest wait between two attempts of a webhook delivery.
    #[arg(
        long,
        env = "TALLY_WEBHOOK_RETRY_MAX_INTERVAL",
        default_value = "1h",
        global = true
    )]
    pub webhook_retry_max_interval: String,
    /// How long after an event was accepted its webhook delivery is retried
    /// before it is given up (`failed`).
    #[arg(
        long,
        env = "TALLY_WEBHOOK_RETRY_HORIZON",
        default_value = "24h",
        global = true
    )]
    pub webhook_retry_horizon: String,
    /// Output token cap sent upstream (and held as the worst case) when
    /// neither the request nor the model's catalog entry sets one.
    #[arg(
        long,
        env = "TALLY_DEFAULT_MAX_OUTPUT_TOKENS",
        default_value = "4096",
        global = true
    )]
    pub default_max_output_tokens: String,
    /// File where the worker keeps the last good OpenRouter model catalog,
    /// so prices survive OpenRouter being down at start (off when unset).
    #[arg(long, env = "TALLY_CATALOG_PATH", global = true)]
    pub catalog_path: Option<std::path::PathBuf>,
    /// Most OpenRouter generation-stats lookups per second the reconciler
    /// makes (it halves this on 429s and recovers slowly).
    #[arg(
        long,
        env = "TALLY_RECONCILE_RATE",
        global = true,
        default_value = "50"
    )]
    pub reconcile_rate: String,
    /// How long JetStream waits for a consumer's ack before redelivering
    /// (how soon a crashed instance's in-flight messages go to another).
    #[arg(long, env = "TALLY_ACK_WAIT", default_value = "60s", global = true)]
    pub ack_wait: String,
    /// Log one JSON object per line instead of human-readable text.
    #[arg(long, env = "TALLY_LOG_JSON", global = true)]
    pub log_json: bool,
    /// Time an HTTP connection has to send a complete request head (from
    /// the accept, or from the first byte of a later request).
    #[arg(
        long,
        env = "TALLY_HTTP_HEADER_TIMEOUT",
        default_value = "10s",
        global = true
    )]
    pub http_header_timeout: String,
    /// Time a kept-alive HTTP connection may stay idle between requests.
    #[arg(
        long,
        env = "TALLY_HTTP_IDLE_TIMEOUT",
        default_value = "60s",
        global = true
    )]
    pub http_idle_timeout: String,
    /// Time one HTTP request may take (body and handler) before 503.
    #[arg(
        long,
        env = "TALLY_HTTP_REQUEST_TIMEOUT",
        default_value = "30s",
        global = true
    )]
    pub http_request_timeout: String,
    /// Largest HTTP request body, in bytes.
    #[arg(
        long,
        env = "TALLY_HTTP_BODY_LIMIT",
        default_value = "65536",
        global = true
    )]
    pub http_body_limit: String,
    /// Most open HTTP connections per process (more are answered 503).
    #[arg(
        long,
        env = "TALLY_HTTP_MAX_CONNECTIONS",
        default_value = "1024",
        global = true
    )]
    pub http_max_connections: String,
    /// Most budgets (not archived) one organisation may have.
    #[arg(
        long,
        env = "TALLY_MAX_BUDGETS_PER_ORG",
        default_value = "1000",
        global = true
    )]
    pub max_budgets_per_org: String,
    /// Most webhooks one organisation may have.
    #[arg(
        long,
        env = "TALLY_MAX_WEBHOOKS_PER_ORG",
        default_value = "100",
        global = true
    )]
    pub max_webhooks_per_org: String,
    /// Most API keys (not revoked) one organisation may have.
    #[arg(
        long,
        env = "TALLY_MAX_KEYS_PER_ORG",
        default_value = "100",
        global = true
    )]
    pub max_keys_per_org: String,
    /// Key-encryption key of stored provider credentials:
    /// `<key_id>:<base64 of 32 bytes>`. Without it no secret can be stored.
    #[arg(long, env = "TALLY_SECRETS_KEY", global = true, hide_env_values = true, value_parser = secret)]
    pub secrets_key: Option<SecretString>,
    /// Older key-encryption keys, comma-separated, still accepted for
    /// decryption until `tally secrets rotate` has re-wrapped everything.
    #[arg(long, env = "TALLY_SECRETS_KEY_PREVIOUS", global = true, hide_env_values = true, value_parser = secret)]
    pub secrets_key_previous: Option<SecretString>,
    /// tally's public base URL, under which OpenRouter's OAuth callback
    /// arrives: HTTPS on port 443 or 3000, or any port on localhost,
    /// 127.0.0.1 or [::1].
    #[arg(long, env = "TALLY_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,
    /// OpenRouter's OAuth authorization page.
    #[arg(
        long,
        env = "TALLY_OPENROUTER_AUTH_URL",
        default_value = "https://openrouter.ai/auth",
        global = true
    )]
    pub openrouter_auth_url: String,
    /// Operator token: admin of every organisation over HTTP and the only
    /// caller of POST /v1/orgs (at least 32 visible characters; unset = no
    /// operator access over HTTP). The standalone worker sends it to the
    /// API for its budget preflight when it has no database URL.
    #[arg(
        long,
        env = "TALLY_OPERATOR_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub operator_token: Option<String>,
    /// NATS credentials file: a `.creds` file (user JWT + nkey seed) or a
    /// file holding a user nkey seed (`SU…`).
    #[arg(long, env = "TALLY_NATS_CREDS", global = true)]
    pub nats_creds: Option<std::path::PathBuf>,
    /// NATS user (with TALLY_NATS_PASSWORD).
    #[arg(long, env = "TALLY_NATS_USER", global = true)]
    pub nats_user: Option<String>,
    /// NATS password (with TALLY_NATS_USER).
    #[arg(long, env = "TALLY_NATS_PASSWORD", global = true, hide_env_values = true, value_parser = secret)]
    pub nats_password: Option<SecretString>,
    /// NATS token.
    #[arg(long, env = "TALLY_NATS_TOKEN", global = true, hide_env_values = true, value_parser = secret)]
    pub nats_token: Option<SecretString>,
    /// PEM file of the CA certificates that sign the NATS servers' TLS
    /// certificates (TLS is then required; tls:// URLs require it anyway).
    #[arg(long, env = "TALLY_NATS_TLS_CA", global = true)]
    pub nats_tls_ca: Option<std::path::PathBuf>,
}

fn secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_owned()))
}

/// A setting that failed validation.
#[derive(Debug, thiserror::Error)]
#[error("invalid {env} ({flag}): {reason}")]
pub struct ConfigError {
    /// Environment variable.
    pub env: &'static str,
    /// Flag.
    pub flag: &'static str,
    /// What is wrong, in one line.
    pub reason: String,
}

/// Settings after validation.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS URL(s).
    pub nats_url: String,
    /// Postgres URL, when given.
    pub database_url: Option<String>,
    /// OpenRouter base URL.
    pub openrouter_base_url: String,
    /// OpenRouter key.
    pub openrouter_api_key: Option<String>,
    /// HTTP API address.
    pub http_addr: SocketAddr,
    /// Metrics address.
    pub metrics_addr: Option<SocketAddr>,
    /// Subject prefix.
    pub prefix: String,
    /// Reconcile deadline.
    pub reconcile_deadline: Duration,
    /// Reconcile minimum window after the first lookup.
    pub reconcile_min_window: Duration,
    /// Sweep interval.
    pub sweep_interval: Duration,
    /// Sweep horizon.
    pub sweep_horizon: Duration,
    /// Periodic model discovery interval.
    pub models_sync_interval: Duration,
    /// Stream replicas.
    pub nats_replicas: usize,
    /// Consumer ack wait.
    pub ack_wait: Duration,
    /// How long a budget hold stands without a heartbeat.
    pub reservation_ttl: Duration,
    /// Default output cap.
    pub default_max_output_tokens: u32,
    /// Model catalog persistence file.
    pub catalog_path: Option<std::path::PathBuf>,
    /// Reconciler lookups per second.
    pub reconcile_rate: u32,
    /// JSON logs.
    pub log_json: bool,
    /// The key-encryption keys (`None`: `TALLY_SECRETS_KEY` unset).
    pub keyring: Option<std::sync::Arc<tally_secrets::Keyring>>,
    /// Public base URL for the OAuth callback.
    pub public_url: Option<url::Url>,
    /// OpenRouter's OAuth page.
    pub openrouter_auth_url: String,
    /// The operator token, if set.
    pub operator_token: Option<SecretString>,
    /// NATS credentials.
    pub nats_auth: tally_bus::NatsAuth,
    /// CA certificates for NATS TLS.
    pub nats_tls_ca: Option<std::path::PathBuf>,
    /// Webhook delivery: private targets, timeout, retry schedule.
    pub webhooks: WebhookConfig,
    /// HTTP connection limits and timeouts.
    pub http_limits: tally_api::HttpLimits,
    /// What one organisation may create.
    pub org_limits: tally_api::OrgLimits,
}

fn err(env: &'static str, flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        env,
        flag,
        reason: reason.into(),
    }
}

/// One setting as its error line names it: the variable and the flag.
#[derive(Debug, Clone, Copy)]
struct Setting(&'static str, &'static str);

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const TENTH: Duration = Duration::from_millis(100);

const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

impl Setting {
    /// The one-line error for this setting.
    fn err(self, reason: impl Into<String>) -> ConfigError {
        err(self.0, self.1, reason)
    }

    /// A socket address like 127.0.0.1:8080.
    fn addr(self, v: &str) -> Result<SocketAddr, ConfigError> {
        v.parse()
            .map_err(|_| self.err(format!("{v:?} is not an address like 127.0.0.1:8080")))
    }

    /// true/false, 1/0, yes/no, on/off; empty is false.
    fn boolean(self, v: &str) -> Result<bool, ConfigError> {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" | "" => Ok(false),
            _ => Err(self.err(format!("{v:?} must be true or false"))),
        }
    }

    /// A duration within `range`; `example` shows the form in the error line.
    fn duration(
        self,
        v: &str,
        range: RangeInclusive<Duration>,
        example: &str,
    ) -> Result<Duration, ConfigError> {
        humantime::parse_duration(v)
            .ok()
            .filter(|d| range.contains(d))
            .ok_or_else(|| {
                self.err(format!(
                    "{v:?} must be a duration between {} and {}, like {example}",
                    humantime::format_duration(*range.start()),
                    humantime::format_duration(*range.end())
                ))
            })
    }

    /// A whole number from 1 to `max`.
    fn count(self, v: &str, max: u64) -> Result<u64, ConfigError> {
        v.parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| self.err(format!("{v:?} must be a whole number from 1 to {max}")))
    }
}

/// The webhook settings.
#[derive(Debug, Clone, Copy)]
pub struct WebhookConfig {
    /// `TALLY_WEBHOOK_ALLOW_PRIVATE`.
    pub allow_private: bool,
    /// `TALLY_WEBHOOK_TIMEOUT`.
    pub timeout: Duration,
    /// `TALLY_WEBHOOK_RETRY_INTERVAL`.
    pub retry_base: Duration,
    /// `TALLY_WEBHOOK_RETRY_MAX_INTERVAL`.
    pub retry_cap: Duration,
    /// `TALLY_WEBHOOK_RETRY_HORIZON`.
    pub retry_horizon: Duration,
}

impl Settings {
    /// Validates every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        for url in self.nats_url.split(',') {
            let url = url.trim();
            // Credentials in the URL would be repeated in every connection
            // error and log line naming the server: refuse them, unrepeated.
            let authority = url
                .split_once("://")
                .map_or(url, |(_, rest)| rest.split('/').next().unwrap_or(""));
            if authority.contains('@') {
                return Err(err(
                    "TALLY_NATS_URL",
                    "--nats-url",
                    "must not hold credentials (user:password@ or token@); \
                     use TALLY_NATS_USER + TALLY_NATS_PASSWORD, TALLY_NATS_TOKEN or TALLY_NATS_CREDS",
                ));
            }
            let ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| url.starts_with(s) && url.len() > s.len());
            if !ok {
                return Err(err(
                    "TALLY_NATS_URL",
                    "--nats-url",
                    format!("{url:?} is not a NATS URL like nats://127.0.0.1:4222"),
                ));
            }
        }
        if let Some(db) = &self.database_url {
            if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
                return Err(err(
                    "TALLY_DATABASE_URL",
                    "--database-url",
                    "must be a postgres:// URL such as postgres://tally:tally@127.0.0.1:5432/tally",
                ));
            }
        }
        let base = self.openrouter_base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() < 10 {
            return Err(err(
                "TALLY_OPENROUTER_BASE_URL",
                "--openrouter-base-url",
                format!("{base:?} is not an http(s) URL like https://openrouter.ai/api/v1"),
            ));
        }
        if let Some(k) = &self.openrouter_api_key {
            if k.trim().is_empty() || k.chars().any(char::is_whitespace) {
                return Err(err(
                    "TALLY_OPENROUTER_API_KEY",
                    "--openrouter-api-key",
                    "must be a non-empty key without spaces",
                ));
            }
        }
        let http_addr = Setting("TALLY_HTTP_ADDR", "--http-addr").addr(&self.http_addr)?;
        let metrics_addr = match &self.metrics_addr {
            Some(m) if !m.is_empty() => {
                Some(Setting("TALLY_METRICS_ADDR", "--metrics-addr").addr(m)?)
            }
            _ => None,
        };
        let p = &self.subject_prefix;
        if p.is_empty()
            || p.len() > 32
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(err(
                "TALLY_SUBJECT_PREFIX",
                "--subject-prefix",
                format!("{p:?} must be 1 to 32 letters, digits, _ or - (one subject token)"),
            ));
        }
        let reconcile_deadline =
            humantime::parse_duration(&self.reconcile_deadline).map_err(|e| {
                err(
                    "TALLY_RECONCILE_DEADLINE",
                    "--reconcile-deadline",
                    format!(
                        "{:?} is not a duration like 15m or 1h ({e})",
                        self.reconcile_deadline
                    ),
                )
            })?;
        if reconcile_deadline < Duration::from_secs(1)
            || reconcile_deadline > Duration::from_secs(7 * 86_400)
        {
            return Err(err(
                "TALLY_RECONCILE_DEADLINE",
                "--reconcile-deadline",
                "must be between 1s and 7 days",
            ));
        }
        let reconcile_min_window = Setting("TALLY_RECONCILE_MIN_WINDOW", "--reconcile-min-window")
            .duration(&self.reconcile_min_window, SECOND..=DAY, "2m")?;
        let sweep_interval = Setting("TALLY_SWEEP_INTERVAL", "--sweep-interval").duration(
            &self.sweep_interval,
            SECOND..=days(7),
            "1h",
        )?;
        let models_sync_interval = Setting("TALLY_MODELS_SYNC_INTERVAL", "--models-sync-interval")
            .duration(&self.models_sync_interval, MINUTE..=days(7), "6h")?;
        let sweep_horizon = Setting("TALLY_SWEEP_HORIZON", "--sweep-horizon").duration(
            &self.sweep_horizon,
            MINUTE..=days(90),
            "7d",
        )?;
        let nats_replicas: usize = self
            .nats_replicas
            .parse()
            .ok()
            .filter(|r| (1..=5).contains(r))
            .ok_or_else(|| {
                err(
                    "TALLY_NATS_REPLICAS",
                    "--nats-replicas",
                    format!(
                        "{:?} must be a whole number from 1 to 5",
                        self.nats_replicas
                    ),
                )
            })?;
        let ack_wait = Setting("TALLY_ACK_WAIT", "--ack-wait").duration(
            &self.ack_wait,
            SECOND..=HOUR,
            "60s",
        )?;
        let reservation_ttl = Setting("TALLY_RESERVATION_TTL", "--reservation-ttl").duration(
            &self.reservation_ttl,
            SECOND..=DAY,
            "10m",
        )?;
        let webhooks = WebhookConfig {
            allow_private: Setting("TALLY_WEBHOOK_ALLOW_PRIVATE", "--webhook-allow-private")
                .boolean(&self.webhook_allow_private)?,
            timeout: Setting("TALLY_WEBHOOK_TIMEOUT", "--webhook-timeout").duration(
                &self.webhook_timeout,
                TENTH..=Duration::from_secs(300),
                "10s",
            )?,
            retry_base: Setting("TALLY_WEBHOOK_RETRY_INTERVAL", "--webhook-retry-interval")
                .duration(&self.webhook_retry_interval, TENTH..=HOUR, "5s")?,
            retry_cap: Setting(
                "TALLY_WEBHOOK_RETRY_MAX_INTERVAL",
                "--webhook-retry-max-interval",
            )
            .duration(&self.webhook_retry_max_interval, TENTH..=DAY, "1h")?,
            retry_horizon: Setting("TALLY_WEBHOOK_RETRY_HORIZON", "--webhook-retry-horizon")
                .duration(&self.webhook_retry_horizon, SECOND..=days(30), "24h")?,
        };
        if webhooks.retry_cap < webhooks.retry_base {
            return Err(err(
                "TALLY_WEBHOOK_RETRY_MAX_INTERVAL",
                "--webhook-retry-max-interval",
                format!(
                    "{:?} is shorter than TALLY_WEBHOOK_RETRY_INTERVAL ({:?})",
                    self.webhook_retry_max_interval, self.webhook_retry_interval
                ),
            ));
        }
        let default_max_output_tokens: u32 = self
            .default_max_output_tokens
            .parse()
            .ok()
            .filter(|n| (1..=10_000_000).contains(n))
            .ok_or_else(|| {
                err(
                    "TALLY_DEFAULT_MAX_OUTPUT_TOKENS",
                    "--default-max-output-tokens",
                    format!(
                        "{:?} must be a whole number of tokens from 1 to 10000000",
                        self.default_max_output_tokens
                    ),
                )
            })?;
        let reconcile_rate: u32 = self
            .reconcile_rate
            .parse()
            .ok()
            .filter(|r| (1..=100_000).contains(r))
            .ok_or_else(|| {
                err(
                    "TALLY_RECONCILE_RATE",
                    "--reconcile-rate",
                    format!(
                        "{:?} must be a whole number of lookups per second from 1 to 100000",
                        self.reconcile_rate
                    ),
                )
            })?;
        let http_limits = tally_api::HttpLimits {
            header_read_timeout: Setting("TALLY_HTTP_HEADER_TIMEOUT", "--http-header-timeout")
                .duration(&self.http_header_timeout, TENTH..=10 * MINUTE, "10s")?,
            idle_timeout: Setting("TALLY_HTTP_IDLE_TIMEOUT", "--http-idle-timeout").duration(
                &self.http_idle_timeout,
                TENTH..=HOUR,
                "10s",
            )?,
            request_timeout: Setting("TALLY_HTTP_REQUEST_TIMEOUT", "--http-request-timeout")
                .duration(&self.http_request_timeout, TENTH..=HOUR, "10s")?,
            body_limit: Setting("TALLY_HTTP_BODY_LIMIT", "--http-body-limit")
                .count(&self.http_body_limit, 16 * 1024 * 1024)? as usize,
            max_connections: Setting("TALLY_HTTP_MAX_CONNECTIONS", "--http-max-connections")
                .count(&self.http_max_connections, 1_000_000)?
                as usize,
        };
        let per_org = |s: Setting, v: &str| s.count(v, 1_000_000).map(|n| n as u32);
        let org_limits = tally_api::OrgLimits {
            max_budgets: per_org(
                Setting("TALLY_MAX_BUDGETS_PER_ORG", "--max-budgets-per-org"),
                &self.max_budgets_per_org,
            )?,
            max_webhooks: per_org(
                Setting("TALLY_MAX_WEBHOOKS_PER_ORG", "--max-webhooks-per-org"),
                &self.max_webhooks_per_org,
            )?,
            max_keys: per_org(
                Setting("TALLY_MAX_KEYS_PER_ORG", "--max-keys-per-org"),
                &self.max_keys_per_org,
            )?,
        };
        let keyring = match &self.secrets_key {
            None => {
                if self.secrets_key_previous.is_some() {
                    return Err(err(
                        "TALLY_SECRETS_KEY",
                        "--secrets-key",
                        "is required when TALLY_SECRETS_KEY_PREVIOUS is set",
                    ));
                }
                None
            }
            Some(k) => Some(std::sync::Arc::new(
                tally_secrets::Keyring::from_settings(Some(k), self.secrets_key_previous.as_ref())
                    .map_err(|e| match e {
                        tally_secrets::SecretsError::KeyInvalid { setting, reason } => {
                            let flag = if setting == "TALLY_SECRETS_KEY" {
                                "--secrets-key"
                            } else {
                                "--secrets-key-previous"
                            };
                            err(setting, flag, reason)
                        }
                        other => err("TALLY_SECRETS_KEY", "--secrets-key", other.to_string()),
                    })?,
            )),
        };
        let public_url = match self.public_url.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => Some(
                tally_provider::oauth::validate_public_url(u)
                    .map_err(|reason| err("TALLY_PUBLIC_URL", "--public-url", reason))?,
            ),
            None => None,
        };
        let auth = url::Url::parse(&self.openrouter_auth_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                err(
                    "TALLY_OPENROUTER_AUTH_URL",
                    "--openrouter-auth-url",
                    format!(
                        "{:?} is not an http(s) URL like https://openrouter.ai/auth",
                        self.openrouter_auth_url
                    ),
                )
            })?;
        let operator_token = match &self.operator_token {
            None => None,
            Some(t) => Some(
                check_operator_token(t)
                    .map_err(|reason| err("TALLY_OPERATOR_TOKEN", "--operator-token", reason))?,
            ),
        };
        let nats_auth = self.nats_auth()?;
        if let Some(ca) = &self.nats_tls_ca {
            check_pem(ca).map_err(|reason| err("TALLY_NATS_TLS_CA", "--nats-tls-ca", reason))?;
        }
        Ok(Config {
            nats_auth,
            nats_tls_ca: self.nats_tls_ca.clone(),
            keyring,
            public_url,
            openrouter_auth_url: auth.to_string(),
            http_limits,
            org_limits,
            webhooks,
            nats_url: self.nats_url.clone(),
            database_url: self.database_url.clone(),
            openrouter_base_url: base.to_owned(),
            openrouter_api_key: self.openrouter_api_key.clone(),
            http_addr,
            metrics_addr,
            prefix: p.clone(),
            reconcile_deadline,
            reconcile_min_window,
            sweep_interval,
            sweep_horizon,
            models_sync_interval,
            nats_replicas,
            ack_wait,
            reservation_ttl,
            default_max_output_tokens,
            catalog_path: self.catalog_path.clone(),
            reconcile_rate,
            log_json: self.log_json,
            operator_token,
        })
    }

    /// At most one way of authenticating to NATS, and that one complete.
    fn nats_auth(&self) -> Result<tally_bus::NatsAuth, ConfigError> {
        use secrecy::ExposeSecret as _;
        let user = self.nats_user.clone().filter(|s| !s.is_empty());
        let password = self
            .nats_password
            .clone()
            .filter(|s| !s.expose_secret().is_empty());
        let token = self
            .nats_token
            .clone()
            .filter(|s| !s.expose_secret().is_empty());
        let creds = self
            .nats_creds
            .clone()
            .filter(|p| !p.as_os_str().is_empty());
        let methods = usize::from(creds.is_some())
            + usize::from(user.is_some() || password.is_some())
            + usize::from(token.is_some());
        if methods > 1 {
            let (env, flag) = if creds.is_some() {
                ("TALLY_NATS_CREDS", "--nats-creds")
            } else {
                ("TALLY_NATS_TOKEN", "--nats-token")
            };
            return Err(err(
                env,
                flag,
                "set only one of TALLY_NATS_CREDS, TALLY_NATS_USER + TALLY_NATS_PASSWORD, TALLY_NATS_TOKEN",
            ));
        }
        if let Some(path) = creds {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                err(
                    "TALLY_NATS_CREDS",
                    "--nats-creds",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let seed = text.trim();
            let is_seed =
                seed.starts_with("SU") && seed.len() == 58 && !seed.contains(char::is_whitespace);
            if !is_seed && !text.contains("-----BEGIN NATS USER JWT-----") {
                return Err(err(
                    "TALLY_NATS_CREDS",
                    "--nats-creds",
                    format!(
                        "{} holds neither a .creds file nor a user nkey seed (SU…)",
                        path.display()
                    ),
                ));
            }
            return Ok(tally_bus::NatsAuth::CredsFile(path));
        }
        if let Some(u) = &user {
            if u.len() > 256 || !u.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err(
                    "TALLY_NATS_USER",
                    "--nats-user",
                    "must be at most 256 visible ASCII characters",
                ));
            }
        }
        match (user, password, token) {
            (Some(user), Some(password), _) => {
                Ok(tally_bus::NatsAuth::UserPassword { user, password })
            }
            (Some(_), None, _) => Err(err(
                "TALLY_NATS_PASSWORD",
                "--nats-password",
                "is required with TALLY_NATS_USER",
            )),
            (None, Some(_), _) => Err(err(
                "TALLY_NATS_USER",
                "--nats-user",
                "is required with TALLY_NATS_PASSWORD",
            )),
            (None, None, Some(token)) => Ok(tally_bus::NatsAuth::Token(token)),
            (None, None, None) => Ok(tally_bus::NatsAuth::None),
        }
    }
}

/// A readable file with at least one PEM certificate.
fn check_pem(path: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(())
}

/// The operator token: at least 32 visible ASCII characters, and not
/// shaped like an API key (`tly_…`), so the two can never be confused.
/// The reason never repeats the token.
fn check_operator_token(t: &str) -> Result<SecretString, String> {
    if t.chars().count() < tally_api::auth::MIN_OPERATOR_TOKEN_CHARS {
        return Err(format!(
            "must be at least {} characters (e.g. `openssl rand -hex 32`)",
            tally_api::auth::MIN_OPERATOR_TOKEN_CHARS
        ));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII characters only (no spaces)".into());
    }
    if t.starts_with(tally_store::tenancy::KEY_PREFIX) {
        return Err("must not start with tly_ (that is the form of API keys)".into());
    }
    Ok(SecretString::from(t.to_owned()))
}

impl Config {
    /// The database URL, or the one-line error naming the missing setting.
    pub fn require_database(&self) -> Result<&str, ConfigError> {
        self.database_url.as_deref().ok_or_else(|| {
            err(
                "TALLY_DATABASE_URL",
                "--database-url",
                "is required for this command (e.g. postgres://tally:tally@127.0.0.1:5432/tally)",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        s: Settings,
    }

    fn settings(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["tally"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().s.validate()
    }

    #[test]
    fn provider_settings_are_validated_naming_the_setting() {
        let c = settings(&[]).unwrap();
        assert!(c.keyring.is_none() && c.public_url.is_none());
        assert_eq!(c.openrouter_auth_url, "https://openrouter.ai/auth");
        let k = tally_secrets::generate_key_setting("k1");
        use tally_secrets::ExposeSecret;
        let c = settings(&["--secrets-key", k.expose_secret()]).unwrap();
        assert_eq!(c.keyring.unwrap().current_key_id(), "k1");
        assert!(!format!(
            "{:?}",
            settings(&["--secrets-key", k.expose_secret()]).unwrap()
        )
        .contains(k.expose_secret().split_once(':').unwrap().1));
        let e = settings(&["--secrets-key", "k1:short"]).unwrap_err();
        assert_eq!(e.env, "TALLY_SECRETS_KEY");
        let e = settings(&[
            "--secrets-key",
            k.expose_secret(),
            "--secrets-key-previous",
            "x",
        ])
        .unwrap_err();
        assert_eq!(e.env, "TALLY_SECRETS_KEY_PREVIOUS");
        let e = settings(&["--secrets-key-previous", k.expose_secret()]).unwrap_err();
        assert_eq!(e.env, "TALLY_SECRETS_KEY");
        for ok in [
            "https://tally.example.com",
            "https://t.example.com:3000",
            "http://localhost:8080",
            "http://[::1]:1",
        ] {
            assert!(
                settings(&["--public-url", ok])
                    .unwrap()
                    .public_url
                    .is_some(),
                "{ok}"
            );
        }
        for bad in [
            "http://tally.example.com",
            "https://tally.example.com:8443",
            "nope",
        ] {
            let e = settings(&["--public-url", bad]).unwrap_err();
            assert_eq!(e.env, "TALLY_PUBLIC_URL", "{bad}");
            assert!(
                e.to_string()
                    .starts_with("invalid TALLY_PUBLIC_URL (--public-url):"),
                "{e}"
            );
        }
        let e = settings(&["--openrouter-auth-url", "openrouter.ai/auth"]).unwrap_err();
        assert_eq!(e.env, "TALLY_OPENROUTER_AUTH_URL");
    }

    #[test]
    fn webhook_settings_are_validated_naming_the_setting() {
        let c = settings(&[]).unwrap().webhooks;
        assert!(!c.allow_private);
        assert_eq!(c.retry_base, Duration::from_secs(5));
        assert_eq!(c.retry_cap, Duration::from_secs(3600));
        assert_eq!(c.retry_horizon, Duration::from_secs(86_400));
        assert_eq!(c.timeout, Duration::from_secs(10));
        let c = settings(&["--webhook-allow-private", "true"]).unwrap();
        assert!(c.webhooks.allow_private);
        for (args, env) in [
            (
                &["--webhook-allow-private", "maybe"][..],
                "TALLY_WEBHOOK_ALLOW_PRIVATE",
            ),
            (&["--webhook-timeout", "0s"][..], "TALLY_WEBHOOK_TIMEOUT"),
            (
                &["--webhook-retry-interval", "soon"][..],
                "TALLY_WEBHOOK_RETRY_INTERVAL",
            ),
            (
                &[
                    "--webhook-retry-max-interval",
                    "2s",
                    "--webhook-retry-interval",
                    "5s",
                ][..],
                "TALLY_WEBHOOK_RETRY_MAX_INTERVAL",
            ),
            (
                &["--webhook-retry-horizon", "90d"][..],
                "TALLY_WEBHOOK_RETRY_HORIZON",
            ),
        ] {
            let e = settings(args).unwrap_err();
            assert_eq!(e.env, env, "{args:?}: {e}");
        }
    }

    #[test]
    fn operator_tokens_are_long_visible_and_not_keys() {
        assert!(check_operator_token(&"x".repeat(32)).is_ok());
        assert!(check_operator_token(&"x".repeat(31)).is_err());
        assert!(check_operator_token(&format!("{} y", "x".repeat(32))).is_err());
        let e = check_operator_token(&format!("tly_{}", "x".repeat(40))).unwrap_err();
        assert!(!e.contains("xxxx"), "{e}");
    }
}
