//! Connections against real Postgres and the OpenRouter simulator over
//! HTTP: paste a key, the OAuth PKCE flow end to end, refused states,
//! sealed storage, rotation, discovery per organisation and the
//! per-organisation key cache.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tally_openrouter::{ClientConfig, OpenRouterClient};
use tally_provider::{Connections, OrgProviders, OPENROUTER};
use tally_secrets::{generate_key_setting, Keyring};
use tally_sim::{KeySpec, RunningSim, SimConfig, Simulator};
use tally_store::providers::ConnectedVia;
use tally_store::Store;
use tally_testkit::TestDb;

struct Env {
    _db: TestDb,
    store: Store,
    sim: RunningSim,
    kek: SecretString,
}

impl Env {
    async fn start() -> anyhow::Result<Env> {
        let (db, store) = tally_testkit::TestDb::migrated(4).await?;
        let sim = Simulator::start(SimConfig::ephemeral()).await?;
        Ok(Env {
            _db: db,
            store,
            sim,
            kek: generate_key_setting("k1"),
        })
    }

    fn keyring(&self) -> Arc<Keyring> {
        Arc::new(Keyring::from_settings(Some(&self.kek), None).unwrap())
    }

    fn base(&self) -> OpenRouterClient {
        OpenRouterClient::new(ClientConfig::new(self.sim.base_url())).unwrap()
    }

    fn connections(&self, keyring: Option<Arc<Keyring>>) -> Connections {
        Connections::new(
            self.store.clone(),
            keyring,
            self.base(),
            format!("{}/auth", self.sim.root_url()),
            Some(tally_provider::oauth::validate_public_url("http://127.0.0.1:8080").unwrap()),
        )
    }
}

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

