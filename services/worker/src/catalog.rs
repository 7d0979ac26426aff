//! The price catalog: OpenRouter's `/models`, kept in memory, refreshed
//! periodically and persisted so a restart while OpenRouter is down still
//! has prices.
//!
//! * [`Catalog::refresh`] fetches `/models`; on success the new catalog
//!   replaces the old one and is written to the persistence file (when
//!   configured); on failure the last good catalog stays.
//! * [`Catalog::load_persisted`] reads the file at start.
//! * [`Catalog::spawn_refresh`] refreshes every `refresh_every` until
//!   shutdown.
//! * [`Capabilities`] is a model's profile (reasoning, tools, structured
//!   outputs, context length) derived from `supported_parameters`.
//!
//! # Decisions
//!
//! * **Keep the last good catalog.** A failed or empty fetch never replaces
//!   a catalog that has models: an estimate from yesterday's prices beats no
//!   estimate, and a sudden empty catalog would make every model "unknown".
//! * **Persist our own snapshot, prices as decimal strings.** The file holds
//!   the parsed catalog (`-1` for dynamic prices, `null` for unknown ones),
//!   written to a temporary file and renamed, so a crash mid-write leaves
//!   the previous file intact.
//! * **Structured outputs** = `structured_outputs` or `response_format` in
//!   `supported_parameters` (OpenRouter lists either for JSON mode).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_openrouter::{ModelInfo, OpenRouterClient, OpenRouterError, Price, Pricing};
use tokio::{sync::watch, task::JoinHandle};

/// What a model can do, from its `supported_parameters`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Supports `reasoning`.
    pub reasoning: bool,
    /// Supports `tools`.
    pub tools: bool,
    /// Supports `structured_outputs` or `response_format`.
    pub structured_outputs: bool,
    /// Context window in tokens, when known.
    pub context_length: Option<u64>,
}

impl Capabilities {
    /// The profile of `model`.
    pub fn of(model: &ModelInfo) -> Self {
        Capabilities {
            reasoning: model.supports("reasoning"),
            tools: model.supports("tools"),
            structured_outputs: model.supports("structured_outputs")
                || model.supports("response_format"),
            context_length: model.context_length,
        }
    }
}

/// Catalog settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogConfig {
    /// Where the last good catalog is persisted (`None`: not persisted).
    pub persist_path: Option<PathBuf>,
    /// How often [`Catalog::spawn_refresh`] fetches `/models`.
    pub refresh_every: Duration,
}

impl Default for CatalogConfig {
    /// Not persisted, refreshed every 10 minutes.
    fn default() -> Self {
        CatalogConfig {
            persist_path: None,
            refresh_every: Duration::from_secs(600),
        }
    }
}

/// Errors of the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Fetching `/models` failed.
    #[error("fetching the model catalog failed: {0}")]
    Fetch(#[from] OpenRouterError),
    /// OpenRouter answered with no models.
    #[error("OpenRouter returned an empty model catalog")]
    Empty,
    /// Reading or writing the persistence file failed.
    #[error("catalog file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl CatalogError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            CatalogError::Fetch(_) => "catalog_fetch",
            CatalogError::Empty => "catalog_empty",
            CatalogError::File { .. } => "catalog_file",
        }
    }
}

#[derive(Debug)]
struct Snapshot {
    models: HashMap<String, ModelInfo>,
    fetched_at: DateTime<Utc>,
}

/// The shared, refreshable price catalog. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Catalog {
    cfg: CatalogConfig,
    current: Arc<RwLock<Option<Arc<Snapshot>>>>,
}

impl Catalog {
    /// An empty catalog (nothing known until a refresh or a load).
    pub fn new(cfg: CatalogConfig) -> Self {
        Catalog {
            cfg,
            current: Arc::new(RwLock::new(None)),
        }
    }

