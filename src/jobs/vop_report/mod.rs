//! `vop_report` (GenerateVopReportJob): the VOP compliance report of an upload or a date
//! range, as CSV or XLSX, stored in object storage and tracked in `reports`.
//!
//! Idempotent: the report id comes with the payload (or is derived from the job id), the
//! row is created once, and a ready report is not written again.

use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    context::AppContext,
    queue::{
        engine::NewJob,
        job::{Job, JobContext, JobError},
    },
    reports::{self, Format, Scope},
};

/// Payload of `vop_report`. Give `upload_id`, or a `from`/`to` range of check dates.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VopReport {
    /// Id of the report to write; derived from the job id when absent.
    #[serde(default)]
    pub report_id: Option<Uuid>,
    /// Report on this upload.
    #[serde(default)]
    pub upload_id: Option<Uuid>,
    /// First day of checks to include (UTC).
    #[serde(default)]
    pub from: Option<NaiveDate>,
    /// Last day of checks to include (UTC, inclusive).
    #[serde(default)]
    pub to: Option<NaiveDate>,
    /// `csv` or `xlsx` (default).
    #[serde(default)]
    pub format: Format,
}

impl Job for VopReport {
    const NAME: &'static str = "vop_report";
    const PRODUCER: bool = true;

    fn example() -> Self {
        VopReport {
            report_id: None,
            upload_id: Some(Uuid::from_u128(0x0196f1c2_7d1e_7c3a_9f00_5b2a7e0e4a11)),
            from: None,
            to: None,
            format: Format::Xlsx,
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        if self.upload_id.is_none() && self.from.is_none() && self.to.is_none() {
            return Err(JobError::permanent(
                "give upload_id or a from/to date range",
            ));
        }
        let id = self.id(&ctx.job_id);
        generate(&ctx.app, id, &self)
            .await
            .map_err(JobError::Retryable)
    }

    async fn on_failure(self, ctx: JobContext, error: String) -> anyhow::Result<()> {
        let id = self.id(&ctx.job_id);
        tracing::error!(report_id = %id, error = %error, "vop report failed for good");
        let msg = if !error.starts_with("gave up") {
            error
        } else {
            "the report could not be generated because of an internal error; operations have been alerted".to_string()
        };
        mark_failed(&ctx.app, &ctx.fence, id, &msg).await
    }
}

impl VopReport {
    fn id(&self, job_id: &str) -> Uuid {
        self.report_id.unwrap_or_else(|| {
            Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("vop_report:{job_id}").as_bytes(),
            )
        })
    }
}

/// The id of an upload's automatic report in a format.
pub fn upload_report_id(upload_id: Uuid, format: Format) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("vop_report:{upload_id}:{}", format.as_str()).as_bytes(),
    )
}

/// Enqueues a report job with a known id (once per id: idempotency key).
pub async fn enqueue(app: &AppContext, job: VopReport) -> anyhow::Result<Uuid> {
    let id = job.report_id.unwrap_or_else(Uuid::now_v7);
    let job = VopReport {
        report_id: Some(id),
        ..job
    };
    let nj = NewJob {
        idempotency_key: Some(format!("vop_report:{id}")),
        ..NewJob::new(VopReport::NAME, serde_json::to_string(&job)?)
    };
    app.queue
        .push(
            std::slice::from_ref(&nj),
            app.settings.worker.idempotency_ttl,
        )
        .await?;
    Ok(id)
}

/// Enqueues the report of an upload (once: its id is derived from the upload and format).
pub async fn enqueue_for_upload(
    app: &AppContext,
    upload_id: Uuid,
    format: Format,
) -> anyhow::Result<Uuid> {
    enqueue(
        app,
        VopReport {
            report_id: Some(upload_report_id(upload_id, format)),
            upload_id: Some(upload_id),
            from: None,
            to: None,
            format,
        },
    )
    .await
}

async fn generate(app: &AppContext, id: Uuid, job: &VopReport) -> anyhow::Result<()> {
    let mut tx = app.db.begin().await?;
    tx.execute(
        sqlx::query(
            "INSERT INTO reports (id, kind, format, upload_id, date_from, date_to) VALUES ($1, 'vop', $2, $3, $4, $5) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(job.format.as_str())
        .bind(job.upload_id)
        .bind(job.from)
        .bind(job.to),
    )
    .await?;
    tx.commit().await?;
    if reports::get(&app.db, id)
        .await?
        .is_some_and(|r| r.status == "ready")
    {
        return Ok(());
    }
    let scope = Scope {
        upload_id: job.upload_id,
        from: job.from,
        to: job.to,
    };
    let (summary, rows) = reports::vop_content(&app.db, &scope).await?;
    let n = rows.len();
    let file_name = match job.upload_id {
        Some(u) => format!("vop-report-{u}.{}", job.format.as_str()),
        None => format!(
            "vop-report-{}-{}.{}",
            job.from
                .map(|d| d.to_string())
                .unwrap_or_else(|| "start".into()),
            job.to
                .map(|d| d.to_string())
                .unwrap_or_else(|| "today".into()),
            job.format.as_str()
        ),
    };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(&file_name);
    let format = job.format;
    let p = path.clone();
    tokio::task::spawn_blocking(move || match format {
        Format::Csv => reports::write_csv(&p, &summary, &reports::VOP_COLUMNS, &rows),
        Format::Xlsx => reports::write_xlsx(&p, &summary, &reports::VOP_COLUMNS, &rows),
    })
    .await??;
    let key = format!("reports/{id}/{file_name}");
    app.storage.put_file(&key, &path).await?;
    let mut tx = app.db.begin().await?;
    tx.execute(
        sqlx::query(
            "UPDATE reports SET status = 'ready', object_key = $2, file_name = $3, rows = $4, error = NULL, \
             finished_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(&key)
        .bind(&file_name)
        .bind(i64::try_from(n)?),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(report_id = %id, rows = n, "vop report ready");
    Ok(())
}

async fn mark_failed(
    app: &AppContext,
    fence: &crate::queue::fence::Fence,
    id: Uuid,
    msg: &str,
) -> anyhow::Result<()> {
    let mut tx = app.db.begin().await?;
    fence.check(&mut tx).await?;
    tx.execute(
        sqlx::query(
            "UPDATE reports SET status = 'failed', error = $2, finished_at = now() WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(msg),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
