//! The simulator's connection surface over real HTTP: OAuth PKCE approval
//! and code exchange, `/key`, `/models/user`, and the per-key records that
//! let a test prove which key a request used.

mod common;

use common::{generation_id, get, post};
use serde_json::{json, Value};
use tally_sim::{oauth::s256, KeySpec, RunningSim, SimConfig, TEST_KEY};

async fn start() -> RunningSim {
    common::start(SimConfig::ephemeral()).await
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn authorize(
    sim: &RunningSim,
    callback: &str,
    challenge: &str,
    method: &str,
) -> reqwest::Response {
    no_redirects()
        .get(format!("{}/auth", sim.root_url()))
        .query(&[
            ("callback_url", callback),
            ("code_challenge", challenge),
            ("code_challenge_method", method),
        ])
        .send()
        .await
        .unwrap()
}

fn code_of(resp: &reqwest::Response) -> String {
    let loc = resp.headers()["location"].to_str().unwrap();
    let url = url::Url::parse(loc).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no code in {loc}"))
}

/// `POST /auth/keys`: exchanges `code` with `verifier` under `method`.
async fn exchange(sim: &RunningSim, code: &str, verifier: &str, method: &str) -> reqwest::Response {
    let body = json!({"code": code, "code_verifier": verifier, "code_challenge_method": method});
    post(sim, "/auth/keys", None, &body).await
}

/// The JSON body of `GET {base}{path}` with `key`.
async fn get_json(sim: &RunningSim, path: &str, key: &str) -> Value {
    get(sim, path, Some(key)).await.json().await.unwrap()
}

#[tokio::test]
async fn pkce_flow_issues_a_working_key_once() {
    let sim = start().await;
    let verifier = "a-verifier-of-forty-three-characters-000000";
    let callback = "http://127.0.0.1:9/v1/providers/openrouter/oauth/callback?state=abc";
    let resp = authorize(&sim, callback, &s256(verifier), "S256").await;
    assert_eq!(resp.status(), 302);
    let loc = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        loc.starts_with(
            "http://127.0.0.1:9/v1/providers/openrouter/oauth/callback?state=abc&code="
        ),
        "{loc}"
    );
    let code = code_of(&resp);

    // A wrong verifier is 403 and uses the code up.
    let r = exchange(&sim, &code, "wrong", "S256").await;
    assert_eq!(r.status(), 403);
    let r = exchange(&sim, &code, verifier, "S256").await;
    assert_eq!(r.status(), 403, "a code is single use");

    let code = code_of(&authorize(&sim, callback, &s256(verifier), "S256").await);
    let r = exchange(&sim, &code, verifier, "bogus").await;
    assert_eq!(r.status(), 400);
    let code = code_of(&authorize(&sim, callback, &s256(verifier), "S256").await);
    let r = exchange(&sim, &code, verifier, "S256").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let key = v["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk-or-v1-") && key.len() == 73, "{key}");
    assert!(v["user_id"].as_str().unwrap().starts_with("user_"));

    // The key works for /key; a made-up one does not.
    let r = get(&sim, "/key", Some(&key)).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["data"]["label"],
        format!("sk-or-v1-{}...{}", &key[9..12], &key[70..])
    );
    assert_eq!(body["data"]["usage"], json!(0));
    let r = get(&sim, "/key", Some("sk-or-v1-made-up")).await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn bad_callbacks_and_denials() {
    let sim = start().await;
    let r = authorize(&sim, "http://tally.example.com/cb", "x", "S256").await;
    assert_eq!(r.status(), 400);
    let r = authorize(&sim, "https://tally.example.com:3000/cb", "x", "S512").await;
    assert_eq!(r.status(), 400);
    sim.simulator().set_oauth_deny(true);
    let r = authorize(&sim, "https://tally.example.com/cb", "x", "S256").await;
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"],
        "https://tally.example.com/cb?error=access_denied"
    );
}

#[tokio::test]
async fn each_key_records_what_it_ran_and_looked_up() {
    let sim = start().await;
    let a = sim.simulator().issue_key(KeySpec::default());
    let b = sim.simulator().issue_key(KeySpec {
        hidden_models: vec!["deepseek/deepseek-r1".into()],
        limit: Some("10".parse().unwrap()),
        ..KeySpec::default()
    });
    let run = |key: String| {
        let sim = &sim;
        async move {
            let body = json!({"model": "openai/gpt-4o-mini", "input": "hello there"});
            let r = post(sim, "/responses", Some(&key), &body).await;
            assert_eq!(r.status(), 200);
            generation_id(&r)
        }
    };
    let ga = run(a.key.clone()).await;
    let gb = run(b.key.clone()).await;
    let r = get(&sim, &format!("/generation?id={ga}"), Some(&b.key)).await;
    assert_eq!(r.status(), 200);
    let act_a = sim.simulator().key_activity(&a.key).unwrap();
    let act_b = sim.simulator().key_activity(&b.key).unwrap();
    assert_eq!(
        act_a.generations.iter().map(|g| &g.id).collect::<Vec<_>>(),
        [&ga]
    );
    assert_eq!(
        act_b.generations.iter().map(|g| &g.id).collect::<Vec<_>>(),
        [&gb]
    );
    assert!(act_a.lookups.is_empty());
    assert_eq!(act_b.lookups, vec![ga]);

    // /key reports the generation's charge as usage; the limit counts down.
    let body = get_json(&sim, "/key", &b.key).await;
    let charged = act_b.generations[0].charged;
    assert_eq!(
        body["data"]["usage"]
            .to_string()
            .parse::<tally_money::Usd>()
            .unwrap(),
        charged
    );
    assert_eq!(body["data"]["usage_daily"], body["data"]["usage"]);
    assert_eq!(body["data"]["limit"], json!(10));

    // /models/user hides what the key's account hides.
    let ids = |v: Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = get_json(&sim, "/models/user", &a.key).await;
    let some = get_json(&sim, "/models/user", &b.key).await;
    assert!(ids(all).contains(&"deepseek/deepseek-r1".to_owned()));
    assert!(!ids(some).contains(&"deepseek/deepseek-r1".to_owned()));
    let r = get(&sim, "/models/user", None).await;
    assert_eq!(r.status(), 401);

    // The provisioned test key still works; a revoked key no longer does.
    assert!(sim.simulator().key_activity(TEST_KEY).is_some());
    assert!(sim.simulator().revoke_key(&a.key));
    let body = json!({"model": "openai/gpt-4o-mini", "input": "x"});
    let r = post(&sim, "/responses", Some(&a.key), &body).await;
    assert_eq!(r.status(), 401);
}
