//! What authentication costs per request: p50/p99 latency of the same
//! route (`GET /v1/budgets`, a Postgres read) through the full router with
//! the authentication layer, and through the same router with that layer
//! replaced by one that hands over a fixed caller, in one run.
//!
//! Requests go through the router in process (no sockets, so only the
//! layers differ), one at a time, alternating the two routers so both see
//! the same machine noise. The authenticated requests carry a real member
//! key: parse, SHA-256, the lookup cache (refilled from Postgres every
//! 500 ms), the constant-time comparison, the role check and the
//! `last_used_at` touch. Target: at most 0.2 ms more at p99.
//!
//! Needs Postgres (`TALLY_TEST_DATABASE_URL`, see tally-testkit). Run:
//! `cargo bench -p tally-api --bench auth` (`TALLY_BENCH_REQUESTS`, default
//! 20 000 per router).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tally_api::auth::Caller;
use tally_api::AppState;
use tally_store::tenancy::Role;
use tally_telemetry::Registry;
use tally_testkit::TestOrg;
use tower::ServiceExt as _;

const ORG: &str = "bench";

/// The `per_mille`th per-mille value of sorted samples (nearest rank).
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

/// Microseconds, signed, for differences.
fn us(d: Duration) -> i128 {
    i128::try_from(d.as_micros()).unwrap_or(i128::MAX)
}

/// `us` microseconds as milliseconds with three decimals and a sign.
fn ms(us: i128) -> String {
    let sign = if us < 0 { "-" } else { "" };
    let a = us.unsigned_abs();
    format!("{sign}{}.{:03}", a / 1000, a % 1000)
}

async fn one(router: &axum::Router, key: Option<&str>) -> anyhow::Result<Duration> {
    let mut req = Request::get("/v1/budgets");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req.body(Body::empty())?;
    let start = Instant::now();
    let resp = router.clone().oneshot(req).await?;
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
    let took = start.elapsed();
    anyhow::ensure!(
        status == StatusCode::OK,
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(took)
}

/// Prints the percentiles; returns (p50, p99) in microseconds.
fn report(name: &str, mut v: Vec<Duration>) -> (i128, i128) {
    v.sort();
    let [p50, p90, p99, p999] = [500, 900, 990, 999].map(|p| us(percentile(&v, p)));
    println!(
        "{name:<24} n={:<6} p50={} ms  p90={} ms  p99={} ms  p99.9={} ms",
        v.len(),
        ms(p50),
        ms(p90),
        ms(p99),
        ms(p999)
    );
    (p50, p99)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("TALLY_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let (db, store) = tally_testkit::TestDb::migrated(8).await?;
    let org = TestOrg::create(&db.pool(), ORG).await?;
    let state = AppState::new(store.clone(), Registry::new(), "tally".into())?;
    let authed = tally_api::router(state.clone());
    let fixed = tally_api::router_with_fixed_caller(
        state,
        Caller::key(org.member_key_id, ORG, Role::Member),
    );
    // A budget, so the read returns a row.
    let create = Request::post("/v1/budgets")
        .header("authorization", format!("Bearer {}", org.admin_key))
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"name":"team","scope":{},"period":"monthly","limit_usd":"50"}"#,
        ))?;
    let resp = authed.clone().oneshot(create).await?;
    anyhow::ensure!(resp.status() == StatusCode::CREATED, "{}", resp.status());

    // Warm up both (connections, caches).
    for _ in 0..1_000 {
        one(&authed, Some(&org.member_key)).await?;
        one(&fixed, None).await?;
    }
    let mut with_auth = Vec::with_capacity(n);
    let mut without = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        if i % 2 == 0 {
            with_auth.push(one(&authed, Some(&org.member_key)).await?);
            without.push(one(&fixed, None).await?);
        } else {
            without.push(one(&fixed, None).await?);
            with_auth.push(one(&authed, Some(&org.member_key)).await?);
        }
    }
    let wall = started.elapsed();
    println!(
        "GET /v1/budgets, {n} requests per router, alternating, in process, {:.1} s",
        wall.as_secs_f64()
    );
    let (a50, a99) = report("with authentication", with_auth);
    let (b50, b99) = report("fixed caller (no auth)", without);
    let (d50, d99) = (a50 - b50, a99 - b99);
    println!(
        "authentication adds      p50={} ms  p99={} ms",
        ms(d50),
        ms(d99)
    );
    println!(
        "target: at most 0.200 ms more at p99: {}",
        if d99 <= 200 { "met" } else { "NOT met" }
    );
    Ok(())
}
