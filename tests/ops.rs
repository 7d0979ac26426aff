//! The operations surface as Prometheus and Grafana see it: the alert rules
//! pass their `promtool` unit tests, every service's `/metrics` is clean
//! under `promtool check metrics`, and every metric the rules and the
//! dashboard query is one a running service exports.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tally_testkit::free_port;
use tally_tests::procs::{
    dashboard_expressions, exported_names, get_text, promql_metric_names, promtool,
    rule_expressions, tally_output, wait_http, workspace_root, TallyProcess, TEST_SECRETS_KEY,
};
use tally_tests::{budget, Completed, Harness};

const ORG: &str = "acme";

/// Metrics Prometheus makes itself, not a tally service.
const PROMETHEUS_OWN: &[&str] = &["up"];

#[tokio::test]
async fn alert_rules_and_scrape_config_pass_promtool() -> anyhow::Result<()> {
    let (code, out) = promtool(&["check", "rules", "deploy/prometheus/rules.yml"], None).await?;
    assert_eq!(code, 0, "promtool check rules:\n{out}");
    let (code, out) = promtool(
        &["check", "config", "deploy/prometheus/prometheus.yml"],
        None,
    )
    .await?;
    assert_eq!(code, 0, "promtool check config:\n{out}");

    let dir = workspace_root().join("deploy/prometheus/tests");
    let mut files: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no rule tests in {}", dir.display());
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    let (code, out) = promtool(&args, None).await?;
    assert_eq!(code, 0, "promtool test rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alerting rule has at least one unit test naming it.
    let rules = std::fs::read_to_string(workspace_root().join("deploy/prometheus/rules.yml"))?;
    let tests: String = files
        .iter()
        .map(std::fs::read_to_string)
        .collect::<Result<Vec<_>, _>>()?
        .join("\n");
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            let name = name.trim();
            assert!(
                tests.contains(&format!("alertname: {name}\n")),
                "alert {name} has no promtool unit test"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn promtool_refuses_a_broken_rule_test() -> anyhow::Result<()> {
    // The checks above can fail: a test expecting an alert that cannot fire.
    let dir = std::env::temp_dir().join(format!("tally-rules-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let rules = workspace_root().join("deploy/prometheus/rules.yml");
    let test = format!(
        "rule_files: [{rules:?}]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n      - series: 'up{{job=\"tally-api\", instance=\"a\"}}'\n        values: '1x10'\n    alert_rule_test:\n      - eval_time: 10m\n        alertname: TallyServiceDown\n        exp_alerts:\n          - exp_labels: {{severity: critical, job: tally-api, instance: a}}\n",
        rules = rules.display().to_string()
    );
    let file = dir.join("broken.yml");
    std::fs::write(&file, test)?;
    let (code, out) = promtool(&["test", "rules", &file.display().to_string()], None).await?;
    let _ = std::fs::remove_dir_all(&dir);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("FAILED"), "{out}");
    Ok(())
}

/// The metric names every rule and dashboard query selects, with where each is used.
fn queried_names() -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let root = workspace_root();
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/rules.yml"))?;
    let exprs = rule_expressions(&rules);
    assert!(
        exprs.len() >= 10,
        "rules.yml: only {} expressions read",
        exprs.len()
    );
    for e in exprs {
        for n in promql_metric_names(&e) {
            used.entry(n).or_default().insert("rules.yml".into());
        }
    }
    let dir = root.join("deploy/grafana/dashboards");
    let mut dashboards = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        dashboards += 1;
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let exprs = dashboard_expressions(&json);
        assert!(!exprs.is_empty(), "{}: no queries", path.display());
        for e in exprs {
            for n in promql_metric_names(&e) {
                used.entry(n)
                    .or_default()
                    .insert(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    assert!(dashboards > 0, "no dashboard in {}", dir.display());
    Ok(used)
}

#[tokio::test]
async fn every_service_exports_clean_metrics_and_every_query_names_one() -> anyhow::Result<()> {
    let used = queried_names()?;
    let h = Harness::start().await?;
    let logs = tempdir("metrics")?;
    let sim_port = free_port()?;
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let api_port = free_port()?;
    let api_url = format!("http://127.0.0.1:{api_port}");

    let common = vec![
        ("TALLY_NATS_URL", h.nats.url()),
        ("TALLY_DATABASE_URL", h.db.url().to_owned()),
        ("TALLY_ACK_WAIT", "5s".to_owned()),
        ("TALLY_OPENROUTER_BASE_URL", format!("{sim_url}/api/v1")),
        ("TALLY_OPENROUTER_API_KEY", "sk-or-v1-test".to_owned()),
        ("TALLY_API_URL", api_url.clone()),
        ("TALLY_RECONCILE_DEADLINE", "10m".to_owned()),
        ("TALLY_SECRETS_KEY", TEST_SECRETS_KEY.to_owned()),
    ];
    let with = |extra: &[(&'static str, String)]| {
        let mut v = common.clone();
        v.extend(extra.iter().cloned());
        v
    };
    let mut sim = TallyProcess::start(
        "sim",
        &["sim", "openrouter"],
        &with(&[
            ("TALLY_SIM_ADDR", format!("127.0.0.1:{sim_port}")),
            // The simulator accepts only keys it issued or was given.
            ("TALLY_SIM_KEYS", "sk-or-v1-test".to_owned()),
            ("TALLY_SIM_STATS_DELAY", "300ms".to_owned()),
        ]),
        &logs,
    )?;
    wait_http(&format!("{sim_url}/sim/stats"), Duration::from_secs(30)).await?;
    // The organisation's OpenRouter key, as an operator connects it.
    let (code, out, err) = tally_output(&["provider", "connect", "--org", ORG], &common).await?;
    assert_eq!(code, 0, "tally provider connect: {out}{err}");

    let mut services = Vec::new();
    let mut scrape = Vec::new();
    for name in ["projector", "reconciler", "worker", "alerts"] {
        let port = free_port()?;
        services.push(TallyProcess::start(
            name,
            &[name],
            &with(&[("TALLY_METRICS_ADDR", format!("127.0.0.1:{port}"))]),
            &logs,
        )?);
        scrape.push((name, format!("http://127.0.0.1:{port}")));
    }
    services.push(TallyProcess::start(
        "api",
        &["api"],
        &with(&[("TALLY_HTTP_ADDR", format!("127.0.0.1:{api_port}"))]),
        &logs,
    )?);
    scrape.push(("api", api_url.clone()));
    for (name, base) in &scrape {
        wait_http(&format!("{base}/healthz"), Duration::from_secs(60))
            .await
            .map_err(|e| e.context(format!("{name} did not come up")))?;
    }

    // Traffic that makes every kind of series appear: costs known and
    // missing, an estimate above the actual (a credit), a budget, an
    // unreadable message, a generation request, API calls.
    h.budget(budget(ORG, "everything", "0.0001")).await?;
    let http = reqwest::Client::new();
    let reg = http
        .post(format!("{sim_url}/sim/generations"))
        .json(&serde_json::json!({"id": "g-est", "total_cost": "0.00001", "ready_after_ms": 100}))
        .send()
        .await?;
    assert_eq!(reg.status().as_u16(), 201, "{}", reg.text().await?);
    let now = chrono::Utc::now().to_rfc3339();
    h.publish(
        &Completed::new("g-act", ORG, &now)
            .actual("0.000085")
            .event(),
    )
    .await?;
    h.publish(
        &Completed::new("g-est", ORG, &now)
            .estimate("0.00002")
            .event(),
    )
    .await?;
    h.publish_raw(
        &format!("tally.generation.completed.{ORG}"),
        "garbage-1",
        b"{not json",
    )
    .await?;
    let request = serde_json::json!({
        "specversion": "1.0", "id": "req-1", "source": "tests", "type": "tally.generation.requested.v1",
        "time": now, "subject": format!("tally.generation.requested.{ORG}"),
        "datacontenttype": "application/json",
        "data": {"request_id": "req-1", "org_id": ORG, "model": "openai/gpt-4o-mini",
                 "input": "Say hello.", "requested_at": now}
    });
    h.publish_raw(
        &format!("tally.generation.requested.{ORG}"),
        "req-1",
        request.to_string().as_bytes(),
    )
    .await?;
    for path in [
        "/healthz",
        "/readyz",
        "/v1/budgets?org_id=acme",
        "/nothing-here",
    ] {
        let _ = http.get(format!("{api_url}{path}")).send().await?;
    }

    // Scrape until every queried name is exported (series appear as the
    // traffic is handled), at most 90 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let (bodies, missing) = loop {
        let mut bodies = Vec::new();
        let mut exported = BTreeSet::new();
        for (name, base) in &scrape {
            let body = get_text(&format!("{base}/metrics")).await?;
            exported.extend(exported_names(&body));
            bodies.push((*name, body));
        }
        let missing: Vec<(String, BTreeSet<String>)> = used
            .iter()
            .filter(|(n, _)| !exported.contains(*n) && !PROMETHEUS_OWN.contains(&n.as_str()))
            .map(|(n, w)| (n.clone(), w.clone()))
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() >= deadline {
            break (bodies, missing);
        }
        for s in &mut services {
            s.assert_running()?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "queried by rules or dashboards but exported by no service: {missing:#?}\n{}",
        services
            .iter()
            .map(|s| s.log_text())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );

    for (name, body) in &bodies {
        assert!(body.contains("tally_"), "{name}: no tally metrics:\n{body}");
        let (code, out) = promtool(&["check", "metrics"], Some(body.as_bytes())).await?;
        assert!(
            code == 0 && out.trim().is_empty(),
            "{name}: promtool check metrics (exit {code}):\n{out}"
        );
    }
    // Each service's own metrics are on its own /metrics.
    for (name, prefix) in [
        ("projector", "tally_projector_"),
        ("reconciler", "tally_reconciler_"),
        ("worker", "tally_worker_"),
        ("api", "tally_api_"),
        ("alerts", "tally_alerts_"),
    ] {
        let body = &bodies.iter().find(|(n, _)| *n == name).unwrap().1;
        assert!(body.contains(prefix), "{name} exports no {prefix}*");
    }
    sim.kill().await?;
    Ok(())
}

fn tempdir(kind: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("tally-{kind}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
