//! Connecting an organisation: key verification, sealing, storage, the
//! OAuth flow, status, disconnection, model discovery and key rotation.
//!
//! # Invariants
//!
//! * A key is stored only after OpenRouter accepted it (`GET /key`), and
//!   only sealed for (organisation, `openrouter`, `api_key`).
//! * Discovery runs after the save, bounded by
//!   [`Connections::discovery_timeout`]; its failure is recorded on the
//!   connection (`models.error`) and never undoes the save.
//! * [`Connections::finish_oauth`] stores nothing unless the state is
//!   valid (taken exactly once), the admin key that started the flow is
//!   still an unrevoked admin key of the organisation, the verifier opens
//!   for the state's organisation, and OpenRouter accepts the code with it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tally_money::Usd;
use tally_openrouter::{OpenRouterClient, OpenRouterError};
use tally_secrets::{Context, Keyring};
use tally_store::providers::{ConnectedVia, Connection, NewConnection, NewOAuthState};
use tally_store::Store;
use url::Url;

use crate::catalog::{to_stored, WireModel};
use crate::oauth::{self, Pkce};
use crate::{ProviderError, FIELD_API_KEY, FIELD_CODE_VERIFIER, OPENROUTER};

/// `models` of a connection's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelsStatus {
    /// Models in the organisation's catalog.
    pub count: usize,
    /// Last successful discovery.
    pub synced_at: Option<DateTime<Utc>>,
    /// Error of the last discovery, if it failed.
    pub error: Option<String>,
}

/// What `GET /v1/providers/openrouter` shows: never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionStatus {
    /// Whether a key is stored.
    pub connected: bool,
    /// `api_key` or `oauth`.
    pub connected_via: Option<&'static str>,
    /// When it was connected.
    pub connected_at: Option<DateTime<Utc>>,
    /// OpenRouter's masked label of the key.
    pub key_label: Option<String>,
    /// Remaining credit at connection time (decimal string, USD).
    pub limit_remaining_usd: Option<String>,
    /// Whether the account is on the free tier.
    pub is_free_tier: Option<bool>,
    /// BYOK providers.
    pub byok_providers: Vec<String>,
    /// The catalog.
    pub models: ModelsStatus,
}

impl ConnectionStatus {
    fn disconnected() -> Self {
        ConnectionStatus {
            connected: false,
            connected_via: None,
            connected_at: None,
            key_label: None,
            limit_remaining_usd: None,
            is_free_tier: None,
            byok_providers: Vec::new(),
            models: ModelsStatus {
                count: 0,
                synced_at: None,
                error: None,
            },
        }
    }
}

/// The start of an OAuth flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OAuthStart {
    /// Where to send the browser.
    pub authorize_url: String,
    /// When the state stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// What `tally secrets rotate` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RotateReport {
    /// Secrets re-wrapped under the current key.
    pub rewrapped: usize,
    /// Secrets already under the current key.
    pub current: usize,
    /// The current key's id.
    pub key_id: String,
}

/// The connection service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Connections {
    store: Store,
    keyring: Option<Arc<Keyring>>,
    client: OpenRouterClient,
    auth_url: String,
    public_url: Option<Url>,
    /// How long model discovery may take before the save is answered
    /// without it (default 10 s; zero: never inline, always later).
    pub discovery_timeout: Duration,
}

fn ctx<'a>(org_id: &'a str, field: &'a str) -> Context<'a> {
    Context {
        org_id,
        provider: OPENROUTER,
        field,
    }
}

fn classify(e: OpenRouterError) -> ProviderError {
    match e {
        OpenRouterError::Auth { status, message } => {
            ProviderError::KeyRejected(format!("HTTP {status}: {message}"))
        }
        other => ProviderError::Unreachable(other.to_string()),
    }
}

impl Connections {
    /// A service over `store`, sealing with `keyring` (`None`: refuse to
    /// store or read secrets), asking OpenRouter through `client` (its own
    /// key, if any, is never used: every call carries the organisation's).
    pub fn new(
        store: Store,
        keyring: Option<Arc<Keyring>>,
        client: OpenRouterClient,
        auth_url: impl Into<String>,
        public_url: Option<Url>,
    ) -> Self {
        Connections {
            store,
            keyring,
            client,
            auth_url: auth_url.into(),
            public_url,
            discovery_timeout: Duration::from_secs(10),
        }
    }

