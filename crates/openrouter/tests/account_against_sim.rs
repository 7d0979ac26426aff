//! `/key`, `/models/user`, the PKCE code exchange and per-organisation keys,
//! against the simulator over real HTTP.

mod common;

use secrecy::SecretString;
use tally_openrouter::{ClientConfig, OpenRouterClient};
use tally_sim::{oauth::s256, KeySpec, RunningSim, SimConfig};

/// A code from the simulator's `/auth` for the S256 challenge of the
/// verifier `"v" × 43`, read from the redirect it answers with.
async fn auth_code(sim: &RunningSim) -> String {
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/auth", sim.root_url()))
        .query(&[
            ("callback_url", "http://localhost:1/cb"),
            ("code_challenge", &s256(&"v".repeat(43))),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    let loc = resp.headers()["location"].to_str().unwrap().to_owned();
    loc.split("code=").nth(1).unwrap().to_owned()
}

#[tokio::test]
async fn key_info_models_user_and_code_exchange() {
    let sim = common::start(SimConfig::ephemeral()).await;
    let base = OpenRouterClient::new(ClientConfig::new(sim.base_url())).unwrap();
    assert!(!base.has_key());
    assert_eq!(base.key_info().await.unwrap_err().code(), "auth");

    let issued = sim.simulator().issue_key(KeySpec {
        limit: Some("25.5".parse().unwrap()),
        hidden_models: vec!["openrouter/auto".into()],
        ..KeySpec::default()
    });
    let org = base
        .with_key(&SecretString::from(issued.key.clone()))
        .unwrap();
    assert!(org.has_key());
    assert!(!format!("{org:?}").contains(&issued.key));
    let info = org.key_info().await.unwrap();
    assert_eq!(info.label, issued.label);
    assert_eq!(info.limit, Some("25.5".parse().unwrap()));
    assert_eq!(info.limit_remaining, Some("25.5".parse().unwrap()));
    let models = org.models_user().await.unwrap();
    assert!(models.iter().all(|m| m.id != "openrouter/auto"));
    let mini = models
        .iter()
        .find(|m| m.id == "openai/gpt-4o-mini")
        .unwrap();
    assert_eq!(mini.max_completion_tokens, Some(16384));
    assert_eq!(mini.input_modalities, ["text", "image"]);
    assert_eq!(mini.name.as_deref(), Some("OpenAI: GPT-4o-mini"));
    assert_eq!(
        sim.simulator()
            .key_activity(&issued.key)
            .unwrap()
            .key_requests,
        1
    );

    // The code exchange: a code from /auth, the right verifier → a new key.
    let verifier = SecretString::from("v".repeat(43));
    let code = auth_code(&sim).await;
    let wrong = base
        .exchange_code(&code, &SecretString::from("w".repeat(43)))
        .await
        .unwrap_err();
    assert_eq!(wrong.status(), Some(403));
    let code = auth_code(&sim).await;
    let got = base.exchange_code(&code, &verifier).await.unwrap();
    assert!(got.user_id.is_some());
    let fresh = base.with_key(&got.key).unwrap();
    assert!(fresh
        .key_info()
        .await
        .unwrap()
        .label
        .starts_with("sk-or-v1-"));
}
