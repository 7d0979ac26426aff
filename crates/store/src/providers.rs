//! Provider connections, OAuth states, per-organisation model catalogs and
//! routing profiles: the organisation's provider configuration.
//!
//! # Invariants
//!
//! * **No plaintext credential is ever written.** Connections and OAuth
//!   states hold [`Sealed`] values only (the key-encryption key's id, the
//!   wrapped data key, nonces and ciphertext); deleting a connection deletes
//!   its ciphertext.
//! * **An OAuth state is used at most once**: [`Store::take_oauth_state`]
//!   marks it used in the same statement that reads it, so two callbacks
//!   racing on one state cannot both succeed.
//! * **Every change notifies** [`PROVIDER_CHANNEL`] with the organisation id
//!   (`pg_notify`, delivered at commit), so caches of keys, catalogs and
//!   profiles refresh at once; their TTL covers a lost notification.
//! * **Prices are exact** (`NUMERIC(38, 20)`): `NULL` = not listed, `-1` =
//!   dynamic (no estimate).
//!
//! These tables are configuration, not projections: `tally replay` leaves
//! them alone.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::Row;
use tally_money::{Cost, Usd};
use tally_secrets::Sealed;

use crate::sealed::{sealed_from, BindSealed};
use crate::{Store, StoreError};

/// Postgres notification channel of provider configuration changes; the
/// payload is the organisation id.
pub const PROVIDER_CHANNEL: &str = "tally_provider_changed";

/// How a connection was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectedVia {
    /// A pasted API key.
    ApiKey,
    /// The OAuth PKCE flow.
    OAuth,
}

impl ConnectedVia {
    /// `api_key` or `oauth`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectedVia::ApiKey => "api_key",
            ConnectedVia::OAuth => "oauth",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "api_key" => Ok(ConnectedVia::ApiKey),
            "oauth" => Ok(ConnectedVia::OAuth),
            other => Err(StoreError::Corrupt(format!("connected_via {other:?}"))),
        }
    }
}

/// A connection to store.
#[derive(Debug, Clone)]
pub struct NewConnection {
    /// Organisation.
    pub org_id: String,
    /// Provider (`openrouter`).
    pub provider: String,
    /// How it was made.
    pub via: ConnectedVia,
    /// The provider's masked label of the key.
    pub key_label: Option<String>,
    /// What is left of the key's credit limit, when it has one.
    pub limit_remaining_usd: Option<Usd>,
    /// Whether the account is on the free tier.
    pub is_free_tier: Option<bool>,
    /// Upstream providers whose own keys the organisation brought (BYOK).
    pub byok_providers: Vec<String>,
    /// The sealed API key.
    pub sealed_key: Sealed,
}

/// A stored connection.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Organisation.
    pub org_id: String,
    /// Provider.
    pub provider: String,
    /// How it was made.
    pub via: ConnectedVia,
    /// The provider's masked label.
    pub key_label: Option<String>,
    /// Remaining credit at the last check.
    pub limit_remaining_usd: Option<Usd>,
    /// Free tier.
    pub is_free_tier: Option<bool>,
    /// BYOK providers.
    pub byok_providers: Vec<String>,
    /// The sealed API key.
    pub sealed_key: Sealed,
    /// When it was (last) connected.
    pub connected_at: DateTime<Utc>,
    /// Increases with every change.
    pub version: i64,
    /// Last successful model discovery.
    pub models_synced_at: Option<DateTime<Utc>>,
    /// Error of the last model discovery, if it failed.
    pub models_error: Option<String>,
}

/// An OAuth state to store.
#[derive(Debug, Clone)]
pub struct NewOAuthState {
    /// SHA-256 of the state token.
    pub state_sha256: Vec<u8>,
    /// Organisation.
    pub org_id: String,
    /// Provider.
    pub provider: String,
    /// The admin key that started the flow (`None`: the operator).
    pub admin_key_id: Option<String>,
    /// BYOK providers to store with the connection (`None`: keep).
    pub byok_providers: Option<Vec<String>>,
    /// The sealed PKCE code verifier.
    pub sealed_verifier: Sealed,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// A state taken by [`Store::take_oauth_state`].
#[derive(Debug, Clone)]
pub struct OAuthState {
    /// Organisation.
    pub org_id: String,
    /// Provider.
    pub provider: String,
    /// The admin key that started the flow.
    pub admin_key_id: Option<String>,
    /// BYOK providers given at the start.
    pub byok_providers: Option<Vec<String>>,
    /// The sealed code verifier.
    pub sealed_verifier: Sealed,
}

/// Why a state cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateRefused {
    /// No such state.
    Unknown,
    /// Already used.
    Used,
    /// Past its expiry.
    Expired,
}

