//! What can go wrong when talking to OpenRouter, as a closed set of cases.
//!
//! Every failure of the client is an [`OpenRouterError`]. Each case has a
//! stable snake_case [`code`](OpenRouterError::code) (for dead-letter reasons,
//! `cost.unresolved` events and metric labels), says whether asking again can
//! help ([`is_retryable`](OpenRouterError::is_retryable)) and how long the
//! server asked us to wait ([`retry_after`](OpenRouterError::retry_after)).
//!
//! # Decisions
//!
//! * **404 is "not yet".** OpenRouter answers `GET /generation` with 404 for a
//!   while after a generation finished (seconds; much longer after an
//!   interrupted stream). The client therefore reports [`OpenRouterError::NotYet`],
//!   which is retryable; how long to keep asking is the caller's deadline
//!   (`TALLY_RECONCILE_DEADLINE`), not the client's business.
//! * **Malformed replies are retryable.** A truncated body is usually a
//!   transient network or proxy fault, and a reply the client refuses (a cost
//!   written as a string, a negative cost) is never turned into a number. Asking
//!   again is harmless; the caller's deadline bounds it.
//! * **`Retry-After` is capped** at [`MAX_RETRY_AFTER`]: the header comes from
//!   outside, and a buggy or hostile value (a date next year, `999999999`)
//!   must not park a worker for days. Past dates mean "now" (zero).
//! * **Auth and payment errors are not retryable**: they need a person (a new
//!   key, more credits), and hammering the API would not help. A 402 on a
//!   *generation* fails the request (`payment_required`); a 402 on a
//!   statistics *lookup* says nothing about the generation, whose cost
//!   exists: the reconciler keeps its generations waiting and asks again
//!   slowly, never giving one up because of the account (see its docs).
//! * **502, 524 and 529 are transient**, as OpenRouter documents them (the
//!   provider failed, the edge timed out, the provider is overloaded), each
//!   with its own code so failures and metrics say which. A 524 may hide a
//!   generation that did run: no id came back, so nothing can be booked for
//!   it; the books-against-the-provider check (`GET /key` usage) is what
//!   reveals such spend.
//! * **Mid-stream errors are not errors of the call.** Once the response
//!   headers (and `X-Generation-Id`) arrived, a failure inside the stream
//!   (a chat chunk with `finish_reason: "error"`, a `response.failed`
//!   event) is part of the reply: the generation exists and may cost
//!   money, so the caller gets a reply with its id, the error, and no
//!   usage — see [`crate::responses`] and [`crate::chat`].

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// The longest wait honoured from a `Retry-After` header (5 minutes).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Why a call to OpenRouter did not produce a typed answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenRouterError {
    /// HTTP 404 from `/generation`: the statistics are not available *yet*.
    #[error("generation statistics are not available yet (HTTP 404)")]
    NotYet,
    /// HTTP 429: too many requests.
    #[error("rate limited by OpenRouter (HTTP 429){}", fmt_wait(*.retry_after))]
    RateLimited {
        /// The wait the server asked for (`Retry-After`), capped at [`MAX_RETRY_AFTER`].
        retry_after: Option<Duration>,
    },
    /// HTTP 408, 503 or 504: the service or a gateway in front of it is
    /// temporarily unavailable.
    #[error("OpenRouter is temporarily unavailable (HTTP {status}){}", fmt_wait(*.retry_after))]
    Unavailable {
        /// The HTTP status.
        status: u16,
        /// The wait the server asked for (`Retry-After`), capped at [`MAX_RETRY_AFTER`].
        retry_after: Option<Duration>,
    },
    /// HTTP 502: the provider behind OpenRouter failed or sent an invalid
    /// answer (OpenRouter: "model down or returned an invalid response").
    #[error("the provider behind OpenRouter failed (HTTP 502): {message}{}", fmt_wait(*.retry_after))]
    BadGateway {
        /// The server's message.
        message: String,
        /// The wait the server asked for (`Retry-After`), capped at [`MAX_RETRY_AFTER`].
        retry_after: Option<Duration>,
    },
    /// HTTP 524: OpenRouter's edge (Cloudflare) gave up waiting for the
    /// answer. The request may have reached OpenRouter.
    #[error("OpenRouter's edge timed out (HTTP 524)")]
    EdgeTimeout,
    /// HTTP 529: the provider is overloaded.
    #[error("the provider is overloaded (HTTP 529){}", fmt_wait(*.retry_after))]
    ProviderOverloaded {
        /// The wait the server asked for (`Retry-After`), capped at [`MAX_RETRY_AFTER`].
        retry_after: Option<Duration>,
    },
    /// HTTP 401 or 403: the API key is missing, wrong or not allowed.
    #[error("OpenRouter refused the credentials (HTTP {status}): {message}")]
    Auth {
        /// The HTTP status.
        status: u16,
        /// The server's message, if it sent one.
        message: String,
    },
    /// HTTP 402: the account has insufficient credits.
    #[error("OpenRouter requires payment (HTTP 402): {message}")]
    Payment {
        /// The server's message, if it sent one.
        message: String,
    },
    /// Any other HTTP 5xx.
    #[error("OpenRouter server error (HTTP {status})")]
    Server {
        /// The HTTP status.
        status: u16,
    },
    /// An HTTP status the client does not expect from this endpoint.
    #[error("unexpected HTTP status {status} from OpenRouter")]
    UnexpectedStatus {
        /// The HTTP status.
        status: u16,
    },
    /// The reply could not be trusted: not JSON, missing fields, or a cost
    /// that is not an exact, non-negative JSON number of at most 20 decimals.
    #[error("malformed reply from OpenRouter (HTTP {status}): {reason}")]
    Malformed {
        /// The HTTP status of the reply.
        status: u16,
        /// What was wrong with it.
        reason: String,
    },
    /// No complete answer within the configured timeout.
    #[error("OpenRouter did not answer in time")]
    Timeout,
    /// Connecting, sending or receiving failed (DNS, TLS, connection reset …).
    #[error("transport error talking to OpenRouter: {0}")]
    Transport(String),
    /// The client configuration is unusable (bad base URL, bad key characters …).
    #[error("invalid OpenRouter client configuration: {0}")]
    InvalidConfig(String),
}

