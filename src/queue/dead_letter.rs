//! The dead-letter store (Postgres `dead_jobs`): jobs that failed permanently or spent their
//! attempts, with their last error. Listed, re-queued and purged by `finworker jobs …`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::{DbError, Tx};

/// One dead job.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadJob {
    /// Job id.
    pub job_id: String,
    /// Job type (= queue).
    pub job_type: String,
    /// Payload text as it was enqueued.
    pub payload: String,
    /// Attempts made.
    pub attempts: i32,
    /// Last error.
    pub last_error: String,
    /// When it was first enqueued.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
}

/// Stores (or refreshes) dead jobs in one statement.
pub async fn insert(tx: &mut Tx, jobs: &[DeadJob]) -> Result<u64, DbError> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
    let types: Vec<&str> = jobs.iter().map(|j| j.job_type.as_str()).collect();
    let payloads: Vec<&str> = jobs.iter().map(|j| j.payload.as_str()).collect();
    let attempts: Vec<i32> = jobs.iter().map(|j| j.attempts).collect();
    let errors: Vec<&str> = jobs.iter().map(|j| j.last_error.as_str()).collect();
    let enqueued: Vec<Option<DateTime<Utc>>> = jobs.iter().map(|j| j.enqueued_at).collect();
    let failed: Vec<DateTime<Utc>> = jobs.iter().map(|j| j.failed_at).collect();
    tx.execute(
        sqlx::query(
            "INSERT INTO dead_jobs (job_id, job_type, payload, attempts, last_error, enqueued_at, failed_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::timestamptz[], $7::timestamptz[]) \
             ON CONFLICT (job_id) DO UPDATE SET attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error, \
             failed_at = EXCLUDED.failed_at, payload = EXCLUDED.payload",
        )
        .bind(ids)
        .bind(types)
        .bind(payloads)
        .bind(attempts)
        .bind(errors)
        .bind(enqueued)
        .bind(failed),
    )
    .await
}

/// Dead jobs, newest first, optionally of one queue.
pub async fn list(tx: &mut Tx, queue: Option<&str>, limit: i64) -> Result<Vec<DeadJob>, DbError> {
    tx.fetch_all(
        sqlx::query_as(
            "SELECT job_id, job_type, payload, attempts, last_error, enqueued_at, failed_at FROM dead_jobs \
             WHERE ($1::text IS NULL OR job_type = $1) ORDER BY failed_at DESC, job_id LIMIT $2",
        )
        .bind(queue)
        .bind(limit),
    )
    .await
}

/// One dead job, locked for the rest of the transaction (retry takes it out).
pub async fn take(tx: &mut Tx, job_id: &str) -> Result<Option<DeadJob>, DbError> {
    tx.fetch_optional(
        sqlx::query_as(
            "DELETE FROM dead_jobs WHERE job_id = $1 \
             RETURNING job_id, job_type, payload, attempts, last_error, enqueued_at, failed_at",
        )
        .bind(job_id),
    )
    .await
}

/// Deletes dead jobs older than `before` (all if `None`), optionally of one queue.
pub async fn purge(
    tx: &mut Tx,
    queue: Option<&str>,
    before: Option<DateTime<Utc>>,
) -> Result<u64, DbError> {
    tx.execute(
        sqlx::query(
            "DELETE FROM dead_jobs WHERE ($1::text IS NULL OR job_type = $1) \
             AND ($2::timestamptz IS NULL OR failed_at < $2)",
        )
        .bind(queue)
        .bind(before),
    )
    .await
}

/// Dead-letter size per queue.
pub async fn counts(tx: &mut Tx) -> Result<Vec<(String, i64)>, DbError> {
    tx.fetch_all(sqlx::query_as(
        "SELECT job_type, count(*) FROM dead_jobs GROUP BY job_type ORDER BY job_type",
    ))
    .await
}
