//! The contract every job module implements.

use std::{future::Future, time::Duration};

use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::sync::CancellationToken;

use super::fence::{Fence, FenceError};
use crate::context::AppContext;

/// A background job: a payload type plus the code that runs it.
///
/// A new job type is one module implementing this trait plus one line in
/// `jobs::registry()`. Its queue is named after it, and its concurrency, attempts,
/// timeout and backoff come from `[queues.<NAME>]` in the configuration.
pub trait Job: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// Job type and queue name; equals the module name.
    const NAME: &'static str;
    /// Test-only job types are refused unless `worker.allow_test_jobs` is on.
    const TEST_ONLY: bool = false;
    /// Producers (API nodes, `finworker enqueue`) may enqueue this type. Internal stages
    /// (chunks, continuations) are enqueued by finworker itself only.
    const PRODUCER: bool = false;
    /// A representative payload, published as `jobs/<NAME>.example.json`.
    fn example() -> Self;
    /// Runs one attempt. Must be idempotent: an attempt can be repeated after a crash.
    fn run(self, ctx: JobContext) -> impl Future<Output = Result<(), JobError>> + Send;
    /// Called by the runtime once the job has failed for good (permanent error, attempts
    /// spent, timeouts, panics, a poison job): puts the records the job drives into a final
    /// state. Runs under the failed attempt's fence. An error here is retried later (the job
    /// is snoozed), so the records never stay half-done.
    fn on_failure(
        self,
        ctx: JobContext,
        error: String,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        let _ = (ctx, error);
        async { Ok(()) }
    }
}

/// What a job attempt returns on failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Retrying cannot help (bad payload, business refusal): dead-lettered at once.
    #[error("permanent: {0}")]
    Permanent(String),
    /// Worth another attempt (timeout, 5xx, lock): retried with backoff until max attempts.
    /// Outages of Postgres or Redis found in the chain are snoozed instead (no attempt spent).
    #[error(transparent)]
    Retryable(#[from] anyhow::Error),
    /// Run again after `delay` without spending an attempt (a deferral, a provider's
    /// breaker, an infrastructure outage).
    #[error("snoozed for {}: {reason}", humantime::format_duration(*.delay))]
    Snooze {
        /// How long to wait.
        delay: Duration,
        /// Why, for the job's record.
        reason: String,
    },
    /// The attempt lost its lease: nothing it did may be recorded.
    #[error(transparent)]
    Stale(FenceError),
}

impl JobError {
    /// A permanent error from anything displayable.
    pub fn permanent(msg: impl std::fmt::Display) -> Self {
        Self::Permanent(msg.to_string())
    }

    /// Reschedules without spending an attempt.
    pub fn snooze(delay: Duration, reason: impl std::fmt::Display) -> Self {
        Self::Snooze {
            delay,
            reason: reason.to_string(),
        }
    }
}

impl From<FenceError> for JobError {
    fn from(e: FenceError) -> Self {
        match e {
            FenceError::Stale { .. } => Self::Stale(e),
            FenceError::Db(db) => Self::Retryable(db.into()),
        }
    }
}

impl From<crate::db::DbError> for JobError {
    fn from(e: crate::db::DbError) -> Self {
        Self::Retryable(e.into())
    }
}

/// What a running attempt knows about itself and the application.
#[derive(Clone, Debug)]
pub struct JobContext {
    /// The shared application context (database, queue, settings, metrics).
    pub app: AppContext,
    /// This job's id.
    pub job_id: String,
    /// This attempt's number, from 1 (every execution gets a new one, crashes included).
    pub attempt: u32,
    /// True when a failure of this attempt would dead-letter the job (decided by the
    /// runtime from failed attempts and the job's max attempts; jobs never recompute it).
    pub last_attempt: bool,
    /// This attempt's fencing token: check it inside every transaction that writes
    /// business state (`ctx.fence.check(&mut tx)`), so a stale attempt cannot commit.
    pub fence: Fence,
    /// Cancelled when the process starts draining: long jobs check it between chunks.
    pub shutdown: CancellationToken,
}
