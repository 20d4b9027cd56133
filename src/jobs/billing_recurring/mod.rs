//! `billing_recurring` (DispatchRecurringBilling): every `billing.recurring_interval`, once
//! across all processes (the tick is the job's idempotency key), starts one run per enabled
//! account whose flywheel/recovery profiles are due (`next_bill_at` passed), under the same
//! rules as any run. An account whose previous recurring run is still under way gets none.
//! The tick also reconciles debits of finished runs whose reconcile is due (pending_async
//! debits settle days later).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    billing::{debit, run},
    queue::job::{Job, JobContext, JobError},
};

/// Payload of `billing_recurring` (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BillingRecurring {}

impl Job for BillingRecurring {
    const NAME: &'static str = "billing_recurring";

    fn example() -> Self {
        Self {}
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let app = &ctx.app;
        let every = app.settings.billing.recurring_interval.as_secs().max(1);
        let tick = i64::try_from(chrono::Utc::now().timestamp().unsigned_abs() / every * every)
            .unwrap_or(0);
        for name in app.accounts.names() {
            let mut tx = app
                .db
                .begin()
                .await
                .map_err(|e| JobError::Retryable(e.into()))?;
            let (due, open): (bool, Option<Uuid>) = tx
                .fetch_one(
                    sqlx::query_as(
                        "SELECT EXISTS (SELECT 1 FROM debtor_profiles WHERE active AND billing_model <> 'legacy' \
                           AND account = $1 AND next_bill_at <= now()), \
                         (SELECT id FROM billing_runs WHERE account = $1 AND source = 'recurring' \
                           AND status IN ('pending', 'running', 'paused') ORDER BY created_at LIMIT 1)",
                    )
                    .bind(&name),
                )
                .await
                .map_err(|e| JobError::Retryable(e.into()))?;
            tx.commit()
                .await
                .map_err(|e| JobError::Retryable(e.into()))?;
            if let Some(id) = open {
                // Still under way; one whose selection was cut short goes on here (a no-op
                // for a run already selected).
                super::billing::start(app, &ctx, id).await?;
                continue;
            }
            if !due {
                continue;
            }
            let id = Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("finworker:recurring:{tick}:{name}").as_bytes(),
            );
            let new = run::NewRun {
                upload_id: None,
                account: name.clone(),
                model: "recurring".into(),
                source: "recurring",
                dry_run: false,
                skip_chargeback_check: false,
                cap_minor: None,
                recurring_tick: Some(tick),
            };
            run::create(app, id, &new)
                .await
                .map_err(super::billing::to_job_error)?;
            tracing::info!(run_id = %id, account = %name, tick, "recurring billing run started");
            super::billing::start(app, &ctx, id).await?;
        }
        debit::reconcile_due(app, &ctx.fence, None, 500)
            .await
            .map_err(super::billing::to_job_error)?;
        Ok(())
    }
}
