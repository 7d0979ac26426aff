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
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

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
    /// JetStream stream replicas (3 in a cluster).
    #[arg(long, env = "TALLY_NATS_REPLICAS", default_value = "1", global = true)]
    pub nats_replicas: String,
    /// Base URL of tally's HTTP API, used by the worker's budget preflight
    /// (default: http://<TALLY_HTTP_ADDR>).
    #[arg(long, env = "TALLY_API_URL", global = true)]
    pub api_url: Option<String>,
    /// File where the worker keeps the last good OpenRouter model catalog,
    /// so prices survive OpenRouter being down at start (off when unset).
    #[arg(long, env = "TALLY_CATALOG_PATH", global = true)]
    pub catalog_path: Option<std::path::PathBuf>,
    /// Upstream providers whose keys the org (or one of its agents) brought
    /// (BYOK), for the worker's capacity strategies: `org=provider+provider`
    /// entries, `org/agent=…` for one agent, separated by `;`, e.g.
    /// `acme=anthropic+openai;acme/researcher=anthropic`.
    #[arg(long, env = "TALLY_BYOK_PROVIDERS", global = true, default_value = "")]
    pub byok_providers: String,
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
    /// file with a user nkey seed (`SU…`).
    #[arg(long, env = "TALLY_NATS_CREDS", global = true)]
    pub nats_creds: Option<std::path::PathBuf>,
    /// NATS user (with TALLY_NATS_PASSWORD).
    #[arg(long, env = "TALLY_NATS_USER", global = true)]
    pub nats_user: Option<String>,
    /// NATS password (with TALLY_NATS_USER).
    #[arg(
        long,
        env = "TALLY_NATS_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// NATS token.
    #[arg(long, env = "TALLY_NATS_TOKEN", global = true, hide_env_values = true)]
    pub nats_token: Option<String>,
    /// PEM file of the CA certificates that sign the NATS servers' TLS
    /// certificates (TLS is then required; tls:// URLs require it anyway).
    #[arg(long, env = "TALLY_NATS_TLS_CA", global = true)]
    pub nats_tls_ca: Option<std::path::PathBuf>,
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
    /// Stream replicas.
    pub nats_replicas: usize,
    /// Consumer ack wait.
    pub ack_wait: Duration,
    /// The API base URL for the worker's preflight.
    pub api_url: String,
    /// Model catalog persistence file.
    pub catalog_path: Option<std::path::PathBuf>,
    /// BYOK providers per organisation or agent.
    pub byok_providers: Vec<ByokEntry>,
    /// Reconciler lookups per second.
    pub reconcile_rate: u32,
    /// JSON logs.
    pub log_json: bool,
    /// The operator token, if set.
    pub operator_token: Option<SecretString>,
    /// NATS credentials.
    pub nats_auth: tally_bus::NatsAuth,
    /// CA certificates for NATS TLS.
    pub nats_tls_ca: Option<std::path::PathBuf>,
}

fn err(env: &'static str, flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        env,
        flag,
        reason: reason.into(),
    }
}

fn addr(env: &'static str, flag: &'static str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| {
        err(
            env,
            flag,
            format!("{v:?} is not an address like 127.0.0.1:8080"),
        )
    })
}

