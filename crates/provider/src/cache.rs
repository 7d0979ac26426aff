//! [`OrgProviders`]: per organisation, what the worker and the reconciler
//! need to call OpenRouter on the organisation's behalf — a client with the
//! organisation's own key (or none: not connected), its model catalog, its
//! BYOK providers and routing profiles.
//!
//! # Invariants
//!
//! * **Only the organisation's own key** is ever put in its client; there
//!   is no fallback to any other key.
//! * **Fresh within the TTL, at once on change.** An entry is reloaded
//!   after [`DEFAULT_TTL`], and dropped as soon as Postgres notifies a
//!   change of that organisation's connection, catalog or profiles
//!   ([`OrgProviders::spawn_listener`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_openrouter::{ModelInfo, OpenRouterClient};
use tally_secrets::{Context, Keyring};
use tally_store::providers::PROVIDER_CHANNEL;
use tally_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::catalog::to_model_info;
use crate::profile::RoutingProfile;
use crate::{ProviderError, FIELD_API_KEY, OPENROUTER};

/// How long an entry is used before it is reloaded (30 s).
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// One organisation's provider state.
#[derive(Debug, Default)]
pub struct OrgProvider {
    /// A client carrying the organisation's key (`None`: not connected).
    pub client: Option<OpenRouterClient>,
    /// The connection's BYOK providers.
    pub byok_providers: Vec<String>,
    /// The catalog, by model id.
    pub models: HashMap<String, ModelInfo>,
    /// Whether a discovery ever succeeded (an empty map then means "no
    /// models", not "not known yet").
    pub catalog_synced: bool,
    /// The organisation's default profile.
    pub default_profile: Option<RoutingProfile>,
    /// Per-agent profiles.
    pub agent_profiles: HashMap<String, RoutingProfile>,
}

impl OrgProvider {
    /// The profile of `agent_id`: its own, else the organisation default.
    pub fn profile(&self, agent_id: Option<&str>) -> Option<&RoutingProfile> {
        agent_id
            .and_then(|a| self.agent_profiles.get(a))
            .or(self.default_profile.as_ref())
    }
}

struct Entry {
    loaded: Instant,
    value: Arc<OrgProvider>,
}

/// The per-organisation cache. Cheap to clone.
#[derive(Clone)]
pub struct OrgProviders {
    store: Store,
    keyring: Option<Arc<Keyring>>,
    base: OpenRouterClient,
    ttl: Duration,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl std::fmt::Debug for OrgProviders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgProviders")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OrgProviders {
    /// A cache over `store`, opening keys with `keyring` and cloning `base`
    /// (its own key is never used) for each organisation.
    pub fn new(store: Store, keyring: Option<Arc<Keyring>>, base: OpenRouterClient) -> Self {
        OrgProviders {
            store,
            keyring,
            base,
            ttl: DEFAULT_TTL,
            entries: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The same cache with another TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Forgets `org_id` (the next [`get`](Self::get) reloads it).
    pub fn invalidate(&self, org_id: &str) {
        lock(&self.entries).remove(org_id);
    }

    /// Forgets everything.
    pub fn invalidate_all(&self) {
        lock(&self.entries).clear();
    }

    /// The organisation's provider state, from the cache when fresh.
    pub async fn get(&self, org_id: &str) -> Result<Arc<OrgProvider>, ProviderError> {
        if let Some(e) = lock(&self.entries).get(org_id) {
            if e.loaded.elapsed() < self.ttl {
                return Ok(e.value.clone());
            }
        }
        let value = Arc::new(self.load(org_id).await?);
        lock(&self.entries).insert(
            org_id.to_owned(),
            Entry {
                loaded: Instant::now(),
                value: value.clone(),
            },
        );
        Ok(value)
    }

    async fn load(&self, org_id: &str) -> Result<OrgProvider, ProviderError> {
        let mut out = OrgProvider::default();
        if let Some(conn) = self.store.connection(org_id, OPENROUTER).await? {
            let keyring = self
                .keyring
                .as_deref()
                .ok_or(ProviderError::SecretsKeyMissing)?;
            let key = keyring.open(
                &Context {
                    org_id,
                    provider: OPENROUTER,
                    field: FIELD_API_KEY,
                },
                &conn.sealed_key,
            )?;
            out.client = Some(
                self.base
                    .with_key(&key)
                    .map_err(|e| ProviderError::Unreachable(e.to_string()))?,
            );
            out.byok_providers = conn.byok_providers;
            out.catalog_synced = conn.models_synced_at.is_some();
            out.models = self
                .store
                .models(org_id, OPENROUTER)
                .await?
                .iter()
                .map(|m| (m.model_id.clone(), to_model_info(m)))
                .collect();
        }
        let rows = sqlx::query_as::<_, (String, serde_json::Value)>(
            "SELECT agent_id, profile FROM routing_profiles WHERE org_id = $1",
        )
        .bind(org_id)
        .fetch_all(self.store.pool())
        .await
        .map_err(tally_store::StoreError::from)?;
        for (agent, json) in rows {
            match serde_json::from_value::<RoutingProfile>(json) {
                Ok(p) if agent.is_empty() => out.default_profile = Some(p),
                Ok(p) => {
                    out.agent_profiles.insert(agent, p);
                }
                Err(e) => {
                    tracing::error!(org_id, agent, error = %e, "stored routing profile unreadable; ignored")
                }
            }
        }
        Ok(out)
    }

    /// Listens for [`PROVIDER_CHANNEL`] notifications and drops the named
    /// organisation's entry, until `shutdown` turns true. On a lost
    /// connection it reconnects (after dropping every entry, since
    /// notifications may have been missed).
    pub fn spawn_listener(&self, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let mut listener = match sqlx::postgres::PgListener::connect_with(this.store.pool())
                    .await
                {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "provider change listener cannot connect; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                            _ = shutdown.wait_for(|s| *s) => return,
                        }
                    }
                };
                if let Err(e) = listener.listen(PROVIDER_CHANNEL).await {
                    tracing::warn!(error = %e, "LISTEN failed; retrying");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
                this.invalidate_all();
                loop {
                    tokio::select! {
                        n = listener.recv() => match n {
                            Ok(n) => this.invalidate(n.payload()),
                            Err(e) => {
                                tracing::warn!(error = %e, "provider change listener lost; reconnecting");
                                break;
                            }
                        },
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
            }
        })
    }
}
