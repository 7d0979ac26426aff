//! OpenRouter's OAuth PKCE flow, as a browser and a server see it.
//!
//! * `GET /auth?callback_url=…&code_challenge=…&code_challenge_method=S256`
//!   — the page a user approves on. The simulator approves at once (unless
//!   told to deny, see [`Simulator::set_oauth_deny`]) and redirects (`302`)
//!   to `callback_url` with a single-use `code` appended (`error=access_denied`
//!   instead when denying). A callback URL breaking OpenRouter's rule (HTTPS
//!   on port 443 or 3000, or any scheme and port on localhost, 127.0.0.1 or
//!   [::1]) or an unknown `code_challenge_method` is refused with `400`.
//! * `POST /api/v1/auth/keys {code, code_verifier, code_challenge_method}` —
//!   the exchange: `400` for a method other than `S256`/`plain` or one that
//!   differs from the challenge's, `403` for an unknown, used or expired
//!   code or a verifier whose challenge does not match; otherwise `200
//!   {key, user_id}` with a freshly issued key.
//!
//! # Invariants
//!
//! * A code is used at most once: the first exchange attempt consumes it,
//!   whether the verifier matches or not (so a verifier cannot be guessed
//!   by retrying).
//! * Codes expire [`CODE_TTL`] after the approval.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::{
    body::Bytes,
    extract::{Query, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{accounts::KeySpec, reply, Simulator};

/// How long an approval's code can be exchanged.
pub const CODE_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
struct Pending {
    challenge: Option<String>,
    method: Method,
    user_id: Option<String>,
    issued: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    S256,
    Plain,
}

fn method(text: Option<&str>) -> Result<Method, ()> {
    match text {
        None | Some("S256") => Ok(Method::S256),
        Some("plain") => Ok(Method::Plain),
        Some(_) => Err(()),
    }
}

/// The OAuth state: pending codes and the deny knob.
#[derive(Debug, Default)]
pub(crate) struct OAuth {
    codes: Mutex<HashMap<String, Pending>>,
    deny: Mutex<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether OpenRouter accepts `url` as an OAuth callback: HTTPS on port
/// 443 or 3000, or any scheme and port on localhost, 127.0.0.1 or [::1].
pub fn callback_url_allowed(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    let local = matches!(
        u.host(),
        Some(url::Host::Domain("localhost"))
            | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
            | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
    );
    if local {
        return matches!(u.scheme(), "http" | "https");
    }
    u.scheme() == "https" && matches!(u.port_or_known_default(), Some(443 | 3000))
}

/// S256 of a verifier: base64url (no padding) of its SHA-256.
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Simulator {
    /// Makes `GET /auth` deny (`true`) or approve (`false`, the default).
    pub fn set_oauth_deny(&self, deny: bool) {
        *lock(&self.oauth.deny) = deny;
    }
}

/// The query of `GET /auth`.
#[derive(Debug, Deserialize)]
pub(crate) struct AuthQuery {
    callback_url: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    /// Simulator only: approve as this account (default: a new one).
    sim_user: Option<String>,
}

fn page(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        format!("<!doctype html><title>OpenRouter</title><p>{text}</p>"),
    )
        .into_response()
}

fn redirect(callback: &str, param: &str, value: &str) -> Response {
    let mut url = match url::Url::parse(callback) {
        Ok(u) => u,
        Err(_) => return page(StatusCode::BAD_REQUEST, "Invalid callback_url"),
    };
    url.query_pairs_mut().append_pair(param, value);
    match HeaderValue::from_str(url.as_str()) {
        Ok(loc) => (StatusCode::FOUND, [(header::LOCATION, loc)]).into_response(),
        Err(_) => page(StatusCode::BAD_REQUEST, "Invalid callback_url"),
    }
}

/// `GET /auth`.
pub(crate) async fn get_auth(State(sim): State<Simulator>, Query(q): Query<AuthQuery>) -> Response {
    let Some(callback) = q.callback_url.filter(|c| !c.is_empty()) else {
        return page(StatusCode::BAD_REQUEST, "callback_url is required");
    };
    if !callback_url_allowed(&callback) {
        return page(
            StatusCode::BAD_REQUEST,
            "callback_url must use HTTPS on port 443 or 3000, or be on localhost",
        );
    }
    let Ok(m) = method(q.code_challenge_method.as_deref()) else {
        return page(StatusCode::BAD_REQUEST, "Invalid code_challenge_method");
    };
    if *lock(&sim.oauth.deny) {
        return redirect(&callback, "error", "access_denied");
    }
    let code: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        let bytes: [u8; 24] = rng.random();
        URL_SAFE_NO_PAD.encode(bytes)
    };
    lock(&sim.oauth.codes).insert(
        code.clone(),
        Pending {
            challenge: q.code_challenge.filter(|c| !c.is_empty()),
            method: m,
            user_id: q.sim_user,
            issued: Instant::now(),
        },
    );
    redirect(&callback, "code", &code)
}

