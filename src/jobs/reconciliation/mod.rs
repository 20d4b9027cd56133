//! `reconciliation` (ProcessReconciliationJob): every `lifecycle.reconcile_schedule` (once
//! across processes) and on demand (`finworker reconcile [--run R]`), reconciles the open
//! attempts whose own backoff is due, and flags those past their hard age
//! (`lifecycle::reconcile`).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    lifecycle::reconcile,
    queue::job::{Job, JobContext, JobError},
};

/// Payload of `reconciliation`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reconciliation {
    /// Only this billing run's attempts (default: every account's).
    #[serde(default)]
    pub run_id: Option<Uuid>,
}

/// One job reconciles for at most this long; the next tick goes on.
const BUDGET: Duration = Duration::from_secs(240);

impl Job for Reconciliation {
    const NAME: &'static str = "reconciliation";
    const PRODUCER: bool = true;

    fn example() -> Self {
        Self { run_id: None }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let p = reconcile::pass(&ctx.app, &ctx.fence, self.run_id, BUDGET)
            .await
            .map_err(super::billing::to_job_error)?;
        tracing::info!(looked_up = p.looked_up, flagged = p.flagged, open = ?p.open, "reconciliation pass done");
        Ok(())
    }
}
