//! Shared HTTP plumbing: configuration, the `reqwest` client, authentication,
//! bounded body reading and the mapping of HTTP statuses to [`OpenRouterError`].
//!
//! Endpoint modules ([`generation`](crate::generation), [`models`](crate::models),
//! and later the generation endpoints themselves) add `impl OpenRouterClient`
//! blocks that build a request with `OpenRouterClient::request` and hand it
//! to `OpenRouterClient::send_and_read`.
//!
//! # Decisions
//!
//! * **Paths are appended to the base URL** (`base_url + "/generation"`), so
//!   a base URL with a path prefix (`https://openrouter.ai/api/v1`, or a
//!   simulator's `http://127.0.0.1:8090/api/v1`) works unchanged.
//! * **Bodies are read with a size limit**: a reply larger than the endpoint's
//!   limit is refused as malformed instead of filling memory.
//! * **The API key never appears in `Debug` output** and its header is marked
//!   sensitive.

use std::{fmt, sync::Arc, time::Duration};

use reqwest::{
    header::{HeaderMap, HeaderValue, AUTHORIZATION},
    Method, RequestBuilder, Url,
};

use crate::error::{self, OpenRouterError};

/// The public OpenRouter API.
pub const DEFAULT_BASE_URL: &str = "https://openrouter.ai/api/v1";

/// How to reach OpenRouter.
#[derive(Clone)]
pub struct ClientConfig {
    /// Base URL every path is appended to, e.g. `https://openrouter.ai/api/v1`
    /// (a trailing `/` is ignored).
    pub base_url: String,
    /// The API key sent as `Authorization: Bearer …`; `None` (or empty) sends
    /// no `Authorization` header.
    pub api_key: Option<String>,
    /// Limit for a whole call: connecting, sending, and reading the body.
    pub timeout: Duration,
    /// Limit for establishing the connection.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// A configuration for `base_url` with the default timeouts and no key.
    pub fn new(base_url: impl Into<String>) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            ..ClientConfig::default()
        }
    }

    /// The same configuration with `api_key`.
    pub fn with_api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }

    /// The same configuration with the call timeout `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Default for ClientConfig {
    /// [`DEFAULT_BASE_URL`], no key, 10 s call timeout, 5 s connect timeout.
    fn default() -> Self {
        ClientConfig {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A typed OpenRouter client. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct OpenRouterClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    auth: Option<HeaderValue>,
}

impl fmt::Debug for OpenRouterClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenRouterClient")
            .field("base_url", &self.inner.base_url)
            .field("authenticated", &self.inner.auth.is_some())
            .finish()
    }
}

