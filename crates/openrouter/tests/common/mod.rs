//! What the client's tests against the simulator share: a running
//! simulator and a client that sends the simulator's test key.

// Each test crate uses a part of this module.
#![allow(dead_code)]

use tally_openrouter::{ClientConfig, OpenRouterClient};
use tally_sim::{RunningSim, SimConfig, Simulator, TEST_KEY};

/// A simulator on 127.0.0.1 with `cfg`.
pub async fn start(cfg: SimConfig) -> RunningSim {
    Simulator::start(cfg).await.expect("simulator starts")
}

/// A simulator on 127.0.0.1 that differs from an ephemeral one by what
/// `set` changes.
pub async fn start_with(set: impl FnOnce(&mut SimConfig)) -> RunningSim {
    let mut cfg = SimConfig::ephemeral();
    set(&mut cfg);
    start(cfg).await
}

/// The client configuration for `sim` with its test key.
pub fn config(sim: &RunningSim) -> ClientConfig {
    ClientConfig::new(sim.base_url()).with_api_key(TEST_KEY)
}

/// A client of `sim` with its test key.
pub fn client(sim: &RunningSim) -> OpenRouterClient {
    OpenRouterClient::new(config(sim)).unwrap()
}

/// The raw body of `GET {base}{path}` with the test key, as the wire
/// carries it.
pub async fn raw_get(sim: &RunningSim, path: &str) -> String {
    reqwest::Client::new()
        .get(format!("{}{path}", sim.base_url()))
        .bearer_auth(TEST_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
