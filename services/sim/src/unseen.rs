//! `POST /sim/unseen {key, count}`: serves generations that no completed
//! event will ever announce, as if someone used the key outside tally. They
//! count in the key's usage (`GET /api/v1/key`, see [`crate::accounts`]) and
//! nowhere in tally's books, so a comparison of the two shows real drift.

use axum::{extract::State, http::StatusCode, response::Response, Json};
use serde::{Deserialize, Serialize};

use crate::{reply, Simulator};

/// `POST /sim/unseen` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnseenRequest {
    /// The key that ran them (an issued key).
    pub key: String,
    /// How many generations to serve (at most 10 000).
    pub count: usize,
}

/// `POST /sim/unseen` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct UnseenReply {
    /// Their ids.
    pub generation_ids: Vec<String>,
    /// What they cost together (fees plus BYOK upstream), exact decimal.
    pub total_cost_usd: String,
}

pub(crate) async fn post_unseen(
    State(sim): State<Simulator>,
    Json(req): Json<UnseenRequest>,
) -> Response {
    if req.count > 10_000 {
        return reply::error(StatusCode::BAD_REQUEST, "count must be at most 10000", None);
    }
    if sim.key_activity(&req.key).is_none() {
        return reply::error(StatusCode::BAD_REQUEST, "unknown key", None);
    }
    let served = sim.serve_unseen(&req.key, req.count);
    let Ok(total) = tally_money::Usd::try_sum(served.iter().map(|g| g.actual_cost())) else {
        return reply::error(
            StatusCode::BAD_REQUEST,
            "their total is past the money range",
            None,
        );
    };
    let body = UnseenReply {
        generation_ids: served.into_iter().map(|g| g.id).collect(),
        total_cost_usd: tally_money::to_decimal_string(&total),
    };
    reply::json(
        StatusCode::OK,
        serde_json::to_string(&body).unwrap_or_default(),
    )
}
