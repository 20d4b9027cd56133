//! Paused queues. Postgres (`queue_pauses`) is the record; Redis holds the copy the fetch
//! script checks, so a paused queue is fetched by no process. The copy is rebuilt from the
//! record at start-up and by the sweeper: a pause survives restarts of the workers and of Redis.
//! Pausing stops new fetches only: jobs already running finish.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{context::AppContext, db::DbError};

/// A paused queue.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Paused {
    /// The queue (job type).
    pub queue: String,
    /// Who paused it (`cli`, `api`, `dashboard`).
    pub paused_by: String,
    /// Why.
    pub reason: Option<String>,
    /// When.
    pub paused_at: DateTime<Utc>,
}

/// Why a pause could not be set.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// No such queue.
    #[error("no queue `{0}` (queues are named after job types)")]
    UnknownQueue(String),
    /// Postgres failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Redis failed (the record is written; the copy is rebuilt by the sweeper or at start).
    #[error("the pause is recorded, but Redis could not be told: {0}")]
    Redis(#[from] super::engine::QueueError),
}

/// Every paused queue, from the record.
pub async fn list(app: &AppContext) -> Result<Vec<Paused>, DbError> {
    let mut tx = app.db.begin().await?;
    let rows = tx
        .fetch_all(sqlx::query_as(
            "SELECT queue, paused_by, reason, paused_at FROM queue_pauses ORDER BY queue",
        ))
        .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Pauses `queue` (recorded first, then told to Redis). Returns false when it already was.
pub async fn pause(
    app: &AppContext,
    queue: &str,
    by: &str,
    reason: Option<&str>,
) -> Result<bool, PauseError> {
    if app.registry.get(queue).is_none() {
        return Err(PauseError::UnknownQueue(queue.to_string()));
    }
    let mut tx = app.db.begin().await?;
    let n = tx
        .execute(
            sqlx::query(
                "INSERT INTO queue_pauses (queue, paused_by, reason) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(queue)
            .bind(by)
            .bind(reason),
        )
        .await?;
    tx.commit().await?;
    sync(app).await?;
    if n > 0 {
        tracing::warn!(
            queue,
            by,
            reason = reason.unwrap_or("-"),
            "queue paused: no process fetches its jobs until it is resumed"
        );
    }
    Ok(n > 0)
}

/// Resumes `queue`. Returns false when it was not paused.
pub async fn resume(app: &AppContext, queue: &str) -> Result<bool, PauseError> {
    if app.registry.get(queue).is_none() {
        return Err(PauseError::UnknownQueue(queue.to_string()));
    }
    let mut tx = app.db.begin().await?;
    let n = tx
        .execute(sqlx::query("DELETE FROM queue_pauses WHERE queue = $1").bind(queue))
        .await?;
    tx.commit().await?;
    sync(app).await?;
    if n > 0 {
        tracing::info!(queue, "queue resumed");
    }
    Ok(n > 0)
}

/// Makes Redis's copy match the record.
pub async fn sync(app: &AppContext) -> Result<BTreeSet<String>, PauseError> {
    let paused: BTreeSet<String> = list(app).await?.into_iter().map(|p| p.queue).collect();
    if app.queue.paused().await? != paused {
        app.queue.set_paused(&paused).await?;
    }
    Ok(paused)
}
