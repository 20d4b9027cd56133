//! `test_job`: exercises the runtime on demand — sleeps, fails its first N attempts, fails
//! permanently or panics. Enqueueable only with `worker.allow_test_jobs` (tests, the demo).
//! Idempotent: its only effect (with `effect`) is one fenced row per attempt in
//! `test_job_effects`, so tests can count how many attempts committed.

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
    /// After sleeping, commit one row to `test_job_effects` under this attempt's fence.
    #[serde(default)]
    pub effect: bool,
    /// Snooze (reschedule without spending an attempt) while the attempt number is at most
    /// this, for this many milliseconds each time.
    #[serde(default)]
    pub snooze_times: u32,
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
            effect: false,
            snooze_times: 0,
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
        if ctx.attempt <= self.snooze_times {
            return Err(JobError::snooze(
                Duration::from_millis(100),
                format!(
                    "test_job {} snoozes attempt {} on request",
                    self.label, ctx.attempt
                ),
            ));
        }
        if ctx.attempt <= self.fail_times {
            return Err(JobError::Retryable(anyhow::anyhow!(
                "test_job {} fails attempt {} of its first {} on request",
                self.label,
                ctx.attempt,
                self.fail_times
            )));
        }
        if self.effect {
            let mut tx = ctx.app.db.begin().await?;
            tx.execute(
                sqlx::query(
                    "INSERT INTO test_job_effects (job_id, attempt, worker, label) VALUES ($1, $2, $3, $4)",
                )
                .bind(&ctx.job_id)
                .bind(ctx.attempt as i32)
                .bind(format!("pid {}", std::process::id()))
                .bind(&self.label),
            )
            .await?;
            ctx.fence.check(&mut tx).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Records that the runtime called it: a row with attempt 0 and the error as label.
    async fn on_failure(self, ctx: JobContext, error: String) -> anyhow::Result<()> {
        let mut tx = ctx.app.db.begin().await?;
        ctx.fence.check(&mut tx).await?;
        tx.execute(
            sqlx::query(
                "INSERT INTO test_job_effects (job_id, attempt, worker, label) VALUES ($1, 0, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&ctx.job_id)
            .bind(format!("pid {}", std::process::id()))
            .bind(format!("failure hook: {error}")),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
