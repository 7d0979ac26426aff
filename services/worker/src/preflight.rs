//! Budget preflight: before a generation runs, ask whether a hard budget in
//! its scope is exhausted.
//!
//! [`Preflight`] is the question; [`HttpPreflight`] asks tally's API
//! (`POST /v1/budgets/check`, with a bearer credential that names the
//! organisation in the body: the operator token), so the worker needs no
//! database;
//! [`AllowAll`] never refuses (deployments without budgets, tests).
//!
//! # Decisions
//!
//! * **Fail closed, but retry.** When the API cannot answer, the worker does
//!   not spend money blindly: the request is retried with backoff, and after
//!   the last attempt it fails with `preflight_unavailable` (retryable).
//! * **A trait object with boxed futures** (`Arc<dyn Preflight>`): the
//!   worker holds any implementation without generics, and no extra crate
//!   is needed for async trait methods.

use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The answer of a preflight check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreflightDecision {
    /// Whether a new generation in the scope may run.
    pub allowed: bool,
    /// The id of the budget that blocks it, when refused.
    pub blocking_budget_id: Option<String>,
    /// The name of that budget, when known.
    pub blocking_budget_name: Option<String>,
}

impl PreflightDecision {
    /// Allowed.
    pub fn allow() -> Self {
        PreflightDecision {
            allowed: true,
            ..PreflightDecision::default()
        }
    }

    /// Refused by budget `id`.
    pub fn refuse(id: impl Into<String>) -> Self {
        PreflightDecision {
            allowed: false,
            blocking_budget_id: Some(id.into()),
            blocking_budget_name: None,
        }
    }
}

/// Why a preflight check could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreflightError {
    /// Misconfigured (bad URL).
    #[error("invalid preflight configuration: {0}")]
    Config(String),
    /// The API could not be reached or timed out.
    #[error("budget check unreachable: {0}")]
    Unreachable(String),
    /// The API answered with an error status.
    #[error("budget check answered HTTP {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Body excerpt.
        message: String,
    },
    /// The API answered something unreadable.
    #[error("budget check answered an unreadable body: {0}")]
    Malformed(String),
}

impl PreflightError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            PreflightError::Config(_) => "preflight_config",
            PreflightError::Unreachable(_) => "preflight_unreachable",
            PreflightError::Status { .. } => "preflight_status",
            PreflightError::Malformed(_) => "preflight_malformed",
        }
    }
}

/// Asks whether a generation in a budget scope may run.
pub trait Preflight: Send + Sync + std::fmt::Debug {
    /// Checks the scope `org` / `agent` / `session` / `user` / `model`.
    fn check<'a>(
        &'a self,
        org: &'a str,
        agent: Option<&'a str>,
        session: Option<&'a str>,
        user: Option<&'a str>,
        model: &'a str,
    ) -> BoxFuture<'a, Result<PreflightDecision, PreflightError>>;
}

/// Never refuses.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Preflight for AllowAll {
    fn check<'a>(
        &'a self,
        _org: &'a str,
        _agent: Option<&'a str>,
        _session: Option<&'a str>,
        _user: Option<&'a str>,
        _model: &'a str,
    ) -> BoxFuture<'a, Result<PreflightDecision, PreflightError>> {
        Box::pin(async { Ok(PreflightDecision::allow()) })
    }
}

/// Asks tally's API: `POST {api_base_url}/v1/budgets/check`.
#[derive(Debug, Clone)]
pub struct HttpPreflight {
    http: reqwest::Client,
    url: String,
    bearer: Option<SecretString>,
}

#[derive(Serialize)]
struct CheckBody<'a> {
    org_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    model: &'a str,
}

#[derive(Deserialize)]
struct CheckReply {
    allowed: bool,
    #[serde(default)]
    blocking_budget: Option<Value>,
}

impl HttpPreflight {
    /// A client for the API at `api_base_url` (e.g. `http://127.0.0.1:8080`),
    /// each check bounded by `timeout`.
    pub fn new(api_base_url: &str, timeout: Duration) -> Result<Self, PreflightError> {
        let base = api_base_url.trim().trim_end_matches('/');
        let url = format!("{base}/v1/budgets/check");
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| PreflightError::Config(format!("API URL {api_base_url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(PreflightError::Config(format!(
                "API URL {api_base_url:?} must be http or https"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| PreflightError::Config(e.to_string()))?;
        Ok(HttpPreflight {
            http,
            url,
            bearer: None,
        })
    }

    /// Sends `token` as `Authorization: Bearer` on every check.
    pub fn with_bearer(mut self, token: Option<SecretString>) -> Self {
        self.bearer = token;
        self
    }

    /// The check URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Preflight for HttpPreflight {
    fn check<'a>(
        &'a self,
        org: &'a str,
        agent: Option<&'a str>,
        session: Option<&'a str>,
        user: Option<&'a str>,
        model: &'a str,
    ) -> BoxFuture<'a, Result<PreflightDecision, PreflightError>> {
        Box::pin(async move {
            let body = CheckBody {
                org_id: org,
                agent_id: agent,
                session_id: session,
                user_id: user,
                model,
            };
            let mut req = self.http.post(&self.url).json(&body);
            if let Some(t) = &self.bearer {
                req = req.bearer_auth(t.expose_secret());
            }
            let resp = req
                .send()
                .await
                .map_err(|e| PreflightError::Unreachable(e.to_string()))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| PreflightError::Unreachable(e.to_string()))?;
            if status != 200 {
                let message = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
                return Err(PreflightError::Status { status, message });
            }
            let reply: CheckReply = serde_json::from_slice(&bytes)
                .map_err(|e| PreflightError::Malformed(e.to_string()))?;
            let budget = reply.blocking_budget.filter(|b| !b.is_null());
            let field = |k: &str| {
                budget
                    .as_ref()
                    .and_then(|b| b.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            Ok(PreflightDecision {
                allowed: reply.allowed,
                blocking_budget_id: field("id"),
                blocking_budget_name: field("name"),
            })
        })
    }
}