    fn keyring(&self) -> Result<&Keyring, ProviderError> {
        self.keyring
            .as_deref()
            .ok_or(ProviderError::SecretsKeyMissing)
    }

    /// Whether secrets can be stored (a key-encryption key is configured).
    pub fn can_store_secrets(&self) -> bool {
        self.keyring.is_some()
    }

    /// Verifies `key` with `GET /key`, seals and stores it, then discovers
    /// the models (bounded; a failure is recorded, not returned).
    /// `byok_providers` `None` keeps the current list (or none).
    pub async fn connect_key(
        &self,
        org_id: &str,
        key: SecretString,
        via: ConnectedVia,
        byok_providers: Option<Vec<String>>,
    ) -> Result<ConnectionStatus, ProviderError> {
        let keyring = self.keyring()?;
        if key.expose_secret().trim().is_empty() {
            return Err(ProviderError::Invalid {
                code: "invalid_api_key",
                field: "api_key".to_owned(),
                reason: "must not be empty".to_owned(),
            });
        }
        let byok = match byok_providers {
            Some(list) => crate::validate_byok_providers(&list)?,
            None => self
                .store
                .connection(org_id, OPENROUTER)
                .await?
                .map(|c| c.byok_providers)
                .unwrap_or_default(),
        };
        let client = self
            .client
            .with_key(&key)
            .map_err(|_| ProviderError::Invalid {
                code: "invalid_api_key",
                field: "api_key".to_owned(),
                reason: "contains characters that cannot be sent in a header".to_owned(),
            })?;
        let info = client.key_info().await.map_err(classify)?;
        let sealed = keyring.seal(&ctx(org_id, FIELD_API_KEY), &key);
        self.store
            .upsert_connection(&NewConnection {
                org_id: org_id.to_owned(),
                provider: OPENROUTER.to_owned(),
                via,
                key_label: Some(info.label.clone()).filter(|l| !l.is_empty()),
                limit_remaining_usd: info.limit_remaining,
                is_free_tier: Some(info.is_free_tier),
                byok_providers: byok,
                sealed_key: sealed,
            })
            .await?;
        tracing::info!(org_id, via = via.as_str(), "provider connected");
        match self.bounded(self.discover(org_id, &client)).await {
            Ok(Ok(n)) => tracing::info!(org_id, models = n, "models discovered"),
            Ok(Err(e)) => tracing::warn!(org_id, error = %e, "model discovery failed"),
            Err(_) => {
                let msg = format!(
                    "model discovery did not finish within {} s",
                    self.discovery_timeout.as_secs()
                );
                tracing::warn!(org_id, "{msg}");
                self.store
                    .record_model_sync(org_id, OPENROUTER, None, Some(&msg))
                    .await?;
            }
        }
        self.status(org_id).await
    }

    /// Runs a discovery within [`Connections::discovery_timeout`]; a zero
    /// timeout does not start it at all (the discovery is left to the
    /// periodic sync or a later `models/sync`), exactly, whatever the
    /// timer's resolution.
    async fn bounded<F: std::future::Future>(
        &self,
        f: F,
    ) -> Result<F::Output, tokio::time::error::Elapsed> {
        if self.discovery_timeout.is_zero() {
            // An already elapsed timeout, without polling `f`.
            return tokio::time::timeout(Duration::ZERO, std::future::pending::<F::Output>()).await;
        }
        tokio::time::timeout(self.discovery_timeout, f).await
    }