impl StateRefused {
    /// `oauth_state_unknown`, `oauth_state_used`, `oauth_state_expired`.
    pub fn code(self) -> &'static str {
        match self {
            StateRefused::Unknown => "oauth_state_unknown",
            StateRefused::Used => "oauth_state_used",
            StateRefused::Expired => "oauth_state_expired",
        }
    }
}

/// One price in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoredPrice {
    /// Not listed.
    #[default]
    Unknown,
    /// Decided per request.
    Dynamic,
    /// USD per unit.
    PerUnit(Cost),
}

impl StoredPrice {
    fn to_db(self) -> Option<Usd> {
        match self {
            StoredPrice::Unknown => None,
            StoredPrice::Dynamic => Some(-Usd::ONE),
            StoredPrice::PerUnit(d) => Some(d.usd()),
        }
    }

    fn from_db(v: Option<Usd>) -> Self {
        match v {
            None => StoredPrice::Unknown,
            Some(d) if d == -Usd::ONE => StoredPrice::Dynamic,
            // Only -1 (dynamic) may be negative; any other negative
            // value is not a price, as in the catalog reader.
            Some(d) => Cost::new(d).map_or(StoredPrice::Unknown, StoredPrice::PerUnit),
        }
    }
}

/// Prices of a model, OpenRouter's names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredPricing {
    /// Per input token.
    pub prompt: StoredPrice,
    /// Per output token.
    pub completion: StoredPrice,
    /// Per request.
    pub request: StoredPrice,
    /// Per cached input token read.
    pub input_cache_read: StoredPrice,
    /// Per input token written to the cache.
    pub input_cache_write: StoredPrice,
    /// Per reasoning token.
    pub internal_reasoning: StoredPrice,
    /// Per web search.
    pub web_search: StoredPrice,
}

/// One model of an organisation's catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredModel {
    /// Model slug.
    pub model_id: String,
    /// Display name.
    pub name: Option<String>,
    /// Context window in tokens.
    pub context_length: Option<u64>,
    /// Longest output in tokens.
    pub max_completion_tokens: Option<u64>,
    /// Prices.
    pub pricing: StoredPricing,
    /// Supported request parameters.
    pub supported_parameters: Vec<String>,
    /// Input modalities.
    pub input_modalities: Vec<String>,
    /// Output modalities.
    pub output_modalities: Vec<String>,
}

fn to_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|n| u64::try_from(n).ok())
}

fn to_i64(v: Option<u64>) -> Option<i64> {
    v.and_then(|n| i64::try_from(n).ok())
}

const CONNECTION_COLUMNS: &str = "org_id, provider, connected_via, key_label, \
    limit_remaining_usd, is_free_tier, byok_providers, kek_id, wrap_nonce, wrapped_key, \
    nonce, ciphertext, connected_at, version, models_synced_at, models_error";

fn connection_from(r: &PgRow) -> Result<Connection, StoreError> {
    let via: String = r.try_get("connected_via")?;
    Ok(Connection {
        org_id: r.try_get("org_id")?,
        provider: r.try_get("provider")?,
        via: ConnectedVia::parse(&via)?,
        key_label: r.try_get("key_label")?,
        limit_remaining_usd: r
            .try_get::<Option<Usd>, _>("limit_remaining_usd")?
            .map(|d| d.normalize()),
        is_free_tier: r.try_get("is_free_tier")?,
        byok_providers: r.try_get("byok_providers")?,
        sealed_key: sealed_from(r)?,
        connected_at: r.try_get("connected_at")?,
        version: r.try_get("version")?,
        models_synced_at: r.try_get("models_synced_at")?,
        models_error: r.try_get("models_error")?,
    })
}

async fn notify<'e, E: sqlx::PgExecutor<'e>>(ex: E, org_id: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(PROVIDER_CHANNEL)
        .bind(org_id)
        .execute(ex)
        .await?;
    Ok(())
}

