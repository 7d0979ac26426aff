//! [`Bus`]: one connection to NATS and JetStream with the topology names of
//! one prefix.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::ServerAddr;
use secrecy::ExposeSecret;

use crate::*;

/// A connection to the bus with the topology names of one prefix.
#[derive(Debug, Clone)]
pub struct Bus {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) prefix: String,
    pub(crate) stream_prefix: String,
    pub(crate) replicas: usize,
    pub(crate) ack_wait: Duration,
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
}