    /// Fetches the catalog with `client` and stores it; a failure is
    /// recorded on the connection and returned.
    async fn discover(
        &self,
        org_id: &str,
        client: &OpenRouterClient,
    ) -> Result<usize, ProviderError> {
        let listed = match client.models_user().await {
            Ok(m) => Ok(m),
            Err(OpenRouterError::Auth { status, message }) => {
                Err(OpenRouterError::Auth { status, message })
            }
            Err(e) => {
                tracing::debug!(org_id, error = %e, "/models/user failed; trying /models");
                client.models().await
            }
        };
        match listed {
            Ok(models) => {
                let stored: Vec<_> = models.iter().map(to_stored).collect();
                self.store
                    .replace_models(org_id, OPENROUTER, &stored, Utc::now())
                    .await?;
                Ok(stored.len())
            }
            Err(e) => {
                let err = classify(e);
                self.store
                    .record_model_sync(org_id, OPENROUTER, None, Some(&err.to_string()))
                    .await?;
                Err(err)
            }
        }
    }

    /// Opens the stored key of a connection.
    pub fn open_key(&self, conn: &Connection) -> Result<SecretString, ProviderError> {
        Ok(self
            .keyring()?
            .open(&ctx(&conn.org_id, FIELD_API_KEY), &conn.sealed_key)?)
    }

    /// Discovers the organisation's models now (`POST …/models/sync`).
    pub async fn sync_models(&self, org_id: &str) -> Result<ModelsStatus, ProviderError> {
        let conn = self
            .store
            .connection(org_id, OPENROUTER)
            .await?
            .ok_or(ProviderError::NotConnected)?;
        let key = self.open_key(&conn)?;
        let client = self
            .client
            .with_key(&key)
            .map_err(|e| ProviderError::Unreachable(e.to_string()))?;
        let r = self.bounded(self.discover(org_id, &client)).await;
        if r.is_err() {
            let msg = format!(
                "model discovery did not finish within {} s",
                self.discovery_timeout.as_secs()
            );
            self.store
                .record_model_sync(org_id, OPENROUTER, None, Some(&msg))
                .await?;
        }
        Ok(self.status(org_id).await?.models)
    }

    /// Discovers the models of every connected organisation (the periodic
    /// sync); failures are recorded per organisation. Returns how many
    /// organisations synced.
    pub async fn sync_all(&self) -> Result<usize, ProviderError> {
        let mut ok = 0;
        for conn in self.store.connections().await? {
            match self.sync_models(&conn.org_id).await {
                Ok(m) if m.error.is_none() => ok += 1,
                Ok(m) => {
                    tracing::warn!(org_id = conn.org_id, error = ?m.error, "periodic model sync failed")
                }
                Err(e) => {
                    tracing::warn!(org_id = conn.org_id, error = %e, "periodic model sync failed")
                }
            }
        }
        Ok(ok)
    }

