//! `sweeper`: re-drives pipelines whose next job Redis no longer holds.
//!
//! Enqueued by the runtime's built-in tick every `sweeper.interval` (one job per tick across
//! processes: the tick is its idempotency key). It finds uploads not in a final state whose
//! record has not moved for `sweeper.stale_after` and hands each to
//! [`crate::pipeline::redrive`], which pushes the current stage's jobs again only where
//! Redis lost them. Idempotent: it only pushes jobs, under the stages' own keys. Failures
//! are retried (Postgres and Redis outages snoozed); a missed tick is covered by the next.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::queue::job::{Job, JobContext, JobError};

/// Payload of `sweeper` (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sweeper {}

impl Job for Sweeper {
    const NAME: &'static str = "sweeper";

    fn example() -> Self {
        Self {}
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let app = &ctx.app;
        let s = &app.settings.sweeper;
        let stale = crate::pipeline::stale_uploads(app, s.stale_after, s.batch).await?;
        for id in &stale {
            let stage = crate::pipeline::redrive(app, *id).await?;
            tracing::info!(upload_id = %id, stage = stage.as_str(), "sweeper looked at a stale upload");
        }
        // Billing runs live in Postgres too: one whose jobs Redis lost is driven again (its
        // batches claim with SKIP LOCKED, so a job that was not lost after all does no harm).
        let runs = crate::billing::run::stale(&app.db, s.stale_after, s.batch)
            .await
            .map_err(super::billing::to_job_error)?;
        for r in runs {
            if r.status == "pending" {
                super::billing::restart_selection(app, &r).await?;
            } else {
                super::billing_batch::fan_out(app, r.id).await?;
            }
            app.metrics
                .sweeper_redrives
                .get_or_create(&crate::metrics::QueueLabels {
                    queue: "billing".into(),
                })
                .inc();
            tracing::info!(run_id = %r.id, status = %r.status, "sweeper re-drove a stale billing run");
        }
        // Completed uploads whose keys the linking filter lacks (the completing job failed to
        // add them, or they predate it): until they are in, imports probe every key.
        let filtered = crate::uploads::key_filter::catch_up(&app.db, s.batch)
            .await
            .map_err(|e| JobError::Retryable(e.into()))?;
        if filtered > 0 {
            tracing::info!(
                uploads = filtered,
                "sweeper added uploads' keys to the linking filter"
            );
        }
        // Paused queues: Redis's copy follows Postgres's record (Redis may have lost it).
        crate::queue::pause::sync(app)
            .await
            .map_err(|e| JobError::Retryable(e.into()))?;
        // Webhook deliveries stored but never handed to a job (Redis lost it, or the push
        // after the store failed).
        crate::webhooks::replay::requeue_stale(app, crate::webhooks::REQUEUE_AFTER, s.batch)
            .await
            .map_err(JobError::Retryable)?;
        Ok(())
    }
}
