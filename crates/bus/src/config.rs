//! How to reach NATS: [`BusConfig`] (servers, credentials, TLS, replicas,
//! ack wait) and the timeouts and limits every connection uses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use crate::*;

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

/// Connect options from a `.creds` file or a bare user nkey seed file;
/// errors name the file, never its contents.
pub(crate) async fn credentials_file(path: &Path) -> Result<async_nats::ConnectOptions, BusError> {
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