impl OpenRouterClient {
    /// Builds a client. Fails with [`OpenRouterError::InvalidConfig`] when the
    /// base URL is not an absolute `http`/`https` URL, a timeout is zero, or
    /// the key cannot be sent in an HTTP header.
    pub fn new(cfg: ClientConfig) -> Result<Self, OpenRouterError> {
        let invalid = |m: String| OpenRouterError::InvalidConfig(m);
        let base_url = cfg.base_url.trim().trim_end_matches('/').to_owned();
        let parsed = Url::parse(&base_url)
            .map_err(|e| invalid(format!("base_url {:?} is not a URL: {e}", cfg.base_url)))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(invalid(format!(
                "base_url {:?} must be an http or https URL with a host",
                cfg.base_url
            )));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid(format!(
                "base_url {:?} must not have a query or fragment",
                cfg.base_url
            )));
        }
        if cfg.timeout.is_zero() || cfg.connect_timeout.is_zero() {
            return Err(invalid("timeouts must be greater than zero".to_owned()));
        }
        let auth = match cfg.api_key.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    invalid("api_key contains characters that cannot be sent in a header".into())
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.connect_timeout)
            .user_agent(concat!("tally/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(OpenRouterClient {
            inner: Arc::new(Inner {
                http,
                base_url,
                auth,
            }),
        })
    }

    /// The same client (same connection pool, base URL and timeouts) with
    /// another bearer key: one client per organisation costs no new pool.
    pub fn with_key(&self, key: &secrecy::SecretString) -> Result<Self, OpenRouterError> {
        use secrecy::ExposeSecret as _;
        let key = key.expose_secret().trim();
        let auth = if key.is_empty() {
            None
        } else {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                OpenRouterError::InvalidConfig(
                    "api_key contains characters that cannot be sent in a header".into(),
                )
            })?;
            value.set_sensitive(true);
            Some(value)
        };
        Ok(OpenRouterClient {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                base_url: self.inner.base_url.clone(),
                auth,
            }),
        })
    }

    /// Whether requests carry a bearer key.
    pub fn has_key(&self) -> bool {
        self.inner.auth.is_some()
    }

    /// The base URL every path is appended to (without a trailing `/`).
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The URL of `path` (which starts with `/`) below the base URL.
    pub(crate) fn url(&self, path: &str) -> Result<Url, OpenRouterError> {
        Url::parse(&format!("{}{path}", self.inner.base_url)).map_err(|e| {
            OpenRouterError::InvalidConfig(format!("cannot build URL for {path}: {e}"))
        })
    }

    /// A request to `url` carrying the bearer key (when configured).
    pub(crate) fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let mut req = self.inner.http.request(method, url);
        if let Some(auth) = &self.inner.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        req
    }

    /// A request to `url` without any key (the OAuth code exchange).
    pub(crate) fn request_without_key(&self, method: Method, url: Url) -> RequestBuilder {
        self.inner.http.request(method, url)
    }

    /// Sends `req` and reads the reply. A 2xx reply yields its body (at most
    /// `limit` bytes, else [`OpenRouterError::Malformed`]); any other status
    /// becomes the matching error (404 as [`OpenRouterError::NotYet`] when
    /// `not_found_is_not_yet`).
    pub(crate) async fn send_and_read(
        &self,
        req: RequestBuilder,
        limit: usize,
        not_found_is_not_yet: bool,
    ) -> Result<Reply, OpenRouterError> {
        let mut resp = req
            .send()
            .await
            .map_err(|e| OpenRouterError::from_reqwest(&e))?;
        let status = resp.status().as_u16();
        let headers = std::mem::take(resp.headers_mut());
        if !(200..300).contains(&status) {
            // The body only refines the message; failing to read it must not
            // hide the status.
            let body = read_limited(&mut resp, ERROR_BODY_LIMIT)
                .await
                .unwrap_or_default();
            let err = error::from_status(status, &headers, &body, not_found_is_not_yet);
            tracing::debug!(
                status,
                code = err.code(),
                "OpenRouter replied with an error"
            );
            return Err(err);
        }
        let body = match read_limited(&mut resp, limit).await {
            Ok(body) => body,
            Err(ReadError::TooLarge) => {
                return Err(OpenRouterError::malformed(
                    status,
                    format!("body larger than {limit} bytes"),
                ))
            }
            Err(ReadError::Http(e)) => return Err(OpenRouterError::from_reqwest(&e)),
        };
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// A successful (2xx) reply, body read in full.
#[derive(Debug)]
pub(crate) struct Reply {
    /// HTTP status (2xx).
    pub(crate) status: u16,
    /// Response headers (the generation endpoints will read `X-Generation-Id`).
    #[allow(dead_code)]
    pub(crate) headers: HeaderMap,
    /// The body.
    pub(crate) body: Vec<u8>,
}

/// How much of an error body is read for its message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

async fn read_limited(resp: &mut reqwest::Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Http)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        for bad in ["", "openrouter.ai/api/v1", "ftp://x/y", "http://h/api?x=1"] {
            let err = OpenRouterClient::new(ClientConfig::new(bad)).unwrap_err();
            assert_eq!(err.code(), "invalid_config", "{bad:?}");
        }
        let err = OpenRouterClient::new(ClientConfig::new("http://h").with_timeout(Duration::ZERO))
            .unwrap_err();
        assert_eq!(err.code(), "invalid_config");
        let err =
            OpenRouterClient::new(ClientConfig::new("http://h").with_api_key("a\nb")).unwrap_err();
        assert_eq!(err.code(), "invalid_config");
    }

    #[test]
    fn base_url_is_normalised_and_key_redacted() {
        let cfg = ClientConfig::new("http://127.0.0.1:1/api/v1/").with_api_key("sk-secret");
        assert!(!format!("{cfg:?}").contains("sk-secret"));
        let c = OpenRouterClient::new(cfg).unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:1/api/v1");
        assert_eq!(
            c.url("/generation").unwrap().as_str(),
            "http://127.0.0.1:1/api/v1/generation"
        );
        assert!(!format!("{c:?}").contains("sk-secret"));
        let d = ClientConfig::default();
        assert_eq!(d.base_url, DEFAULT_BASE_URL);
        assert_eq!(d.timeout, Duration::from_secs(10));
    }
}
