//! Fixtures shared by the reservation tests and the holds benchmark: a
//! monthly budget, an agent's generation request and the completed event
//! that settles its hold.
#![allow(dead_code)]

use std::time::Duration;

use chrono::Utc;
use tally_budget::{Enforcement, PeriodKind, Scope};
use tally_events::Attribution;
use tally_ledger::{Fact, Placement};
use tally_money::Cost;
use tally_store::ledger::CompletedDetails;
use tally_store::{FactInput, HoldRequest, NewBudget};

/// The model every fixture request asks for.
pub const MODEL: &str = "openai/gpt-4o-mini";

/// A monthly budget of `org` in UTC over `scope`, alerting at 50, 80 and
/// 100 %, priced models only.
pub fn monthly_budget(
    org: &str,
    name: &str,
    limit: Cost,
    enforcement: Enforcement,
    scope: Scope,
) -> NewBudget {
    NewBudget {
        org_id: org.into(),
        name: name.into(),
        scope,
        period: PeriodKind::Monthly,
        timezone: "UTC".into(),
        limit_usd: limit,
        thresholds: vec![50, 80, 100],
        enforcement,
        allow_unpriced_models: false,
    }
}

/// What `agent` of `org` asks [`MODEL`] for.
pub fn agent_attribution(org: &str, agent: &str) -> Attribution {
    Attribution {
        agent_id: Some(agent.into()),
        ..Attribution::new(org, MODEL)
    }
}

/// A request of `agent` holding `amount` (`None`: unpriced) for ten
/// minutes, with an output cap of 4096 tokens and no fallbacks.
pub fn hold_request(org: &str, agent: &str, request_id: &str, amount: Option<Cost>) -> HoldRequest {
    HoldRequest {
        request_id: request_id.into(),
        attribution: agent_attribution(org, agent),
        fallback_models: Vec::new(),
        amount_usd: amount,
        max_output_tokens: 4096,
        ttl: Duration::from_secs(600),
    }
}

/// The completed event of `agent`'s request `request_id`, served now as
/// generation `generation_id` at the actual cost `actual`.
pub fn completed(
    org: &str,
    agent: &str,
    request_id: &str,
    generation_id: &str,
    actual: Cost,
) -> FactInput {
    FactInput {
        generation_id: generation_id.into(),
        org_id: org.into(),
        fact: Fact::Completed {
            placement: Placement {
                attribution: agent_attribution(org, agent),
                completed_at: Utc::now(),
            },
            estimate: None,
            actual: Some(actual),
        },
        details: Some(CompletedDetails {
            provider: None,
            status: "completed".into(),
            is_byok: false,
            request_id: Some(request_id.into()),
        }),
    }
}