    /// Keeps every connected organisation's catalog fresh until `shutdown`
    /// turns true: every `check` (at most `interval`), the organisations
    /// whose last successful discovery is older than `interval` (or that
    /// never had one) are discovered again; one whose discovery failed is
    /// tried again `interval` after that attempt, not at every check.
    /// Progress and failures are logged; nothing here ever stops the API.
    pub async fn sync_periodically(
        self,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let check = interval.min(Duration::from_secs(300));
        let age = chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
        let mut attempted: std::collections::HashMap<String, std::time::Instant> =
            std::collections::HashMap::new();
        tracing::info!(
            interval_secs = interval.as_secs(),
            "periodic model discovery scheduled"
        );
        loop {
            match self.store.connections().await {
                Ok(conns) => {
                    let now = Utc::now();
                    let due: Vec<String> = conns
                        .into_iter()
                        .filter(|c| c.provider == OPENROUTER)
                        .filter(|c| c.models_synced_at.is_none_or(|t| now - t >= age))
                        .filter(|c| {
                            attempted
                                .get(&c.org_id)
                                .is_none_or(|t| t.elapsed() >= interval)
                        })
                        .map(|c| c.org_id)
                        .collect();
                    if !due.is_empty() {
                        let started = std::time::Instant::now();
                        let (mut ok, mut failed) = (0usize, 0usize);
                        for org_id in &due {
                            attempted.insert(org_id.clone(), std::time::Instant::now());
                            match self.sync_models(org_id).await {
                                Ok(m) if m.error.is_none() => {
                                    ok += 1;
                                    tracing::debug!(org_id, models = m.count, "models synced");
                                }
                                Ok(m) => {
                                    failed += 1;
                                    tracing::warn!(org_id, error = ?m.error, "periodic model sync failed");
                                }
                                Err(e) => {
                                    failed += 1;
                                    tracing::warn!(org_id, code = e.code(), error = %e, "periodic model sync failed");
                                }
                            }
                        }
                        tracing::info!(
                            organisations = due.len(),
                            synced = ok,
                            failed,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "periodic model sync done"
                        );
                    }
                }
                Err(e) => tracing::warn!(
                    code = e.code(),
                    "periodic model sync: connections unreadable"
                ),
            }
            tokio::select! {
                () = tokio::time::sleep(check) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// The connection's status (never the key).
    pub async fn status(&self, org_id: &str) -> Result<ConnectionStatus, ProviderError> {
        let Some((c, count)) = self
            .store
            .connection_with_model_count(org_id, OPENROUTER)
            .await?
        else {
            return Ok(ConnectionStatus::disconnected());
        };
        Ok(ConnectionStatus {
            connected: true,
            connected_via: Some(c.via.as_str()),
            connected_at: Some(c.connected_at),
            key_label: c.key_label,
            limit_remaining_usd: c
                .limit_remaining_usd
                .map(|d: Usd| tally_money::to_decimal_string(&d)),
            is_free_tier: c.is_free_tier,
            byok_providers: c.byok_providers,
            models: ModelsStatus {
                count,
                synced_at: c.models_synced_at,
                error: c.models_error,
            },
        })
    }

    /// The organisation's catalog in its wire form, and when it was synced.
    pub async fn models(
        &self,
        org_id: &str,
    ) -> Result<(Vec<WireModel>, Option<DateTime<Utc>>), ProviderError> {
        let conn = self.store.connection(org_id, OPENROUTER).await?;
        let models = self.store.models(org_id, OPENROUTER).await?;
        Ok((
            models.iter().map(WireModel::of).collect(),
            conn.and_then(|c| c.models_synced_at),
        ))
    }

    /// Disconnects: deletes the connection, its ciphertext and its catalog.
    pub async fn disconnect(&self, org_id: &str) -> Result<bool, ProviderError> {
        let gone = self.store.delete_connection(org_id, OPENROUTER).await?;
        if gone {
            tracing::info!(org_id, "provider disconnected");
        }
        Ok(gone)
    }

    /// Starts the OAuth PKCE flow for `org_id` on behalf of the admin key
    /// `admin_key_id`.
    pub async fn start_oauth(
        &self,
        org_id: &str,
        admin_key_id: Option<&str>,
        byok_providers: Option<Vec<String>>,
    ) -> Result<OAuthStart, ProviderError> {
        let keyring = self.keyring()?;
        let public = self
            .public_url
            .as_ref()
            .ok_or(ProviderError::PublicUrlMissing)?;
        let byok = byok_providers
            .map(|l| crate::validate_byok_providers(&l))
            .transpose()?;
        let pkce = Pkce::generate();
        let (state, digest) = oauth::new_state();
        let expires_at = Utc::now()
            + chrono::Duration::from_std(oauth::STATE_TTL)
                .unwrap_or_else(|_| chrono::Duration::minutes(10));
        self.store
            .insert_oauth_state(&NewOAuthState {
                state_sha256: digest,
                org_id: org_id.to_owned(),
                provider: OPENROUTER.to_owned(),
                admin_key_id: admin_key_id.map(str::to_owned),
                byok_providers: byok,
                sealed_verifier: keyring.seal(&ctx(org_id, FIELD_CODE_VERIFIER), &pkce.verifier),
                expires_at,
            })
            .await?;
        let authorize_url = oauth::authorize_url(&self.auth_url, public, &state, &pkce.challenge)
            .map_err(|reason| ProviderError::Invalid {
            code: "invalid_auth_url",
            field: "TALLY_OPENROUTER_AUTH_URL".to_owned(),
            reason,
        })?;
        Ok(OAuthStart {
            authorize_url,
            expires_at,
        })
    }

    /// Finishes the OAuth flow: takes the state (once), exchanges the code
    /// with the stored verifier and stores the key as `oauth`. Returns the
    /// organisation and its status.
    pub async fn finish_oauth(
        &self,
        state: &str,
        code: &str,
    ) -> Result<(String, ConnectionStatus), ProviderError> {
        let keyring = self.keyring()?;
        let taken = self
            .store
            .take_oauth_state(&oauth::state_digest(state))
            .await?
            .map_err(ProviderError::State)?;
        if let Some(id) = taken.admin_key_id.as_deref() {
            let still_admin = self
                .store
                .list_keys(&taken.org_id)
                .await?
                .iter()
                .any(|k| k.id.to_string() == id && k.role == tally_store::Role::Admin);
            if !still_admin {
                tracing::info!(org_id = %taken.org_id, "OAuth connection refused: its admin key was revoked");
                return Err(ProviderError::StarterRevoked);
            }
        }
        let verifier = keyring.open(
            &ctx(&taken.org_id, FIELD_CODE_VERIFIER),
            &taken.sealed_verifier,
        )?;
        let exchanged = self
            .client
            .exchange_code(code, &verifier)
            .await
            .map_err(|e| match e {
                OpenRouterError::Auth { status, message } => {
                    ProviderError::ExchangeRefused(format!("HTTP {status}: {message}"))
                }
                OpenRouterError::UnexpectedStatus { status } if (400..500).contains(&status) => {
                    ProviderError::ExchangeRefused(format!("HTTP {status}"))
                }
                other => ProviderError::Unreachable(other.to_string()),
            })?;
        let status = self
            .connect_key(
                &taken.org_id,
                exchanged.key,
                ConnectedVia::OAuth,
                taken.byok_providers,
            )
            .await?;
        Ok((taken.org_id, status))
    }

    /// Takes the state of a flow that came back without a code (the admin
    /// denied access at OpenRouter, or OpenRouter answered an error), so the
    /// link cannot be used again. Stores nothing. Returns the organisation.
    pub async fn abandon_oauth(&self, state: &str) -> Result<String, ProviderError> {
        let taken = self
            .store
            .take_oauth_state(&oauth::state_digest(state))
            .await?
            .map_err(ProviderError::State)?;
        tracing::info!(org_id = %taken.org_id, "OAuth connection abandoned");
        Ok(taken.org_id)
    }

    /// Re-wraps every stored secret under the current key-encryption key.
    /// Afterwards the previous keys are no longer needed.
    pub async fn rotate(&self) -> Result<RotateReport, ProviderError> {
        let keyring = self.keyring()?;
        let mut report = RotateReport {
            key_id: keyring.current_key_id().to_owned(),
            ..RotateReport::default()
        };
        for conn in self.store.connections().await? {
            if !keyring.needs_rewrap(&conn.sealed_key) {
                report.current += 1;
                continue;
            }
            let sealed = keyring.rewrap(&ctx(&conn.org_id, FIELD_API_KEY), &conn.sealed_key)?;
            if self
                .store
                .rewrap_connection(&conn.org_id, &conn.provider, conn.version, &sealed)
                .await?
            {
                report.rewrapped += 1;
            }
        }
        for (digest, org_id, _provider, sealed) in self.store.oauth_state_secrets().await? {
            if !keyring.needs_rewrap(&sealed) {
                report.current += 1;
                continue;
            }
            let re = keyring.rewrap(&ctx(&org_id, FIELD_CODE_VERIFIER), &sealed)?;
            self.store.rewrap_oauth_state(&digest, &re).await?;
            report.rewrapped += 1;
        }
        for hook in self.store.webhook_secrets().await? {
            if !keyring.needs_rewrap(&hook.sealed) {
                report.current += 1;
                continue;
            }
            let id = hook.id.to_string();
            let ctx = tally_store::webhooks::secret_context(&hook.org_id, &id);
            let re = keyring.rewrap(&ctx, &hook.sealed)?;
            if self
                .store
                .rewrap_webhook_secret(hook.id, &hook.sealed, &re)
                .await?
            {
                report.rewrapped += 1;
            }
        }
        Ok(report)
    }
}