    /// A catalog holding `models` (tests, fixed setups).
    pub fn from_models(cfg: CatalogConfig, models: Vec<ModelInfo>) -> Self {
        let c = Catalog::new(cfg);
        c.install(models, Utc::now());
        c
    }

    /// The settings.
    pub fn config(&self) -> &CatalogConfig {
        &self.cfg
    }

    fn install(&self, models: Vec<ModelInfo>, fetched_at: DateTime<Utc>) {
        let models = models.into_iter().map(|m| (m.id.clone(), m)).collect();
        let snap = Arc::new(Snapshot { models, fetched_at });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(snap);
    }

    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether a catalog is loaded at all.
    pub fn is_loaded(&self) -> bool {
        self.snapshot().is_some()
    }

    /// Number of models known.
    pub fn len(&self) -> usize {
        self.snapshot().map_or(0, |s| s.models.len())
    }

    /// Whether no model is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the current catalog was fetched.
    pub fn fetched_at(&self) -> Option<DateTime<Utc>> {
        self.snapshot().map(|s| s.fetched_at)
    }

    /// The model `id`, if known.
    pub fn model(&self, id: &str) -> Option<ModelInfo> {
        self.snapshot().and_then(|s| s.models.get(id).cloned())
    }

    /// The capability profile of `id`, if known.
    pub fn capabilities(&self, id: &str) -> Option<Capabilities> {
        self.model(id).map(|m| Capabilities::of(&m))
    }

    /// The prices of `id`, if known.
    pub fn pricing(&self, id: &str) -> Option<Pricing> {
        self.model(id).map(|m| m.pricing)
    }

    /// Fetches `/models`; on success replaces the catalog and persists it.
    /// On failure (or an empty answer) the last good catalog stays.
    pub async fn refresh(&self, client: &OpenRouterClient) -> Result<usize, CatalogError> {
        let models = client.models().await?;
        if models.is_empty() {
            return Err(CatalogError::Empty);
        }
        let n = models.len();
        let now = Utc::now();
        if let Some(path) = &self.cfg.persist_path {
            if let Err(e) = write_file(path, &models, now) {
                tracing::warn!(error = %e, "could not persist the model catalog");
            }
        }
        self.install(models, now);
        Ok(n)
    }

    /// Loads the persisted catalog, if the file exists. Returns whether one
    /// was loaded.
    pub fn load_persisted(&self) -> Result<bool, CatalogError> {
        let Some(path) = &self.cfg.persist_path else {
            return Ok(false);
        };
        if !path.exists() {
            return Ok(false);
        }
        let (models, fetched_at) = read_file(path)?;
        self.install(models, fetched_at);
        Ok(true)
    }

    /// Refreshes every `refresh_every` until `shutdown` turns true (the
    /// first refresh at once). Failures are logged; the last good catalog
    /// stays.
    pub fn spawn_refresh(
        self,
        client: OpenRouterClient,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.refresh(&client).await {
                    Ok(n) => tracing::debug!(models = n, "model catalog refreshed"),
                    Err(e) => tracing::warn!(
                        error = %e,
                        code = e.code(),
                        have_catalog = self.is_loaded(),
                        "model catalog refresh failed; keeping the last good one"
                    ),
                }
                tokio::select! {
                    () = tokio::time::sleep(self.cfg.refresh_every) => {}
                    r = shutdown.wait_for(|s| *s) => { let _ = r; return; }
                }
            }
        })
    }
}

#[derive(Serialize, Deserialize)]
struct FileModel {
    id: String,
    #[serde(default)]
    name: Option<String>,
    context_length: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    input_modalities: Vec<String>,
    #[serde(default)]
    output_modalities: Vec<String>,
    supported_parameters: Vec<String>,
    pricing: HashMap<String, Option<String>>,
}

#[derive(Serialize, Deserialize)]
struct FileCatalog {
    fetched_at: DateTime<Utc>,
    models: Vec<FileModel>,
}

