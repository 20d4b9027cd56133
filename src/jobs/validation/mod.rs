//! `validation` (ProcessValidationJob): structural SEPA checks of an upload's debtors.
//!
//! This job fans out: one `validation_chunk` per chunk of the upload (the same row ranges
//! the import used), so a million debtors are checked by many jobs at once. The chunk that
//! finishes the upload starts verification (`vop`). The checks are in [`rules`].

pub mod rules;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::validation_chunk::ValidationChunk;
use crate::{
    queue::{
        engine::NewJob,
        job::{Job, JobContext, JobError},
    },
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
        let mut tx = app
            .db
            .begin()
            .await
            .map_err(|e| JobError::Retryable(e.into()))?;
        let pending: Vec<(i32,)> = tx
            .fetch_all(
                sqlx::query_as(
                    "SELECT chunk_no FROM upload_chunks WHERE upload_id = $1 AND validated_at IS NULL ORDER BY chunk_no",
                )
                .bind(self.upload_id),
            )
            .await
            .map_err(|e| JobError::Retryable(e.into()))?;
        tx.commit()
            .await
            .map_err(|e| JobError::Retryable(e.into()))?;
        if pending.is_empty() {
            // Every chunk was validated by an earlier run: make sure what follows started.
            return super::validation_chunk::after_validation(app, self.upload_id)
                .await
                .map_err(JobError::Retryable);
        }
        let jobs: Vec<NewJob> = pending
            .iter()
            .map(|(n,)| {
                let job = ValidationChunk {
                    upload_id: self.upload_id,
                    chunk_no: u32::try_from(*n).unwrap_or(0),
                };
                NewJob {
                    idempotency_key: Some(format!("validation_chunk:{}:{n}", self.upload_id)),
                    ..NewJob::new(
                        ValidationChunk::NAME,
                        serde_json::to_string(&job).unwrap_or_default(),
                    )
                }
            })
            .collect();
        app.queue
            .push(&jobs, app.settings.worker.idempotency_ttl)
            .await
            .map_err(|e| JobError::Retryable(e.into()))?;
        tracing::info!(upload_id = %self.upload_id, chunks = jobs.len(), "validation started");
        Ok(())
    }
}
