//! Admin endpoints for tests and the load generator (not part of
//! OpenRouter's API; no key needed, so bind the simulator to loopback):
//!
//! * `POST /sim/generations` — register one generation ([`GenerationSpec`]),
//!   answers `201` with a [`RegisteredGeneration`] (the truth to compare
//!   against: exact costs and the literal wire text).
//! * `POST /sim/generations/batch` — register an array of them.
//! * `GET /sim/stats[?id=…]` — call counters ([`SimStats`]).
//! * `POST /sim/reset` — forget every generation and counter.
//!
//! Costs are decimal strings here (tally's own wire rule), never JSON numbers.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use tally_money::Usd;

use crate::{
    config::NumberFormat,
    number::format_number,
    state::{ScriptedReply, SimGeneration},
    Simulator,
};

/// A generation to register. Without `total_cost` the simulator makes up a
/// realistic cost (BYOK at the configured rate unless `is_byok` is given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSpec {
    /// The generation id.
    pub id: String,
    /// `total_cost` as a decimal string (`"0.000123"`), or absent/null for a random one.
    #[serde(default, with = "tally_money::serde_cost::opt")]
    pub total_cost: Option<Usd>,
    /// `upstream_inference_cost` as a decimal string, or null.
    #[serde(default, with = "tally_money::serde_cost::opt")]
    pub upstream_inference_cost: Option<Usd>,
    /// Whether it is BYOK (absent: false for an explicit cost, the configured rate otherwise).
    #[serde(default)]
    pub is_byok: Option<bool>,
    /// Statistics ready this many milliseconds after registration (absent: the stats delay).
    #[serde(default)]
    pub ready_after_ms: Option<u64>,
    /// Answer 404 forever.
    #[serde(default)]
    pub never_ready: bool,
    /// Replies forced before the normal behaviour.
    #[serde(default)]
    pub script: Vec<ScriptedReply>,
    /// The model (absent: a default).
    #[serde(default)]
    pub model: Option<String>,
    /// The provider (absent: a default).
    #[serde(default)]
    pub provider_name: Option<String>,
    /// How to write this generation's costs (absent: the configured format).
    #[serde(default)]
    pub number_format: Option<NumberFormat>,
}

/// What the simulator registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredGeneration {
    /// The generation id.
    pub id: String,
    /// `total_cost`, decimal string.
    #[serde(with = "tally_money::serde_cost")]
    pub total_cost: Usd,
    /// `upstream_inference_cost`, decimal string or null.
    #[serde(with = "tally_money::serde_cost::opt")]
    pub upstream_inference_cost: Option<Usd>,
    /// Whether it is BYOK.
    pub is_byok: bool,
    /// What it really cost (total plus upstream for BYOK), decimal string.
    #[serde(with = "tally_money::serde_cost")]
    pub actual_cost: Usd,
    /// `total_cost` exactly as `/generation` writes it (a JSON number literal).
    pub total_cost_wire: String,
    /// Statistics ready this many milliseconds after registration.
    pub ready_after_ms: u64,
    /// Whether it answers 404 forever.
    pub never_ready: bool,
}

/// Call counters of a simulator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Requests to `/generation`, whatever the answer.
    pub generation_requests: u64,
    /// Replies by kind: `ok`, `not_found`, `rate_limited`, `server_error`,
    /// `unavailable`, `malformed`, `slow`, `unauthorized`, `bad_request`, `models`.
    pub replies: BTreeMap<String, u64>,
    /// Generations registered.
    pub generations_registered: usize,
    /// `/generation` requests for the generation asked about with `?id=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
}

impl Simulator {
    /// Registers a generation from a [`GenerationSpec`] and tells what was registered.
    pub fn register_spec(&self, spec: GenerationSpec) -> Result<RegisteredGeneration, String> {
        if !valid_id(&spec.id) {
            return Err(format!("invalid id {:?}: {ID_RULE}", spec.id));
        }
        let mut g = match spec.total_cost {
            Some(total) => {
                let g = SimGeneration::new(spec.id, total);
                if spec.is_byok.unwrap_or(false) {
                    g.byok(spec.upstream_inference_cost)
                } else {
                    SimGeneration {
                        upstream_inference_cost: spec.upstream_inference_cost,
                        ..g
                    }
                }
            }
            None => {
                let mut g = self.shared.random_generation(spec.id, spec.is_byok);
                if spec.upstream_inference_cost.is_some() {
                    g.upstream_inference_cost = spec.upstream_inference_cost;
                }
                g
            }
        };
        g.ready_after = spec.ready_after_ms.map(Duration::from_millis);
        g.never_ready = spec.never_ready;
        g.script = spec.script;
        g.number_format = spec.number_format;
        if let Some(m) = spec.model {
            g.model = m;
        }
        if let Some(p) = spec.provider_name {
            g.provider_name = p;
        }
        let registered = RegisteredGeneration {
            id: g.id.clone(),
            total_cost: g.total_cost,
            upstream_inference_cost: g.upstream_inference_cost,
            is_byok: g.is_byok,
            actual_cost: g.actual_cost(),
            total_cost_wire: format_number(
                &g.total_cost,
                g.number_format.unwrap_or(self.shared.cfg.number_format),
            ),
            ready_after_ms: u64::try_from(
                g.ready_after
                    .unwrap_or(self.shared.cfg.stats_delay)
                    .as_millis(),
            )
            .unwrap_or(u64::MAX),
            never_ready: g.never_ready,
        };
        self.register_generation(g);
        Ok(registered)
    }

    /// The call counters (with the calls for `id`, when given).
    pub fn stats(&self, id: Option<&str>) -> SimStats {
        let s = &self.shared;
        SimStats {
            generation_requests: s.counters.generation_requests(),
            replies: s
                .counters
                .snapshot()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            generations_registered: s.registered(),
            calls: id.map(|id| s.calls(id)),
        }
    }
}

const ID_RULE: &str = "an id has 1 to 512 characters";

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 512
}

fn bad_request(message: String) -> Response {
    crate::reply::error(StatusCode::BAD_REQUEST, &message, None)
}

pub(crate) async fn post_generation(
    State(sim): State<Simulator>,
    Json(spec): Json<GenerationSpec>,
) -> Response {
    match sim.register_spec(spec) {
        Ok(r) => (StatusCode::CREATED, Json(r)).into_response(),
        Err(e) => bad_request(e),
    }
}

pub(crate) async fn post_generations_batch(
    State(sim): State<Simulator>,
    Json(specs): Json<Vec<GenerationSpec>>,
) -> Response {
    // All or nothing: check every id before registering any.
    if let Some(bad) = specs.iter().find(|s| !valid_id(&s.id)) {
        return bad_request(format!("invalid id {:?}: {ID_RULE}", bad.id));
    }
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        match sim.register_spec(spec) {
            Ok(r) => out.push(r),
            Err(e) => return bad_request(e),
        }
    }
    (StatusCode::CREATED, Json(out)).into_response()
}

/// `?id=`.
#[derive(Debug, Deserialize)]
pub(crate) struct StatsQuery {
    id: Option<String>,
}

pub(crate) async fn get_stats(
    State(sim): State<Simulator>,
    Query(q): Query<StatsQuery>,
) -> Json<SimStats> {
    Json(sim.stats(q.id.as_deref()))
}

pub(crate) async fn post_reset(State(sim): State<Simulator>) -> StatusCode {
    sim.shared.reset();
    StatusCode::NO_CONTENT
}
