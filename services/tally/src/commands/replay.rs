//! `tally replay`: rebuild the projections from the streams.
//!
//! The rebuild happens in a scratch schema beside the live tables, with the
//! same code the projector runs ([`tally_store::Store::apply_batch`]), fed by
//! ephemeral consumers that read the generation and cost streams from the
//! start up to their last sequence at the time the replay began. Budgets
//! (definitions, not projections) are copied from the live schema.
//!
//! * `--verify`: compare the rebuilt balances with the live ones (every
//!   budget period's totals, every generation's net debit, basis and state)
//!   and report each difference; exit status 1 when any differ.
//! * otherwise: replace the live projections (generations, journal, period
//!   totals) with the rebuilt ones in one transaction. Stop the projectors
//!   first: events they apply while the replay runs would be overwritten.
//!   The command refuses to start while a projector is fetching (a pull
//!   request is waiting on its consumer) unless given `--force`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use backon::Retryable;
use sqlx::Row;
use tally_bus::{ConsumerName, StreamKind};
use tally_store::ledger::PostingOptions;
use tally_store::Store;

use super::{connect_bus, connect_store, UsageError};
use crate::config::Config;

/// Options of `tally replay`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// Only compare the rebuilt projections with the live ones; change nothing.
    #[arg(long)]
    pub verify: bool,
    /// Messages per transaction while rebuilding.
    #[arg(long, default_value_t = 2000)]
    pub batch_size: usize,
    /// Keep the scratch schema afterwards (for inspection).
    #[arg(long)]
    pub keep_schema: bool,
    /// Replace the live projections even if a projector seems to be running
    /// (its work since the replay began would be lost).
    #[arg(long)]
    pub force: bool,
}

/// Differences found by a verification.
#[derive(Debug, Default)]
pub struct Verification {
    /// Budget periods whose totals differ (or exist on one side only).
    pub period_differences: Vec<String>,
    /// Generations whose booking differs.
    pub generation_differences: Vec<String>,
}

/// Runs `tally replay`.
pub async fn replay(cfg: &Config, args: ReplayArgs) -> anyhow::Result<()> {
    let url = cfg.require_database()?.to_owned();
    let live = connect_store(cfg, 4).await?;
    let bus = connect_bus(cfg).await?;
    let schema = format!(
        "tally_replay_{}_{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    if !args.verify && !args.force {
        for name in [
            ConsumerName::ProjectorCompleted,
            ConsumerName::ProjectorCosts,
        ] {
            let waiting = bus.waiting_fetches(name).await?;
            if waiting > 0 {
                return Err(UsageError(format!(
                    "a projector is running ({waiting} fetches waiting on consumer {}): \
                     stop every projector before `tally replay`, or pass --force",
                    name.durable()
                ))
                .into());
            }
        }
    }
    let outcome = rebuild_and_compare(&live, &url, &bus, &schema, &args).await;
    if !args.keep_schema {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(live.pool())
            .await;
    }
    let v = outcome?;
    if args.verify {
        if v.period_differences.is_empty() && v.generation_differences.is_empty() {
            println!("replay --verify: no difference between the rebuilt and the live projections");
            return Ok(());
        }
        for d in v.period_differences.iter().take(50) {
            println!("budget period differs: {d}");
        }
        for d in v.generation_differences.iter().take(50) {
            println!("generation differs: {d}");
        }
        bail!(
            "replay --verify: {} budget period(s) and {} generation(s) differ",
            v.period_differences.len(),
            v.generation_differences.len()
        );
    }
    Ok(())
}

