//! `retention`: one pass of [`crate::retention`], daily by `retention.schedule` (once across
//! processes: the cron tick is its idempotency key) and on demand (`finworker prune`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::queue::job::{Job, JobContext, JobError};

/// Payload of `retention` (none: the ages are configuration).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {}

impl Job for Retention {
    const NAME: &'static str = "retention";
    const PRODUCER: bool = true;

    fn example() -> Self {
        Self {}
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let p = crate::retention::run(&ctx.app)
            .await
            .map_err(|e| JobError::Retryable(e.into()))?;
        tracing::info!(
            job_runs = p.job_runs,
            reports = p.reports,
            staged_uploads = p.staged_uploads,
            staged_objects = p.staged_objects,
            deliveries_deleted = p.deliveries_deleted,
            deliveries_stripped = p.deliveries_stripped,
            "retention pass done"
        );
        Ok(())
    }
}
