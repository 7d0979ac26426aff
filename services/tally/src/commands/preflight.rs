//! The worker's budget preflight straight from Postgres, for processes that
//! have the database (`tally run`, `tally worker` with `TALLY_DATABASE_URL`):
//! tally's own services read the ledger themselves rather than through the
//! API, whose keys guard people and outside programs.
//!
//! It answers exactly what `POST /v1/budgets/check` answers: the first
//! matching hard budget whose spend has reached its limit blocks.

use futures::future::BoxFuture;
use tally_store::queries::CheckScope;
use tally_store::Store;
use tally_worker::{Preflight, PreflightDecision, PreflightError};

/// Checks budgets in the store.
#[derive(Debug, Clone)]
pub struct StorePreflight {
    store: Store,
}

impl StorePreflight {
    /// A preflight over `store`.
    pub fn new(store: Store) -> StorePreflight {
        StorePreflight { store }
    }
}

impl Preflight for StorePreflight {
    fn check<'a>(
        &'a self,
        org: &'a str,
        agent: Option<&'a str>,
        session: Option<&'a str>,
        user: Option<&'a str>,
        model: &'a str,
    ) -> BoxFuture<'a, Result<PreflightDecision, PreflightError>> {
        Box::pin(async move {
            let scope = CheckScope {
                agent_id: agent.map(str::to_owned),
                session_id: session.map(str::to_owned),
                user_id: user.map(str::to_owned),
                model: Some(model.to_owned()),
            };
            let matching = self
                .store
                .check_budgets(org, &scope, chrono::Utc::now())
                .await
                .map_err(|e| PreflightError::Unreachable(format!("{} ({})", e, e.code())))?;
            let blocking = matching
                .into_iter()
                .find(|(b, totals, _)| b.enforcement.blocks(b.limit_usd, totals.spent_usd));
            Ok(match blocking {
                Some((b, _, _)) => PreflightDecision {
                    allowed: false,
                    blocking_budget_id: Some(b.id),
                    blocking_budget_name: Some(b.name),
                },
                None => PreflightDecision::allow(),
            })
        })
    }
}
