//! Statements about one named row (by id, or `RETURNING` it): a missing row
//! is [`StoreError::NotFound`] naming what was looked for.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{PgExecutor, Postgres};

use crate::StoreError;

/// [`Query::fetch_optional`] with the missing row as an error.
pub(crate) trait FetchFound {
    /// The row, or [`StoreError::NotFound`] `{ what }`.
    async fn fetch_found<'e, E: PgExecutor<'e>>(
        self,
        ex: E,
        what: &'static str,
    ) -> Result<PgRow, StoreError>;
}

impl FetchFound for Query<'_, Postgres, PgArguments> {
    async fn fetch_found<'e, E: PgExecutor<'e>>(
        self,
        ex: E,
        what: &'static str,
    ) -> Result<PgRow, StoreError> {
        self.fetch_optional(ex)
            .await?
            .ok_or(StoreError::NotFound { what })
    }
}
