//! Fixtures of the crate's unit tests: budgets and instants built in code,
//! for the pure planning and decision functions that need no database.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use tally_budget::{Enforcement, PeriodKind, Scope};
use tally_money::cost;

use crate::budgets::Budget;

/// Noon UTC on a day of November 2026.
pub(crate) fn at(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, 12, 0, 0).unwrap()
}

/// A monthly UTC budget with thresholds 50 and 100 %, created on the 1st.
pub(crate) fn budget(
    id: &str,
    org: &str,
    agent: Option<&str>,
    limit: &str,
    enforcement: Enforcement,
) -> Arc<Budget> {
    Arc::new(Budget {
        id: id.into(),
        org_id: org.into(),
        name: id.into(),
        scope: Scope {
            agent_id: agent.map(Into::into),
            ..Scope::default()
        },
        period: PeriodKind::Monthly,
        timezone: "UTC".into(),
        tz: chrono_tz::UTC,
        limit_usd: cost!(limit),
        thresholds: vec![50, 100],
        enforcement,
        allow_unpriced_models: false,
        created_at: at(1),
        updated_at: at(1),
        archived_at: None,
    })
}
