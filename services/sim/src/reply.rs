//! Replies shared by every simulated endpoint: OpenRouter's error body
//! (`{"error":{"code":…,"message":…}}`), `Retry-After`, and the bearer check.

use std::time::Duration;

use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

/// An OpenRouter-shaped error reply.
pub(crate) fn error(status: StatusCode, message: &str, error_type: Option<&str>) -> Response {
    let mut error = serde_json::json!({ "code": status.as_u16(), "message": message });
    if let Some(t) = error_type {
        error["metadata"] = serde_json::json!({ "error_type": t });
    }
    json(status, serde_json::json!({ "error": error }).to_string())
}

/// The request body as JSON, or the 400 OpenRouter answers when it is not.
#[allow(clippy::result_large_err)]
pub(crate) fn json_body(body: &[u8]) -> Result<serde_json::Value, Response> {
    serde_json::from_slice(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "body is not JSON", None))
}

/// A reply with a JSON body given as text (so numbers keep their exact digits).
pub(crate) fn json(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Adds `Retry-After: <whole seconds, rounded up>`.
pub(crate) fn with_retry_after(mut resp: Response, wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// 429 as OpenRouter sends it.
pub(crate) fn rate_limited(wait: Duration) -> Response {
    with_retry_after(
        error(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit exceeded: limit_rpm/simulated",
            Some("rate_limit_exceeded"),
        ),
        wait,
    )
}

/// 402 with OpenRouter's "insufficient credits" body.
pub(crate) fn payment_required() -> Response {
    error(
        StatusCode::PAYMENT_REQUIRED,
        "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
        Some("payment_required"),
    )
}

/// 502: the provider behind OpenRouter failed.
pub(crate) fn bad_gateway() -> Response {
    error(
        StatusCode::BAD_GATEWAY,
        "Provider returned error",
        Some("provider_unavailable"),
    )
}

/// 524: OpenRouter's edge gave up waiting (a Cloudflare timeout).
pub(crate) fn edge_timeout() -> Response {
    error(
        status(524),
        "The request timed out at OpenRouter's edge",
        Some("timeout"),
    )
}

/// 529: the provider is overloaded.
pub(crate) fn overloaded(wait: Duration) -> Response {
    with_retry_after(
        error(
            status(529),
            "Provider is overloaded, try again later",
            Some("provider_overloaded"),
        ),
        wait,
    )
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY)
}

/// 401 for a missing or empty bearer key.
pub(crate) fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "No auth credentials found", None)
}

/// Whether the request carries `Authorization: Bearer <non-empty>`.
#[cfg(test)]
pub(crate) fn has_bearer(headers: &HeaderMap) -> bool {
    bearer(headers).is_some()
}

/// The token of `Authorization: Bearer <token>`, when non-empty.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// 401 for a request whose key the simulator did not issue (or none).
pub(crate) fn unknown_key(headers: &HeaderMap) -> Response {
    if bearer(headers).is_some() {
        error(StatusCode::UNAUTHORIZED, "User not found.", None)
    } else {
        unauthorized()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_check() {
        let mut h = HeaderMap::new();
        assert!(!has_bearer(&h));
        for (value, ok) in [
            ("Bearer sk-1", true),
            ("bearer x", true),
            ("Bearer ", false),
            ("Bearer", false),
            ("Basic abc", false),
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(has_bearer(&h), ok, "{value:?}");
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        let r = with_retry_after(().into_response(), Duration::from_millis(1500));
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let r = with_retry_after(().into_response(), Duration::from_secs(1));
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
