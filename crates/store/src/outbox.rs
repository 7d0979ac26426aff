//! The transactional outbox: derived events (`ledger.posted`, threshold
//! alerts) written in the same transaction as the entries they describe and
//! published afterwards.
//!
//! # Invariants
//!
//! * A row is written only inside the transaction that posts its entries:
//!   a crash before commit leaves neither; after commit, both.
//! * A row is marked published only after the bus acknowledged it. A crash
//!   between the two publishes it again with the same `msg_id`, which
//!   JetStream's duplicate window drops; consumers also see a stable
//!   CloudEvent id.
//! * Several publishers may run: rows are claimed with
//!   `FOR UPDATE SKIP LOCKED`, so each is handled by one at a time.

use sqlx::{Postgres, Transaction};

use crate::{Store, StoreError};

/// An event waiting to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxMessage {
    /// Row id.
    pub id: i64,
    /// NATS subject.
    pub subject: String,
    /// `Nats-Msg-Id` (equals the CloudEvent id).
    pub msg_id: String,
    /// The CloudEvent JSON.
    pub payload: Vec<u8>,
}

/// Writes events to the outbox inside the caller's transaction.
pub(crate) async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(String, String, Vec<u8>)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox (subject, msg_id, payload) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) \
         ON CONFLICT (msg_id) DO NOTHING",
    )
    .bind(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A claimed set of outbox rows. Publish them, then call
/// [`OutboxClaim::mark_published`]; dropping the claim without marking
/// releases them for another try.
pub struct OutboxClaim {
    tx: Transaction<'static, Postgres>,
    /// The claimed rows, oldest first.
    pub messages: Vec<OutboxMessage>,
}

impl OutboxClaim {
    /// Marks every claimed row published and releases the claim.
    pub async fn mark_published(mut self) -> Result<(), StoreError> {
        let ids: Vec<i64> = self.messages.iter().map(|m| m.id).collect();
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Claims up to `limit` unpublished outbox rows (oldest first), skipping
    /// rows another publisher holds.
    pub async fn claim_outbox(&self, limit: i64) -> Result<OutboxClaim, StoreError> {
        let mut tx = self.pool().begin().await?;
        let messages = sqlx::query_as(
            "SELECT id, subject, msg_id, payload FROM outbox WHERE published_at IS NULL \
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        Ok(OutboxClaim { tx, messages })
    }

    /// Number of outbox rows not yet published (for metrics and tests).
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }

    /// Deletes published outbox rows older than `keep` (housekeeping).
    pub async fn prune_outbox(&self, keep: std::time::Duration) -> Result<u64, StoreError> {
        let secs = i64::try_from(keep.as_secs()).unwrap_or(i64::MAX);
        let n = sqlx::query(
            "DELETE FROM outbox WHERE published_at IS NOT NULL \
             AND published_at < now() - make_interval(secs => $1)",
        )
        .bind(secs as f64)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n)
    }
}
