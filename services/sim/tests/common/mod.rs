//! What the simulator's HTTP tests share: starting a simulator and sending
//! it requests the way a separate process would.

// Each test crate uses a part of this module.
#![allow(dead_code)]

use serde_json::Value;
use tally_sim::{RunningSim, SimConfig, Simulator};

/// A simulator on 127.0.0.1 with `cfg`.
pub async fn start(cfg: SimConfig) -> RunningSim {
    Simulator::start(cfg).await.unwrap()
}

/// A simulator on 127.0.0.1 that differs from an ephemeral one by what
/// `set` changes.
pub async fn start_with(set: impl FnOnce(&mut SimConfig)) -> RunningSim {
    let mut cfg = SimConfig::ephemeral();
    set(&mut cfg);
    start(cfg).await
}

/// Sends `req`, with `key` as the bearer token when given.
pub async fn send(req: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::Response {
    let req = match key {
        Some(key) => req.bearer_auth(key),
        None => req,
    };
    req.send().await.unwrap()
}

/// `GET {base}{path}` (base: `…/api/v1`), with `key` when given.
pub async fn get(sim: &RunningSim, path: &str, key: Option<&str>) -> reqwest::Response {
    let url = format!("{}{path}", sim.base_url());
    send(reqwest::Client::new().get(url), key).await
}

/// `POST {base}{path}` with the JSON `body`, with `key` when given.
pub async fn post(
    sim: &RunningSim,
    path: &str,
    key: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let url = format!("{}{path}", sim.base_url());
    send(reqwest::Client::new().post(url).json(body), key).await
}

/// The `X-Generation-Id` of a generation reply.
pub fn generation_id(resp: &reqwest::Response) -> String {
    resp.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned()
}
