//! `GET /api/v1/models` and `GET /api/v1/models/user`: the model catalog.
//!
//! Serves a fixed catalog shaped like OpenRouter's (prices as strings, USD
//! per token, `"-1"` for a dynamic price), embedded from
//! `fixtures/models.json`, as OpenRouter's list reply: `data`,
//! `total_count` and `links.next`, paginated with `offset` and `limit`
//! (default 500, as OpenRouter's). `/models` needs no key; `/models/user`
//! ([`crate::accounts`]) answers the same shape for the key's account.

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;
use serde_json::{json, value::RawValue};

use crate::{reply, state::Counted, Simulator};

/// The catalog the simulator serves (the `data` array of the list reply).
pub const CATALOG_JSON: &str = include_str!("../fixtures/models.json");

/// Default page size.
const DEFAULT_LIMIT: usize = 500;

/// `?offset=&limit=`.
#[derive(Debug, Deserialize)]
pub(crate) struct Page {
    offset: Option<usize>,
    limit: Option<usize>,
}

/// The catalog's models, each as its exact JSON text.
fn models() -> Vec<Box<RawValue>> {
    #[derive(Deserialize)]
    struct Envelope {
        data: Vec<Box<RawValue>>,
    }
    serde_json::from_str::<Envelope>(CATALOG_JSON)
        .map(|e| e.data)
        .unwrap_or_default()
}

fn list(path: &str, page: &Page) -> Response {
    let all = models();
    let offset = page.offset.unwrap_or(0).min(all.len());
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT).max(1);
    let end = offset.saturating_add(limit).min(all.len());
    let next = (end < all.len()).then(|| format!("/api/v1{path}?offset={end}&limit={limit}"));
    let data: Vec<&str> = all[offset..end].iter().map(|m| m.get()).collect();
    reply::json(StatusCode::OK, list_body(&data, all.len(), next))
}

/// OpenRouter's list reply: the models' JSON texts, `total_count`, and
/// `links.next` (null on the last page).
pub(crate) fn list_body(models: &[&str], total: usize, next: Option<String>) -> String {
    format!(
        r#"{{"data":[{}],"total_count":{},"links":{}}}"#,
        models.join(","),
        total,
        json!({ "next": next }),
    )
}

pub(crate) async fn get_models(State(sim): State<Simulator>, Query(page): Query<Page>) -> Response {
    sim.shared.counters.count(Counted::Models);
    list("/models", &page)
}
