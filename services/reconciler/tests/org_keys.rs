//! The reconciler looks generations up with the key of the organisation
//! that made them (real NATS, Postgres, the simulator over HTTP): two
//! organisations with different keys, each lookup made with its own
//! organisation's key only; an organisation without a connection waits and
//! ends unresolved `provider_not_connected` at the deadline.

mod common;

use std::sync::Arc;
use std::time::Duration;
use tally_money::usd;

use chrono::Utc;
use common::{completed, fast_config, Env};
use secrecy::SecretString;
use tally_provider::{Connections, OrgProviders};
use tally_reconciler::{Metrics, Reconciler, ReconcilerConfig};
use tally_sim::{KeySpec, SimConfig, SimGeneration};
use tally_store::providers::ConnectedVia;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_org_is_looked_up_with_its_own_key() -> anyhow::Result<()> {
    let env = Env::start(SimConfig::ephemeral()).await?;
    let (_db, store) = tally_testkit::TestDb::migrated(4).await?;
    let kek = tally_secrets::generate_key_setting("k1");
    let keyring = Arc::new(tally_secrets::Keyring::from_settings(Some(&kek), None)?);
    let base = env.client(None);
    let connections = Connections::new(
        store.clone(),
        Some(keyring.clone()),
        base.clone(),
        "http://127.0.0.1:1/auth",
        None,
    );
    let acme = env.sim().issue_key(KeySpec::default());
    let globex = env.sim().issue_key(KeySpec::default());
    for (org, k) in [("acme", &acme.key), ("globex", &globex.key)] {
        connections
            .connect_key(
                org,
                SecretString::from(k.clone()),
                ConnectedVia::ApiKey,
                None,
            )
            .await?;
    }

    let providers = OrgProviders::new(store.clone(), Some(keyring), base.clone());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    providers.spawn_listener(shutdown.clone());
    let cfg = ReconcilerConfig {
        deadline: Duration::from_secs(3),
        ..fast_config()
    };
    let task = tokio::spawn(
        Reconciler::new(
            env.bus.clone(),
            base,
            cfg,
            Arc::new(Metrics::unregistered()),
        )
        .with_org_providers(providers)
        .run(shutdown),
    );

    let now = Utc::now() - chrono::Duration::milliseconds(500);
    let mut ids = Vec::new();
    for (org, n) in [("acme", 3), ("globex", 2), ("initech", 1)] {
        for i in 0..n {
            let id = format!("gen-{org}-{i}");
            env.sim()
                .register_generation(SimGeneration::new(&id, usd!("0.001")));
            let mut ev = completed(&id, now);
            ev.data.attribution.org_id = org.to_owned();
            env.publish_completed(&ev).await?;
            ids.push(id);
        }
    }
    let mut costs = env.costs().await?;
    costs.wait_settled(&ids, Duration::from_secs(20)).await?;
    for id in &ids {
        if id.starts_with("gen-initech") {
            let (ev, _, _) = &costs.unresolved[id];
            assert_eq!(ev.data.reason, "provider_not_connected");
        } else {
            assert!(costs.reconciled.contains_key(id), "{id}");
        }
    }
    let looked = |k: &str| env.sim().key_activity(k).unwrap().lookups;
    let (a, g) = (looked(&acme.key), looked(&globex.key));
    assert!(
        !a.is_empty() && a.iter().all(|id| id.starts_with("gen-acme")),
        "{a:?}"
    );
    assert!(
        !g.is_empty() && g.iter().all(|id| id.starts_with("gen-globex")),
        "{g:?}"
    );
    assert!(
        looked(tally_sim::TEST_KEY).is_empty(),
        "no other key was used"
    );
    assert_eq!(
        env.sim().calls("gen-initech-0"),
        0,
        "never looked up without a key"
    );
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(40), task).await???;
    Ok(())
}