fn price_text(p: &Price) -> Option<String> {
    match p {
        Price::Unknown => None,
        Price::Dynamic => Some("-1".to_owned()),
        Price::PerUnit(d) => Some(d.to_string()),
    }
}

fn file_error(path: &Path, reason: impl ToString) -> CatalogError {
    CatalogError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn write_file(
    path: &Path,
    models: &[ModelInfo],
    fetched_at: DateTime<Utc>,
) -> Result<(), CatalogError> {
    let file = FileCatalog {
        fetched_at,
        models: models
            .iter()
            .map(|m| {
                let p = &m.pricing;
                let pricing = [
                    ("prompt", &p.prompt),
                    ("completion", &p.completion),
                    ("request", &p.request),
                    ("input_cache_read", &p.input_cache_read),
                    ("input_cache_write", &p.input_cache_write),
                    ("internal_reasoning", &p.internal_reasoning),
                    ("web_search", &p.web_search),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), price_text(v)))
                .collect();
                FileModel {
                    id: m.id.clone(),
                    name: m.name.clone(),
                    context_length: m.context_length,
                    max_completion_tokens: m.max_completion_tokens,
                    input_modalities: m.input_modalities.clone(),
                    output_modalities: m.output_modalities.clone(),
                    supported_parameters: m.supported_parameters.clone(),
                    pricing,
                }
            })
            .collect(),
    };
    let text = serde_json::to_vec_pretty(&file).map_err(|e| file_error(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| file_error(path, e))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

fn read_file(path: &Path) -> Result<(Vec<ModelInfo>, DateTime<Utc>), CatalogError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let file: FileCatalog = serde_json::from_slice(&bytes).map_err(|e| file_error(path, e))?;
    let models = file
        .models
        .into_iter()
        .map(|m| {
            let price = |k: &str| -> Price {
                m.pricing
                    .get(k)
                    .and_then(|v| v.as_deref())
                    .and_then(|t| Price::parse(t).ok())
                    .unwrap_or(Price::Unknown)
            };
            let pricing = Pricing::from_keys(price);
            ModelInfo {
                id: m.id,
                name: m.name,
                context_length: m.context_length,
                max_completion_tokens: m.max_completion_tokens,
                input_modalities: m.input_modalities,
                output_modalities: m.output_modalities,
                pricing,
                supported_parameters: m.supported_parameters,
            }
        })
        .collect();
    Ok((models, file.fetched_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn fixture() -> Vec<ModelInfo> {
        ModelInfo::list_from_reply_body(include_bytes!("../tests/fixtures/models.json")).unwrap()
    }

    #[test]
    fn capabilities_come_from_supported_parameters() {
        let c = Catalog::from_models(CatalogConfig::default(), fixture());
        let mini = c.capabilities("openai/gpt-4o-mini").unwrap();
        assert_eq!(
            mini,
            Capabilities {
                reasoning: false,
                tools: true,
                structured_outputs: true,
                context_length: Some(128_000)
            }
        );
        let r1 = c.capabilities("deepseek/deepseek-r1").unwrap();
        assert!(r1.reasoning && r1.tools && !r1.structured_outputs);
        assert_eq!(c.capabilities("nope/nope"), None);
        assert!(c.pricing("openrouter/auto").unwrap().prompt.is_dynamic());
    }

    #[test]
    fn persisted_catalog_round_trips() {
        let path = std::env::temp_dir().join(format!(
            "tally-worker-catalog-{}-{}.json",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let models = fixture();
        write_file(&path, &models, Utc::now()).unwrap();
        let c = Catalog::new(CatalogConfig {
            persist_path: Some(path.clone()),
            ..CatalogConfig::default()
        });
        assert!(!c.is_loaded());
        assert!(c.load_persisted().unwrap());
        for m in &models {
            assert_eq!(c.model(&m.id).as_ref(), Some(m));
        }
        std::fs::remove_file(&path).unwrap();
    }
}
