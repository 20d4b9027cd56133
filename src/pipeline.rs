//! The upload pipeline's stages in one place, and the sweeper's way back into them.
//!
//! Postgres is the record and Redis only the transport: if Redis forgets a job (a restart
//! without AOF, `FLUSHALL`, an eviction, a failover), the pipeline's state in Postgres still
//! says what is left to do. [`redrive`] reads that state for one upload and pushes the jobs of
//! its current stage again, under the same idempotency keys the stages use, in *re-drive*
//! mode: a key whose job still exists in Redis is left alone (nothing runs twice), a key whose
//! job is gone is taken over by the new push. Every stage is idempotent on Postgres state, so
//! a re-driven job that finds its work done only starts what follows.
//!
//! upload (split) → upload_chunk × n → validation_chunk × n → vop × n → vop_report

use uuid::Uuid;

use crate::{
    context::AppContext,
    jobs::{Upload, UploadChunk, ValidationChunk, Vop, VopReport},
    queue::{engine::NewJob, job::Job},
    reports::Format,
};

/// Where an upload stands, read from Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for, or in, its split.
    Split,
    /// Chunks being imported.
    Import,
    /// Chunks being validated.
    Validation,
    /// Chunks being verified (VOP/BAV).
    Verification,
    /// The compliance report being made.
    Report,
    /// Nothing left to do.
    Done,
}

impl Stage {
    /// Name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Split => "split",
            Self::Import => "import",
            Self::Validation => "validation",
            Self::Verification => "verification",
            Self::Report => "report",
            Self::Done => "done",
        }
    }
}

