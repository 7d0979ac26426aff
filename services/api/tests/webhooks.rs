//! Webhook registration over real HTTP against a real Postgres: the
//! secret shown once and stored sealed, every refusal with its own code
//! (URL form, private targets, event lists, the limit, no secrets key),
//! pagination, isolation between organisations, deletion.

use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_api::{AppState, OrgLimits, WebhookSettings};
use tally_store::Store;
use tally_telemetry::Registry;
use tally_testkit::{TestDb, TestOrg};

const PUBLIC: &str = "https://93.184.216.34/hooks/tally";

struct Env {
    base: String,
    private_base: String,
    nokey_base: String,
    a: TestOrg,
    b: TestOrg,
    store: Store,
    _db: TestDb,
}

async fn instance(store: &Store, settings: WebhookSettings) -> anyhow::Result<String> {
    let state = AppState::new(store.clone(), Registry::new(), "tally".into())?
        .with_org_limits(OrgLimits {
            max_webhooks: 3,
            ..OrgLimits::default()
        })
        .with_webhooks(settings);
    let base = tally_tests::serve_api(state).await?;
    Ok(base)
}

impl Env {
    async fn start() -> anyhow::Result<Env> {
        let (db, store) = tally_testkit::TestDb::migrated(10).await?;
        let a = TestOrg::create(&db.pool(), "org-a").await?;
        let b = TestOrg::create(&db.pool(), "org-b").await?;
        let kek = tally_secrets::generate_key_setting("k1");
        let keyring = std::sync::Arc::new(tally_secrets::Keyring::from_settings(Some(&kek), None)?);
        let base = instance(
            &store,
            WebhookSettings {
                keyring: Some(keyring.clone()),
                allow_private: false,
            },
        )
        .await?;
        let private_base = instance(
            &store,
            WebhookSettings {
                keyring: Some(keyring),
                allow_private: true,
            },
        )
        .await?;
        let nokey_base = instance(&store, WebhookSettings::default()).await?;
        Ok(Env {
            base,
            private_base,
            nokey_base,
            a,
            b,
            store,
            _db: db,
        })
    }
}

