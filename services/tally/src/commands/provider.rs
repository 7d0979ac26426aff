//! `tally provider connect` and `tally secrets rotate`: the operator's side
//! of provider connections.
//!
//! * `tally provider connect --org ORG [--byok a,b]` reads the
//!   OpenRouter key from `TALLY_OPENROUTER_API_KEY` or, when that is unset,
//!   from the first line of standard input; verifies it with OpenRouter,
//!   seals and stores it, discovers the models, and prints the connection
//!   status as one JSON line (never the key).
//! * `tally secrets rotate` re-wraps every stored secret under the current
//!   `TALLY_SECRETS_KEY`; afterwards `TALLY_SECRETS_KEY_PREVIOUS` can be
//!   dropped.

use std::io::BufRead;

use anyhow::Context;
use tally_provider::{Connections, SecretString};
use tally_store::providers::ConnectedVia;

use crate::config::Config;

/// `tally provider …`.
#[derive(clap::Subcommand, Debug)]
pub enum ProviderCommand {
    /// Connect an organisation to OpenRouter with a key (from
    /// TALLY_OPENROUTER_API_KEY or standard input).
    Connect {
        /// The organisation.
        #[arg(long)]
        org: String,
        /// Upstream providers whose own keys the organisation brought
        /// (BYOK), comma-separated; they belong to the connection (and to
        /// routing profiles), never to a process setting.
        #[arg(long = "byok", id = "connect_byok", value_delimiter = ',')]
        byok_providers: Option<Vec<String>>,
    },
}

/// `tally secrets …`.
#[derive(clap::Subcommand, Debug)]
pub enum SecretsCommand {
    /// Re-wrap every stored secret under the current TALLY_SECRETS_KEY.
    Rotate,
}

pub(crate) fn connections(cfg: &Config, store: tally_store::Store) -> anyhow::Result<Connections> {
    let base = tally_openrouter::OpenRouterClient::new(tally_openrouter::ClientConfig::new(
        cfg.openrouter_base_url.clone(),
    ))?;
    Ok(Connections::new(
        store,
        cfg.keyring.clone(),
        base,
        cfg.openrouter_auth_url.clone(),
        cfg.public_url.clone(),
    ))
}

fn valid_org(org: &str) -> bool {
    !org.is_empty()
        && org.len() <= 64
        && org
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Runs `tally provider …`.
pub async fn provider(cfg: &Config, cmd: ProviderCommand) -> anyhow::Result<()> {
    match cmd {
        ProviderCommand::Connect {
            org,
            byok_providers,
        } => {
            if !valid_org(&org) {
                return Err(super::UsageError(format!(
                    "--org {org:?} must match ^[A-Za-z0-9_-]{{1,64}}$"
                ))
                .into());
            }
            if cfg.keyring.is_none() {
                return Err(super::UsageError(
                    "TALLY_SECRETS_KEY is not set: the key cannot be stored (secrets_key_missing)"
                        .to_owned(),
                )
                .into());
            }
            let key = match &cfg.openrouter_api_key {
                Some(k) => SecretString::from(k.clone()),
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .context("reading the OpenRouter key from standard input")?;
                    SecretString::from(line.trim().to_owned())
                }
            };
            let store = super::connect_store(cfg, 2).await?;
            let status = connections(cfg, store)?
                .connect_key(&org, key, ConnectedVia::ApiKey, byok_providers)
                .await
                .map_err(|e| anyhow::anyhow!("{} ({})", e, e.code()))?;
            println!("{}", serde_json::to_string(&status)?);
            Ok(())
        }
    }
}

/// Runs `tally secrets …`.
pub async fn secrets(cfg: &Config, cmd: SecretsCommand) -> anyhow::Result<()> {
    match cmd {
        SecretsCommand::Rotate => {
            if cfg.keyring.is_none() {
                return Err(super::UsageError(
                    "TALLY_SECRETS_KEY is not set: there is no key to rotate to".to_owned(),
                )
                .into());
            }
            let store = super::connect_store(cfg, 2).await?;
            let report = connections(cfg, store)?
                .rotate()
                .await
                .map_err(|e| anyhow::anyhow!("{} ({})", e, e.code()))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}
