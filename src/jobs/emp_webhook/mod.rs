//! `emp_webhook` (ProcessEmpWebhookJob): processes stored Genesis webhook deliveries
//! (`lifecycle::webhook`). The receiver enqueues one job per group of new deliveries; the
//! sweeper enqueues again any delivery left `queued`. A delivery whose gateway lookup could not
//! be made (breaker open, gateway down) stays queued and the job retries with backoff; after
//! `webhooks.max_attempts` it is left `failed` for a replay.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    lifecycle::webhook::{self, Processed},
    queue::job::{Job, JobContext, JobError},
};

/// Payload of `emp_webhook`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmpWebhook {
    /// `webhook_deliveries` ids (at most 100).
    #[schemars(length(min = 1, max = 100))]
    pub delivery_ids: Vec<i64>,
}

impl Job for EmpWebhook {
    const NAME: &'static str = "emp_webhook";

    fn example() -> Self {
        Self {
            delivery_ids: vec![1, 2, 3],
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut later = Vec::new();
        for id in &self.delivery_ids {
            match webhook::process(&ctx.app, &ctx.fence, *id)
                .await
                .map_err(crate::jobs::billing::to_job_error)?
            {
                Processed::Later(why) => later.push(format!("delivery {id}: {why}")),
                Processed::Done | Processed::Unmatched(_) | Processed::Failed(_) => {}
            }
        }
        if later.is_empty() {
            Ok(())
        } else {
            // Processed deliveries are skipped on the retry (no longer queued).
            Err(JobError::Retryable(anyhow::anyhow!(later.join("; "))))
        }
    }
}