async fn call(
    base: &str,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn post(base: &str, key: &str, body: Value) -> (StatusCode, Value) {
    call(base, key, reqwest::Method::POST, "/v1/webhooks", Some(body)).await
}

async fn get(base: &str, key: &str, path: &str) -> (StatusCode, Value) {
    call(base, key, reqwest::Method::GET, path, None).await
}

/// A registration of `url` for ledger postings.
fn postings_to(url: &str) -> Value {
    json!({"url": url, "events": ["ledger.posted"]})
}

fn refused(got: &(StatusCode, Value), status: u16, code: &str, field: &str) {
    assert_eq!(got.0.as_u16(), status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    assert_eq!(got.1["field"], field, "{}", got.1);
}

#[tokio::test]
async fn registration_validates_and_shows_the_secret_once() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let key = env.a.admin_key.as_str();
    let (s, created) = post(
        &env.base,
        key,
        json!({"url": PUBLIC, "events": ["budget.threshold_crossed", "ledger.posted"],
               "description": "ops pager"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap();
    let key_b64 = secret.strip_prefix("whsec_").expect("whsec_ prefix");
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.decode(key_b64)?;
    assert_eq!(raw.len(), 32);
    assert_eq!(created["url"], PUBLIC);
    assert_eq!(created["description"], "ops pager");
    assert_eq!(
        created["events"],
        json!(["budget.threshold_crossed", "ledger.posted"])
    );
    let id = created["id"].as_str().unwrap().to_owned();

    // Never again: not in the webhook, not in the list, not in the table.
    let (s, one) = get(&env.base, key, &format!("/v1/webhooks/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        one.get("secret").is_none() && !one.to_string().contains(key_b64),
        "{one}"
    );
    let (_, list) = get(&env.base, key, "/v1/webhooks").await;
    assert!(!list.to_string().contains(key_b64), "{list}");
    let rows: Vec<String> = sqlx::query_scalar("SELECT row_to_json(w)::text FROM webhooks w")
        .fetch_all(env.store.pool())
        .await?;
    assert!(rows.iter().all(|r| !r.contains(key_b64)));

    // Every refusal has its own code and names the field: first the
    // receivers refused by their URL, then the other fields.
    for (url, code) in [
        ("ftp://93.184.216.34/x", "webhook_url_scheme"),
        ("https://u:p@93.184.216.34/x", "webhook_url_credentials"),
        ("not a url", "webhook_url_invalid"),
        (
            &format!("https://93.184.216.34/{}", "a".repeat(2100)),
            "webhook_url_too_long",
        ),
        ("http://127.0.0.1:9/hook", "webhook_target_forbidden"),
        ("http://10.0.0.7/hook", "webhook_target_forbidden"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "webhook_target_forbidden",
        ),
        ("http://[::1]:9/hook", "webhook_target_forbidden"),
        ("http://100.64.1.1/hook", "webhook_target_forbidden"),
        ("http://localhost:9/hook", "webhook_target_forbidden"),
        (
            "http://no-such-host.invalid/hook",
            "webhook_host_unresolvable",
        ),
    ] {
        let got = post(&env.base, key, postings_to(url)).await;
        refused(&got, 422, code, "url");
    }
    for (body, code, field) in [
        (
            json!({"url": PUBLIC, "events": []}),
            "webhook_events_empty",
            "events",
        ),
        (
            json!({"url": PUBLIC, "events": ["budget.alert"]}),
            "unknown_webhook_event",
            "events[0]",
        ),
        (
            json!({"url": PUBLIC, "events": ["ledger.posted", "ledger.posted"]}),
            "duplicate_webhook_event",
            "events[1]",
        ),
        (
            json!({"url": PUBLIC, "events": ["ledger.posted"], "description": " "}),
            "invalid_field",
            "description",
        ),
        (
            json!({"url": PUBLIC, "events": ["ledger.posted"], "secret": "mine"}),
            "unknown_field",
            "secret",
        ),
        (json!({"events": ["ledger.posted"]}), "missing_field", "url"),
    ] {
        let got = post(&env.base, key, body).await;
        refused(&got, 422, code, field);
    }
    // A member may not register.
    let got = post(&env.base, &env.a.member_key, postings_to(PUBLIC)).await;
    assert_eq!(got.1["code"], "forbidden_role");

    // With private targets allowed, a loopback receiver is accepted.
    let (s, local) = post(
        &env.private_base,
        key,
        postings_to("http://127.0.0.1:9/hook"),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{local}");
    // Three webhooks is this instance's limit.
    let (s, _) = post(&env.base, key, postings_to(PUBLIC)).await;
    assert_eq!(s, StatusCode::CREATED);
    let got = post(&env.base, key, postings_to(PUBLIC)).await;
    assert_eq!(got.0, StatusCode::CONFLICT, "{}", got.1);
    assert_eq!(got.1["code"], "limit_exceeded");
    // Without a secrets key nothing is stored.
    let got = post(&env.nokey_base, &env.b.admin_key, postings_to(PUBLIC)).await;
    assert_eq!(got.0, StatusCode::SERVICE_UNAVAILABLE, "{}", got.1);
    assert_eq!(got.1["code"], "secrets_key_missing");

    // Pages: oldest first, each once.
    let (s, p1) = get(&env.base, key, "/v1/webhooks?limit=2").await;
    assert_eq!(s, StatusCode::OK, "{p1}");
    assert_eq!(p1["webhooks"].as_array().unwrap().len(), 2);
    assert_eq!(p1["webhooks"][0]["id"], id.as_str());
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = get(
        &env.base,
        key,
        &format!("/v1/webhooks?limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(p2["webhooks"].as_array().unwrap().len(), 1);
    assert!(p2["next_cursor"].is_null());
    let got = get(&env.base, key, "/v1/webhooks?cursor=nope").await;
    refused(&got, 422, "invalid_field", "cursor");
    let got = get(&env.base, key, "/v1/webhooks?limit=0").await;
    refused(&got, 422, "invalid_field", "limit");

    // Another organisation sees none of it.
    let b = env.b.admin_key.as_str();
    let (_, list_b) = get(&env.base, b, "/v1/webhooks").await;
    assert_eq!(list_b["webhooks"], json!([]));
    for (m, path) in [
        (reqwest::Method::GET, format!("/v1/webhooks/{id}")),
        (
            reqwest::Method::GET,
            format!("/v1/webhooks/{id}/deliveries"),
        ),
        (reqwest::Method::DELETE, format!("/v1/webhooks/{id}")),
        (reqwest::Method::GET, "/v1/webhooks/not-a-uuid".to_owned()),
    ] {
        let (s, v) = call(&env.base, b, m, &path, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
        assert_eq!(v["code"], "webhook_not_found");
    }

    // The (empty) delivery log, then deletion.
    let (s, log) = get(&env.base, key, &format!("/v1/webhooks/{id}/deliveries")).await;
    assert_eq!(s, StatusCode::OK, "{log}");
    assert_eq!(log, json!({"deliveries": [], "next_cursor": null}));
    let (s, gone) = call(
        &env.base,
        key,
        reqwest::Method::DELETE,
        &format!("/v1/webhooks/{id}"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{gone}");
    assert!(gone["deleted_at"].is_string());
    let (s, v) = get(&env.base, key, &format!("/v1/webhooks/{id}")).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("webhook_not_found"))
    );
    // Deleting frees a place under the limit.
    let (s, _) = post(&env.base, key, postings_to(PUBLIC)).await;
    assert_eq!(s, StatusCode::CREATED);
    Ok(())
}
