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
    bool,
);

/// Pushes again the jobs of the upload's current stage whose jobs Redis no longer holds.
/// Returns the stage it found.
pub async fn redrive(app: &AppContext, id: Uuid) -> anyhow::Result<Stage> {
    let mut tx = app.db.begin().await?;
    let row: Option<UploadRow> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT status, object_key, file_name, sheet, validated_at, verified_at, allow_same_file FROM uploads WHERE id = $1",
            )
            .bind(id),
        )
        .await?;
    tx.commit().await?;
    let Some((status, object_key, file_name, sheet, validated_at, verified_at, allow_same_file)) =
        row
    else {
        return Ok(Stage::Done);
    };
    let stage = match status.as_str() {
        "failed" => Stage::Done,
        "pending" | "splitting" => Stage::Split,
        "importing" => Stage::Import,
        _ if validated_at.is_none() => Stage::Validation,
        _ if app.settings.vop.enabled && verified_at.is_none() => Stage::Verification,
        _ if app.settings.vop.enabled && app.settings.reports.after_vop => Stage::Report,
        _ => Stage::Done,
    };
    let jobs = match stage {
        Stage::Split => {
            let job = Upload {
                object_key,
                file_name: Some(file_name),
                upload_id: Some(id),
                sheet,
                allow_same_file,
            };
            vec![new(&job, format!("upload:{id}"), true)?]
        }
        Stage::Import | Stage::Validation | Stage::Verification => {
            chunk_jobs(app, id, stage, true).await?
        }
        Stage::Report => report_job(app, id).await?.into_iter().collect(),
        Stage::Done => Vec::new(),
    };
    let fresh = push(app, &jobs).await?;
    if fresh > 0 {
        app.metrics
            .sweeper_redrives
            .get_or_create(&crate::metrics::QueueLabels {
                queue: stage.as_str().to_string(),
            })
            .inc_by(fresh as u64);
        tracing::warn!(upload_id = %id, stage = stage.as_str(), jobs = fresh, "sweeper re-drove jobs redis no longer held");
    }
    Ok(if stage == Stage::Report && jobs.is_empty() {
        Stage::Done
    } else {
        stage
    })
}

/// Starts a per-chunk stage (import, validation or verification): one job per chunk not yet
/// through it, under that stage's idempotency key. The stages call it to fan out, the
/// sweeper to re-drive (`redrive`). Returns how many chunks are still to do.
pub async fn start_chunk_stage(app: &AppContext, id: Uuid, stage: Stage) -> anyhow::Result<usize> {
    let jobs = chunk_jobs(app, id, stage, false).await?;
    push(app, &jobs).await?;
    Ok(jobs.len())
}

/// Enqueues the import of one chunk as soon as it is staged (the split goes on meanwhile).
/// Same idempotency key as [`start_chunk_stage`], so the two never run a chunk twice.
pub async fn push_import_chunk(app: &AppContext, id: Uuid, chunk_no: u32) -> anyhow::Result<()> {
    let job = new(
        &UploadChunk {
            upload_id: id,
            chunk_no,
        },
        format!("upload_chunk:{id}:{chunk_no}"),
        false,
    )?;
    push(app, &[job]).await?;
    Ok(())
}

async fn chunk_jobs(
    app: &AppContext,
    id: Uuid,
    stage: Stage,
    redrive: bool,
) -> anyhow::Result<Vec<NewJob>> {
    let sql = match stage {
        Stage::Import => {
            "SELECT chunk_no FROM upload_chunks WHERE upload_id = $1 AND done_at IS NULL ORDER BY chunk_no"
        }
        Stage::Validation => {
            "SELECT chunk_no FROM upload_chunks WHERE upload_id = $1 AND validated_at IS NULL ORDER BY chunk_no"
        }
        Stage::Verification => {
            "SELECT chunk_no FROM upload_chunks WHERE upload_id = $1 AND verified_at IS NULL ORDER BY chunk_no"
        }
        other => anyhow::bail!("{} is not a per-chunk stage", other.as_str()),
    };
    let mut tx = app.db.begin().await?;
    let pending: Vec<(i32,)> = tx.fetch_all(sqlx::query_as(sql).bind(id)).await?;
    tx.commit().await?;
    pending
        .into_iter()
        .map(|(n,)| {
            let chunk_no = u32::try_from(n).unwrap_or(0);
            match stage {
                Stage::Import => new(
                    &UploadChunk {
                        upload_id: id,
                        chunk_no,
                    },
                    format!("upload_chunk:{id}:{n}"),
                    redrive,
                ),
                Stage::Validation => new(
                    &ValidationChunk {
                        upload_id: id,
                        chunk_no,
                    },
                    format!("validation_chunk:{id}:{n}"),
                    redrive,
                ),
                _ => new(
                    &Vop {
                        upload_id: id,
                        chunk_no,
                        round: 0,
                        deferrals: 0,
                    },
                    // A re-drive gets its own key: the chunk's continuations carry per-round
                    // keys, and the sweeper only comes once the upload has been idle past
                    // `sweeper.stale_after`.
                    if redrive {
                        format!("vop-sweep:{id}:{n}")
                    } else {
                        crate::jobs::vop::key(id, chunk_no, 0)
                    },
                    redrive,
                ),
            }
        })
        .collect()
}

/// The automatic report of a verified upload, unless it is already made (or failed).
async fn report_job(app: &AppContext, id: Uuid) -> anyhow::Result<Option<NewJob>> {
    let report = crate::jobs::vop_report::upload_report_id(id, Format::Xlsx);
    let mut tx = app.db.begin().await?;
    let done: Option<(String,)> = tx
        .fetch_optional(
            sqlx::query_as("SELECT status FROM reports WHERE id = $1 AND status <> 'pending'")
                .bind(report),
        )
        .await?;
    tx.commit().await?;
    if done.is_some() {
        return Ok(None);
    }
    let job = VopReport {
        report_id: Some(report),
        upload_id: Some(id),
        from: None,
        to: None,
        format: Format::Xlsx,
    };
    Ok(Some(new(&job, format!("vop_report:{report}"), true)?))
}

/// Pushes and returns how many jobs were new (not duplicates).
async fn push(app: &AppContext, jobs: &[NewJob]) -> anyhow::Result<usize> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let pushed = app
        .queue
        .push(jobs, app.settings.worker.idempotency_ttl)
        .await?;
    Ok(pushed.iter().filter(|p| !p.duplicate).count())
}

fn new<J: Job>(job: &J, key: String, redrive: bool) -> anyhow::Result<NewJob> {
    Ok(NewJob {
        idempotency_key: Some(key),
        redrive,
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