fn fmt_wait(wait: Option<Duration>) -> String {
    match wait {
        Some(d) => format!(", retry after {} ms", d.as_millis()),
        None => String::new(),
    }
}

impl OpenRouterError {
    /// Stable machine-readable code: `not_yet`, `rate_limited`, `unavailable`,
    /// `bad_gateway`, `edge_timeout`, `provider_overloaded`, `auth`,
    /// `payment_required`, `server_error`, `unexpected_status`,
    /// `malformed_reply`, `timeout`, `transport`, `invalid_config`.
    pub fn code(&self) -> &'static str {
        match self {
            OpenRouterError::NotYet => "not_yet",
            OpenRouterError::RateLimited { .. } => "rate_limited",
            OpenRouterError::Unavailable { .. } => "unavailable",
            OpenRouterError::BadGateway { .. } => "bad_gateway",
            OpenRouterError::EdgeTimeout => "edge_timeout",
            OpenRouterError::ProviderOverloaded { .. } => "provider_overloaded",
            OpenRouterError::Auth { .. } => "auth",
            OpenRouterError::Payment { .. } => "payment_required",
            OpenRouterError::Server { .. } => "server_error",
            OpenRouterError::UnexpectedStatus { .. } => "unexpected_status",
            OpenRouterError::Malformed { .. } => "malformed_reply",
            OpenRouterError::Timeout => "timeout",
            OpenRouterError::Transport(_) => "transport",
            OpenRouterError::InvalidConfig(_) => "invalid_config",
        }
    }

    /// Whether asking again later can produce a different answer.
    ///
    /// True for `NotYet`, `RateLimited`, `Unavailable`, `BadGateway`,
    /// `EdgeTimeout`, `ProviderOverloaded`, `Server`, `Malformed`, `Timeout`
    /// and `Transport` (OpenRouter's transient failures); false for `Auth`,
    /// `Payment`, `UnexpectedStatus` and `InvalidConfig`.
    pub fn is_retryable(&self) -> bool {
        match self {
            OpenRouterError::NotYet
            | OpenRouterError::RateLimited { .. }
            | OpenRouterError::Unavailable { .. }
            | OpenRouterError::BadGateway { .. }
            | OpenRouterError::EdgeTimeout
            | OpenRouterError::ProviderOverloaded { .. }
            | OpenRouterError::Server { .. }
            | OpenRouterError::Malformed { .. }
            | OpenRouterError::Timeout
            | OpenRouterError::Transport(_) => true,
            OpenRouterError::Auth { .. }
            | OpenRouterError::Payment { .. }
            | OpenRouterError::UnexpectedStatus { .. }
            | OpenRouterError::InvalidConfig(_) => false,
        }
    }

    /// The wait the server asked for with `Retry-After` (capped at
    /// [`MAX_RETRY_AFTER`]), when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            OpenRouterError::RateLimited { retry_after }
            | OpenRouterError::ProviderOverloaded { retry_after }
            | OpenRouterError::BadGateway { retry_after, .. }
            | OpenRouterError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status of the reply behind this error, when there was a reply.
    pub fn status(&self) -> Option<u16> {
        match self {
            OpenRouterError::NotYet => Some(404),
            OpenRouterError::RateLimited { .. } => Some(429),
            OpenRouterError::Payment { .. } => Some(402),
            OpenRouterError::BadGateway { .. } => Some(502),
            OpenRouterError::EdgeTimeout => Some(524),
            OpenRouterError::ProviderOverloaded { .. } => Some(529),
            OpenRouterError::Unavailable { status, .. }
            | OpenRouterError::Auth { status, .. }
            | OpenRouterError::Server { status }
            | OpenRouterError::UnexpectedStatus { status }
            | OpenRouterError::Malformed { status, .. } => Some(*status),
            OpenRouterError::Timeout
            | OpenRouterError::Transport(_)
            | OpenRouterError::InvalidConfig(_) => None,
        }
    }

    pub(crate) fn malformed(status: u16, reason: impl Into<String>) -> Self {
        OpenRouterError::Malformed {
            status,
            reason: reason.into(),
        }
    }

    /// Maps a `reqwest` failure: timeouts to [`Timeout`](OpenRouterError::Timeout),
    /// everything else to [`Transport`](OpenRouterError::Transport) with the
    /// whole cause chain.
    pub(crate) fn from_reqwest(err: &reqwest::Error) -> Self {
        if err.is_timeout() {
            return OpenRouterError::Timeout;
        }
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            let s_text = s.to_string();
            if !text.contains(&s_text) {
                text.push_str(": ");
                text.push_str(&s_text);
            }
            source = s.source();
        }
        OpenRouterError::Transport(text)
    }
}