/// The body of `POST /api/v1/auth/keys`.
#[derive(Debug, Deserialize)]
struct ExchangeBody {
    code: Option<String>,
    code_verifier: Option<String>,
    code_challenge_method: Option<String>,
}

/// `POST /api/v1/auth/keys`.
pub(crate) async fn post_auth_keys(State(sim): State<Simulator>, body: Bytes) -> Response {
    let Ok(b) = serde_json::from_slice::<ExchangeBody>(&body) else {
        return reply::error(StatusCode::BAD_REQUEST, "Invalid JSON body", None);
    };
    let Some(code) = b.code.filter(|c| !c.is_empty()) else {
        return reply::error(StatusCode::BAD_REQUEST, "code is required", None);
    };
    let Ok(asked) = method(b.code_challenge_method.as_deref()) else {
        return reply::error(
            StatusCode::BAD_REQUEST,
            "Invalid code_challenge_method",
            None,
        );
    };
    let Some(pending) = lock(&sim.oauth.codes).remove(&code) else {
        return reply::error(StatusCode::FORBIDDEN, "Invalid code", None);
    };
    if pending.issued.elapsed() > CODE_TTL {
        return reply::error(StatusCode::FORBIDDEN, "Code expired", None);
    }
    if let Some(challenge) = &pending.challenge {
        if asked != pending.method {
            return reply::error(
                StatusCode::BAD_REQUEST,
                "code_challenge_method does not match the challenge",
                None,
            );
        }
        let verifier = b.code_verifier.unwrap_or_default();
        let derived = match asked {
            Method::S256 => s256(&verifier),
            Method::Plain => verifier,
        };
        if &derived != challenge {
            return reply::error(StatusCode::FORBIDDEN, "Invalid code_verifier", None);
        }
    }
    let issued = sim.issue_key(KeySpec {
        user_id: pending.user_id,
        ..KeySpec::default()
    });
    Json(serde_json::json!({ "key": issued.key, "user_id": issued.user_id })).into_response()
}

/// The body of `POST /sim/oauth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OAuthKnobs {
    deny: bool,
}

/// `POST /sim/oauth {deny}` (admin): approve or deny from now on.
pub(crate) async fn post_oauth_knobs(
    State(sim): State<Simulator>,
    Json(k): Json<OAuthKnobs>,
) -> StatusCode {
    sim.set_oauth_deny(k.deny);
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_rule_is_openrouters() {
        for ok in [
            "https://tally.example.com/cb",
            "https://tally.example.com:443/cb",
            "https://tally.example.com:3000/cb",
            "http://localhost:8080/cb",
            "http://127.0.0.1:1/cb",
            "http://[::1]:9/cb",
        ] {
            assert!(callback_url_allowed(ok), "{ok}");
        }
        for bad in [
            "http://tally.example.com/cb",
            "https://tally.example.com:8443/cb",
            "ftp://localhost/cb",
            "not a url",
            "http://127.0.0.2/cb",
        ] {
            assert!(!callback_url_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn s256_is_unpadded_base64url_of_sha256() {
        // Computed independently (Python hashlib + base64.urlsafe_b64encode).
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r5wW1gFWFOEjXk"),
            "i9whAC_XKLFDlNAc3MecjBhEQUozVhGV04xaZ16pfsM"
        );
    }
}
