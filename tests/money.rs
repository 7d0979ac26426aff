//! Exact money end to end, against a real NATS server and Postgres, read
//! back through the HTTP API as an outside program would.
//!
//! * Eight costs of `99999999.99999999999999999999` sum to exactly
//!   `799999999.99999999999999999992` (more digits than `rust_decimal`
//!   keeps) in `GET /v1/budgets/{id}` and `GET /v1/spend`.
//! * Random costs printed the way OpenRouter prints doubles (17 significant
//!   digits, exponents down to `e-12`) go through the OpenRouter client's
//!   parser, the events, the ledger and the API unchanged, and their total
//!   equals an independent schoolbook decimal sum.
//! * A million such costs sum exactly in Postgres (`SUM` over `NUMERIC`,
//!   read back exactly) and in `Usd`, checked against an integer sum.
//! * A total past 10¹⁰ USD is a dead letter `amount_overflow`, never a
//!   rounded figure.
#![allow(clippy::float_arithmetic)]

use serde_json::Value;
use tally_bus::StreamKind;
use tally_money::{to_decimal_string, Usd};
use tally_testkit::decimal_text::{add, exact_plain_of, js_string};
use tally_tests::{budget, Completed, Harness};

const ORG: &str = "acme";

/// The HTTP API served in-process on a free port, over the harness's
/// store, and a client holding a member key of the organisation.
async fn api(h: &Harness) -> anyhow::Result<(String, reqwest::Client)> {
    let org = tally_testkit::TestOrg::create(h.store.pool(), ORG).await?;
    let state = tally_api::AppState::new(
        h.store.clone(),
        tally_telemetry::Registry::new(),
        "tally".into(),
    )?;
    let base = tally_tests::serve_api(state).await?;
    Ok((base, org.member_client()?))
}

async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let resp = http.get(url).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    anyhow::ensure!(status.is_success(), "GET {url}: {status} {body}");
    Ok(body)
}

/// xorshift64: deterministic randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A double in the cost range: every exponent from e-12 to e-1 equally
    /// likely, a full 52-bit mantissa.
    fn cost(&mut self) -> f64 {
        let e = -12 + (self.next() % 12) as i32;
        let m = 1.0 + ((self.next() >> 12) as f64) / ((1u64 << 52) as f64) * 9.0;
        (m * 10f64.powi(e)).max(1e-12)
    }
}

#[tokio::test]
async fn eight_largest_28_digit_costs_sum_exactly_through_the_api() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let (base, http) = api(&h).await?;
    let b = h.budget(budget(ORG, "everything", "1000000000")).await?;
    let p = h.spawn_projector(100);
    for i in 0..8 {
        h.publish(
            &Completed::new(&format!("big-{i}"), ORG, "2026-11-25T10:00:00Z")
                .actual("99999999.99999999999999999999")
                .event(),
        )
        .await?;
    }
    h.drained().await?;
    let body = get(&http, &format!("{base}/v1/budgets/{}", b.id)).await?;
    let period = &body["current_period"];
    assert_eq!(
        period["spent_usd"], "799999999.99999999999999999992",
        "{body}"
    );
    assert_eq!(period["spent_actual_usd"], "799999999.99999999999999999992");
    assert_eq!(period["spent_estimated_usd"], "0");
    assert_eq!(period["remaining_usd"], "200000000.00000000000000000008");
    let spend = get(&http, &format!(
        "{base}/v1/spend?org_id={ORG}&from=2026-11-25T00:00:00Z&to=2026-11-26T00:00:00Z&group_by=model"
    ))
    .await?;
    let text = spend.to_string();
    assert!(
        text.contains("\"799999999.99999999999999999992\""),
        "spend: {text}"
    );
    assert!(!text.contains("799999999.9999999999999999999\""), "{text}");
    // Postgres holds the same digits.
    let stored: String =
        sqlx::query_scalar("SELECT spent_usd::text FROM budget_periods WHERE budget_id = $1")
            .bind(&b.id)
            .fetch_one(h.store.pool())
            .await?;
    assert_eq!(
        stored.trim_end_matches('0'),
        "799999999.99999999999999999992"
    );
    p.stop().await;
    Ok(())
}

