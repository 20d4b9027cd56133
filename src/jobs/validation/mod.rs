//! `validation` (ProcessValidationJob): structural SEPA checks of an upload's debtors.
//!
//! This job fans out: one `validation_chunk` per chunk of the upload (the same row ranges
//! the import used), so a million debtors are checked by many jobs at once. The chunk that
//! finishes the upload starts verification (`vop`). The checks are in [`crate::validation`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    queue::job::{Job, JobContext, JobError},
    uploads,
};

/// Payload of `validation`: the upload whose imported debtors to check. Enqueued by the
/// import when an upload completes; API nodes may enqueue it again (it is idempotent).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Validation {
    /// The upload.
    pub upload_id: Uuid,
}

impl Job for Validation {
    const NAME: &'static str = "validation";

    fn example() -> Self {
        Validation {
            upload_id: Uuid::from_u128(0x0196f1c2_7d1e_7c3a_9f00_5b2a7e0e4a11),
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let app = &ctx.app;
        let Some(rec) = uploads::get(&app.db, self.upload_id)
            .await
            .map_err(|e| JobError::Retryable(e.into()))?
        else {
            return Err(JobError::permanent(format!(
                "upload {} does not exist",
                self.upload_id
            )));
        };
        if rec.status != "completed" {
            return Err(JobError::permanent(format!(
                "upload {} is {}, not completed: nothing to validate",
                self.upload_id, rec.status
            )));
        }
        let chunks = crate::pipeline::start_chunk_stage(
            app,
            self.upload_id,
            crate::pipeline::Stage::Validation,
        )
        .await
        .map_err(JobError::Retryable)?;
        if chunks == 0 {
            // Every chunk was validated by an earlier run: make sure what follows started.
            return super::validation_chunk::after_validation(app, self.upload_id)
                .await
                .map_err(JobError::Retryable);
        }
        tracing::info!(upload_id = %self.upload_id, chunks, "validation started");
        Ok(())
    }
}