/// Reads a `Retry-After` header: delay-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, also the obsolete RFC 850 and asctime
/// forms), relative to `now`. Dates in the past give zero; every value is
/// capped at [`MAX_RETRY_AFTER`]; anything unreadable gives `None`.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Long digit strings overflow u64: they are "very long", i.e. the cap.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = parse_http_date(value)?;
    let wait = (at - now).to_std().unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_RETRY_AFTER))
}

fn parse_http_date(value: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDateTime, TimeZone, Utc};
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is an RFC 2822 date.
    if let Ok(t) = chrono::DateTime::parse_from_rfc2822(value) {
        return Some(t.with_timezone(&Utc));
    }
    // Obsolete forms HTTP recipients must still accept.
    for format in ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(value, format) {
            return Some(Utc.from_utc_datetime(&t));
        }
    }
    None
}

pub(crate) fn retry_after_from(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, chrono::Utc::now())
}

/// The `error.message` of an OpenRouter error body
/// (`{"error":{"code":429,"message":"…"}}`), if the body has one.
pub fn error_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        message: Option<String>,
    }
    serde_json::from_slice::<Body>(body).ok()?.error.message
}

/// Turns a non-2xx reply into an error. `not_found_is_not_yet` selects the
/// `/generation` meaning of 404.
pub(crate) fn from_status(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    not_found_is_not_yet: bool,
) -> OpenRouterError {
    let message = || {
        error_message(body).unwrap_or_else(|| {
            reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("no message")
                .to_owned()
        })
    };
    match status {
        404 if not_found_is_not_yet => OpenRouterError::NotYet,
        401 | 403 => OpenRouterError::Auth {
            status,
            message: message(),
        },
        402 => OpenRouterError::Payment { message: message() },
        429 => OpenRouterError::RateLimited {
            retry_after: retry_after_from(headers),
        },
        502 => OpenRouterError::BadGateway {
            message: message(),
            retry_after: retry_after_from(headers),
        },
        524 => OpenRouterError::EdgeTimeout,
        529 => OpenRouterError::ProviderOverloaded {
            retry_after: retry_after_from(headers),
        },
        408 | 503 | 504 => OpenRouterError::Unavailable {
            status,
            retry_after: retry_after_from(headers),
        },
        500..=599 => OpenRouterError::Server { status },
        _ => OpenRouterError::UnexpectedStatus { status },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc
            .with_ymd_and_hms(2015, 10, 21, 7, 28, 0)
            .unwrap()
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("0", now()), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 7 ", now()),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after("100000", now()), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999999", now()),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now()),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:45 GMT", now()),
            Some(Duration::from_secs(45))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:29:00 2015", now()),
            Some(Duration::from_secs(60))
        );
        // In the past: now.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
        // Next year: capped.
        assert_eq!(
            parse_retry_after("Fri, 21 Oct 2016 07:28:00 GMT", now()),
            Some(MAX_RETRY_AFTER)
        );
        for bad in ["", "soon", "-5", "1.5", "Wed, 99 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(bad, now()), None, "{bad:?}");
        }
    }

    #[test]
    fn statuses_map_to_cases() {
        let h = HeaderMap::new();
        assert_eq!(from_status(404, &h, b"", true), OpenRouterError::NotYet);
        assert_eq!(
            from_status(404, &h, b"", false),
            OpenRouterError::UnexpectedStatus { status: 404 }
        );
        assert_eq!(
            from_status(500, &h, b"", true),
            OpenRouterError::Server { status: 500 }
        );
        assert_eq!(
            from_status(503, &h, b"", true),
            OpenRouterError::Unavailable {
                status: 503,
                retry_after: None
            }
        );
        assert_eq!(
            from_status(400, &h, b"", true),
            OpenRouterError::UnexpectedStatus { status: 400 }
        );
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        let e = from_status(
            429,
            &h,
            include_bytes!("../tests/fixtures/error-429.json"),
            true,
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(e.code(), "rate_limited");
        assert!(e.is_retryable());
        assert_eq!(e.status(), Some(429));
    }

    #[test]
    fn gateway_and_overload_statuses_are_transient_with_their_own_codes() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        let body = br#"{"error":{"code":502,"message":"Provider returned error","metadata":{"error_type":"provider_unavailable"}}}"#;
        for (status, code, wait) in [
            (502, "bad_gateway", Some(Duration::from_secs(2))),
            (524, "edge_timeout", None),
            (529, "provider_overloaded", Some(Duration::from_secs(2))),
        ] {
            let e = from_status(status, &h, body, true);
            assert_eq!(e.code(), code, "{status}");
            assert!(e.is_retryable(), "{status}");
            assert_eq!(e.status(), Some(status));
            assert_eq!(e.retry_after(), wait, "{status}");
        }
        match from_status(502, &h, body, true) {
            OpenRouterError::BadGateway { message, .. } => {
                assert_eq!(message, "Provider returned error")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(from_status(599, &h, b"", true).code(), "server_error");
    }

    #[test]
    fn error_bodies_give_messages() {
        let e = from_status(
            402,
            &HeaderMap::new(),
            include_bytes!("../tests/fixtures/error-402.json"),
            true,
        );
        match &e {
            OpenRouterError::Payment { message } => {
                assert!(message.starts_with("Insufficient credits"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.code(), "payment_required");
        assert!(!e.is_retryable());
        let e = from_status(401, &HeaderMap::new(), b"<html>nope</html>", true);
        assert_eq!(
            e,
            OpenRouterError::Auth {
                status: 401,
                message: "Unauthorized".into()
            }
        );
        assert_eq!(
            error_message(include_bytes!("../tests/fixtures/generation-404.json")).as_deref(),
            Some("Generation gen-1732531200-Xa81bQ0sPfTz4kLmN2vR not found")
        );
    }

    #[test]
    fn codes_are_stable() {
        let all = [
            (OpenRouterError::NotYet, "not_yet"),
            (
                OpenRouterError::RateLimited { retry_after: None },
                "rate_limited",
            ),
            (
                OpenRouterError::Unavailable {
                    status: 503,
                    retry_after: None,
                },
                "unavailable",
            ),
            (
                OpenRouterError::BadGateway {
                    message: String::new(),
                    retry_after: None,
                },
                "bad_gateway",
            ),
            (OpenRouterError::EdgeTimeout, "edge_timeout"),
            (
                OpenRouterError::ProviderOverloaded { retry_after: None },
                "provider_overloaded",
            ),
            (
                OpenRouterError::Auth {
                    status: 403,
                    message: String::new(),
                },
                "auth",
            ),
            (
                OpenRouterError::Payment {
                    message: String::new(),
                },
                "payment_required",
            ),
            (OpenRouterError::Server { status: 500 }, "server_error"),
            (
                OpenRouterError::UnexpectedStatus { status: 418 },
                "unexpected_status",
            ),
            (OpenRouterError::malformed(200, "x"), "malformed_reply"),
            (OpenRouterError::Timeout, "timeout"),
            (OpenRouterError::Transport("x".into()), "transport"),
            (OpenRouterError::InvalidConfig("x".into()), "invalid_config"),
        ];
        for (e, code) in all {
            assert_eq!(e.code(), code);
        }
    }
}