#[tokio::test]
async fn javascript_doubles_go_through_client_events_ledger_and_api_unchanged() -> anyhow::Result<()>
{
    let n: usize = std::env::var("TALLY_MONEY_E2E_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let h = Harness::start().await?;
    let (base, http) = api(&h).await?;
    let b = h.budget(budget(ORG, "everything", "1000000")).await?;
    let p = h.spawn_projector(500);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut expected = "0".to_owned();
    let mut samples = Vec::new();
    let mut published = Vec::with_capacity(n);
    for i in 0..n {
        let x = rng.cost();
        let literal = js_string(x);
        let exact = exact_plain_of(x);
        // OpenRouter's reply, through the client's own parser.
        let body = format!(r#"{{"data":{{"id":"g-{i}","total_cost":{literal},"is_byok":false}}}}"#);
        let stats = tally_openrouter::GenerationStats::from_reply_body(body.as_bytes())
            .map_err(|e| anyhow::anyhow!("{literal}: {e}"))?;
        let actual = stats.actual_cost()?;
        assert_eq!(actual.to_string(), exact, "{literal}");
        let mut ev = Completed::new(&format!("g-{i}"), ORG, "2026-11-25T10:00:00Z");
        ev.data.actual_cost_usd = Some(actual);
        published.push(ev.event());
        expected = add(&expected, &exact);
        if i % (n / 20).max(1) == 0 {
            samples.push((format!("g-{i}"), exact));
        }
    }
    for chunk in published.chunks(500) {
        let acks = chunk.iter().map(|e| h.publish(e));
        for r in futures::future::join_all(acks).await {
            r?;
        }
    }
    h.drained().await?;
    for (id, exact) in &samples {
        let g = get(&http, &format!("{base}/v1/generations/{id}")).await?;
        assert_eq!(g["actual_cost_usd"], exact.as_str(), "{g}");
        assert_eq!(g["debited_usd"], exact.as_str(), "{g}");
    }
    let body = get(&http, &format!("{base}/v1/budgets/{}", b.id)).await?;
    assert_eq!(
        body["current_period"]["spent_usd"],
        expected.as_str(),
        "{body}"
    );
    let journal: Option<Usd> =
        sqlx::query_scalar("SELECT SUM(amount_usd) FROM ledger_entries WHERE budget_id = $1")
            .bind(&b.id)
            .fetch_one(h.store.pool())
            .await?;
    assert_eq!(journal.map(|j| to_decimal_string(&j)), Some(expected));
    p.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_million_17_digit_costs_sum_exactly_in_postgres_and_in_usd() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let pool = h.store.pool();
    sqlx::query("CREATE TABLE costs (amount NUMERIC NOT NULL)")
        .execute(pool)
        .await?;
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut total = Usd::ZERO;
    let mut units: u128 = 0;
    let mut chunk: Vec<Usd> = Vec::with_capacity(50_000);
    for i in 0..1_000_000u32 {
        // d.dddddddddddddddd × 10^e, e in -12..=-1: 17 significant digits.
        let mantissa = 10_000_000_000_000_000 + rng.next() % 90_000_000_000_000_000;
        let e = -12 + (rng.next() % 12) as i32;
        let literal = format!(
            "{}.{:016}e{e}",
            mantissa / 10_000_000_000_000_000,
            mantissa % 10_000_000_000_000_000
        );
        let cost = tally_money::parse_json_number(&literal)?;
        total = total.try_add(cost)?;
        units += u128::from(mantissa) * 10u128.pow((e + 12) as u32);
        chunk.push(cost);
        if chunk.len() == 50_000 || i == 999_999 {
            sqlx::query("INSERT INTO costs SELECT unnest($1::numeric[])")
                .bind(&chunk)
                .execute(pool)
                .await?;
            chunk.clear();
        }
    }
    assert_eq!(total.units() as u128, units, "Usd sum vs integer sum");
    let (sum, count): (Usd, i64) = sqlx::query_as("SELECT SUM(amount), count(*) FROM costs")
        .fetch_one(pool)
        .await?;
    assert_eq!(count, 1_000_000);
    assert_eq!(sum, total, "Postgres SUM vs Usd sum");
    let text: String = sqlx::query_scalar("SELECT SUM(amount)::text FROM costs")
        .fetch_one(pool)
        .await?;
    assert_eq!(text.trim_end_matches('0'), to_decimal_string(&total));
    Ok(())
}

#[tokio::test]
async fn a_total_past_ten_billion_is_a_dead_letter_never_a_rounded_figure() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let (base, http) = api(&h).await?;
    let b = h.budget(budget(ORG, "everything", "10000000000")).await?;
    let p = h.spawn_projector(100);
    for (id, cost) in [
        ("huge-1", "9999999999.9999999999999999999999999999"),
        ("tiny", "0.0000000000000000000000000001"),
        ("huge-2", "0.0000000000000000000000000001"),
    ] {
        h.publish(
            &Completed::new(id, ORG, "2026-11-25T10:00:00Z")
                .actual(cost)
                .event(),
        )
        .await?;
    }
    h.drained().await?;
    // Any two of them fit (the huge one and a tiny one make exactly
    // 10^10); all three would pass it. Which one is refused depends on how
    // the messages were batched (a batch applies in generation-id order,
    // and a failing batch is split until the one message is found).
    let body = get(&http, &format!("{base}/v1/budgets/{}", b.id)).await?;
    let dead = h
        .read_stream(StreamKind::DeadLetter, "tally.deadletter.projector")
        .await?;
    let reasons: Vec<_> = dead.iter().map(|d| d.2.clone()).collect();
    assert_eq!(
        reasons,
        vec![Some("amount_overflow".to_owned())],
        "{dead:?}"
    );
    // Exactly one is refused, and the total is the exact sum of the other
    // two: never a rounded figure, never past the bound.
    let refused = dead[0].1["data"]["generation_id"].as_str().unwrap_or("");
    let expected = match refused {
        "huge-1" => "0.0000000000000000000000000002",
        "huge-2" | "tiny" => "10000000000",
        other => panic!("unexpected dead letter {other:?}: {dead:?}"),
    };
    assert_eq!(body["current_period"]["spent_usd"], expected, "{body}");
    // A cost with more digits than 28 never gets in: refused where it
    // enters, not rounded.
    assert_eq!(
        tally_money::parse_json_number("9.9999999999999999e-13")
            .unwrap_err()
            .code(),
        "amount_too_precise"
    );
    p.stop().await;
    Ok(())
}
