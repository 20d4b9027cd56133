//! `test_job`: exercises the runtime on demand — sleeps, fails its first N attempts, fails
//! permanently or panics. Enqueueable only with `worker.allow_test_jobs` (tests, the demo).
//! Idempotent: it has no effects besides its outcome.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::queue::job::{Job, JobContext, JobError};

/// Payload of `test_job`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TestJob {
    /// A label for finding the job in tests and logs.
    pub label: String,
    /// Sleep this many milliseconds before anything else.
    #[serde(default)]
    pub sleep_ms: u64,
    /// Fail (retryably) while the attempt number is at most this.
    #[serde(default)]
    pub fail_times: u32,
    /// Fail permanently (no retry).
    #[serde(default)]
    pub permanent: bool,
    /// Panic on every attempt.
    #[serde(default)]
    pub panic: bool,
}

impl Job for TestJob {
    const NAME: &'static str = "test_job";
    const TEST_ONLY: bool = true;

    fn example() -> Self {
        Self {
            label: "retry-demo".into(),
            sleep_ms: 50,
            fail_times: 2,
            permanent: false,
            panic: false,
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        if self.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        }
        if self.panic {
            panic!("test_job {} panics on request", self.label);
        }
        if self.permanent {
            return Err(JobError::permanent(format!(
                "test_job {} refuses permanently on request",
                self.label
            )));
        }
        if ctx.attempt <= self.fail_times {
            return Err(JobError::Retryable(anyhow::anyhow!(
                "test_job {} fails attempt {} of its first {} on request",
                self.label,
                ctx.attempt,
                self.fail_times
            )));
        }
        Ok(())
    }
}
