//! `billing` (ProcessBillingJob): starts a billing run — one upload billed through one gateway
//! account — selects its debtors into items (excluded ones stored with their reason), and fans
//! out into `billing_batch` jobs that any number of worker processes share. Idempotent: a
//! retry continues the same run (its id comes from the job id, or the payload).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    billing::{BillingError, run},
    context::{AppContext, EnqueueOptions},
    queue::job::{Job, JobContext, JobError},
};

/// Who asked for a run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RequestedBy {
    /// An API node.
    #[default]
    Api,
    /// `finworker billing start`.
    Cli,
}

/// Payload of `billing`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Billing {
    /// The upload to bill (imported and validated).
    pub upload_id: Uuid,
    /// The gateway account (`[gateway.accounts.<name>]`).
    pub account: String,
    /// Billing model of the run (`legacy`, `flywheel`, `recovery`, …); default `legacy`.
    #[serde(default = "legacy")]
    pub model: String,
    /// Report what would be billed and why everything else is excluded; debit nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Bill IBANs that had a chargeback too.
    #[serde(default)]
    pub skip_chargeback_check: bool,
    /// Most the run may debit in total, minor units.
    #[serde(default)]
    pub cap_minor: Option<i64>,
    /// The run's id; default: derived from the job id.
    #[serde(default)]
    pub run_id: Option<Uuid>,
    /// Who asked.
    #[serde(default)]
    pub requested_by: RequestedBy,
}

fn legacy() -> String {
    "legacy".into()
}

impl Job for Billing {
    const NAME: &'static str = "billing";
    const PRODUCER: bool = true;

    fn example() -> Self {
        Billing {
            upload_id: Uuid::from_u128(0x0196f1c2_7d1e_7c3a_9f00_5b2a7e0e4a11),
            account: "main".into(),
            model: "legacy".into(),
            dry_run: false,
            skip_chargeback_check: false,
            cap_minor: None,
            run_id: None,
            requested_by: RequestedBy::Api,
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let app = &ctx.app;
        let id = self.run_id.unwrap_or_else(|| run_id_for_job(&ctx.job_id));
        let new = run::NewRun {
            upload_id: Some(self.upload_id),
            account: self.account.clone(),
            model: self.model.clone(),
            source: match self.requested_by {
                RequestedBy::Api => "api",
                RequestedBy::Cli => "cli",
            },
            dry_run: self.dry_run,
            skip_chargeback_check: self.skip_chargeback_check,
            cap_minor: self.cap_minor,
            recurring_tick: None,
        };
        run::create(app, id, &new).await.map_err(to_job_error)?;
        start(app, &ctx, id).await
    }
}

/// A run's id when the payload names none: stable across retries of the job.
pub fn run_id_for_job(job_id: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("finworker:billing:{job_id}").as_bytes(),
    )
}

/// Selects a created run's items and starts its batches.
pub async fn start(app: &AppContext, ctx: &JobContext, id: Uuid) -> Result<(), JobError> {
    match run::get(&app.db, id).await.map_err(to_job_error)? {
        Some(r) if r.status == "pending" => {}
        // Selected already: its batches run (or the sweeper re-drives them).
        Some(_) => return Ok(()),
        None => return Err(JobError::permanent(format!("no billing run {id}"))),
    }
    let r = run::select(app, &ctx.fence, id)
        .await
        .map_err(to_job_error)?;
    tracing::info!(run_id = %id, status = %r.status, items = r.items_total, dry_run = r.dry_run, "billing run selected");
    if r.status == "running" {
        super::billing_batch::fan_out(app, id)
            .await
            .map_err(JobError::Retryable)?;
    }
    Ok(())
}

/// Refusals are permanent; the rest is retried (outages snoozed by the runtime).
pub fn to_job_error(e: BillingError) -> JobError {
    match e {
        BillingError::Refused(m) => JobError::Permanent(m),
        BillingError::NoRun(id) => JobError::Permanent(format!("no billing run {id}")),
        BillingError::Fence(f) => f.into(),
        BillingError::Db(d) => d.into(),
    }
}

/// Enqueues a `billing` job (CLI and tests), returning the run's id.
pub async fn enqueue(app: &AppContext, mut job: Billing) -> anyhow::Result<Uuid> {
    let id = *job.run_id.get_or_insert_with(Uuid::now_v7);
    app.enqueue(
        &job,
        EnqueueOptions {
            idempotency_key: Some(format!("billing:{id}")),
            ..Default::default()
        },
    )
    .await?;
    Ok(id)
}

/// Re-enqueues the `billing` job of a run whose selection has not finished (a resumed or
/// re-driven run): the job continues where the selection stopped.
pub async fn restart_selection(
    app: &AppContext,
    r: &crate::billing::run::RunRow,
) -> anyhow::Result<()> {
    let Some(upload_id) = r.upload_id else {
        return Ok(());
    };
    let job = Billing {
        upload_id,
        account: r.account.clone(),
        model: r.model.clone(),
        dry_run: r.dry_run,
        skip_chargeback_check: r.skip_chargeback_check,
        cap_minor: r.cap_minor,
        run_id: Some(r.id),
        requested_by: if r.source == "cli" {
            RequestedBy::Cli
        } else {
            RequestedBy::Api
        },
    };
    app.enqueue(
        &job,
        EnqueueOptions {
            idempotency_key: Some(format!("billing:{}:{}", r.id, uuid::Uuid::now_v7())),
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}
