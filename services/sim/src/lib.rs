//! An OpenRouter simulator: a real HTTP server that answers like OpenRouter,
//! with its delays and faults, for tests, demos and load generation
//! (`tally sim openrouter`).
//!
//! ```text
//! GET  /api/v1/generation?id=…   statistics: 404 until ready, then 200; faults on request
//! GET  /api/v1/models            the model catalog (fixtures/models.json), paginated
//! GET  /api/v1/models/user       the catalog as the key's account sees it
//! GET  /api/v1/key               the key's label, limit and usage
//! GET  /auth                     OAuth PKCE approval: redirects to callback_url with a code
//! POST /api/v1/auth/keys         exchanges a code and its verifier for a new key
//! POST /sim/unseen               serve generations tally is never told about (drift)
//! POST /api/v1/responses         a generation (Responses API), streaming or not
//! POST /api/v1/chat/completions  a generation (chat completions), streaming or not
//! POST /sim/generations          register a generation (admin, JSON)
//! POST /sim/generations/batch    register many
//! GET  /sim/stats[?id=…]         call counters
//! POST /sim/keys                 issue a key; GET /sim/keys/activity?key=… what it served
//! POST /sim/oauth {deny}         make /auth deny or approve
//! POST /sim/reset                forget everything
//! ```
//!
//! In a test:
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use tally_sim::{SimConfig, SimGeneration, Simulator};
//! let sim = Simulator::start(SimConfig::ephemeral()).await?;
//! sim.simulator().register_generation(SimGeneration::new("gen-1", "0.000123".parse().unwrap()));
//! let base_url = sim.base_url(); // "http://127.0.0.1:PORT/api/v1"
//! // … point a client at base_url …
//! sim.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Modules
//!
//! The router lives here; each endpoint has its own module ([`generation`],
//! [`models`], [`accounts`], [`oauth`], [`responses`], [`chat`], [`admin`]), sharing
//! [`state`] (known generations, scripts, faults, counters),
//! [`config`] and the number rendering in [`number`].
//!
//! # Decisions
//!
//! * **Costs are written with their exact digits** as JSON numbers, in the
//!   JavaScript rendering OpenRouter's backend uses (`1.425e-7` below
//!   `1e-6`), so clients are tested on the real wire form; the text is made
//!   by moving the decimal point of a `Usd`, never through a double.
//! * **Unknown generations answer 404 forever**, like OpenRouter for an id it
//!   never saw: a client cannot tell "unknown" from "not yet" — exactly the
//!   situation the reconciler's deadline exists for.
//! * **Faults are seeded and float-free** (see [`config`]), so a failing
//!   load run can be replayed.
//! * **The admin endpoints need no key** and are not OpenRouter's; the
//!   simulator listens on loopback by default.
//! * **Only issued keys are accepted** ([`accounts`]): keys from the OAuth
//!   exchange ([`oauth`]), `POST /sim/keys`, or pre-provisioned with
//!   [`SimConfig::provisioned_keys`] ([`TEST_KEY`] in
//!   [`SimConfig::ephemeral`]). Every generation and lookup is recorded
//!   against the key that made it, so tests can prove whose key was used.
//! * **OpenRouter's own SDK is the judge of fidelity.** Every reply (each
//!   endpoint, streamed and not, BYOK and not, every fault knob) must
//!   validate against the typed models of the official `openrouter` Python
//!   SDK (generated from OpenRouter's OpenAPI document) without a field
//!   silently dropped, and the official `openai` SDK's streaming helpers
//!   must work on it: `crates/openrouter/tests/sdk_conformance.rs`
//!   runs `tests/conformance/sdk_check.py` there with the pinned SDKs that
//!   `deploy/setup.sh` installs. Where the hand-made wire examples and the
//!   SDK's models disagree, the SDK's models win.
//! * **One generation, one story.** The usage of a reply and the
//!   `/generation` statistics of the same id agree: tokens (cached,
//!   reasoning), cost, `upstream_inference_cost` (the provider's bill, equal
//!   to the cost when not BYOK, as the usage's `cost_details` reports it),
//!   whether it was streamed, and how it ended (`finish_reason` `stop` /
//!   `length`, `error` after a mid-stream failure, none when cut).

use std::{future::Future, io, net::SocketAddr, sync::Arc};

use axum::{
    routing::{get, post},
    Router,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub mod accounts;
pub mod admin;
pub mod chat;
pub mod config;
pub mod generation;
pub mod load;
pub mod models;
pub mod number;
pub mod oauth;
mod reply;
pub mod responses;
pub mod state;
pub mod unseen;

pub use accounts::{IssuedKey, KeyActivity, KeySpec, Served, TEST_KEY};
pub use admin::{GenerationSpec, RegisteredGeneration, SimStats};
pub use config::{Fraction, NumberFormat, SimArgs, SimConfig};
pub use state::{ScriptedReply, SimGeneration};

/// The simulator: configuration and shared state. Cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub struct Simulator {
    pub(crate) shared: Arc<state::Shared>,
    pub(crate) accounts: Arc<accounts::Accounts>,
    pub(crate) oauth: Arc<oauth::OAuth>,
}

