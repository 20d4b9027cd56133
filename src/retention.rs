//! Retention: what is old enough goes, in small batches so no statement holds locks for long.
//!
//! - `job_runs` older than `retention.job_runs`: deleted.
//! - Reports older than `retention.reports`: the file is deleted from storage, the row stays
//!   as `expired` (its link answers 410).
//! - Staged chunks of uploads over for `retention.staged_files`: deleted (an upload deletes
//!   its own when it ends; this catches what a crash left).
//! - Webhook deliveries done with (processed, unmatched, failed, ignored) for
//!   `retention.webhook_deliveries`: deleted; one that a transaction event, chargeback or
//!   retrieval request points to keeps its row without its raw body and headers (the events
//!   are the money's audit trail and are never pruned here).
//!
//! Nothing that money depends on is touched: attempts, events, chargebacks, profiles,
//! blacklists, debtors and dead jobs stay.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{config::RetentionSettings, context::AppContext, db::DbError};

/// What one pass removed.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Pruned {
    /// `job_runs` rows deleted.
    pub job_runs: u64,
    /// Reports whose file was deleted.
    pub reports: u64,
    /// Uploads whose leftover staged chunks were deleted.
    pub staged_uploads: u64,
    /// Staged objects deleted.
    pub staged_objects: u64,
    /// Webhook deliveries deleted.
    pub deliveries_deleted: u64,
    /// Webhook deliveries kept for their references, raw body dropped.
    pub deliveries_stripped: u64,
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// Postgres failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Object storage failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

fn cutoff(age: std::time::Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::days(36500))
}

/// Runs `sql` (one batch, `$1` cutoff, `$2` batch size, returning the rows affected) until a
/// batch comes back short.
async fn batches(
    app: &AppContext,
    sql: &str,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<u64, DbError> {
    let mut total = 0;
    loop {
        let mut tx = app.db.begin().await?;
        let n = tx
            .execute(sqlx::query(sql).bind(before).bind(batch))
            .await?;
        tx.commit().await?;
        total += n;
        if n < batch as u64 {
            return Ok(total);
        }
    }
}

/// One pass over everything retention covers.
pub async fn run(app: &AppContext) -> Result<Pruned, RetentionError> {
    let r: &RetentionSettings = &app.settings.retention;
    let batch = i64::from(r.batch.max(1));
    let mut p = Pruned {
        job_runs: batches(
            app,
            "DELETE FROM job_runs WHERE ctid IN \
             (SELECT ctid FROM job_runs WHERE started_at < $1 LIMIT $2)",
            cutoff(r.job_runs),
            batch,
        )
        .await?,
        ..Pruned::default()
    };

    // Reports: the file first, then the row; a failed delete leaves the row `ready` and the
    // next pass tries again.
    let before = cutoff(r.reports);
    loop {
        let mut tx = app.db.begin().await?;
        let due: Vec<(uuid::Uuid, Option<String>)> = tx
            .fetch_all(
                sqlx::query_as(
                    "SELECT id, object_key FROM reports WHERE created_at < $1 \
                     AND status IN ('ready', 'failed') LIMIT $2",
                )
                .bind(before)
                .bind(batch),
            )
            .await?;
        tx.commit().await?;
        for (id, key) in &due {
            if let Some(key) = key {
                app.storage.delete(key).await?;
            }
            let mut tx = app.db.begin().await?;
            tx.execute(
                sqlx::query(
                    "UPDATE reports SET status = 'expired', expired_at = now(), object_key = NULL \
                     WHERE id = $1",
                )
                .bind(id),
            )
            .await?;
            tx.commit().await?;
            p.reports += 1;
        }
        if due.len() < batch as usize {
            break;
        }
    }

    let before = cutoff(r.staged_files);
    loop {
        let mut tx = app.db.begin().await?;
        let due: Vec<(uuid::Uuid,)> = tx
            .fetch_all(
                sqlx::query_as(
                    "SELECT id FROM uploads WHERE status IN ('completed', 'failed') \
                     AND coalesce(finished_at, updated_at) < $1 AND staging_pruned_at IS NULL LIMIT $2",
                )
                .bind(before)
                .bind(batch),
            )
            .await?;
        tx.commit().await?;
        for (id,) in &due {
            p.staged_objects += app
                .storage
                .delete_prefix(&crate::uploads::staging_prefix(*id))
                .await?;
            let mut tx = app.db.begin().await?;
            tx.execute(
                sqlx::query("UPDATE uploads SET staging_pruned_at = now() WHERE id = $1").bind(id),
            )
            .await?;
            tx.commit().await?;
            p.staged_uploads += 1;
        }
        if due.len() < batch as usize {
            break;
        }
    }

    let before = cutoff(r.webhook_deliveries);
    const REFERENCED: &str = "(EXISTS (SELECT 1 FROM transaction_events e WHERE e.delivery_id = d.id) \
         OR EXISTS (SELECT 1 FROM chargebacks c WHERE c.delivery_id = d.id) \
         OR EXISTS (SELECT 1 FROM retrieval_requests q WHERE q.delivery_id = d.id))";
    p.deliveries_deleted = batches(
        app,
        &format!(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT d.id FROM webhook_deliveries d \
             WHERE d.received_at < $1 AND d.state <> 'queued' AND NOT {REFERENCED} LIMIT $2)"
        ),
        before,
        batch,
    )
    .await?;
    p.deliveries_stripped = batches(
        app,
        &format!(
            "UPDATE webhook_deliveries SET body = '', headers = '{{}}', pruned_at = now() \
             WHERE id IN (SELECT d.id FROM webhook_deliveries d WHERE d.received_at < $1 \
             AND d.state <> 'queued' AND d.pruned_at IS NULL AND {REFERENCED} LIMIT $2)"
        ),
        before,
        batch,
    )
    .await?;
    app.metrics.record_retention(&p);
    Ok(p)
}