impl Settings {
    /// Validates every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        for url in self.nats_url.split(',') {
            let url = url.trim();
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
        let http_addr = addr("TALLY_HTTP_ADDR", "--http-addr", &self.http_addr)?;
        let metrics_addr = match &self.metrics_addr {
            Some(m) if !m.is_empty() => Some(addr("TALLY_METRICS_ADDR", "--metrics-addr", m)?),
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
        let ack_wait = humantime::parse_duration(&self.ack_wait)
            .ok()
            .filter(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(3600))
            .ok_or_else(|| {
                err(
                    "TALLY_ACK_WAIT",
                    "--ack-wait",
                    format!(
                        "{:?} must be a duration between 1s and 1h, like 60s",
                        self.ack_wait
                    ),
                )
            })?;
        let api_url = match &self.api_url {
            Some(u) => {
                let u = u.trim_end_matches('/');
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(err(
                        "TALLY_API_URL",
                        "--api-url",
                        format!("{u:?} is not an http(s) URL like http://127.0.0.1:8080"),
                    ));
                }
                u.to_owned()
            }
            None => format!("http://{http_addr}"),
        };
        let byok_providers = parse_byok(&self.byok_providers)
            .map_err(|reason| err("TALLY_BYOK_PROVIDERS", "--byok-providers", reason))?;
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
        let operator_token = match &self.operator_token {
            None => None,
            Some(t) => Some(
                check_operator_token(t)
                    .map_err(|reason| err("TALLY_OPERATOR_TOKEN", "--operator-token", reason))?,
            ),
        };
        let nats_auth = self.nats_auth()?;
        if let Some(ca) = &self.nats_tls_ca {
            if !ca.is_file() {
                return Err(err(
                    "TALLY_NATS_TLS_CA",
                    "--nats-tls-ca",
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        Ok(Config {
            nats_url: self.nats_url.clone(),
            database_url: self.database_url.clone(),
            openrouter_base_url: base.to_owned(),
            openrouter_api_key: self.openrouter_api_key.clone(),
            http_addr,
            metrics_addr,
            prefix: p.clone(),
            reconcile_deadline,
            nats_replicas,
            ack_wait,
            api_url,
            catalog_path: self.catalog_path.clone(),
            byok_providers,
            reconcile_rate,
            log_json: self.log_json,
            operator_token,
            nats_auth,
            nats_tls_ca: self.nats_tls_ca.clone(),
        })
    }

    /// At most one way of authenticating to NATS, complete.
    fn nats_auth(&self) -> Result<tally_bus::NatsAuth, ConfigError> {
        let nonempty = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
        let (user, password, token) = (
            nonempty(&self.nats_user),
            nonempty(&self.nats_password),
            nonempty(&self.nats_token),
        );
        let creds = self.nats_creds.clone().filter(|p| !p.as_os_str().is_empty());
        let methods = usize::from(creds.is_some())
            + usize::from(user.is_some() || password.is_some())
            + usize::from(token.is_some());
        if methods > 1 {
            return Err(err(
                "TALLY_NATS_CREDS",
                "--nats-creds",
                "set only one of TALLY_NATS_CREDS, TALLY_NATS_USER + TALLY_NATS_PASSWORD, TALLY_NATS_TOKEN",
            ));
        }
        if let Some(path) = creds {
            if !path.is_file() {
                return Err(err(
                    "TALLY_NATS_CREDS",
                    "--nats-creds",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            return Ok(tally_bus::NatsAuth::CredsFile(path));
        }
        match (user, password, token) {
            (Some(user), Some(password), _) => Ok(tally_bus::NatsAuth::UserPassword {
                user,
                password: SecretString::from(password),
            }),
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
            (None, None, Some(token)) => Ok(tally_bus::NatsAuth::Token(SecretString::from(token))),
            (None, None, None) => Ok(tally_bus::NatsAuth::None),
        }
    }
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

/// Upstream providers an organisation (or one of its agents) has keys for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByokEntry {
    /// Organisation.
    pub org: String,
    /// Agent, when the entry is for one agent only.
    pub agent: Option<String>,
    /// Provider names.
    pub providers: Vec<String>,
}

/// Parses `org=p1+p2;org/agent=p3` into entries.
fn parse_byok(text: &str) -> Result<Vec<ByokEntry>, String> {
    let is_id = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let mut out = Vec::new();
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (who, providers) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?} must look like org=provider+provider"))?;
        let (org, agent) = match who.split_once('/') {
            Some((o, a)) => (o, Some(a)),
            None => (who, None),
        };
        if !is_id(org) || agent.is_some_and(|a| !is_id(a)) {
            return Err(format!(
                "{who:?}: org and agent ids must match ^[A-Za-z0-9_-]{{1,64}}$"
            ));
        }
        let providers: Vec<String> = providers
            .split('+')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if providers.is_empty() {
            return Err(format!("{entry:?} names no provider"));
        }
        out.push(ByokEntry {
            org: org.to_owned(),
            agent: agent.map(str::to_owned),
            providers,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_tokens_are_long_visible_and_not_keys() {
        assert!(check_operator_token(&"x".repeat(32)).is_ok());
        assert!(check_operator_token(&"x".repeat(31)).is_err());
        assert!(check_operator_token(&format!("{} y", "x".repeat(32))).is_err());
        let e = check_operator_token(&format!("tly_{}", "x".repeat(40))).unwrap_err();
        assert!(!e.contains("xxxx"), "{e}");
    }

    #[test]
    fn byok_providers_parse_per_org_and_agent() {
        let v = parse_byok("acme=anthropic+openai; acme/researcher=anthropic").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].org.as_str(), v[0].agent.as_deref()), ("acme", None));
        assert_eq!(v[0].providers, vec!["anthropic", "openai"]);
        assert_eq!(v[1].agent.as_deref(), Some("researcher"));
        assert_eq!(v[1].providers, vec!["anthropic"]);
        assert!(parse_byok("").unwrap().is_empty());
        assert!(parse_byok("acme").is_err());
        assert!(parse_byok("acme=").is_err());
        assert!(parse_byok("a b=x").is_err());
    }
}