impl Simulator {
    /// A simulator with `cfg` (nothing listens yet: see [`serve`](Self::serve)
    /// or [`start`](Self::start)).
    pub fn new(cfg: SimConfig) -> Self {
        Simulator {
            accounts: Arc::new(accounts::Accounts::new(&cfg.provisioned_keys)),
            oauth: Arc::new(oauth::OAuth::default()),
            shared: Arc::new(state::Shared::new(cfg)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }

    /// The HTTP routes, for embedding in another server or a test.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/v1/generation", get(generation::get_generation))
            .route("/api/v1/models", get(models::get_models))
            .route("/sim/unseen", post(unseen::post_unseen))
            .route("/api/v1/responses", post(responses::post_responses))
            .route(
                "/api/v1/chat/completions",
                post(chat::post_chat_completions),
            )
            .route("/api/v1/key", get(accounts::get_key))
            .route("/api/v1/models/user", get(accounts::get_models_user))
            .route("/api/v1/auth/keys", post(oauth::post_auth_keys))
            .route("/auth", get(oauth::get_auth))
            .route("/sim/keys", post(accounts::post_key))
            .route("/sim/keys/activity", get(accounts::get_activity))
            .route("/sim/oauth", post(oauth::post_oauth_knobs))
            .route("/sim/generations", post(admin::post_generation))
            .route(
                "/sim/generations/batch",
                post(admin::post_generations_batch),
            )
            .route("/sim/stats", get(admin::get_stats))
            .route("/sim/reset", post(admin::post_reset))
            .with_state(self.clone())
    }

    /// Serves on `listener` until the process ends.
    pub async fn serve(self, listener: TcpListener) -> io::Result<()> {
        self.serve_with_shutdown(listener, std::future::pending())
            .await
    }

    /// Serves on `listener` until `shutdown` completes, then finishes the
    /// requests in flight.
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds [`SimConfig::addr`] and serves in a background task.
    pub async fn start(cfg: SimConfig) -> io::Result<RunningSim> {
        let listener = TcpListener::bind(cfg.addr).await?;
        let addr = listener.local_addr()?;
        let sim = Simulator::new(cfg);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(sim.clone().serve_with_shutdown(listener, async move {
            let _ = rx.await;
        }));
        tracing::info!(%addr, "OpenRouter simulator listening");
        Ok(RunningSim {
            addr,
            sim,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// Registers (or replaces) a generation. Its call counter is kept; its
    /// script starts from the beginning.
    pub fn register_generation(&self, g: SimGeneration) {
        self.shared.register(g);
    }

    /// Registers a generation that `key` ran at `served_at`: it counts in
    /// that key's usage (`GET /api/v1/key`) in every window containing
    /// `served_at`, like a generation served through `/responses`.
    pub fn serve_generation(
        &self,
        key: &str,
        g: SimGeneration,
        served_at: chrono::DateTime<chrono::Utc>,
    ) {
        self.accounts.record_generation(
            key,
            accounts::Served {
                id: g.id.clone(),
                at: served_at,
                charged: g.total_cost,
                upstream: g.is_byok.then_some(g.upstream_inference_cost).flatten(),
            },
        );
        self.shared.register(g);
    }

    /// Serves `count` generations with random costs to `key` now, that no
    /// completed event will ever announce (someone else using the key):
    /// they count in `GET /api/v1/key` and nowhere in tally. Returns them;
    /// their [`SimGeneration::actual_cost`]s sum to the drift they cause.
    pub fn serve_unseen(&self, key: &str, count: usize) -> Vec<SimGeneration> {
        (0..count)
            .map(|_| {
                let id = format!("gen-unseen-{}", uuid::Uuid::new_v4().simple());
                let g = self.shared.random_generation(id, None);
                self.serve_generation(key, g.clone(), chrono::Utc::now());
                g
            })
            .collect()
    }

    /// A generation with a random, realistic cost (BYOK at the configured
    /// rate), not yet registered.
    pub fn random_generation(&self, id: impl Into<String>) -> SimGeneration {
        self.shared.random_generation(id.into(), None)
    }

    /// The registered generation `id`, if any.
    pub fn generation(&self, id: &str) -> Option<SimGeneration> {
        self.shared.generation(id)
    }

    /// `/generation` requests for `id` so far (any answer, including 401).
    pub fn calls(&self, generation_id: &str) -> u64 {
        self.shared.calls(generation_id)
    }

    /// `/generation` requests so far, for any id.
    pub fn total_calls(&self) -> u64 {
        self.shared.counters.generation_requests()
    }
}

/// A simulator serving in the background (see [`Simulator::start`]).
/// Dropping it stops the server.
#[derive(Debug)]
pub struct RunningSim {
    addr: SocketAddr,
    sim: Simulator,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl RunningSim {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenRouter API base URL: `http://<addr>/api/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// The root URL (for the `/sim/…` admin endpoints): `http://<addr>`.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The simulator's state (register generations, read counters).
    pub fn simulator(&self) -> &Simulator {
        &self.sim
    }

    /// Stops accepting, finishes the requests in flight, and returns the
    /// server's result.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Runs the simulator as `tally sim openrouter` does: listens on
/// `args.addr` until `shutdown` completes (the binary's Ctrl-C or SIGTERM).
pub async fn run(
    args: SimArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let cfg = SimConfig::from(args);
    let listener = TcpListener::bind(cfg.addr).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        stats_delay = ?cfg.stats_delay,
        "OpenRouter simulator listening; base URL http://{}/api/v1",
        listener.local_addr()?
    );
    Simulator::new(cfg)
        .serve_with_shutdown(listener, shutdown)
        .await
}