async fn rebuild_and_compare(
    live: &Store,
    url: &str,
    bus: &tally_bus::Bus,
    schema: &str,
    args: &ReplayArgs,
) -> anyhow::Result<Verification> {
    let started = Instant::now();
    let live_schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(live.pool())
        .await?;
    let scratch = Store::connect_in_schema(url, 4, Some(schema)).await?;
    scratch
        .migrate()
        .await
        .context("migrations in the scratch schema")?;
    sqlx::query(&format!(
        "INSERT INTO {schema}.budgets SELECT * FROM {live_schema}.budgets"
    ))
    .execute(live.pool())
    .await
    .context("copying budget definitions")?;

    let prefix = bus.prefix().to_owned();
    let opts = PostingOptions {
        prefix: prefix.clone(),
        source: "tally/replay".into(),
        publish: false,
    };
    let mut total = 0u64;
    let mut skipped = 0u64;
    for (stream, filter) in [
        (
            StreamKind::Generations,
            format!("{prefix}.generation.completed.>"),
        ),
        (StreamKind::Costs, format!("{prefix}.cost.>")),
    ] {
        let last = bus.stream_last_sequence(stream).await?;
        if last == 0 {
            continue;
        }
        let consumer = bus.replay_consumer(stream, &filter).await?;
        let mut seen_seq = 0u64;
        while seen_seq < last {
            let batch = consumer
                .fetch(args.batch_size, Duration::from_secs(2))
                .await?;
            if batch.is_empty() {
                // Nothing more matches the filter up to `last`.
                break;
            }
            let mut facts = Vec::with_capacity(batch.len());
            for d in &batch {
                seen_seq = seen_seq.max(d.stream_sequence());
                if d.stream_sequence() > last {
                    continue;
                }
                match tally_projector::decode(&prefix, d) {
                    Ok((fact, _)) => facts.push(fact),
                    Err(_) => skipped += 1, // dead-lettered when it was live
                }
            }
            total += facts.len() as u64;
            (|| scratch.apply_batch(&facts, &opts))
                .retry(tally_store::retry::TRANSACTION.backoff())
                .when(tally_store::StoreError::is_transient)
                .await
                .context("applying a replayed batch")?;
            for d in &batch {
                let _ = d.ack().await;
            }
            eprint!("\rreplay: {total} events applied ({skipped} invalid skipped)");
        }
    }
    eprintln!(
        "\rreplay: {total} events applied ({skipped} invalid skipped) in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let v = compare(live, &live_schema, schema).await?;
    if !args.verify {
        swap(live, &live_schema, schema).await?;
        println!("replay: live projections replaced by the rebuilt ones");
    }
    scratch.pool().close().await;
    Ok(v)
}

/// Compares the live projections with the rebuilt ones.
pub async fn compare(
    live: &Store,
    live_schema: &str,
    schema: &str,
) -> anyhow::Result<Verification> {
    let mut v = Verification::default();
    let periods = format!(
        "WITH a AS (SELECT budget_id, period_start, spent_usd, spent_actual_usd, spent_estimated_usd \
                    FROM {live_schema}.budget_periods), \
              b AS (SELECT budget_id, period_start, spent_usd, spent_actual_usd, spent_estimated_usd \
                    FROM {schema}.budget_periods) \
         SELECT coalesce(a.budget_id, b.budget_id) AS budget_id, \
                coalesce(a.period_start, b.period_start) AS period_start, \
                a.spent_usd::text AS live, b.spent_usd::text AS rebuilt, \
                a.spent_actual_usd::text AS live_actual, b.spent_actual_usd::text AS rebuilt_actual \
         FROM a FULL JOIN b USING (budget_id, period_start) \
         WHERE a.spent_usd IS DISTINCT FROM b.spent_usd \
            OR a.spent_actual_usd IS DISTINCT FROM b.spent_actual_usd \
            OR a.spent_estimated_usd IS DISTINCT FROM b.spent_estimated_usd \
         ORDER BY 1, 2"
    );
    for r in sqlx::query(&periods).fetch_all(live.pool()).await? {
        let start: chrono::DateTime<chrono::Utc> = r.try_get("period_start")?;
        v.period_differences.push(format!(
            "budget {} period {}: live spent {} (actual {}), rebuilt {} (actual {})",
            r.try_get::<String, _>("budget_id")?,
            start.to_rfc3339(),
            or_dash(&r, "live")?,
            or_dash(&r, "live_actual")?,
            or_dash(&r, "rebuilt")?,
            or_dash(&r, "rebuilt_actual")?,
        ));
    }
    let gens = format!(
        "SELECT coalesce(a.generation_id, b.generation_id) AS id, \
                a.debited_usd::text AS live, b.debited_usd::text AS rebuilt, \
                a.state AS live_state, b.state AS rebuilt_state \
         FROM {live_schema}.generations a FULL JOIN {schema}.generations b USING (generation_id) \
         WHERE a.debited_usd IS DISTINCT FROM b.debited_usd OR a.basis IS DISTINCT FROM b.basis \
            OR a.state IS DISTINCT FROM b.state \
         ORDER BY 1 LIMIT 10000"
    );
    for r in sqlx::query(&gens).fetch_all(live.pool()).await? {
        v.generation_differences.push(format!(
            "{}: live {} ({}), rebuilt {} ({})",
            r.try_get::<String, _>("id")?,
            or_dash(&r, "live")?,
            or_dash(&r, "live_state")?,
            or_dash(&r, "rebuilt")?,
            or_dash(&r, "rebuilt_state")?,
        ));
    }
    Ok(v)
}

/// A text column of a comparison row, `-` where that side has no row.
fn or_dash(r: &sqlx::postgres::PgRow, column: &str) -> Result<String, sqlx::Error> {
    Ok(r.try_get::<Option<String>, _>(column)?
        .unwrap_or_else(|| "-".into()))
}

async fn swap(live: &Store, live_schema: &str, schema: &str) -> anyhow::Result<()> {
    let mut tx = live.pool().begin().await?;
    sqlx::query(&format!(
        "LOCK TABLE {live_schema}.generations, {live_schema}.ledger_entries, \
         {live_schema}.budget_periods IN ACCESS EXCLUSIVE MODE"
    ))
    .execute(&mut *tx)
    .await?;
    for t in ["ledger_entries", "budget_periods", "generations"] {
        sqlx::query(&format!("TRUNCATE {live_schema}.{t}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO {live_schema}.{t} SELECT * FROM {schema}.{t}"
        ))
        .execute(&mut *tx)
        .await?;
    }
    // Holds are state of their own, not a projection: the rebuilt period
    // rows carry none, so the live holds are summed back into them.
    tally_store::reservations::recompute_held(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}
