//! `finance_report`: the finance downloads besides the VOP report (`reports::finance`) — a
//! billing run's attempts (`billing_run`), or the chargebacks and retrieval requests of a
//! period (`returns`) — as CSV or XLSX behind signed links, IBANs masked. Idempotent: the
//! report id comes with the payload or is derived from the job id.

use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    context::{AppContext, EnqueueOptions},
    queue::job::{Job, JobContext, JobError},
    reports::{self, Format, Meta, finance},
};

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinanceKind {
    /// Every attempt of one billing run (`run_id`).
    BillingRun,
    /// Chargebacks and retrieval requests recorded within `from`..`to`.
    Returns,
    /// Debtors worth billing again: first debit approved, never charged back, quiet for
    /// `quiet_days`, on no blacklist; one row per IBAN.
    CleanDebtors,
}

/// Payload of `finance_report`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FinanceReport {
    /// `billing_run` or `returns`.
    pub kind: FinanceKind,
    /// Id of the report to write; derived from the job id when absent.
    #[serde(default)]
    pub report_id: Option<Uuid>,
    /// The run (`billing_run`).
    #[serde(default)]
    pub run_id: Option<Uuid>,
    /// First day (`returns`, UTC).
    #[serde(default)]
    pub from: Option<NaiveDate>,
    /// Last day (inclusive).
    #[serde(default)]
    pub to: Option<NaiveDate>,
    /// One gateway account (`returns`; default all).
    #[serde(default)]
    pub account: Option<String>,
    /// `csv` or `xlsx` (default).
    #[serde(default)]
    pub format: Format,
    /// `clean_debtors`: no debit within this many days (default 30).
    #[serde(default)]
    pub quiet_days: Option<u32>,
    /// `clean_debtors`: at most this many rows (default 100000).
    #[serde(default)]
    pub limit: Option<i64>,
    /// `clean_debtors`: only debtors with at least two approved debits.
    #[serde(default)]
    pub strict: bool,
    /// `clean_debtors`: whole IBANs (the list is for billing them) instead of masked ones.
    #[serde(default)]
    pub full_iban: bool,
}

impl Job for FinanceReport {
    const NAME: &'static str = "finance_report";
    const PRODUCER: bool = true;

