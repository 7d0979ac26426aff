//! The served OpenAPI document over real HTTP against a real Postgres
//! database: `GET /openapi.json` needs no key, every documented operation
//! is a real route that answers as its access level says, and the document
//! equals the committed snapshot (`services/api/openapi.json`).
//!
//! After changing a route, regenerate the snapshot with
//! `TALLY_UPDATE_OPENAPI=1 cargo test --workspace --test openapi` and
//! review its diff.

use reqwest::StatusCode;
use serde_json::Value;
use tally_api::AppState;
use tally_telemetry::Registry;
use tally_testkit::TestDb;

const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

async fn start() -> anyhow::Result<(String, TestDb)> {
    let (db, store) = tally_testkit::TestDb::migrated(10).await?;
    let state = AppState::new(store, Registry::new(), "tally".into())?;
    let base = tally_tests::serve_api(state).await?;
    Ok((base, db))
}

/// A concrete URL for a path template (every parameter `x`).
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push('x');
            }
            _ if in_param => {}
            c => out.push(c),
        }
    }
    out
}

#[tokio::test]
async fn every_documented_operation_is_a_route_answering_by_its_access() -> anyhow::Result<()> {
    let (base, _db) = start().await?;
    let http = reqwest::Client::new();
    let resp = http.get(format!("{base}/openapi.json")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = resp.json().await?;
    assert_eq!(doc["openapi"], "3.1.0");

    let mut seen = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let url = format!("{base}{}", concrete(path));
            let m = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())?;
            let resp = http.request(m, &url).send().await?;
            let status = resp.status();
            let ctx = format!("{method} {path}");
            let ct = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or("").to_owned())
                .unwrap_or_default();
            let body = resp.text().await?;
            match op["x-tally-access"].as_str().unwrap() {
                "member" | "admin" | "operator" => {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{ctx}: {body}");
                    assert!(ct.starts_with("application/problem+json"), "{ctx}");
                    assert!(body.contains("missing_api_key"), "{ctx}: {body}");
                }
                "oauth_state" => {
                    assert_eq!(status, StatusCode::BAD_REQUEST, "{ctx}: {body}");
                    assert!(ct.starts_with("text/html"), "{ctx}");
                }
                "public" => {
                    assert!(status.is_success() || status == 503, "{ctx}: {status}");
                }
                other => panic!("{ctx}: unknown access {other}"),
            }
            // The answered status is one the document lists.
            assert!(
                op["responses"].get(status.as_str()).is_some(),
                "{ctx}: {status} is not documented"
            );
            seen += 1;
        }
    }
    assert_eq!(
        seen,
        tally_api::routes().len() + 4,
        "the table and the document differ"
    );

    // An undocumented path is no route.
    let resp = http.get(format!("{base}/v1/nope")).send().await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    Ok(())
}

#[test]
fn the_document_equals_the_snapshot() {
    let doc = serde_json::to_string_pretty(&tally_api::openapi_document()).unwrap() + "\n";
    if std::env::var_os("TALLY_UPDATE_OPENAPI").is_some() {
        std::fs::write(SNAPSHOT, &doc).unwrap();
        return;
    }
    let snapshot = std::fs::read_to_string(SNAPSHOT).unwrap_or_default();
    assert!(
        snapshot == doc,
        "the OpenAPI document differs from {SNAPSHOT}; if the change is intended, \
         regenerate it with TALLY_UPDATE_OPENAPI=1 cargo test --workspace --test openapi"
    );
}
