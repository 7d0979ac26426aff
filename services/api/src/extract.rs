//! Request extractors whose rejections are problems.
//!
//! axum's own `Json`, `Query` and `Path` reject with plain-text bodies; these
//! wrappers answer with [`ApiError`]s instead, naming the offending field:
//!
//! * [`ApiJson`]: bodies are read with the bus's strict JSON reading first
//!   (`tally_events::strict`: 422 `duplicate_key`, `control_character`
//!   naming the field); `Content-Type` must be `application/json` (or `…+json`),
//!   else 415; unreadable or too large bodies give 400/413; syntax errors
//!   give 400 `malformed_json`; type errors give 422 with the JSON path of
//!   the field (`unknown_field`, `missing_field`, `invalid_field`).
//! * [`Params`]: query parameters, with unknown and repeated parameters
//!   refused (422).
//! * [`ApiPath`]: path segments (percent-decoded).
//!
//! # Decisions
//!
//! * **Unknown fields and parameters are errors.** A misspelt optional field
//!   (`"agent"` for `"agent_id"`, `?include_archive=true`) would otherwise be
//!   ignored silently and change the meaning of the request.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use tally_events::strict::StrictError;

use crate::error::ApiError;

/// A JSON request body; see the module docs.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the request body must be JSON: send Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than the body limit \
                     (TALLY_HTTP_BODY_LIMIT, 64 KiB by default)",
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("cannot read the request body: {}", e.body_text()),
                )
            }
        })?;
        decode(&bytes).map(ApiJson)
    }
}

/// Decodes a JSON document, mapping errors to problems (see module docs).
///
/// Every body of this API is an object: anything else (serde would accept
/// an array for a struct, positionally) is 422 `invalid_body`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Err(e) => json_error("", e),
                Ok(_) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    "the request body must be a JSON object",
                ),
            },
        );
    }
    // The one strict reading the bus uses too: duplicate keys and control
    // characters are refused by name before the typed decoding.
    match tally_events::strict::parse(bytes) {
        Err(StrictError::DuplicateKey { path }) => {
            return Err(ApiError::field(
                "duplicate_key",
                path.clone(),
                format!("the field {path:?} is given more than once"),
            ))
        }
        Err(StrictError::ControlCharacter { path }) => {
            return Err(ApiError::field(
                "control_character",
                path.clone(),
                format!("{path} holds a control character (NUL and other C0 controls are refused)"),
            ))
        }
        Err(StrictError::Syntax(_)) | Ok(_) => {}
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let parent = field_path(e.path());
        json_error(&parent, e.into_inner())
    })?;
    de.end().map_err(|e| json_error("", e))?;
    Ok(value)
}

/// The field path in the API's notation: `scope.agent_id`, `thresholds_percent[1]`.
fn field_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// The message of a serde_json error without its " at line L column C".
fn message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) if e.line() > 0 => text[..i].to_owned(),
        _ => text,
    }
}

/// The name between the first pair of backticks of a serde message.
fn quoted_name(msg: &str) -> Option<&str> {
    let rest = &msg[msg.find('`')? + 1..];
    Some(&rest[..rest.find('`')?])
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else if parent == name || parent.ends_with(&format!(".{name}")) {
        parent.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

fn json_error(parent: &str, e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let msg = message(&e);
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the request body is not valid JSON: {msg}"),
        ),
        Category::Data => {
            // The problem naming the field serde quoted in its message.
            let named = |code, detail: fn(&str) -> String| {
                let field = join(parent, quoted_name(&msg).unwrap_or("?"));
                ApiError::field(code, field.clone(), detail(&field))
            };
            if msg.starts_with("unknown field") {
                named("unknown_field", |f| format!("unknown field {f:?}"))
            } else if msg.starts_with("missing field") {
                named("missing_field", |f| format!("the field {f:?} is required"))
            } else if msg.starts_with("duplicate field") {
                named("duplicate_key", |f| {
                    format!("the field {f:?} is given twice")
                })
            } else if parent.is_empty() {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!("the request body must be a JSON object: {msg}"),
                )
            } else {
                ApiError::invalid(parent, format!("invalid {parent}: {msg}"))
            }
        }
    }
}

/// Query parameters; see the module docs.
#[derive(Debug, Default)]
pub struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    /// Checks that every parameter is one of `allowed` and given once.
    pub fn only(self, allowed: &[&str]) -> Result<Params, ApiError> {
        if let Some(unknown) = self.values.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::field(
                "unknown_field",
                unknown.clone(),
                format!(
                    "unknown query parameter {unknown:?}; expected one of {}",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(self)
    }

    /// An optional parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A required parameter.
    pub fn require(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name).ok_or_else(|| {
            ApiError::field(
                "missing_field",
                name,
                format!("the query parameter {name:?} is required"),
            )
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("cannot parse the query string: {}", e.body_text()),
                )
            })?;
        let mut values = BTreeMap::new();
        for (k, v) in pairs {
            if values.contains_key(&k) {
                return Err(ApiError::invalid(
                    k.clone(),
                    format!("the query parameter {k:?} is given more than once"),
                ));
            }
            values.insert(k, v);
        }
        Ok(Params { values })
    }
}

/// Path parameters; see the module docs.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("invalid path: {}", e.body_text()),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        agent_id: Option<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        scope: Inner,
        #[serde(default)]
        list: Vec<u32>,
    }

    fn err(body: &str) -> ApiError {
        decode::<Outer>(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(r#"{"name":"x","scope":{},"nope":1}"#);
        assert_eq!(
            (e.code(), e.problem().field.as_deref()),
            ("unknown_field", Some("nope"))
        );
        let e = err(r#"{"name":"x","scope":{"agent":"a"}}"#);
        assert_eq!(
            (e.code(), e.problem().field.as_deref()),
            ("unknown_field", Some("scope.agent"))
        );
        let e = err(r#"{"scope":{}}"#);
        assert_eq!(
            (e.code(), e.problem().field.as_deref()),
            ("missing_field", Some("name"))
        );
        let e = err(r#"{"name":"x","scope":{},"list":[1,-2]}"#);
        assert_eq!(
            (e.code(), e.problem().field.as_deref()),
            ("invalid_field", Some("list[1]"))
        );
        let e = err(r#"{"name":"x","scope":{"agent_id":5}}"#);
        assert_eq!(
            (e.code(), e.problem().field.as_deref()),
            ("invalid_field", Some("scope.agent_id"))
        );
        assert_eq!(err("true").code(), "invalid_body");
        assert_eq!(err(r#"["x", {}]"#).code(), "invalid_body");
        assert_eq!(err("[1,").code(), "malformed_json");
        assert_eq!(err(r#"{"name":"#).code(), "malformed_json");
        assert_eq!(err(r#"{"name":"x","scope":{}} x"#).code(), "malformed_json");
        assert_eq!(err("").code(), "malformed_json");
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/merge-patch+json".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_json(&h));
    }
}
