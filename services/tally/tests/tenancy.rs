//! Organisations and API keys as an operator and an outside program use
//! them: the `tally` binary (`migrate`, `org create`, `key create|revoke`,
//! `api`) and plain HTTP, no internals.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::output;
use serde_json::{json, Value};
use tally_tests::Harness;
use tokio::process::Command;

const OPERATOR: &str = "op-0123456789abcdefghijklmnopqrstuvwxyz";

fn tally(h: &Harness) -> Command {
    common::bare(h, &[])
}

/// Runs `tally <args>` and parses its one line of JSON output.
async fn json_line(h: &Harness, args: &[&str]) -> anyhow::Result<Value> {
    let mut c = tally(h);
    c.args(args);
    let (code, out, err) = output(c).await?;
    assert_eq!(code, 0, "tally {args:?}: {err}");
    assert_eq!(out.lines().count(), 1, "one line: {out}");
    Ok(serde_json::from_str(out.trim())?)
}

/// `GET <path>` as `key`.
async fn get_as(base: &str, key: Option<&str>, path: &str) -> anyhow::Result<(u16, Value)> {
    call(base, key, reqwest::Method::GET, path, None).await
}

/// `POST <path>` of `body` as `key`.
async fn post_as(
    base: &str,
    key: Option<&str>,
    path: &str,
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    call(base, key, reqwest::Method::POST, path, Some(body)).await
}

async fn call(
    base: &str,
    key: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = reqwest::Client::new().request(method, format!("{base}{path}"));
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

#[tokio::test]
async fn an_operator_creates_organisations_and_keys_and_revokes_them() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let mut c = tally(&h);
    c.arg("migrate");
    assert_eq!(output(c).await?.0, 0);

    let org = json_line(&h, &["org", "create", "acme", "--name", "Acme Ltd"]).await?;
    assert_eq!(org["org_id"], "acme");
    assert_eq!(org["role"], "admin");
    let admin = org["key"].as_str().unwrap().to_owned();
    assert!(admin.starts_with("tly_") && admin.len() >= 36, "{org}");
    assert!(org["key_id"].is_string());

    // Mistakes are one line on stderr and exit status 2.
    for args in [
        vec!["org", "create", "acme"],
        vec!["org", "create", "a.b"],
        vec!["key", "create", "--org", "nobody", "--role", "admin"],
        vec!["key", "create", "--org", "acme", "--role", "owner"],
        vec!["key", "revoke", "not-a-key-id"],
    ] {
        let mut c = tally(&h);
        c.args(&args);
        let (code, out, err) = output(c).await?;
        assert_eq!(code, 2, "{args:?}: {out} {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }
    let mut c = tally(&h);
    c.env("TALLY_OPERATOR_TOKEN", "short").arg("api");
    let (code, _, err) = output(c).await?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("TALLY_OPERATOR_TOKEN") && !err.contains("short"),
        "{err}"
    );

    // The API, as deployed.
    let port = tally_testkit::free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut c = tally(&h);
    c.env("TALLY_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("TALLY_OPERATOR_TOKEN", OPERATOR)
        .arg("api")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut api = c.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_as(&base, None, "/readyz")
        .await
        .map(|r| r.0)
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "the API did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let budget = json!({"name": "team", "scope": {}, "period": "monthly", "limit_usd": "50"});
    let (s, v) = post_as(&base, None, "/v1/budgets", budget.clone()).await?;
    assert_eq!(
        (s, v["code"].as_str()),
        (401, Some("missing_api_key")),
        "{v}"
    );
    let (s, v) = post_as(&base, Some(&admin), "/v1/budgets", budget.clone()).await?;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["org_id"], "acme");

    let member = json_line(
        &h,
        &[
            "key", "create", "--org", "acme", "--role", "member", "--name", "dash",
        ],
    )
    .await?;
    assert_eq!(member["role"], "member");
    let member_key = member["key"].as_str().unwrap().to_owned();
    let (s, v) = get_as(&base, Some(&member_key), "/v1/budgets").await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["budgets"].as_array().unwrap().len(), 1);
    let (s, v) = post_as(&base, Some(&member_key), "/v1/budgets", budget).await?;
    assert_eq!(
        (s, v["code"].as_str()),
        (403, Some("forbidden_role")),
        "{v}"
    );

    // Revoked from the command line: refused within a second.
    let revoked = json_line(&h, &["key", "revoke", member["key_id"].as_str().unwrap()]).await?;
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let at = Instant::now();
    loop {
        let (s, _) = get_as(&base, Some(&member_key), "/v1/budgets").await?;
        if s == 401 {
            break;
        }
        assert!(
            at.elapsed() < Duration::from_secs(1),
            "revoked key still accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The operator over HTTP: a new organisation with its first admin key.
    let (s, v) = post_as(
        &base,
        Some(OPERATOR),
        "/v1/orgs",
        json!({"org_id": "globex"}),
    )
    .await?;
    assert_eq!(s, 201, "{v}");
    let globex = v["key"].as_str().unwrap().to_owned();
    let (s, v) = get_as(&base, Some(&globex), "/v1/budgets").await?;
    assert_eq!((s, v["budgets"].clone()), (200, json!([])), "{v}");
    let (s, v) = get_as(&base, Some(&globex), "/v1/budgets?org_id=acme").await?;
    assert_eq!((s, v["code"].as_str()), (404, Some("org_not_found")), "{v}");
    api.start_kill()?;
    Ok(())
}