/// One connection row's text and byte columns.
type RawRow = (String, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

/// Every byte column of the connection rows, to look for plaintext.
async fn raw_rows(store: &Store) -> Vec<Vec<u8>> {
    let rows: Vec<RawRow> = sqlx::query_as(
        "SELECT coalesce(key_label, '') || org_id, wrap_nonce, wrapped_key, nonce, ciphertext FROM provider_connections",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter()
        .flat_map(|(a, b, c, d, e)| [a.into_bytes(), b, c, d, e])
        .collect()
}

#[tokio::test]
async fn pasted_key_is_verified_sealed_and_never_returned() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let c = env.connections(Some(env.keyring()));

    let e = c
        .connect_key(
            "acme",
            secret("sk-or-v1-not-issued"),
            ConnectedVia::ApiKey,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "provider_key_rejected");
    assert!(!c.status("acme").await?.connected);

    let issued = env.sim.simulator().issue_key(KeySpec {
        limit: Some("20".parse()?),
        ..KeySpec::default()
    });
    let st = c
        .connect_key(
            "acme",
            secret(&issued.key),
            ConnectedVia::ApiKey,
            Some(vec!["Anthropic".into()]),
        )
        .await?;
    assert!(st.connected);
    assert_eq!(st.connected_via, Some("api_key"));
    assert_eq!(st.key_label.as_deref(), Some(issued.label.as_str()));
    assert_eq!(st.limit_remaining_usd.as_deref(), Some("20"));
    assert_eq!(st.byok_providers, ["Anthropic"]);
    assert_eq!(st.models.count, 3);
    assert!(st.models.synced_at.is_some() && st.models.error.is_none());
    let shown = serde_json::to_string(&st)?;
    assert!(!shown.contains(&issued.key), "{shown}");

    // The database holds no plaintext.
    for col in raw_rows(&env.store).await {
        assert!(!col
            .windows(issued.key.len())
            .any(|w| w == issued.key.as_bytes()));
        assert!(!col.windows(12).any(|w| w == &issued.key.as_bytes()[9..21]));
    }

    // A ciphertext copied to another organisation's row does not decrypt.
    let other = env.sim.simulator().issue_key(KeySpec::default());
    c.connect_key("globex", secret(&other.key), ConnectedVia::ApiKey, None)
        .await?;
    sqlx::query(
        "UPDATE provider_connections g SET kek_id = a.kek_id, wrap_nonce = a.wrap_nonce, \
         wrapped_key = a.wrapped_key, nonce = a.nonce, ciphertext = a.ciphertext \
         FROM provider_connections a WHERE a.org_id = 'acme' AND g.org_id = 'globex'",
    )
    .execute(env.store.pool())
    .await?;
    let globex = env.store.connection("globex", OPENROUTER).await?.unwrap();
    assert_eq!(
        c.open_key(&globex).unwrap_err().code(),
        "secret_decrypt_failed"
    );
    let cache = OrgProviders::new(env.store.clone(), Some(env.keyring()), env.base());
    assert_eq!(
        cache.get("globex").await.unwrap_err().code(),
        "secret_decrypt_failed"
    );

    // Without a key-encryption key nothing is stored.
    let nokey = env.connections(None);
    let e = nokey
        .connect_key("initech", secret(&other.key), ConnectedVia::ApiKey, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "secrets_key_missing");
    assert!(env.store.connection("initech", OPENROUTER).await?.is_none());

    // Disconnecting destroys the ciphertext and the catalog.
    assert!(c.disconnect("acme").await?);
    assert!(env.store.connection("acme", OPENROUTER).await?.is_none());
    assert!(env.store.models("acme", OPENROUTER).await?.is_empty());
    assert!(!c.status("acme").await?.connected);
    Ok(())
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Follows an authorize URL to the simulator; returns the callback URL it
/// redirects to, split into (state, code).
async fn approve(authorize_url: &str) -> (String, String) {
    let resp = no_redirects().get(authorize_url).send().await.unwrap();
    assert_eq!(resp.status(), 302, "{authorize_url}");
    let loc = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(loc.path(), "/v1/providers/openrouter/oauth/callback");
    let get = |k: &str| {
        loc.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    (get("state"), get("code"))
}

#[tokio::test]
async fn oauth_flow_end_to_end_and_refused_states() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let c = env.connections(Some(env.keyring()));
    let (_, acme_admin) = env.store.create_org("acme", None).await?;
    let acme_admin = acme_admin.info.id.to_string();
    let (_, globex_admin) = env.store.create_org("globex", None).await?;
    let globex_admin = globex_admin.info.id.to_string();

    let start = c.start_oauth("acme", Some(&acme_admin), None).await?;
    assert!(start.authorize_url.contains("code_challenge_method=S256"));
    assert!(start.expires_at > chrono::Utc::now() + chrono::Duration::minutes(9));
    let (state, code) = approve(&start.authorize_url).await;
    let (org, st) = c.finish_oauth(&state, &code).await?;
    assert_eq!(org, "acme");
    assert_eq!(st.connected_via, Some("oauth"));
    assert!(st.key_label.as_deref().unwrap().starts_with("sk-or-v1-"));
    assert_eq!(st.models.count, 3);

    // Replayed state: refused, nothing changes.
    let before = env
        .store
        .connection("acme", OPENROUTER)
        .await?
        .unwrap()
        .version;
    assert_eq!(
        c.finish_oauth(&state, &code).await.unwrap_err().code(),
        "oauth_state_used"
    );
    assert_eq!(
        env.store
            .connection("acme", OPENROUTER)
            .await?
            .unwrap()
            .version,
        before
    );

    // Unknown (foreign) state.
    assert_eq!(
        c.finish_oauth("made-up-state", &code)
            .await
            .unwrap_err()
            .code(),
        "oauth_state_unknown"
    );

    // Expired state.
    let start = c.start_oauth("globex", Some(&globex_admin), None).await?;
    let (state, code) = approve(&start.authorize_url).await;
    sqlx::query("UPDATE provider_oauth_states SET expires_at = now() - interval '1 second' WHERE org_id = 'globex'")
        .execute(env.store.pool())
        .await?;
    assert_eq!(
        c.finish_oauth(&state, &code).await.unwrap_err().code(),
        "oauth_state_expired"
    );
    assert!(env.store.connection("globex", OPENROUTER).await?.is_none());

    // A wrong verifier: the code belongs to another flow's challenge.
    let a = c.start_oauth("globex", None, None).await?;
    let b = c.start_oauth("globex", None, None).await?;
    let (state_a, _) = approve(&a.authorize_url).await;
    let (_, code_b) = approve(&b.authorize_url).await;
    assert_eq!(
        c.finish_oauth(&state_a, &code_b).await.unwrap_err().code(),
        "oauth_exchange_refused"
    );
    assert!(env.store.connection("globex", OPENROUTER).await?.is_none());

    // The simulator denies: no code, nothing stored (the callback gets an error).
    env.sim.simulator().set_oauth_deny(true);
    let d = c.start_oauth("globex", None, None).await?;
    let resp = no_redirects().get(&d.authorize_url).send().await?;
    assert!(resp.headers()["location"]
        .to_str()?
        .contains("error=access_denied"));
    assert!(env.store.connection("globex", OPENROUTER).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn rotation_rewraps_every_secret_and_the_old_key_goes() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let old = env.kek.clone();
    let c = env.connections(Some(env.keyring()));
    let keys: Vec<_> = ["acme", "globex"]
        .iter()
        .map(|org| {
            (
                org.to_string(),
                env.sim.simulator().issue_key(KeySpec::default()).key,
            )
        })
        .collect();
    for (org, key) in &keys {
        c.connect_key(org, secret(key), ConnectedVia::ApiKey, None)
            .await?;
    }
    c.start_oauth("initech", None, None).await?; // a pending state holds a sealed verifier

    let new = generate_key_setting("k2");
    let during = Arc::new(Keyring::from_settings(Some(&new), Some(&old))?);
    let rotated = env.connections(Some(during.clone()));
    let report = rotated.rotate().await?;
    assert_eq!((report.rewrapped, report.current), (3, 0));
    assert_eq!(report.key_id, "k2");
    assert_eq!(rotated.rotate().await?.rewrapped, 0, "idempotent");

    let after = env.connections(Some(Arc::new(Keyring::from_settings(Some(&new), None)?)));
    for (org, key) in &keys {
        let conn = env.store.connection(org, OPENROUTER).await?.unwrap();
        assert_eq!(conn.sealed_key.kek_id, "k2");
        assert_eq!(after.open_key(&conn)?.expose_secret(), key.as_str());
    }
    let stale = env.connections(Some(Arc::new(Keyring::from_settings(Some(&old), None)?)));
    let conn = env.store.connection("acme", OPENROUTER).await?.unwrap();
    assert_eq!(
        stale.open_key(&conn).unwrap_err().code(),
        "secrets_key_unknown"
    );
    Ok(())
}

#[tokio::test]
async fn discovery_per_organisation_and_the_key_cache() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let c = env.connections(Some(env.keyring()));
    let a = env.sim.simulator().issue_key(KeySpec::default());
    let b = env.sim.simulator().issue_key(KeySpec {
        hidden_models: vec!["deepseek/deepseek-r1".into()],
        ..KeySpec::default()
    });
    c.connect_key("acme", secret(&a.key), ConnectedVia::ApiKey, None)
        .await?;
    c.connect_key("globex", secret(&b.key), ConnectedVia::ApiKey, None)
        .await?;

    let (acme, _) = c.models("acme").await?;
    let (globex, synced) = c.models("globex").await?;
    assert!(synced.is_some());
    assert_eq!(acme.len(), 3);
    assert_eq!(globex.len(), 2);
    assert!(globex.iter().all(|m| m.id != "deepseek/deepseek-r1"));
    let r1 = acme
        .iter()
        .find(|m| m.id == "deepseek/deepseek-r1")
        .unwrap();
    assert!(
        r1.capabilities.reasoning && r1.capabilities.tools && !r1.capabilities.structured_outputs
    );
    let auto = acme.iter().find(|m| m.id == "openrouter/auto").unwrap();
    assert_eq!(
        (
            auto.pricing.prompt.as_deref(),
            auto.pricing.completion.as_deref()
        ),
        (None, None)
    );
    let mini = acme.iter().find(|m| m.id == "openai/gpt-4o-mini").unwrap();
    assert_eq!(mini.pricing.completion.as_deref(), Some("0.0000006"));
    assert!(mini.capabilities.structured_outputs);

    // The cache: each org's client carries its own key; a disconnect is
    // seen at once through NOTIFY.
    let cache = OrgProviders::new(env.store.clone(), Some(env.keyring()), env.base())
        .with_ttl(Duration::from_secs(3600));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let _listener = cache.spawn_listener(shutdown);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (org, key) in [("acme", &a.key), ("globex", &b.key)] {
        let p = cache.get(org).await?;
        p.client.as_ref().unwrap().key_info().await?;
        assert_eq!(
            env.sim.simulator().key_activity(key).unwrap().key_requests,
            2,
            "{org}"
        );
        assert!(p.catalog_synced);
    }
    assert!(cache.get("initech").await?.client.is_none());
    assert_eq!(cache.get("globex").await?.models.len(), 2);
    c.disconnect("globex").await?;
    let mut gone = false;
    for _ in 0..50 {
        if cache.get("globex").await?.client.is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the cache saw the disconnect");

    // A slow discovery never fails the save: its error is shown.
    let mut hurried = c.clone();
    hurried.discovery_timeout = Duration::ZERO;
    let k = env.sim.simulator().issue_key(KeySpec::default());
    let st = hurried
        .connect_key("initech", secret(&k.key), ConnectedVia::ApiKey, None)
        .await?;
    assert!(st.connected);
    assert_eq!(st.models.count, 0);
    assert!(
        st.models
            .error
            .as_deref()
            .unwrap()
            .contains("did not finish"),
        "{st:?}"
    );
    // …and a later sync clears it.
    let m = c.sync_models("initech").await?;
    assert_eq!((m.count, m.error), (3, None));
    Ok(())
}

#[tokio::test]
async fn periodic_sync_refreshes_stale_catalogs_and_records_failures() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let c = env.connections(Some(env.keyring()));
    let keys: Vec<_> = ["stale", "fresh", "revoked"]
        .iter()
        .map(|_| env.sim.simulator().issue_key(KeySpec::default()))
        .collect();
    for (org, k) in ["stale", "fresh", "revoked"].iter().zip(&keys) {
        c.connect_key(org, secret(&k.key), ConnectedVia::ApiKey, None)
            .await?;
    }
    // "stale" and "revoked" were last synced long ago, and "stale" lost its
    // catalog; "revoked"'s key is no longer accepted by OpenRouter.
    sqlx::query(
        "UPDATE provider_connections SET models_synced_at = now() - interval '1 day' \
         WHERE org_id IN ('stale', 'revoked')",
    )
    .execute(env.store.pool())
    .await?;
    sqlx::query("DELETE FROM provider_models WHERE org_id = 'stale'")
        .execute(env.store.pool())
        .await?;
    assert!(env.sim.simulator().revoke_key(&keys[2].key));
    let fresh_before = c.status("fresh").await?.models.synced_at;
    let revoked_before = c.status("revoked").await?.models.synced_at;

    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(c.clone().sync_periodically(Duration::from_secs(3600), rx));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stale = c.status("stale").await?;
        let revoked = c.status("revoked").await?;
        if stale.models.count == 3 && revoked.models.error.is_some() {
            assert!(stale.models.synced_at > revoked_before, "{stale:?}");
            assert!(stale.models.error.is_none(), "{stale:?}");
            // A failed discovery keeps the last good catalog and its time.
            assert_eq!(revoked.models.count, 3);
            assert_eq!(revoked.models.synced_at, revoked_before);
            assert!(
                revoked
                    .models
                    .error
                    .as_deref()
                    .unwrap()
                    .contains("rejected"),
                "{revoked:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not synced: {stale:?} {revoked:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The fresh one was not asked again.
    assert_eq!(c.status("fresh").await?.models.synced_at, fresh_before);
    stop.send(true)?;
    tokio::time::timeout(Duration::from_secs(5), task).await??;
    Ok(())
}

#[tokio::test]
async fn a_flow_whose_admin_key_was_revoked_connects_nothing() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let c = env.connections(Some(env.keyring()));
    let (_, admin) = env.store.create_org("acme", None).await?;
    let member = env
        .store
        .create_key("acme", tally_store::Role::Member, None)
        .await?;
    for starter in [admin.info.id, member.info.id] {
        let start = c
            .start_oauth("acme", Some(&starter.to_string()), None)
            .await?;
        if starter == admin.info.id {
            env.store.revoke_key(starter, Some("acme")).await?;
        }
        let (state, code) = approve(&start.authorize_url).await;
        let e = c.finish_oauth(&state, &code).await.unwrap_err();
        assert_eq!(e.code(), "oauth_admin_revoked");
        // Used up all the same.
        assert_eq!(
            c.finish_oauth(&state, &code).await.unwrap_err().code(),
            "oauth_state_used"
        );
    }
    assert!(!c.status("acme").await?.connected);
    Ok(())
}
