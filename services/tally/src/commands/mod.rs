//! One function per subcommand: connect the adapters, start the service,
//! stop cleanly on Ctrl-C or SIGTERM.

pub mod demo;
pub mod provider;
pub mod reconcile;
pub mod replay;
pub mod sim;
pub mod tenancy;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tally_bus::{Bus, BusConfig};
use tally_store::Store;
use tally_telemetry::Registry;
use tokio::sync::watch;

use crate::config::Config;

/// A mistake in how tally was invoked (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A shutdown signal: becomes true on Ctrl-C or SIGTERM.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

pub(crate) async fn connect_bus(cfg: &Config) -> anyhow::Result<Bus> {
    let bus_cfg = BusConfig {
        url: cfg.nats_url.clone(),
        prefix: cfg.prefix.clone(),
        replicas: cfg.nats_replicas,
        ack_wait: cfg.ack_wait,
        auth: cfg.nats_auth.clone(),
        tls_ca: cfg.nats_tls_ca.clone(),
    };
    tracing::debug!(
        auth = cfg.nats_auth.kind(),
        tls = cfg.nats_tls_ca.is_some() || cfg.nats_url.contains("tls://"),
        "connecting to NATS"
    );
    Bus::connect(&bus_cfg).await.with_context(|| {
        format!(
            "cannot connect to NATS at {} (TALLY_NATS_URL)",
            cfg.nats_url
        )
    })
}

pub(crate) async fn connect_store(cfg: &Config, max: u32) -> anyhow::Result<Store> {
    let url = cfg.require_database()?;
    Store::connect(url, max)
        .await
        .context("cannot connect to Postgres (TALLY_DATABASE_URL)")
}

async fn serve_metrics(cfg: &Config, registry: &Registry) -> anyhow::Result<()> {
    if let Some(addr) = cfg.metrics_addr {
        let (bound, _task) = tally_telemetry::serve_metrics(addr, registry.clone()).await?;
        tracing::info!(%bound, "metrics on /metrics");
    }
    Ok(())
}

/// `tally migrate`.
pub async fn migrate(cfg: &Config) -> anyhow::Result<()> {
    let store = connect_store(cfg, 2).await?;
    store.migrate().await.context("Postgres migrations")?;
    println!("postgres: migrations applied");
    let bus = connect_bus(cfg).await?;
    bus.ensure_topology()
        .await
        .context("JetStream streams and consumers")?;
    println!(
        "jetstream: streams and consumers are up to date (prefix {:?})",
        cfg.prefix
    );
    Ok(())
}

pub(crate) fn projector_service(
    w: &Wiring,
    cfg: &Config,
) -> anyhow::Result<tally_projector::Projector> {
    let metrics = Arc::new(tally_projector::Metrics::register(&w.registry)?);
    Ok(tally_projector::Projector::new(
        w.bus.clone(),
        w.store.clone(),
        tally_projector::ProjectorConfig {
            prefix: cfg.prefix.clone(),
            ..Default::default()
        },
        metrics,
    ))
}

/// The organisations' providers the reconciler and the sweep look
/// generations up with (each organisation's own key, decrypted from
/// Postgres and cached); no environment key.
pub(crate) fn org_providers(
    cfg: &Config,
    store: &Store,
) -> anyhow::Result<tally_provider::OrgProviders> {
    let client = reconcile_client(cfg)?;
    if cfg.keyring.is_none() {
        tracing::warn!(
            "TALLY_SECRETS_KEY is not set: organisations' provider keys cannot be read, \
             so generation costs cannot be looked up"
        );
    }
    Ok(tally_provider::OrgProviders::new(
        store.clone(),
        cfg.keyring.clone(),
        client,
    ))
}

/// The base OpenRouter client (no key: every lookup uses an organisation's).
pub(crate) fn reconcile_client(cfg: &Config) -> anyhow::Result<tally_openrouter::OpenRouterClient> {
    Ok(tally_openrouter::OpenRouterClient::new(
        tally_openrouter::ClientConfig {
            base_url: cfg.openrouter_base_url.clone(),
            api_key: None,
            ..Default::default()
        },
    )?)
}

