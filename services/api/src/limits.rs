//! The API's limits, each a setting with a documented default (the `tally`
//! binary exposes every one as a flag and an environment variable).
//!
//! | limit | default | setting |
//! |---|---|---|
//! | header read | 10 s | `TALLY_HTTP_HEADER_TIMEOUT` |
//! | idle keep-alive | 60 s | `TALLY_HTTP_IDLE_TIMEOUT` |
//! | whole request | 30 s | `TALLY_HTTP_REQUEST_TIMEOUT` |
//! | request body | 64 KiB | `TALLY_HTTP_BODY_LIMIT` |
//! | open connections per process | 1 024 | `TALLY_HTTP_MAX_CONNECTIONS` |
//! | budgets per organisation (not archived) | 1 000 | `TALLY_MAX_BUDGETS_PER_ORG` |
//! | webhooks per organisation | 100 | `TALLY_MAX_WEBHOOKS_PER_ORG` |
//! | API keys per organisation (not revoked) | 100 | `TALLY_MAX_KEYS_PER_ORG` |
//! | list page | 100 by default, at most 1 000 | `limit` query parameter |
//!
//! A request past a per-organisation limit is refused with 409
//! `limit_exceeded`, naming the limit (`budgets_per_org`, ...) in `field`;
//! nothing is truncated.
//!
//! # Decisions
//!
//! * **Archived budgets do not count** against the budget limit: the limit
//!   bounds the work one completed event causes (one entry per matching
//!   live budget), and an archived budget takes no new entries.

use std::time::Duration;

/// Connection and request limits of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time a connection has to deliver a complete request head, from the
    /// accept or from the first byte of a later request.
    pub header_read_timeout: Duration,
    /// Time a kept-alive connection may stay without traffic between
    /// requests.
    pub idle_timeout: Duration,
    /// Time a request may take (handler and body) before 503
    /// `request_timeout`.
    pub request_timeout: Duration,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// Most open connections per process.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            body_limit: 64 * 1024,
            max_connections: 1024,
        }
    }
}

/// What one organisation may create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrgLimits {
    /// Budgets that are not archived.
    pub max_budgets: u32,
    /// Webhooks.
    pub max_webhooks: u32,
    /// API keys that are not revoked.
    pub max_keys: u32,
}

impl Default for OrgLimits {
    fn default() -> OrgLimits {
        OrgLimits {
            max_budgets: 1000,
            max_webhooks: 100,
            max_keys: 100,
        }
    }
}
