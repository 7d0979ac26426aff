//! Sealed secrets in rows: the five columns (`kek_id`, `wrap_nonce`,
//! `wrapped_key`, `nonce`, `ciphertext`) every table holding a [`Sealed`]
//! value has, bound and read in one place.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row};
use tally_secrets::Sealed;

use crate::StoreError;

/// Binds the five columns of a sealed value, in column order, as the next
/// five parameters of a query.
pub(crate) trait BindSealed<'q> {
    /// The query with `s`'s columns bound.
    fn bind_sealed(self, s: &'q Sealed) -> Self;
}

impl<'q> BindSealed<'q> for Query<'q, Postgres, PgArguments> {
    fn bind_sealed(self, s: &'q Sealed) -> Self {
        self.bind(&s.kek_id)
            .bind(&s.wrap_nonce)
            .bind(&s.wrapped_key)
            .bind(&s.nonce)
            .bind(&s.ciphertext)
    }
}

/// The sealed value of a row whose columns are `NOT NULL`.
pub(crate) fn sealed_from(r: &PgRow) -> Result<Sealed, StoreError> {
    sealed_from_nullable(r)?
        .ok_or_else(|| StoreError::Corrupt("sealed value without kek_id".into()))
}

/// The sealed value of a row whose columns may be `NULL` (destroyed): none
/// without a `kek_id`, and a missing part reads as empty.
pub(crate) fn sealed_from_nullable(r: &PgRow) -> Result<Option<Sealed>, StoreError> {
    let Some(kek_id) = r.try_get::<Option<String>, _>("kek_id")? else {
        return Ok(None);
    };
    let part = |column: &str| -> Result<Vec<u8>, StoreError> {
        Ok(r.try_get::<Option<Vec<u8>>, _>(column)?.unwrap_or_default())
    };
    Ok(Some(Sealed {
        kek_id,
        wrap_nonce: part("wrap_nonce")?,
        wrapped_key: part("wrapped_key")?,
        nonce: part("nonce")?,
        ciphertext: part("ciphertext")?,
    }))
}