type UploadRow = (
    String,
    String,
    String,
    Option<String>,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// Pushes again the jobs of the upload's current stage whose jobs Redis no longer holds.
/// Returns the stage it found.
pub async fn redrive(app: &AppContext, id: Uuid) -> anyhow::Result<Stage> {
    let mut tx = app.db.begin().await?;
    let row: Option<UploadRow> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT status, object_key, file_name, sheet, validated_at, verified_at FROM uploads WHERE id = $1",
            )
            .bind(id),
        )
        .await?;
    let Some((status, object_key, file_name, sheet, validated_at, verified_at)) = row else {
        return Ok(Stage::Done);
    };
    let chunks = |col: &'static str| {
        sqlx::query_as::<_, (i32,)>(match col {
            "done_at" => "SELECT chunk_no FROM upload_chunks WHERE upload_id = $1 AND done_at IS NULL ORDER BY chunk_no",
            "validated_at" => "SELECT chunk_no FROM upload_chunks WHERE upload_id = $1 AND validated_at IS NULL ORDER BY chunk_no",
            _ => "SELECT chunk_no FROM upload_chunks WHERE upload_id = $1 AND verified_at IS NULL ORDER BY chunk_no",
        })
        .bind(id)
    };
    let (stage, jobs): (Stage, Vec<NewJob>) = match status.as_str() {
        "failed" => (Stage::Done, Vec::new()),
        "pending" | "splitting" => {
            let job = Upload {
                object_key,
                file_name: Some(file_name),
                upload_id: Some(id),
                sheet,
            };
            (Stage::Split, vec![new(&job, format!("upload:{id}"))?])
        }
        "importing" => {
            let pending = tx.fetch_all(chunks("done_at")).await?;
            let jobs = pending
                .into_iter()
                .map(|(n,)| {
                    let job = UploadChunk {
                        upload_id: id,
                        chunk_no: u32::try_from(n).unwrap_or(0),
                    };
                    new(&job, format!("upload_chunk:{id}:{n}"))
                })
                .collect::<anyhow::Result<_>>()?;
            (Stage::Import, jobs)
        }
        _ if validated_at.is_none() => {
            let pending = tx.fetch_all(chunks("validated_at")).await?;
            let jobs = pending
                .into_iter()
                .map(|(n,)| {
                    let job = ValidationChunk {
                        upload_id: id,
                        chunk_no: u32::try_from(n).unwrap_or(0),
                    };
                    new(&job, format!("validation_chunk:{id}:{n}"))
                })
                .collect::<anyhow::Result<_>>()?;
            (Stage::Validation, jobs)
        }
        _ if app.settings.vop.enabled && verified_at.is_none() => {
            let pending = tx.fetch_all(chunks("verified_at")).await?;
            let jobs = pending
                .into_iter()
                .map(|(n,)| {
                    let job = Vop {
                        upload_id: id,
                        chunk_no: u32::try_from(n).unwrap_or(0),
                        round: 0,
                        deferrals: 0,
                    };
                    // Its own key: the chunk's continuations carry per-round keys, and the
                    // sweeper only comes once the upload has been idle past `stale_after`.
                    new(&job, format!("vop-sweep:{id}:{n}"))
                })
                .collect::<anyhow::Result<_>>()?;
            (Stage::Verification, jobs)
        }
        _ if app.settings.vop.enabled && app.settings.reports.after_vop => {
            let report = crate::jobs::vop_report::upload_report_id(id, Format::Xlsx);
            let done: Option<(String,)> = tx
                .fetch_optional(
                    sqlx::query_as(
                        "SELECT status FROM reports WHERE id = $1 AND status <> 'pending'",
                    )
                    .bind(report),
                )
                .await?;
            if done.is_some() {
                (Stage::Done, Vec::new())
            } else {
                let job = VopReport {
                    report_id: Some(report),
                    upload_id: Some(id),
                    from: None,
                    to: None,
                    format: Format::Xlsx,
                };
                (
                    Stage::Report,
                    vec![new(&job, format!("vop_report:{report}"))?],
                )
            }
        }
        _ => (Stage::Done, Vec::new()),
    };
    tx.commit().await?;
    if !jobs.is_empty() {
        let pushed = app
            .queue
            .push(&jobs, app.settings.worker.idempotency_ttl)
            .await?;
        let fresh = pushed.iter().filter(|p| !p.duplicate).count();
        if fresh > 0 {
            app.metrics
                .sweeper_redrives
                .get_or_create(&crate::metrics::QueueLabels {
                    queue: stage.as_str().to_string(),
                })
                .inc_by(fresh as u64);
            tracing::warn!(upload_id = %id, stage = stage.as_str(), jobs = fresh, "sweeper re-drove jobs redis no longer held");
        }
    }
    Ok(stage)
}

fn new<J: Job>(job: &J, key: String) -> anyhow::Result<NewJob> {
    Ok(NewJob {
        idempotency_key: Some(key),
        redrive: true,
        ..NewJob::new(J::NAME, serde_json::to_string(job)?)
    })
}

/// Uploads not in a final state whose record has not moved for `stale_after`.
pub async fn stale_uploads(
    app: &AppContext,
    stale_after: std::time::Duration,
    limit: i64,
) -> anyhow::Result<Vec<Uuid>> {
    let mut tx = app.db.begin().await?;
    let ids: Vec<(Uuid,)> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT id FROM uploads WHERE updated_at < now() - $1::interval \
                 AND (status IN ('pending', 'splitting', 'importing') \
                   OR (status = 'completed' AND (validated_at IS NULL \
                     OR ($3 AND verified_at IS NULL) \
                     OR ($3 AND $4 AND verified_at IS NOT NULL AND NOT EXISTS ( \
                          SELECT 1 FROM reports r WHERE r.upload_id = uploads.id AND r.status <> 'pending'))))) \
                 ORDER BY updated_at LIMIT $2",
            )
            .bind(chrono::Duration::from_std(stale_after).unwrap_or_else(|_| chrono::Duration::minutes(5)))
            .bind(limit)
            .bind(app.settings.vop.enabled)
            .bind(app.settings.reports.after_vop),
        )
        .await?;
    tx.commit().await?;
    Ok(ids.into_iter().map(|(id,)| id).collect())
}
