//! tally-provider: an organisation's connection to OpenRouter.
//!
//! An organisation admin connects OpenRouter once — by pasting a key or
//! through OpenRouter's OAuth PKCE flow — and every agent of the
//! organisation then runs on that stored credential. No service uses an
//! environment key for an organisation's traffic.
//!
//! * [`Connections`] — connect with a key (verified with `GET /key`, sealed
//!   with [`tally_secrets`], stored), start and finish the OAuth flow,
//!   status (never the key), disconnect, model discovery, rotation.
//! * [`oauth`] — PKCE verifier and challenge, single-use state tokens, the
//!   authorize URL, and [`oauth::validate_public_url`] (OpenRouter's
//!   callback rule for `TALLY_PUBLIC_URL`).
//! * [`catalog`] — the per-organisation model catalog: exact prices,
//!   limits and the capability profile of each model.
//! * [`profile`] — routing profiles (organisation default and per agent).
//! * [`cache`] — [`OrgProviders`]: what the worker and the reconciler need
//!   per organisation (a client with its own key, its catalog, BYOK
//!   providers and profiles), decrypted when needed, cached briefly and
//!   refreshed at once when the connection changes (Postgres `NOTIFY`).
//!
//! # Invariants
//!
//! * **The key never leaves.** Plaintext keys are [`SecretString`]s from
//!   the moment they are read; they are sealed before they reach Postgres,
//!   never returned by [`Connections::status`], never logged, never part of
//!   an error.
//! * **Bound to the organisation.** A sealed key opens only for the
//!   organisation, provider and field it was sealed for.
//! * **A slow or failing discovery never fails a save**: the connection is
//!   stored first; the discovery error is recorded and shown.
//!
//! # Decisions
//!
//! * **One crate for the connection domain**, used by the API (connect,
//!   OAuth, status, profiles), the worker and the reconciler (keys,
//!   catalogs, profiles) and the command line (`tally provider connect`,
//!   `tally secrets rotate`), so all of them read one storage format.
//! * **The OAuth state token is random and only its SHA-256 is stored**;
//!   the code verifier is sealed like a credential (it must be sent back to
//!   OpenRouter, so it cannot be hashed). The callback URL carries the state
//!   because OpenRouter echoes no state of its own.
//! * **Caches notice changes by `NOTIFY`, with a TTL as the safety net**
//!   ([`cache::DEFAULT_TTL`]): a disconnected key stops being used within
//!   milliseconds normally and within the TTL if the notification is lost.

pub mod cache;
pub mod catalog;
pub mod connections;
pub mod oauth;
pub mod profile;

pub use cache::{OrgProvider, OrgProviders};
pub use connections::{ConnectionStatus, Connections, ModelsStatus, RotateReport};
pub use profile::RoutingProfile;
pub use secrecy::SecretString;

/// The provider this crate connects (the `provider` column and secret
/// context).
pub const OPENROUTER: &str = "openrouter";

/// The secret field of a connection's API key.
pub const FIELD_API_KEY: &str = "api_key";

/// The secret field of an OAuth state's code verifier.
pub const FIELD_CODE_VERIFIER: &str = "oauth_code_verifier";

/// Why a provider operation failed. Each variant has a stable
/// [`code`](ProviderError::code) (problem types, failure reasons).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// `TALLY_SECRETS_KEY` is not configured: nothing secret can be stored
    /// or read.
    #[error("TALLY_SECRETS_KEY is not set: provider credentials cannot be stored or read")]
    SecretsKeyMissing,
    /// OpenRouter refused the key (`GET /key` answered 401/403).
    #[error("OpenRouter rejected the key: {0}")]
    KeyRejected(String),
    /// OpenRouter could not be asked (timeout, 5xx, transport).
    #[error("OpenRouter could not be reached: {0}")]
    Unreachable(String),
    /// The organisation has no connection.
    #[error("the organisation has not connected OpenRouter")]
    NotConnected,
    /// The OAuth state is unknown, used or expired.
    #[error("{}", state_message(*.0))]
    State(tally_store::providers::StateRefused),
    /// The admin key that started the OAuth flow was revoked (or is no
    /// longer an admin key) before the browser came back.
    #[error("the admin key that started this connection was revoked: start connecting again")]
    StarterRevoked,
    /// OpenRouter refused the code exchange (wrong code or verifier).
    #[error("OpenRouter refused the authorization code: {0}")]
    ExchangeRefused(String),
    /// The OAuth flow cannot start: `TALLY_PUBLIC_URL` is not configured.
    #[error("TALLY_PUBLIC_URL is not set: the OAuth callback has no address")]
    PublicUrlMissing,
    /// A stored secret could not be opened (wrong key, tampered, misplaced).
    #[error("stored credential unusable: {0}")]
    Secret(#[from] tally_secrets::SecretsError),
    /// Invalid input (a routing profile, a BYOK provider name).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Stable code of the problem (`invalid_profile`, `byok_no_providers`, …).
        code: &'static str,
        /// The offending field.
        field: String,
        /// Why.
        reason: String,
    },
    /// Postgres failed.
    #[error(transparent)]
    Store(#[from] tally_store::StoreError),
}

fn state_message(s: tally_store::providers::StateRefused) -> &'static str {
    use tally_store::providers::StateRefused::*;
    match s {
        Unknown => "this connection link is unknown: start connecting again",
        Used => "this connection link was already used: start connecting again",
        Expired => "this connection link has expired (10 minutes): start connecting again",
    }
}

impl ProviderError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::SecretsKeyMissing => "secrets_key_missing",
            ProviderError::KeyRejected(_) => "provider_key_rejected",
            ProviderError::Unreachable(_) => "provider_unreachable",
            ProviderError::NotConnected => "provider_not_connected",
            ProviderError::State(s) => s.code(),
            ProviderError::ExchangeRefused(_) => "oauth_exchange_refused",
            ProviderError::StarterRevoked => "oauth_admin_revoked",
            ProviderError::PublicUrlMissing => "public_url_missing",
            ProviderError::Secret(e) if *e == tally_secrets::SecretsError::KeyMissing => {
                "secrets_key_missing"
            }
            ProviderError::Secret(e) => e.code(),
            ProviderError::Invalid { code, .. } => code,
            ProviderError::Store(e) => e.code(),
        }
    }
}

/// Checks a list of BYOK provider names: each 1 to 64 printable characters
/// without spaces at the ends, at most 32 of them, no duplicates.
pub fn validate_byok_providers(list: &[String]) -> Result<Vec<String>, ProviderError> {
    let bad = |reason: String| ProviderError::Invalid {
        code: "invalid_byok_providers",
        field: "byok_providers".to_owned(),
        reason,
    };
    if list.len() > 32 {
        return Err(bad("at most 32 providers".to_owned()));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for p in list {
        if p.is_empty()
            || p.chars().count() > 64
            || p.trim() != p
            || p.chars().any(char::is_control)
        {
            return Err(bad(format!(
                "{p:?} must be 1 to 64 printable characters without surrounding spaces"
            )));
        }
        if out.contains(p) {
            return Err(bad(format!("{p:?} is given twice")));
        }
        out.push(p.clone());
    }
    Ok(out)
}
