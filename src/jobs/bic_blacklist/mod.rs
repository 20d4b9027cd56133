//! `bic_blacklist` (bic-blacklist:auto): the BIC auto-blacklist (`lifecycle::bic`), daily by
//! `lifecycle.bic_blacklist_schedule` and on demand.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    lifecycle::bic,
    queue::job::{Job, JobContext, JobError},
};

/// Payload of `bic_blacklist` (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BicBlacklist {}

impl Job for BicBlacklist {
    const NAME: &'static str = "bic_blacklist";
    const PRODUCER: bool = true;

    fn example() -> Self {
        Self {}
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let d = bic::run(&ctx.app)
            .await
            .map_err(super::billing::to_job_error)?;
        let added = d.iter().filter(|d| d.added).count();
        tracing::info!(judged = d.len(), added, "BIC auto-blacklist done");
        Ok(())
    }
}
