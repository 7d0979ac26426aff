//! Response headers the handlers share: a creation's `201` with its
//! `Location`, and `Cache-Control: no-store` on answers that carry a secret
//! or a credential's status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// `201 Created` with `body` and a `Location` header (left out if
/// `location` is not a valid header value).
pub(crate) fn created(body: impl Serialize, location: &str) -> Response {
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// `resp` marked `Cache-Control: no-store`.
pub(crate) fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
