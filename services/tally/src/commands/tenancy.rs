//! `tally org create` and `tally key create|revoke`: the operator's
//! commands for organisations and API keys, straight against Postgres.
//!
//! `org create` and `key create` print exactly one JSON line on standard
//! output, `{"org_id", "key_id", "key", "role"}`: the key's secret, shown
//! this once and never again (only its SHA-256 digest is stored).
//! `key revoke` prints `{"key_id", "org_id", "revoked_at"}`; the key stops
//! working on every API instance within a second.

use anyhow::Context;
use secrecy::ExposeSecret;
use serde_json::json;
use tally_store::{IssuedKey, Role, StoreError};

use super::UsageError;
use crate::config::Config;

/// `tally org …`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum OrgCommand {
    /// Create an organisation and print its first admin key (one JSON line).
    Create {
        /// Organisation id (`^[A-Za-z0-9_-]{1,64}$`).
        org_id: String,
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
    },
}

/// `tally key …`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum KeyCommand {
    /// Issue an API key for an organisation and print it (one JSON line).
    Create {
        /// The organisation.
        #[arg(long)]
        org: String,
        /// `admin` (budgets and keys) or `member` (reads and checks).
        #[arg(long)]
        role: String,
        /// A name for people (shown in key listings).
        #[arg(long)]
        name: Option<String>,
    },
    /// Revoke an API key at once.
    Revoke {
        /// The key id (`key_id` of `key create`).
        key_id: String,
    },
}

fn issued_line(key: &IssuedKey) -> String {
    json!({
        "org_id": key.info.org_id,
        "key_id": key.info.id,
        "key": key.secret.expose_secret(),
        "role": key.info.role.as_str(),
    })
    .to_string()
}

fn usage(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::Invalid { field, reason } => {
            UsageError(format!("invalid {field}: {reason}")).into()
        }
        e => anyhow::Error::new(e),
    }
}

/// `tally org create`.
pub async fn org(cfg: &Config, cmd: OrgCommand) -> anyhow::Result<()> {
    let OrgCommand::Create { org_id, name } = cmd;
    let store = super::connect_store(cfg, 1).await?;
    let (_, key) = store
        .create_org(&org_id, name.as_deref())
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => {
                UsageError(format!("organisation {org_id:?} exists already")).into()
            }
            e => usage(e),
        })
        .context("cannot create the organisation (has `tally migrate` run?)")?;
    println!("{}", issued_line(&key));
    Ok(())
}

/// `tally key create|revoke`.
pub async fn key(cfg: &Config, cmd: KeyCommand) -> anyhow::Result<()> {
    let store = super::connect_store(cfg, 1).await?;
    match cmd {
        KeyCommand::Create { org, role, name } => {
            let role = Role::parse(&role).ok_or_else(|| {
                UsageError(format!("--role must be admin or member, not {role:?}"))
            })?;
            let key = store
                .create_key(&org, role, name.as_deref())
                .await
                .map_err(|e| match e {
                    StoreError::NotFound { .. } => {
                        UsageError(format!("no organisation {org:?} (tally org create)")).into()
                    }
                    StoreError::LimitExceeded { max, .. } => UsageError(format!(
                        "organisation {org:?} has {max} unrevoked keys already; revoke one first"
                    ))
                    .into(),
                    e => usage(e),
                })
                .context("cannot issue the key")?;
            println!("{}", issued_line(&key));
        }
        KeyCommand::Revoke { key_id } => {
            let id = uuid::Uuid::parse_str(&key_id)
                .map_err(|_| UsageError(format!("{key_id:?} is not a key id")))?;
            let info = store.revoke_key(id, None).await.map_err(|e| match e {
                StoreError::NotFound { .. } => {
                    anyhow::Error::new(UsageError(format!("no key {key_id}")))
                }
                e => anyhow::Error::new(e),
            })?;
            println!(
                "{}",
                json!({
                    "key_id": info.id,
                    "org_id": info.org_id,
                    "revoked_at": info.revoked_at,
                })
            );
        }
    }
    Ok(())
}
