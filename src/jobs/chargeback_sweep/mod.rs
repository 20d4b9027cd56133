//! `chargeback_sweep` (emp:sync-chargebacks, for every account): chargebacks and retrieval
//! requests by import date (`lifecycle::sweeps`), daily by `lifecycle.sweep_schedule` (from
//! each account's checkpoint less the overlap, to today) and on demand; then the
//! chargeback-rate guard looks at each account.

use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    gateway::ReturnKind,
    lifecycle::{guard, ledger, sweeps},
    queue::job::{Job, JobContext, JobError},
};

/// Payload of `chargeback_sweep`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChargebackSweep {
    /// One account (default: every configured account).
    #[serde(default)]
    pub account: Option<String>,
    /// First import date (UTC). Default: the checkpoint less the overlap.
    #[serde(default)]
    pub from: Option<NaiveDate>,
    /// Last import date (inclusive). Default: today.
    #[serde(default)]
    pub to: Option<NaiveDate>,
}

impl Job for ChargebackSweep {
    const NAME: &'static str = "chargeback_sweep";
    const PRODUCER: bool = true;

    fn example() -> Self {
        Self {
            account: None,
            from: None,
            to: None,
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let app = &ctx.app;
        let accounts = match &self.account {
            Some(a) => vec![a.clone()],
            None => app.accounts.names(),
        };
        for account in accounts {
            for kind in [ReturnKind::Chargebacks, ReturnKind::RetrievalRequests] {
                let window = ledger::window_or(app, &account, kind.as_str(), self.from, self.to)
                    .await
                    .map_err(super::billing::to_job_error)?;
                let id = Uuid::new_v5(
                    &Uuid::NAMESPACE_OID,
                    format!(
                        "chargeback_sweep:{}:{account}:{}",
                        ctx.job_id,
                        kind.as_str()
                    )
                    .as_bytes(),
                );
                let row = sweeps::sweep(app, &ctx.fence, id, &account, kind, window, "schedule")
                    .await
                    .map_err(super::emp_refresh::to_job_error)?;
                if row.status == "failed" {
                    return Err(JobError::Permanent(row.error.unwrap_or_default()));
                }
            }
            guard::check(app, &account)
                .await
                .map_err(super::billing::to_job_error)?;
        }
        Ok(())
    }
}
