//! The `tally` binary as an operator uses it: real processes against a NATS
//! server and a Postgres database of the test's own.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::output;
use tally_money::Usd;
use tally_tests::{budget, reconciled, usd, Completed, Harness};
use tokio::process::{Child, Command};

const ORG: &str = "acme";

fn tally(h: &Harness) -> Command {
    common::bare(h, &[("TALLY_ACK_WAIT", "3s")])
}

fn spawn_projector(h: &Harness) -> anyhow::Result<Child> {
    let mut c = tally(h);
    c.arg("projector")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(c.spawn()?)
}

#[tokio::test]
async fn migrate_twice_is_idempotent() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    for _ in 0..2 {
        let mut c = tally(&h);
        c.arg("migrate");
        let (code, out, err) = output(c).await?;
        assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
        assert!(out.contains("migrations applied"), "{out}");
        assert!(
            out.contains("streams and consumers are up to date"),
            "{out}"
        );
    }
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(h.store.pool())
        .await?;
    assert_eq!(migrations, tally_store::MIGRATOR.iter().count() as i64);
    Ok(())
}

#[tokio::test]
async fn invalid_configuration_fails_with_one_line_naming_the_setting() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    for (env, value, name) in [
        ("TALLY_HTTP_ADDR", "localhost", "TALLY_HTTP_ADDR"),
        ("TALLY_NATS_URL", "127.0.0.1:4222", "TALLY_NATS_URL"),
        ("TALLY_DATABASE_URL", "mysql://x", "TALLY_DATABASE_URL"),
        (
            "TALLY_RECONCILE_DEADLINE",
            "soon",
            "TALLY_RECONCILE_DEADLINE",
        ),
        ("TALLY_SUBJECT_PREFIX", "a.b", "TALLY_SUBJECT_PREFIX"),
        (
            "TALLY_OPENROUTER_BASE_URL",
            "openrouter.ai",
            "TALLY_OPENROUTER_BASE_URL",
        ),
        ("TALLY_METRICS_ADDR", "9090", "TALLY_METRICS_ADDR"),
    ] {
        let mut c = tally(&h);
        c.env(env, value).arg("projector");
        let (code, _out, err) = output(c).await?;
        assert_eq!(code, 2, "{env}={value}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{env}={value}: {err}");
        assert!(
            err.contains(name) && err.starts_with("tally: invalid"),
            "{err}"
        );
    }
    let mut c = tally(&h);
    c.env_remove("TALLY_DATABASE_URL").arg("projector");
    let (code, _, err) = output(c).await?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("TALLY_DATABASE_URL") && err.contains("required"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn help_explains_every_subcommand() -> anyhow::Result<()> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("--help")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "migrate",
        "worker",
        "reconciler",
        "projector",
        "api",
        "run",
        "replay",
        "sim",
        "demo",
    ] {
        assert!(text.contains(cmd), "{cmd} missing from --help:\n{text}");
    }
    Ok(())
}

async fn total(h: &Harness, budget_id: &str) -> anyhow::Result<(Usd, Usd, i64)> {
    Ok((
        h.spent(budget_id).await?,
        h.journal_sum(budget_id).await?,
        sqlx::query_scalar(
            "SELECT count(*) FROM ledger_entries WHERE budget_id = $1 AND kind = 'debit'",
        )
        .bind(budget_id)
        .fetch_one(h.store.pool())
        .await?,
    ))
}

#[tokio::test]
async fn a_projector_killed_with_sigkill_mid_batch_and_restarted_gives_the_same_ledger(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let mut c = tally(&h);
    c.arg("migrate");
    assert_eq!(output(c).await?.0, 0);
    let b = h.budget(budget(ORG, "everything", "1000000")).await?;
    let n = 20_000u64;
    let mut expected = Usd::ZERO;
    let mut publishes = Vec::new();
    for i in 0..n {
        let cost = format!("0.000{:017}", 12345678901234567u64 + i * 31);
        expected = expected.try_add(usd(&cost))?;
        publishes.push(Completed::new(&format!("g{i}"), ORG, "2026-11-25T10:00:00Z").actual(&cost));
    }
    for chunk in publishes.chunks(1000) {
        let evs: Vec<_> = chunk.iter().map(|c| c.event()).collect();
        futures::future::try_join_all(evs.iter().map(|e| h.publish(e))).await?;
    }
    // Kill the projector while it is working, several times.
    let mut kills = 0;
    for _ in 0..4 {
        let mut p = spawn_projector(&h)?;
        tokio::time::sleep(Duration::from_millis(700)).await;
        p.start_kill()?; // SIGKILL
        p.wait().await?;
        kills += 1;
    }
    let booked_after_kills: i64 = sqlx::query_scalar("SELECT count(*) FROM generations")
        .fetch_one(h.store.pool())
        .await?;
    assert!(
        booked_after_kills < n as i64,
        "the kills must interrupt work ({booked_after_kills} booked)"
    );
    let mut p = spawn_projector(&h)?;
    h.drained().await?;
    let (spent, journal, debits) = total(&h, &b.id).await?;
    assert_eq!(spent, expected);
    assert_eq!(journal, expected);
    assert_eq!(debits, n as i64, "after {kills} kills");
    p.start_kill()?;
    Ok(())
}

#[tokio::test]
async fn replay_verify_finds_no_difference_and_reports_tampering() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let mut c = tally(&h);
    c.arg("migrate");
    assert_eq!(output(c).await?.0, 0);
    let b = h.budget(budget(ORG, "everything", "10")).await?;
    let daily = h
        .budget(tally_store::NewBudget {
            period: tally_budget::PeriodKind::Daily,
            ..budget(ORG, "daily", "1")
        })
        .await?;
    let mut p = spawn_projector(&h)?;
    // While a projector is running, a replacing replay refuses to start.
    h.wait_for(
        "the projector to fetch",
        Duration::from_secs(30),
        || async {
            Ok(h.bus
                .waiting_fetches(tally_bus::ConsumerName::ProjectorCompleted)
                .await?
                > 0)
        },
    )
    .await?;
    let mut c = tally(&h);
    c.arg("replay");
    let (code, _, err) = output(c).await?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a projector is running"), "{err}");
    for i in 0..200 {
        let day = if i % 2 == 0 {
            "2026-11-24T10:00:00Z"
        } else {
            "2026-11-25T10:00:00Z"
        };
        let c = Completed::new(&format!("g{i}"), ORG, day).estimate("0.0123456789012345678");
        h.publish(&c.event()).await?;
        if i % 3 == 0 {
            h.publish(&reconciled(&format!("g{i}"), ORG, "0.01"))
                .await?;
        }
    }
    h.drained().await?;
    p.start_kill()?;
    p.wait().await?;
    let before = h.snapshot().await?;

    let mut c = tally(&h);
    c.args(["replay", "--verify"]);
    let (code, out, err) = output(c).await?;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("no difference"), "{out}");

    // Tamper with a balance: verification names it and fails.
    sqlx::query("UPDATE budget_periods SET spent_usd = spent_usd + 1, spent_actual_usd = spent_actual_usd + 1 WHERE budget_id = $1")
        .bind(&daily.id)
        .execute(h.store.pool())
        .await?;
    let mut c = tally(&h);
    c.args(["replay", "--verify"]);
    let (code, out, err) = output(c).await?;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(&daily.id), "{out}");
    assert!(!out.contains(&format!("budget {} ", b.id)), "{out}");

    // A full replay repairs it, and rebuilds identical balances.
    let mut c = tally(&h);
    c.arg("replay");
    let (code, out, err) = output(c).await?;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(h.snapshot().await?, before);
    Ok(())
}
