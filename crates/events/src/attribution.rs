//! Who a generation is attributed to: the organisation that pays, the
//! budget scopes it counts in (agent, session, end user) and the model.
//!
//! [`Attribution`] is the one type for these five fields. It is flattened
//! into every generation event (`#[serde(flatten)]`), so the wire format
//! keeps them as plain `data` properties, and the same value travels on
//! unchanged: the ledger's placement, the budget scope rule
//! (`tally_budget::Scope::matches`), the store's holds and the API's checks
//! all take an `Attribution` instead of copying the fields one by one.
//!
//! # Invariants
//!
//! * `org_id` follows the id pattern; `agent_id`, `session_id`, `user_id`
//!   and `model` are references (non-empty, bounded, no control
//!   characters). [`Attribution::validate`] checks all five, naming the
//!   field (`data.agent_id`).
//! * Optional scopes are omitted from the wire when `None`.

use serde::{Deserialize, Serialize};

use crate::{check, EventError};

/// The organisation, budget scopes and model of one generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attribution {
    /// The org that pays.
    pub org_id: String,
    /// Budget scope: agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Budget scope: session (also sent to OpenRouter to group its logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Budget scope: end user (sent to OpenRouter as `user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// OpenRouter model slug: the one requested, or, once a generation
    /// completed, the one that actually served it.
    pub model: String,
}

impl Attribution {
    /// An attribution to `org_id` and `model` with no agent, session or
    /// user scope.
    pub fn new(org_id: impl Into<String>, model: impl Into<String>) -> Self {
        Attribution {
            org_id: org_id.into(),
            model: model.into(),
            ..Attribution::default()
        }
    }

    /// The same attribution served by `model` (a completed generation's
    /// model may differ from the requested one, e.g. after a fallback).
    pub fn served_by(&self, model: impl Into<String>) -> Self {
        Attribution {
            model: model.into(),
            ..self.clone()
        }
    }

    /// Checks the five fields; errors name the field (`data.org_id`).
    pub fn validate(&self) -> Result<(), EventError> {
        check::id("data.org_id", &self.org_id)?;
        check::opt_reference("data.agent_id", self.agent_id.as_deref())?;
        check::opt_reference("data.session_id", self.session_id.as_deref())?;
        check::opt_reference("data.user_id", self.user_id.as_deref())?;
        check::reference("data.model", &self.model)
    }
}