/// The reconciler's settings from the configuration.
pub(crate) fn reconciler_config(cfg: &Config) -> tally_reconciler::ReconcilerConfig {
    tally_reconciler::ReconcilerConfig {
        prefix: cfg.prefix.clone(),
        deadline: cfg.reconcile_deadline,
        min_window: cfg.reconcile_min_window,
        rate_per_sec: cfg.reconcile_rate,
        sweep: tally_reconciler::SweepConfig {
            interval: cfg.sweep_interval,
            horizon: cfg.sweep_horizon,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Builds the reconciler: every lookup uses the key of the organisation
/// that made the generation; first lookups and the sweep in Postgres.
pub(crate) fn reconciler_service(
    w: &Wiring,
    cfg: &Config,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tally_reconciler::Reconciler> {
    let providers = org_providers(cfg, &w.store)?;
    providers.spawn_listener(shutdown);
    let metrics = Arc::new(tally_reconciler::Metrics::register(&w.registry)?);
    Ok(tally_reconciler::Reconciler::new(
        w.bus.clone(),
        reconcile_client(cfg)?,
        reconciler_config(cfg),
        metrics,
    )
    .with_org_providers(providers)
    .with_store(w.store.clone()))
}

/// Builds the generation worker: OpenRouter client (long timeout: a
/// streamed generation can take minutes), model catalog (persisted copy
/// first, then a fresh one, refreshed in the background) and the budget
/// holds in Postgres.
pub(crate) async fn worker_service(
    w: &Wiring,
    cfg: &Config,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tally_worker::Worker> {
    let store = &w.store;
    // No key of its own: every request carries its organisation's key.
    let client = tally_openrouter::OpenRouterClient::new(tally_openrouter::ClientConfig {
        base_url: cfg.openrouter_base_url.clone(),
        api_key: None,
        timeout: Duration::from_secs(300),
        ..Default::default()
    })?;
    let providers =
        tally_provider::OrgProviders::new(store.clone(), cfg.keyring.clone(), client.clone());
    providers.spawn_listener(shutdown.clone());
    let catalog = tally_worker::Catalog::new(tally_worker::CatalogConfig {
        persist_path: cfg.catalog_path.clone(),
        ..Default::default()
    });
    match catalog.load_persisted() {
        Ok(true) => tracing::info!("model catalog loaded from its persisted copy"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "persisted model catalog unreadable; ignoring it"),
    }
    if let Err(e) = catalog.refresh(&client).await {
        tracing::warn!(error = %e, code = e.code(), "model catalog not fetched yet; will retry");
    }
    catalog.clone().spawn_refresh(client.clone(), shutdown);
    let reservations = Some(tally_worker::Reservations::new(store.clone()));
    let metrics = Arc::new(tally_worker::Metrics::register(&w.registry)?);
    Ok(tally_worker::Worker::new(
        w.bus.clone(),
        client,
        reservations,
        catalog,
        tally_worker::WorkerConfig {
            prefix: cfg.prefix.clone(),
            reservation_ttl: cfg.reservation_ttl,
            default_max_output_tokens: cfg.default_max_output_tokens,
            ..Default::default()
        },
        metrics,
    )
    .with_org_providers(providers))
}

/// What one service command runs on: the bus, a Postgres pool and the
/// registry its metrics are served from.
pub(crate) struct Wiring {
    pub(crate) registry: Registry,
    pub(crate) bus: Bus,
    pub(crate) store: Store,
}

impl Wiring {
    /// Connects to NATS, then to Postgres with at most `pool` connections,
    /// then serves the metrics when `TALLY_METRICS_ADDR` is set.
    async fn connect(cfg: &Config, pool: u32) -> anyhow::Result<Wiring> {
        let registry = Registry::new();
        let bus = connect_bus(cfg).await?;
        let store = connect_store(cfg, pool).await?;
        serve_metrics(cfg, &registry).await?;
        Ok(Wiring {
            registry,
            bus,
            store,
        })
    }
}

/// `tally worker`.
pub async fn worker(cfg: &Config) -> anyhow::Result<()> {
    let w = Wiring::connect(cfg, 8).await?;
    let shutdown = shutdown_signal();
    let svc = worker_service(&w, cfg, shutdown.clone()).await?;
    svc.run(shutdown).await?;
    Ok(())
}

/// `tally projector`.
pub async fn projector(cfg: &Config) -> anyhow::Result<()> {
    let w = Wiring::connect(cfg, 8).await?;
    let svc = projector_service(&w, cfg)?;
    svc.run(shutdown_signal()).await?;
    Ok(())
}

/// Builds the alert delivery: webhook intake consumers and the delivery
/// loop, opening signing secrets with the configured key-encryption key.
pub(crate) fn alerts_service(w: &Wiring, cfg: &Config) -> anyhow::Result<tally_alerts::Alerts> {
    let metrics = Arc::new(tally_alerts::Metrics::register(&w.registry)?);
    if cfg.webhooks.allow_private {
        tracing::warn!(
            "TALLY_WEBHOOK_ALLOW_PRIVATE is set: webhooks may reach private and loopback addresses"
        );
    }
    Ok(tally_alerts::Alerts::new(
        w.bus.clone(),
        w.store.clone(),
        cfg.keyring.clone(),
        tally_alerts::AlertsConfig {
            prefix: cfg.prefix.clone(),
            allow_private: cfg.webhooks.allow_private,
            timeout: cfg.webhooks.timeout,
            retry_base: cfg.webhooks.retry_base,
            retry_cap: cfg.webhooks.retry_cap,
            retry_horizon: cfg.webhooks.retry_horizon,
            ..Default::default()
        },
        metrics,
    ))
}

/// `tally alerts`.
pub async fn alerts(cfg: &Config) -> anyhow::Result<()> {
    let w = Wiring::connect(cfg, 8).await?;
    let svc = alerts_service(&w, cfg)?;
    svc.run(shutdown_signal()).await?;
    Ok(())
}

/// `tally reconciler`.
pub async fn reconciler(cfg: &Config) -> anyhow::Result<()> {
    let w = Wiring::connect(cfg, 4).await?;
    let shutdown = shutdown_signal();
    let svc = reconciler_service(&w, cfg, shutdown.clone())?;
    svc.run(shutdown).await?;
    Ok(())
}

/// How often the API checks the drift against OpenRouter for its gauge.
const DRIFT_REFRESH: Duration = Duration::from_secs(300);

async fn serve_api(
    cfg: &Config,
    store: &Store,
    registry: &Registry,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (TALLY_HTTP_ADDR)", cfg.http_addr))?;
    tracing::info!(addr = %cfg.http_addr, "HTTP API listening");
    let providers = org_providers(cfg, store)?;
    providers.spawn_listener(shutdown.clone());
    let connections = provider::connections(cfg, store.clone())?;
    let state = tally_api::AppState::new(store.clone(), registry.clone(), cfg.prefix.clone())?
        .with_http_limits(cfg.http_limits)
        .with_org_limits(cfg.org_limits)
        .with_operator_token(cfg.operator_token.as_ref())
        .with_providers(providers)
        .with_connections(connections.clone())
        .with_webhooks(tally_api::WebhookSettings {
            keyring: cfg.keyring.clone(),
            allow_private: cfg.webhooks.allow_private,
        });
    tokio::spawn(connections.sync_periodically(cfg.models_sync_interval, shutdown.clone()));
    tokio::spawn(tally_api::drift::refresh_periodically(
        state.clone(),
        DRIFT_REFRESH,
        shutdown.clone(),
    ));
    if cfg.operator_token.is_none() {
        tracing::info!("TALLY_OPERATOR_TOKEN is not set: no operator access over HTTP");
    }
    tally_api::serve(listener, state, async move {
        let _ = shutdown.wait_for(|v| *v).await;
    })
    .await?;
    Ok(())
}

fn warn_without_secrets_key(cfg: &Config) {
    if cfg.keyring.is_none() {
        tracing::warn!(
            "TALLY_SECRETS_KEY is not set: provider credentials cannot be stored or read \
             (connecting answers 503 secrets_key_missing)"
        );
    }
}

/// `tally api`.
pub async fn api(cfg: &Config) -> anyhow::Result<()> {
    warn_without_secrets_key(cfg);
    let registry = Registry::new();
    let store = connect_store(cfg, 16).await?;
    serve_api(cfg, &store, &registry, shutdown_signal()).await
}

/// `tally run`: every service in this process.
pub async fn run(cfg: &Config) -> anyhow::Result<()> {
    run_all(cfg, shutdown_signal()).await
}

/// Runs migrations, then the worker, projector, reconciler, alert delivery
/// and API until `shutdown`.
pub(crate) async fn run_all(cfg: &Config, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let registry = Registry::new();
    let bus = connect_bus(cfg).await?;
    let store = connect_store(cfg, 24).await?;
    store.migrate().await.context("Postgres migrations")?;
    bus.ensure_topology().await.context("JetStream topology")?;
    serve_metrics(cfg, &registry).await?;
    let wiring = Wiring {
        registry,
        bus,
        store,
    };
    let projector = projector_service(&wiring, cfg)?;
    let reconciler = reconciler_service(&wiring, cfg, shutdown.clone())?;
    let worker = worker_service(&wiring, cfg, shutdown.clone()).await?;
    let alerts = alerts_service(&wiring, cfg)?;
    let p = tokio::spawn(projector.run(shutdown.clone()));
    let a = tokio::spawn(alerts.run(shutdown.clone()));
    let r = tokio::spawn(reconciler.run(shutdown.clone()));
    let w = tokio::spawn(worker.run(shutdown.clone()));
    let api = serve_api(cfg, &wiring.store, &wiring.registry, shutdown.clone());
    let api_result = api.await;
    // The API returns when shutdown is requested; give the consumers time to
    // finish their in-flight batch.
    let finish = async {
        let _ = p.await;
        let _ = r.await;
        let _ = w.await;
        let _ = a.await;
    };
    if tokio::time::timeout(Duration::from_secs(30), finish)
        .await
        .is_err()
    {
        tracing::warn!("services did not stop within 30 s");
    }
    api_result
}
