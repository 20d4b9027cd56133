//! The contract every job module implements.

use std::future::Future;

use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::sync::CancellationToken;

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
    /// A representative payload, published as `jobs/<NAME>.example.json`.
    fn example() -> Self;
    /// Runs one attempt. Must be idempotent: an attempt can be repeated after a crash.
    fn run(self, ctx: JobContext) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// What a job attempt returns on failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Retrying cannot help (bad payload, business refusal): dead-lettered at once.
    #[error("permanent: {0}")]
    Permanent(String),
    /// Worth another attempt (timeout, 5xx, lock): retried with backoff until max attempts.
    #[error(transparent)]
    Retryable(#[from] anyhow::Error),
}

impl JobError {
    /// A permanent error from anything displayable.
    pub fn permanent(msg: impl std::fmt::Display) -> Self {
        Self::Permanent(msg.to_string())
    }
}

/// What a running attempt knows about itself and the application.
#[derive(Clone, Debug)]
pub struct JobContext {
    /// The shared application context (database, queue, settings, metrics).
    pub app: AppContext,
    /// This job's id.
    pub job_id: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Cancelled when the process starts draining: long jobs check it between chunks.
    pub shutdown: CancellationToken,
}
