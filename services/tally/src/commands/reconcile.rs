//! `tally reconcile sweep [--since …] [--rate N]`: asks OpenRouter again,
//! now, about every generation still unresolved or on its estimate, and
//! publishes the costs it finds (the projector trues the ledger up).
//!
//! Progress goes to standard output, one line per claimed batch, then a
//! summary. Safe to run while reconcilers run their own periodic sweeps:
//! generations are claimed before they are asked about.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use super::{
    connect_bus, connect_store, org_providers, reconcile_client, reconciler_config, UsageError,
};
use crate::config::Config;

/// `tally reconcile …`.
#[derive(Subcommand, Debug)]
pub enum ReconcileCommand {
    /// Ask OpenRouter again about unresolved and estimate-basis generations
    /// younger than TALLY_SWEEP_HORIZON, and publish the costs found.
    Sweep(SweepArgs),
}

/// `tally reconcile sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Only generations completed since this instant: an RFC 3339 time
    /// (2026-11-30T00:00:00Z) or a duration before now (24h). Default and
    /// earliest: TALLY_SWEEP_HORIZON ago.
    #[arg(long)]
    pub since: Option<String>,
    /// Most lookups per second (halved while OpenRouter answers 429).
    #[arg(long, default_value_t = 10)]
    pub rate: u32,
}

/// Parses `--since`.
fn parse_since(v: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, UsageError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    humantime::parse_duration(v)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| now - d)
        .ok_or_else(|| {
            UsageError(format!(
                "invalid --since {v:?}: expected an RFC 3339 time like 2026-11-30T00:00:00Z or a duration like 24h"
            ))
        })
}

/// Runs the command.
pub async fn reconcile(cfg: &Config, cmd: ReconcileCommand) -> anyhow::Result<()> {
    match cmd {
        ReconcileCommand::Sweep(args) => sweep(cfg, args).await,
    }
}

async fn sweep(cfg: &Config, args: SweepArgs) -> anyhow::Result<()> {
    let since = args
        .since
        .as_deref()
        .map(|v| parse_since(v, Utc::now()))
        .transpose()?;
    if !(1..=10_000).contains(&args.rate) {
        return Err(UsageError(format!(
            "invalid --rate {}: must be from 1 to 10000 lookups per second",
            args.rate
        ))
        .into());
    }
    let store = connect_store(cfg, 4).await?;
    let bus = connect_bus(cfg).await?;
    let client = reconcile_client(cfg)?;
    let mut rcfg = reconciler_config(cfg);
    rcfg.sweep.rate_per_sec = args.rate;
    let metrics = std::sync::Arc::new(tally_reconciler::Metrics::unregistered());
    let providers = org_providers(cfg, &store)?;
    let sweeper = tally_reconciler::Sweeper::new(bus, store, client, rcfg, metrics)
        .with_org_providers(providers);
    let shutdown = super::shutdown_signal();
    let started = Instant::now();
    let horizon = chrono::Duration::from_std(cfg.sweep_horizon).unwrap_or(chrono::Duration::MAX);
    let from = since.unwrap_or_else(|| Utc::now() - horizon);
    println!(
        "sweep: generations completed since {} without an actual cost",
        from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let progress = |r: &tally_reconciler::SweepReport| {
        println!(
            "sweep: {}/{} asked, {} reconciled, {} still missing, {} errors",
            r.looked_up, r.candidates, r.reconciled, r.still_missing, r.errors
        );
    };
    let report = sweeper
        .pass(since, &progress, shutdown)
        .await
        .context("sweep")?;
    let took = started.elapsed();
    println!(
        "sweep done: {} asked, {} reconciled, {} still missing, {} errors in {:.1} s",
        report.looked_up,
        report.reconciled,
        report.still_missing,
        report.errors,
        took.max(Duration::from_millis(1)).as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_time_or_a_duration_before_now() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_since("24h", now).unwrap(),
            now - chrono::Duration::hours(24)
        );
        assert_eq!(
            parse_since("2026-11-30T00:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-30T00:00:00+00:00"
        );
        assert!(parse_since("yesterday", now).is_err());
    }
}
