//! `job_runs`: the authoritative, SQL-queryable record of every execution. Written in
//! batches (one multi-row statement per batch) so auditing costs little per job.

use chrono::{DateTime, Utc};

use crate::db::{DbError, Tx};

/// Status of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Started, not finished.
    Running,
    /// Finished without error.
    Succeeded,
    /// Failed; another attempt follows.
    Failed,
    /// Failed for good; the job is in `dead_jobs`.
    Dead,
    /// The process died or gave up during the attempt.
    Interrupted,
    /// Finished after its lease had been taken over: its writes were refused by fencing
    /// (or it had none); the job runs (or ran) again under a later attempt.
    Stale,
    /// Rescheduled without spending an attempt (a deferral or an infrastructure outage).
    Snoozed,
}

impl RunStatus {
    /// Database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
            Self::Interrupted => "interrupted",
            Self::Stale => "stale",
            Self::Snoozed => "snoozed",
        }
    }
}

/// One row of `job_runs`.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// Job id.
    pub job_id: String,
    /// Attempt number from 1.
    pub attempt: i32,
    /// Job type.
    pub job_type: String,
    /// Worker process name.
    pub worker: String,
    /// Outcome.
    pub status: RunStatus,
    /// Error text of a failed attempt.
    pub error: Option<String>,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End, for finished attempts.
    pub finished_at: Option<DateTime<Utc>>,
}

/// How a batch treats rows that already exist for the same (job, attempt).
#[derive(Debug, Clone, Copy)]
pub enum Conflict {
    /// A `running` row: never overwrites anything.
    KeepExisting,
    /// A finished attempt: completes its `running` row. If recovery already marked it
    /// `interrupted` (its lease was taken over), the row becomes `stale` and keeps what the
    /// attempt reported; a finished row is never overwritten.
    Finish,
    /// A recovered orphan: only overwrites a `running` row (a finished row wins).
    OverwriteRunning,
}

/// Writes a batch of rows in one statement.
pub async fn write_runs(
    tx: &mut Tx,
    rows: &[RunRecord],
    conflict: Conflict,
) -> Result<u64, DbError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let on_conflict = match conflict {
        Conflict::KeepExisting => "DO NOTHING",
        Conflict::Finish => {
            "DO UPDATE SET \
               status = CASE WHEN job_runs.status = 'interrupted' THEN 'stale' ELSE EXCLUDED.status END, \
               error = CASE WHEN job_runs.status = 'interrupted' AND EXCLUDED.status <> 'stale' \
                 THEN 'finished as ' || EXCLUDED.status || ' after its lease was taken over; the job runs again' \
                      || coalesce(': ' || EXCLUDED.error, '') \
                 ELSE EXCLUDED.error END, \
               worker = EXCLUDED.worker, finished_at = EXCLUDED.finished_at, duration_ms = EXCLUDED.duration_ms \
             WHERE job_runs.status IN ('running', 'interrupted')"
        }
        Conflict::OverwriteRunning => {
            "DO UPDATE SET status = EXCLUDED.status, error = EXCLUDED.error, \
             finished_at = EXCLUDED.finished_at, \
             duration_ms = (EXTRACT(EPOCH FROM EXCLUDED.finished_at - job_runs.started_at) * 1000)::bigint \
             WHERE job_runs.status = 'running'"
        }
    };
    let sql = format!(
        "INSERT INTO job_runs (job_id, attempt, job_type, worker, status, error, started_at, finished_at, duration_ms) \
         SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::text[], \
                              $7::timestamptz[], $8::timestamptz[], $9::int8[]) \
         ON CONFLICT (job_id, attempt) {on_conflict}"
    );
    let mut ids = Vec::with_capacity(rows.len());
    let mut attempts = Vec::with_capacity(rows.len());
    let mut types = Vec::with_capacity(rows.len());
    let mut workers = Vec::with_capacity(rows.len());
    let mut statuses = Vec::with_capacity(rows.len());
    let mut errors = Vec::with_capacity(rows.len());
    let mut starts = Vec::with_capacity(rows.len());
    let mut ends = Vec::with_capacity(rows.len());
    let mut durations = Vec::with_capacity(rows.len());
    for r in rows {
        ids.push(r.job_id.as_str());
        attempts.push(r.attempt.max(1));
        types.push(r.job_type.as_str());
        workers.push(r.worker.as_str());
        statuses.push(r.status.as_str());
        errors.push(r.error.as_deref());
        starts.push(r.started_at);
        ends.push(r.finished_at);
        durations.push(r.finished_at.map(|f| (f - r.started_at).num_milliseconds()));
    }
    tx.execute(
        sqlx::query(&sql)
            .bind(ids)
            .bind(attempts)
            .bind(types)
            .bind(workers)
            .bind(statuses)
            .bind(errors)
            .bind(starts)
            .bind(ends)
            .bind(durations),
    )
    .await
}