    fn example() -> Self {
        Self {
            kind: FinanceKind::BillingRun,
            report_id: None,
            run_id: Some(Uuid::from_u128(0x0196f1c2_7d1e_7c3a_9f00_5b2a7e0e4a12)),
            from: None,
            to: None,
            account: None,
            format: Format::Xlsx,
            quiet_days: None,
            limit: None,
            strict: false,
            full_iban: false,
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        generate(&ctx.app, self.id(&ctx.job_id), &self).await
    }

    async fn on_failure(self, ctx: JobContext, error: String) -> anyhow::Result<()> {
        let id = self.id(&ctx.job_id);
        tracing::error!(report_id = %id, error = %error, "finance report failed for good");
        // Finance staff get a sentence; the chain is in the log.
        let msg = if error.starts_with("a ") {
            error
        } else {
            "the report could not be generated because of an internal error; operations have been alerted".to_string()
        };
        let kind = match self.kind {
            FinanceKind::BillingRun => "billing_run",
            FinanceKind::Returns => "returns",
            FinanceKind::CleanDebtors => "clean_debtors",
        };
        let mut tx = ctx.app.db.begin().await?;
        ctx.fence.check(&mut tx).await?;
        tx.execute(
            sqlx::query(
                "INSERT INTO reports (id, kind, format, status, error, finished_at) VALUES ($1, $2, $3, 'failed', $4, now()) \
                 ON CONFLICT (id) DO UPDATE SET status = 'failed', error = $4, finished_at = now() \
                 WHERE reports.status = 'pending'",
            )
            .bind(id)
            .bind(kind)
            .bind(self.format.as_str())
            .bind(&msg),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

impl FinanceReport {
    /// A report of `kind` with every option at its default.
    pub fn new(kind: FinanceKind, format: Format) -> Self {
        Self {
            kind,
            report_id: None,
            run_id: None,
            from: None,
            to: None,
            account: None,
            format,
            quiet_days: None,
            limit: None,
            strict: false,
            full_iban: false,
        }
    }

    /// The report's id: as given, else derived from the job id (stable across retries).
    fn id(&self, job_id: &str) -> Uuid {
        self.report_id.unwrap_or_else(|| {
            Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("finance_report:{job_id}").as_bytes(),
            )
        })
    }
}

async fn generate(app: &AppContext, id: Uuid, job: &FinanceReport) -> Result<(), JobError> {
    if reports::get(&app.db, id)
        .await
        .map_err(|e| JobError::Retryable(e.into()))?
        .is_some_and(|r| r.status == "ready")
    {
        return Ok(());
    }
    let retry = |e: anyhow::Error| JobError::Retryable(e);
    match job.kind {
        FinanceKind::BillingRun => {
            let Some(run) = job.run_id else {
                return Err(JobError::permanent("a billing_run report needs run_id"));
            };
            let (summary, rows) = finance::billing_run(&app.db, run)
                .await
                .map_err(|e| retry(e.into()))?;
            let meta = Meta {
                id,
                kind: "billing_run",
                format: job.format,
                name: format!("billing-run-{run}"),
                date_from: None,
                date_to: None,
            };
            reports::publish(app, meta, summary, &finance::BILLING_COLUMNS, rows)
                .await
                .map_err(retry)
        }
        FinanceKind::Returns => {
            let (Some(from), Some(to)) = (job.from, job.to) else {
                return Err(JobError::permanent("a returns report needs from and to"));
            };
            let (summary, rows) = finance::returns(&app.db, from, to, job.account.as_deref())
                .await
                .map_err(|e| retry(e.into()))?;
            let meta = Meta {
                id,
                kind: "returns",
                format: job.format,
                name: format!(
                    "chargebacks-{}-{from}-{to}",
                    job.account.as_deref().unwrap_or("all")
                ),
                date_from: Some(from),
                date_to: Some(to),
            };
            reports::publish(app, meta, summary, &finance::RETURNS_COLUMNS, rows)
                .await
                .map_err(retry)
        }
        FinanceKind::CleanDebtors => {
            let o = finance::CleanOptions {
                quiet_days: job.quiet_days.unwrap_or(30),
                limit: job.limit.unwrap_or(100_000),
                strict: job.strict,
                account: job.account.clone(),
                full_iban: job.full_iban,
            };
            let (summary, rows) = finance::clean_debtors(&app.db, &o)
                .await
                .map_err(|e| retry(e.into()))?;
            if o.full_iban {
                tracing::warn!(report_id = %id, rows = rows.len(), "clean-debtors export with whole IBANs written");
            }
            let meta = Meta {
                id,
                kind: "clean_debtors",
                format: job.format,
                name: format!(
                    "clean-debtors-{}-{}",
                    job.account.as_deref().unwrap_or("all"),
                    chrono::Utc::now().format("%Y-%m-%d")
                ),
                date_from: None,
                date_to: None,
            };
            reports::publish(app, meta, summary, &finance::CLEAN_COLUMNS, rows)
                .await
                .map_err(retry)
        }
    }
}

/// Enqueues a finance report (once per id) and returns its id.
pub async fn enqueue(app: &AppContext, job: FinanceReport) -> anyhow::Result<Uuid> {
    let id = job.report_id.unwrap_or_else(Uuid::now_v7);
    let job = FinanceReport {
        report_id: Some(id),
        ..job
    };
    app.enqueue(
        &job,
        EnqueueOptions {
            idempotency_key: Some(format!("finance_report:{id}")),
            ..Default::default()
        },
    )
    .await?;
    Ok(id)
}
