//! `GET /api/v1/models`: the model catalog.
//!
//! Serves a fixed catalog shaped like OpenRouter's (prices as strings, USD
//! per token, `"-1"` for a dynamic price), embedded from
//! `fixtures/models.json`. Like OpenRouter's, it needs no key.

use axum::{extract::State, http::StatusCode, response::Response};

use crate::{reply, state::Counted, Simulator};

/// The catalog the simulator serves.
pub const CATALOG_JSON: &str = include_str!("../fixtures/models.json");

pub(crate) async fn get_models(State(sim): State<Simulator>) -> Response {
    sim.shared.counters.count(Counted::Models);
    reply::json(StatusCode::OK, CATALOG_JSON.to_owned())
}
