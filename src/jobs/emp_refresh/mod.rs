//! `emp_refresh` (EmpRefreshByDateJob): ledger sync by date (`lifecycle::ledger`) of one
//! account or every account. Daily by `lifecycle.ledger_sync_schedule` (from each account's
//! checkpoint less the overlap, to today), and on demand (`finworker ledger sync`, or an API
//! node with a window). One `ledger_syncs` row per account and window; a retry of the job
//! goes on under the same ids.

use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    context::AppContext,
    lifecycle::ledger::{self, SyncError},
    queue::{
        fence::Fence,
        job::{Job, JobContext, JobError},
    },
    reports::Format,
};

/// Payload of `emp_refresh`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmpRefresh {
    /// One account (default: every configured account).
    #[serde(default)]
    pub account: Option<String>,
    /// First day (UTC); with `to`. Default: the account's checkpoint less the overlap.
    #[serde(default)]
    pub from: Option<NaiveDate>,
    /// Last day (inclusive). Default: today.
    #[serde(default)]
    pub to: Option<NaiveDate>,
    /// Report format: `csv` or `xlsx` (default).
    #[serde(default)]
    pub format: Format,
}

impl Job for EmpRefresh {
    const NAME: &'static str = "emp_refresh";
    const PRODUCER: bool = true;

    fn example() -> Self {
        Self {
            account: Some("main".into()),
            from: NaiveDate::from_ymd_opt(2026, 11, 1),
            to: NaiveDate::from_ymd_opt(2026, 11, 30),
            format: Format::Xlsx,
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let accounts = match &self.account {
            Some(a) => vec![a.clone()],
            None => ctx.app.accounts.names(),
        };
        for account in accounts {
            let id = sync_id(&ctx.job_id, &account);
            let row = sync_account(&ctx.app, &ctx.fence, id, &account, &self, "schedule").await?;
            if row.status == "failed" {
                return Err(JobError::Permanent(row.error.unwrap_or_default()));
            }
        }
        Ok(())
    }
}

/// The sync id of a job's account: stable across the job's retries.
fn sync_id(job_id: &str, account: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("emp_refresh:{job_id}:{account}").as_bytes(),
    )
}

/// Syncs one account into sync `id` (its window from the payload or the checkpoint).
pub async fn sync_account(
    app: &AppContext,
    fence: &Fence,
    id: Uuid,
    account: &str,
    p: &EmpRefresh,
    requested_by: &str,
) -> Result<ledger::SyncRow, JobError> {
    let (from, to) = ledger::window_or(app, account, "ledger", p.from, p.to)
        .await
        .map_err(super::billing::to_job_error)?;
    if from > to {
        return Err(JobError::Permanent(format!("from {from} is after to {to}")));
    }
    ledger::sync(app, fence, id, account, from, to, requested_by, p.format)
        .await
        .map_err(to_job_error)
}

/// Gateway trouble is retried (with backoff); the rest as billing's.
pub fn to_job_error(e: SyncError) -> JobError {
    match e {
        SyncError::Gateway(g) => JobError::Retryable(anyhow::anyhow!(g.to_string())),
        SyncError::Billing(b) => super::billing::to_job_error(b),
    }
}
