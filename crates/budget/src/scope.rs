//! Budget scopes: which generations of its organisation a budget counts
//! ([`Scope::matches`] is the one rule, used by every path that books or
//! holds).

use serde::{Deserialize, Serialize};
use tally_events::Attribution;

use crate::BudgetError;

/// Longest value a scope field may have, in characters.
pub const MAX_SCOPE_VALUE_LEN: usize = 256;

/// Which generations of its organisation a budget counts. Every field that is
/// set must equal the generation's; an unset field matches anything. The
/// empty scope counts every generation of the organisation.
///
/// Unknown fields are rejected when deserialising: a misspelt field (`"agent"`
/// for `"agent_id"`) would otherwise silently widen the budget to the whole
/// organisation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Only generations of this agent.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Only generations of this session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Only generations for this end user.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Only generations served by this model (as reported, e.g.
    /// `"openai/gpt-4o"`).
    #[serde(default)]
    pub model: Option<String>,
}

impl Scope {
    /// Whether the scope counts the generation: every set field equals the
    /// generation's (byte for byte); an unset field matches anything, including
    /// a generation without that field. A set field never matches a
    /// generation that lacks it.
    ///
    /// The organisation is not part of the scope: budgets belong to one
    /// organisation and the caller compares it (or uses
    /// [`applies_to`](Scope::applies_to)).
    pub fn matches(&self, g: &Attribution) -> bool {
        self.matches_served_by(g, &g.model)
    }

    /// [`matches`](Scope::matches) for the generation `g` if `model` served
    /// it: a hold counts in the budgets of its requested model and of every
    /// fallback model, before anyone knows which one will serve.
    pub fn matches_served_by(&self, g: &Attribution, model: &str) -> bool {
        fn field(want: &Option<String>, have: Option<&str>) -> bool {
            match want {
                None => true,
                Some(w) => have == Some(w.as_str()),
            }
        }
        field(&self.agent_id, g.agent_id.as_deref())
            && field(&self.session_id, g.session_id.as_deref())
            && field(&self.user_id, g.user_id.as_deref())
            && field(&self.model, Some(model))
    }

    /// Whether a budget of organisation `budget_org_id` with this scope counts
    /// the generation: same organisation and [`matches`](Scope::matches).
    pub fn applies_to(&self, budget_org_id: &str, g: &Attribution) -> bool {
        budget_org_id == g.org_id && self.matches(g)
    }

    /// Whether every generation `other` matches is also matched by `self`:
    /// each field `self` sets, `other` sets to the same value. Widening a
    /// budget's scope means replacing it by one that is wider-or-equal.
    pub fn is_wider_or_equal(&self, other: &Scope) -> bool {
        fn field(mine: &Option<String>, theirs: &Option<String>) -> bool {
            mine.is_none() || mine == theirs
        }
        field(&self.agent_id, &other.agent_id)
            && field(&self.session_id, &other.session_id)
            && field(&self.user_id, &other.user_id)
            && field(&self.model, &other.model)
    }

    /// Whether no field is set (the budget counts the whole organisation).
    pub fn is_org_wide(&self) -> bool {
        self == &Scope::default()
    }

    /// Checks that each set field is a value a generation can carry: not
    /// empty, at most [`MAX_SCOPE_VALUE_LEN`] characters (as the API
    /// document counts them), no control characters,
    /// no leading or trailing white space.
    pub fn validate(&self) -> Result<(), BudgetError> {
        let fields = [
            ("agent_id", &self.agent_id),
            ("session_id", &self.session_id),
            ("user_id", &self.user_id),
            ("model", &self.model),
        ];
        for (field, value) in fields {
            let Some(v) = value else { continue };
            let reason = if v.is_empty() {
                "must not be empty (leave it out to match any value)"
            } else if v.chars().count() > MAX_SCOPE_VALUE_LEN {
                "is longer than 256 characters"
            } else if v.chars().any(char::is_control) {
                "contains control characters"
            } else if v.trim() != v {
                "has leading or trailing white space"
            } else {
                continue;
            };
            return Err(BudgetError::InvalidScope { field, reason });
        }
        Ok(())
    }
}