impl Store {
    /// Stores (or replaces) a connection; the version increases.
    pub async fn upsert_connection(&self, c: &NewConnection) -> Result<Connection, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO provider_connections (org_id, provider, connected_via, key_label, \
                 limit_remaining_usd, is_free_tier, byok_providers, kek_id, wrap_nonce, \
                 wrapped_key, nonce, ciphertext, connected_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now()) \
             ON CONFLICT (org_id, provider) DO UPDATE SET \
                 connected_via = EXCLUDED.connected_via, key_label = EXCLUDED.key_label, \
                 limit_remaining_usd = EXCLUDED.limit_remaining_usd, \
                 is_free_tier = EXCLUDED.is_free_tier, byok_providers = EXCLUDED.byok_providers, \
                 kek_id = EXCLUDED.kek_id, wrap_nonce = EXCLUDED.wrap_nonce, \
                 wrapped_key = EXCLUDED.wrapped_key, nonce = EXCLUDED.nonce, \
                 ciphertext = EXCLUDED.ciphertext, connected_at = now(), updated_at = now(), \
                 version = provider_connections.version + 1, \
                 models_synced_at = NULL, models_error = NULL \
             RETURNING {CONNECTION_COLUMNS}"
        ))
        .bind(&c.org_id)
        .bind(&c.provider)
        .bind(c.via.as_str())
        .bind(&c.key_label)
        .bind(c.limit_remaining_usd)
        .bind(c.is_free_tier)
        .bind(&c.byok_providers)
        .bind_sealed(&c.sealed_key)
        .fetch_one(&mut *tx)
        .await?;
        let conn = connection_from(&row)?;
        notify(&mut *tx, &c.org_id).await?;
        tx.commit().await?;
        Ok(conn)
    }

    /// The connection of `org_id` to `provider`, if any.
    pub async fn connection(
        &self,
        org_id: &str,
        provider: &str,
    ) -> Result<Option<Connection>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CONNECTION_COLUMNS} FROM provider_connections \
             WHERE org_id = $1 AND provider = $2"
        ))
        .bind(org_id)
        .bind(provider)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(connection_from).transpose()
    }

    /// A connection and the size of its catalog, read in one statement so
    /// both come from the same snapshot: a status read while a discovery
    /// commits shows either the old catalog with its old sync time or the
    /// new one with the new time, never one of each.
    pub async fn connection_with_model_count(
        &self,
        org_id: &str,
        provider: &str,
    ) -> Result<Option<(Connection, usize)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CONNECTION_COLUMNS}, \
                 (SELECT count(*) FROM provider_models m \
                  WHERE m.org_id = c.org_id AND m.provider = c.provider) AS model_count \
             FROM provider_connections c WHERE org_id = $1 AND provider = $2"
        ))
        .bind(org_id)
        .bind(provider)
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let count: i64 = r.try_get("model_count")?;
        Ok(Some((
            connection_from(&r)?,
            usize::try_from(count).unwrap_or(0),
        )))
    }

    /// Every connection (for rotation and the periodic model sync).
    pub async fn connections(&self) -> Result<Vec<Connection>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CONNECTION_COLUMNS} FROM provider_connections ORDER BY org_id, provider"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(connection_from).collect()
    }

    /// Deletes a connection (its ciphertext with it) and the catalog
    /// discovered with it. Whether there was one.
    pub async fn delete_connection(
        &self,
        org_id: &str,
        provider: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query("DELETE FROM provider_connections WHERE org_id = $1 AND provider = $2")
            .bind(org_id)
            .bind(provider)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM provider_models WHERE org_id = $1 AND provider = $2")
            .bind(org_id)
            .bind(provider)
            .execute(&mut *tx)
            .await?;
        notify(&mut *tx, org_id).await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Updates the connection's BYOK providers. Whether it exists.
    pub async fn set_byok_providers(
        &self,
        org_id: &str,
        provider: &str,
        byok: &[String],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query(
            "UPDATE provider_connections SET byok_providers = $3, updated_at = now(), \
             version = version + 1 WHERE org_id = $1 AND provider = $2",
        )
        .bind(org_id)
        .bind(provider)
        .bind(byok)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        notify(&mut *tx, org_id).await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Replaces the sealed key of a connection if it still has `version`
    /// (rotation). Whether it was replaced.
    pub async fn rewrap_connection(
        &self,
        org_id: &str,
        provider: &str,
        version: i64,
        sealed: &Sealed,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE provider_connections SET kek_id = $4, wrap_nonce = $5, wrapped_key = $6, \
                 nonce = $7, ciphertext = $8, updated_at = now() \
             WHERE org_id = $1 AND provider = $2 AND version = $3",
        )
        .bind(org_id)
        .bind(provider)
        .bind(version)
        .bind_sealed(sealed)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Records the outcome of a model discovery on the connection.
    pub async fn record_model_sync(
        &self,
        org_id: &str,
        provider: &str,
        synced_at: Option<DateTime<Utc>>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE provider_connections SET \
                 models_synced_at = COALESCE($3, models_synced_at), models_error = $4 \
             WHERE org_id = $1 AND provider = $2",
        )
        .bind(org_id)
        .bind(provider)
        .bind(synced_at)
        .bind(error)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Replaces the catalog of an organisation, in one transaction, and
    /// records the sync on its connection.
    pub async fn replace_models(
        &self,
        org_id: &str,
        provider: &str,
        models: &[StoredModel],
        synced_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM provider_models WHERE org_id = $1 AND provider = $2")
            .bind(org_id)
            .bind(provider)
            .execute(&mut *tx)
            .await?;
        for m in models {
            let p = &m.pricing;
            sqlx::query(
                "INSERT INTO provider_models (org_id, provider, model_id, name, context_length, \
                     max_completion_tokens, price_prompt, price_completion, price_request, \
                     price_input_cache_read, price_input_cache_write, price_internal_reasoning, \
                     price_web_search, supported_parameters, input_modalities, output_modalities, \
                     synced_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
                 ON CONFLICT (org_id, provider, model_id) DO NOTHING",
            )
            .bind(org_id)
            .bind(provider)
            .bind(&m.model_id)
            .bind(&m.name)
            .bind(to_i64(m.context_length))
            .bind(to_i64(m.max_completion_tokens))
            .bind(p.prompt.to_db())
            .bind(p.completion.to_db())
            .bind(p.request.to_db())
            .bind(p.input_cache_read.to_db())
            .bind(p.input_cache_write.to_db())
            .bind(p.internal_reasoning.to_db())
            .bind(p.web_search.to_db())
            .bind(&m.supported_parameters)
            .bind(&m.input_modalities)
            .bind(&m.output_modalities)
            .bind(synced_at)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE provider_connections SET models_synced_at = $3, models_error = NULL \
             WHERE org_id = $1 AND provider = $2",
        )
        .bind(org_id)
        .bind(provider)
        .bind(synced_at)
        .execute(&mut *tx)
        .await?;
        notify(&mut *tx, org_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The catalog of an organisation, by model id.
    pub async fn models(
        &self,
        org_id: &str,
        provider: &str,
    ) -> Result<Vec<StoredModel>, StoreError> {
        let rows = sqlx::query(
            "SELECT model_id, name, context_length, max_completion_tokens, price_prompt, \
                 price_completion, price_request, price_input_cache_read, price_input_cache_write, \
                 price_internal_reasoning, price_web_search, supported_parameters, \
                 input_modalities, output_modalities \
             FROM provider_models WHERE org_id = $1 AND provider = $2 ORDER BY model_id",
        )
        .bind(org_id)
        .bind(provider)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let price = |c: &str| -> Result<StoredPrice, StoreError> {
                    Ok(StoredPrice::from_db(r.try_get(c)?))
                };
                Ok(StoredModel {
                    model_id: r.try_get("model_id")?,
                    name: r.try_get("name")?,
                    context_length: to_u64(r.try_get("context_length")?),
                    max_completion_tokens: to_u64(r.try_get("max_completion_tokens")?),
                    pricing: StoredPricing {
                        prompt: price("price_prompt")?,
                        completion: price("price_completion")?,
                        request: price("price_request")?,
                        input_cache_read: price("price_input_cache_read")?,
                        input_cache_write: price("price_input_cache_write")?,
                        internal_reasoning: price("price_internal_reasoning")?,
                        web_search: price("price_web_search")?,
                    },
                    supported_parameters: r.try_get("supported_parameters")?,
                    input_modalities: r.try_get("input_modalities")?,
                    output_modalities: r.try_get("output_modalities")?,
                })
            })
            .collect()
    }

    /// Stores an OAuth state (and drops states expired for more than a day).
    pub async fn insert_oauth_state(&self, s: &NewOAuthState) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM provider_oauth_states WHERE expires_at < now() - interval '1 day'",
        )
        .execute(self.pool())
        .await?;
        sqlx::query(
            "INSERT INTO provider_oauth_states (state_sha256, org_id, provider, admin_key_id, \
                 byok_providers, kek_id, wrap_nonce, wrapped_key, nonce, ciphertext, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&s.state_sha256)
        .bind(&s.org_id)
        .bind(&s.provider)
        .bind(&s.admin_key_id)
        .bind(&s.byok_providers)
        .bind_sealed(&s.sealed_verifier)
        .bind(s.expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Takes an OAuth state for its one use: marks it used and returns it,
    /// or says why it cannot be used (unknown, already used, expired).
    pub async fn take_oauth_state(
        &self,
        state_sha256: &[u8],
    ) -> Result<Result<OAuthState, StateRefused>, StoreError> {
        let row = sqlx::query(
            "UPDATE provider_oauth_states SET used_at = now() \
             WHERE state_sha256 = $1 AND used_at IS NULL AND expires_at > now() \
             RETURNING org_id, provider, admin_key_id, byok_providers, kek_id, wrap_nonce, \
                 wrapped_key, nonce, ciphertext",
        )
        .bind(state_sha256)
        .fetch_optional(self.pool())
        .await?;
        if let Some(r) = row {
            return Ok(Ok(OAuthState {
                org_id: r.try_get("org_id")?,
                provider: r.try_get("provider")?,
                admin_key_id: r.try_get("admin_key_id")?,
                byok_providers: r.try_get("byok_providers")?,
                sealed_verifier: sealed_from(&r)?,
            }));
        }
        let why = sqlx::query(
            "SELECT used_at IS NOT NULL AS used FROM provider_oauth_states WHERE state_sha256 = $1",
        )
        .bind(state_sha256)
        .fetch_optional(self.pool())
        .await?;
        Ok(Err(match why {
            None => StateRefused::Unknown,
            Some(r) if r.try_get::<bool, _>("used")? => StateRefused::Used,
            Some(_) => StateRefused::Expired,
        }))
    }

    /// Every unused OAuth state's sealed verifier, for rotation:
    /// `(state_sha256, org_id, provider, sealed)`.
    pub async fn oauth_state_secrets(
        &self,
    ) -> Result<Vec<(Vec<u8>, String, String, Sealed)>, StoreError> {
        let rows = sqlx::query(
            "SELECT state_sha256, org_id, provider, kek_id, wrap_nonce, wrapped_key, nonce, \
                 ciphertext FROM provider_oauth_states",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("state_sha256")?,
                    r.try_get("org_id")?,
                    r.try_get("provider")?,
                    sealed_from(r)?,
                ))
            })
            .collect()
    }

    /// Replaces the sealed verifier of an OAuth state (rotation).
    pub async fn rewrap_oauth_state(
        &self,
        state_sha256: &[u8],
        sealed: &Sealed,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE provider_oauth_states SET kek_id = $2, wrap_nonce = $3, wrapped_key = $4, \
                 nonce = $5, ciphertext = $6 WHERE state_sha256 = $1",
        )
        .bind(state_sha256)
        .bind_sealed(sealed)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Stores a routing profile (`agent_id` `None`: the organisation default).
    pub async fn put_routing_profile(
        &self,
        org_id: &str,
        agent_id: Option<&str>,
        profile: &serde_json::Value,
    ) -> Result<DateTime<Utc>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let at: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO routing_profiles (org_id, agent_id, profile) VALUES ($1, $2, $3) \
             ON CONFLICT (org_id, agent_id) DO UPDATE SET profile = EXCLUDED.profile, \
                 updated_at = now() RETURNING updated_at",
        )
        .bind(org_id)
        .bind(agent_id.unwrap_or(""))
        .bind(profile)
        .fetch_one(&mut *tx)
        .await?;
        notify(&mut *tx, org_id).await?;
        tx.commit().await?;
        Ok(at)
    }

    /// A routing profile and when it was last written.
    pub async fn routing_profile(
        &self,
        org_id: &str,
        agent_id: Option<&str>,
    ) -> Result<Option<(serde_json::Value, DateTime<Utc>)>, StoreError> {
        let row = sqlx::query(
            "SELECT profile, updated_at FROM routing_profiles WHERE org_id = $1 AND agent_id = $2",
        )
        .bind(org_id)
        .bind(agent_id.unwrap_or(""))
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| Ok((r.try_get("profile")?, r.try_get("updated_at")?)))
            .transpose()
    }

    /// Deletes a routing profile. Whether there was one.
    pub async fn delete_routing_profile(
        &self,
        org_id: &str,
        agent_id: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query("DELETE FROM routing_profiles WHERE org_id = $1 AND agent_id = $2")
            .bind(org_id)
            .bind(agent_id.unwrap_or(""))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        notify(&mut *tx, org_id).await?;
        tx.commit().await?;
        Ok(n > 0)
    }
}
