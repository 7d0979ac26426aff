//! `tally`: the one binary that runs every part of tally.
//!
//! This crate only parses configuration and starts things: each subcommand
//! wires the adapters (`tally-bus`, `tally-store`, `tally-openrouter`) into
//! a service crate and runs it until Ctrl-C / SIGTERM.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or a
//! subcommand that is not available.

mod commands;
mod config;

use clap::{Parser, Subcommand};

/// jemalloc with its background purging threads returns freed memory to
/// the system within seconds; glibc's allocator kept the buffers of a
/// connection flood (1 500 slow connections: 19 → 42 MB) resident after
/// every connection had closed.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use crate::config::Settings;

/// tally — exact, event-sourced cost accounting for LLM generations on OpenRouter.
#[derive(Parser, Debug)]
#[command(name = "tally", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply Postgres migrations and create/update JetStream streams and consumers (idempotent).
    Migrate,
    /// Run the generation worker: generation.requested → OpenRouter → generation.completed.
    Worker,
    /// Run the reconciler: fetch missing actual costs from OpenRouter's generation endpoint.
    Reconciler,
    /// Run the ledger projector: debit budgets in Postgres, publish ledger.posted and alerts.
    Projector,
    /// Run the HTTP API (budgets, generations, spend, checks, /metrics).
    Api,
    /// Run the alert delivery: budget alerts and ledger postings to the organisations' webhooks.
    Alerts,
    /// Run every service in one process (the single-machine default).
    Run,
    /// Rebuild the projections from the streams; --verify compares with the live ones.
    Replay(commands::replay::ReplayArgs),
    /// Reconciliation on demand: `tally reconcile sweep [--since …]`.
    #[command(subcommand)]
    Reconcile(commands::reconcile::ReconcileCommand),
    /// OpenRouter simulator and load generator.
    #[command(subcommand)]
    Sim(commands::sim::SimCommand),
    /// Start everything locally, drive a stream of generations and show a live summary.
    Demo(commands::demo::DemoArgs),
    /// Connect an organisation to OpenRouter.
    #[command(subcommand)]
    Provider(commands::provider::ProviderCommand),
    /// Manage stored secrets (rotate the key-encryption key).
    #[command(subcommand)]
    Secrets(commands::provider::SecretsCommand),
    /// Organisations (operator): `tally org create <org_id> [--name NAME]`.
    #[command(subcommand)]
    Org(commands::tenancy::OrgCommand),
    /// API keys (operator): `tally key create --org ORG --role admin|member`, `tally key revoke KEY_ID`.
    #[command(subcommand)]
    Key(commands::tenancy::KeyCommand),
}

fn main() {
    let cli = Cli::parse();
    let cfg = match cli.settings.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tally: {e}");
            std::process::exit(2);
        }
    };
    // The demo's live summary is the output; keep the logs to warnings
    // unless asked otherwise.
    if matches!(
        cli.command,
        Command::Demo(_) | Command::Org(_) | Command::Key(_)
    ) && std::env::var_os("RUST_LOG").is_none()
    {
        std::env::set_var("RUST_LOG", "warn");
    }
    tally_telemetry::init_tracing(cfg.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tally: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Migrate => commands::migrate(&cfg).await,
            Command::Worker => commands::worker(&cfg).await,
            Command::Reconciler => commands::reconciler(&cfg).await,
            Command::Projector => commands::projector(&cfg).await,
            Command::Api => commands::api(&cfg).await,
            Command::Alerts => commands::alerts(&cfg).await,
            Command::Run => commands::run(&cfg).await,
            Command::Replay(args) => commands::replay::replay(&cfg, args).await,
            Command::Reconcile(cmd) => commands::reconcile::reconcile(&cfg, cmd).await,
            Command::Sim(cmd) => commands::sim::sim(&cfg, cmd).await,
            Command::Demo(args) => commands::demo::demo(&cfg, args).await,
            Command::Provider(cmd) => commands::provider::provider(&cfg, cmd).await,
            Command::Secrets(cmd) => commands::provider::secrets(&cfg, cmd).await,
            Command::Org(cmd) => commands::tenancy::org(&cfg, cmd).await,
            Command::Key(cmd) => commands::tenancy::key(&cfg, cmd).await,
        }
    });
    if let Err(e) = result {
        if let Some(u) = e.downcast_ref::<commands::UsageError>() {
            eprintln!("tally: {u}");
            std::process::exit(2);
        }
        if let Some(c) = e.downcast_ref::<config::ConfigError>() {
            eprintln!("tally: {c}");
            std::process::exit(2);
        }
        eprintln!("tally: {e:#}");
        std::process::exit(1);
    }
}
