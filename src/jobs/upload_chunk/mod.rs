//! `upload_chunk` (ProcessUploadChunkJob): imports one staged chunk in one transaction.
//!
//! - Rows are converted here (in parallel across chunks), then inserted with one
//!   `INSERT … SELECT FROM unnest(<column arrays>) … ON CONFLICT (iban, reference) DO
//!   NOTHING`, in key order so concurrent chunks cannot deadlock; rejects are COPYed.
//! - Deduplication key: normalised IBAN + trimmed reference. A row whose key exists (from an
//!   earlier upload, another chunk, or earlier in this chunk) goes to `upload_duplicates`,
//!   linked to the debtor it repeats; the first row of the file wins within a chunk, the
//!   first chunk to commit wins across chunks.
//! - Exactly once: the chunk row is locked `FOR UPDATE` and stamped `done_at` in the same
//!   transaction, so a retry after a crash (before or after commit) or a second copy of the
//!   job leaves one copy of each row. The counters it adds are checked: imported +
//!   duplicates + rejected must equal the rows of the chunk, or the transaction is undone.
//! - The chunk that completes the upload marks it completed and starts the next stage.
//! - Retries: storage and Postgres errors. A damaged staged chunk fails the upload.

mod convert;

pub use convert::{Debtor, Rejected, Rules, parse_amount, parse_date};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    context::AppContext,
    db::Tx,
    queue::{
        engine::NewJob,
        job::{Job, JobContext, JobError},
    },
    uploads::{ColumnMap, Field, staged},
};

/// Payload of `upload_chunk`: which chunk of which upload. The chunk's staged object and
/// row range are in `upload_chunks`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadChunk {
    /// The upload.
    pub upload_id: Uuid,
    /// Chunk number, from 0.
    pub chunk_no: u32,
}

impl Job for UploadChunk {
    const NAME: &'static str = "upload_chunk";

    fn example() -> Self {
        UploadChunk {
            upload_id: Uuid::from_u128(0x0196f1c2_7d1e_7c3a_9f00_5b2a7e0e4a11),
            chunk_no: 0,
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        match import(&ctx, &self).await {
            Ok(Outcome::Completed) => {
                next_stage(&ctx.app, self.upload_id).await?;
                super::upload::cleanup_staging(&ctx.app, self.upload_id).await;
                Ok(())
            }
            Ok(Outcome::Imported | Outcome::Skipped) => Ok(()),
            Err(ChunkError::Damaged(msg)) => Err(JobError::Permanent(format!(
                "chunk {} could not be imported: {msg}",
                self.chunk_no
            ))),
            Err(ChunkError::Stale(e)) => Err(JobError::from(e)),
            Err(ChunkError::Other(e)) => Err(JobError::Retryable(e)),
        }
    }

    async fn on_failure(self, ctx: JobContext, error: String) -> anyhow::Result<()> {
        tracing::error!(upload_id = %self.upload_id, chunk_no = self.chunk_no, error = %error, "upload chunk failed for good");
        let msg = if error.starts_with("chunk ") {
            error // a damaged chunk: already a sentence for finance staff
        } else {
            crate::uploads::STAFF_INTERNAL_ERROR.to_string()
        };
        super::upload::fail(&ctx.app, Some(&ctx.fence), self.upload_id, &msg).await
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Imported,
    Completed,
    Skipped,
}

#[derive(Debug, thiserror::Error)]
enum ChunkError {
    #[error("{0}")]
    Damaged(String),
    #[error(transparent)]
    Stale(crate::queue::fence::FenceError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<crate::db::DbError> for ChunkError {
    fn from(e: crate::db::DbError) -> Self {
        Self::Other(e.into())
    }
}

/// Starts what follows a completed upload: the `validation` job when this binary has one
/// (under an idempotency key, so repeats are harmless). Without it nothing is enqueued and
/// the upload's note says so.
pub async fn next_stage(app: &AppContext, upload_id: Uuid) -> anyhow::Result<()> {
    if app.registry.get("validation").is_some() {
        let job = NewJob {
            idempotency_key: Some(format!("validation:{upload_id}")),
            ..NewJob::new(
                "validation",
                serde_json::json!({ "upload_id": upload_id }).to_string(),
            )
        };
        app.queue
            .push(
                std::slice::from_ref(&job),
                app.settings.worker.idempotency_ttl,
            )
            .await?;
    }
    Ok(())
}

const MOVE: &str = "INSERT INTO debtors (upload_id, row_no, reference, first_name, last_name, name, \
    email, iban, bic, amount_minor, currency, mandate_id, mandate_date, country, usage) \
    SELECT $1, t.* FROM unnest($2::int[], $3::text[], $4::text[], $5::text[], $6::text[], \
    $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::text[], $13::date[], \
    $14::text[], $15::text[]) AS t(row_no, reference, first_name, last_name, name, email, iban, \
    bic, amount_minor, currency, mandate_id, mandate_date, country, usage) \
    ORDER BY t.iban, t.reference, t.row_no \
    ON CONFLICT (iban, reference) DO NOTHING RETURNING row_no";

const DUPLICATES: &str = "INSERT INTO upload_duplicates (upload_id, row_no, debtor_id) \
    SELECT $1, c.row_no, d.id FROM unnest($2::int[], $3::text[], $4::text[]) AS c(row_no, iban, reference) \
    JOIN debtors d ON d.iban = c.iban AND d.reference = c.reference";

/// The importable rows of a chunk, column by column (bound as arrays: one statement, no
/// temp table, no per-row round trip).
#[derive(Default)]
struct Columns {
    row_no: Vec<i32>,
    reference: Vec<String>,
    first_name: Vec<Option<String>>,
    last_name: Vec<Option<String>>,
    name: Vec<String>,
    email: Vec<Option<String>>,
    iban: Vec<String>,
    bic: Vec<Option<String>>,
    amount_minor: Vec<i64>,
    currency: Vec<String>,
    mandate_id: Vec<Option<String>>,
    mandate_date: Vec<Option<chrono::NaiveDate>>,
    country: Vec<Option<String>>,
    usage: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, d: Debtor) {
        self.row_no
            .push(i32::try_from(d.row_no).unwrap_or(i32::MAX));
        self.reference.push(d.reference);
        self.first_name.push(d.first_name);
        self.last_name.push(d.last_name);
        self.name.push(d.name);
        self.email.push(d.email);
        self.iban.push(d.iban);
        self.bic.push(d.bic);
        self.amount_minor.push(d.amount_minor);
        self.currency.push(d.currency);
        self.mandate_id.push(d.mandate_id);
        self.mandate_date.push(d.mandate_date);
        self.country.push(d.country);
        self.usage.push(d.usage);
    }
}

/// Converts a staged chunk: (importable rows, COPY data of the rejects, rejects).
fn prepare(
    upload_id: Uuid,
    rows: &[staged::StagedRow],
    rules: &Rules<'_>,
) -> (Columns, Vec<u8>, usize) {
    let mut cols = Columns::default();
    let mut rejects = Vec::new();
    let mut n_bad = 0;
    let upload = upload_id.to_string();
    for row in rows {
        match rules.convert(row) {
            Ok(d) => cols.push(d),
            Err(r) => {
                n_bad += 1;
                let row_no = r.row_no.to_string();
                crate::db::copy_row(
                    &mut rejects,
                    &[
                        Some(&upload),
                        Some(&row_no),
                        r.problem.column.as_deref(),
                        r.problem.field.map(Field::as_str),
                        Some(&r.problem.reason),
                        r.problem.value.as_deref(),
                    ],
                );
            }
        }
    }
    (cols, rejects, n_bad)
}

async fn import(ctx: &JobContext, job: &UploadChunk) -> Result<Outcome, ChunkError> {
    let app = &ctx.app;
    let id = job.upload_id;
    let chunk_no = i32::try_from(job.chunk_no).unwrap_or(i32::MAX);

    // Look before fetching anything: a chunk already imported is a no-op.
    let mut tx = app.db.begin().await?;
    let chunk: Option<(String, Option<chrono::DateTime<chrono::Utc>>, i32)> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT staged_key, done_at, rows FROM upload_chunks WHERE upload_id = $1 AND chunk_no = $2",
            )
            .bind(id)
            .bind(chunk_no),
        )
        .await?;
    let status: Option<(String, Option<serde_json::Value>, i32, Option<i32>)> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT status, columns, chunks_done, chunks_total FROM uploads WHERE id = $1",
            )
            .bind(id),
        )
        .await?;
    tx.commit().await?;
    let Some((staged_key, done_at, expected_rows)) = chunk else {
        return Err(ChunkError::Damaged(format!(
            "upload {id} has no chunk {chunk_no}"
        )));
    };
    let Some((status, columns, done, total)) = status else {
        return Err(ChunkError::Damaged(format!("upload {id} does not exist")));
    };
    if done_at.is_some() {
        // Imported already; if that completed the upload, make sure the next stage started.
        return Ok(if status == "completed" && Some(done) == total {
            Outcome::Completed
        } else {
            Outcome::Skipped
        });
    }
    if status != "importing" {
        return Ok(Outcome::Skipped);
    }
    let columns: ColumnMap = {
        let mut map = ColumnMap::default();
        if let Some(serde_json::Value::Object(o)) = columns {
            for (k, v) in o {
                if let (Some(f), Some(h)) = (
                    Field::ALL.iter().copied().find(|f| f.as_str() == k),
                    v.as_str(),
                ) {
                    map.columns.push((f, 0, h.to_string()));
                }
            }
        }
        map
    };

    let bytes = app
        .storage
        .get_bytes(&staged_key)
        .await
        .map_err(|e| match e {
            crate::storage::StorageError::NotFound(k) => {
                ChunkError::Damaged(format!("its staged rows are missing ({k})"))
            }
            other => ChunkError::Other(other.into()),
        })?;
    let settings = &app.settings.upload;
    let rows = staged::read_chunk(&bytes).map_err(|e| ChunkError::Damaged(e.to_string()))?;
    if rows.len() != usize::try_from(expected_rows).unwrap_or(0) {
        return Err(ChunkError::Damaged(format!(
            "{} staged rows where {expected_rows} were recorded",
            rows.len()
        )));
    }
    let rules = Rules {
        columns: &columns,
        max_field_bytes: settings.max_field_bytes,
        default_currency: &settings.default_currency,
    };
    let (cols, reject_copy, n_bad) = prepare(id, &rows, &rules);
    let n_ok = cols.row_no.len();

    let mut tx = app.db.begin().await?;
    let locked: Option<(Option<chrono::DateTime<chrono::Utc>>,)> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT done_at FROM upload_chunks WHERE upload_id = $1 AND chunk_no = $2 FOR UPDATE",
            )
            .bind(id)
            .bind(chunk_no),
        )
        .await?;
    if !matches!(locked, Some((None,))) {
        // Another copy of this job got here first.
        return Ok(Outcome::Skipped);
    }
    let (imported, duplicates) = if n_ok > 0 {
        // Index probes, never a scan of all debtors: the planner cannot see how few rows
        // the arrays hold. SET LOCAL ends with the transaction (safe behind PgBouncer).
        tx.execute_raw("SET LOCAL enable_hashjoin = off").await?;
        tx.execute_raw("SET LOCAL enable_mergejoin = off").await?;
        let inserted: Vec<(i32,)> = tx
            .fetch_all(
                sqlx::query_as(MOVE)
                    .bind(id)
                    .bind(&cols.row_no)
                    .bind(&cols.reference)
                    .bind(&cols.first_name)
                    .bind(&cols.last_name)
                    .bind(&cols.name)
                    .bind(&cols.email)
                    .bind(&cols.iban)
                    .bind(&cols.bic)
                    .bind(&cols.amount_minor)
                    .bind(&cols.currency)
                    .bind(&cols.mandate_id)
                    .bind(&cols.mandate_date)
                    .bind(&cols.country)
                    .bind(&cols.usage),
            )
            .await?;
        let inserted: std::collections::HashSet<i32> = inserted.into_iter().map(|(r,)| r).collect();
        let (mut d_row, mut d_iban, mut d_ref) = (Vec::new(), Vec::new(), Vec::new());
        for (i, r) in cols.row_no.iter().enumerate() {
            if !inserted.contains(r) {
                d_row.push(*r);
                d_iban.push(cols.iban[i].as_str());
                d_ref.push(cols.reference[i].as_str());
            }
        }
        let duplicates = if d_row.is_empty() {
            0
        } else {
            tx.execute(
                sqlx::query(DUPLICATES)
                    .bind(id)
                    .bind(&d_row)
                    .bind(&d_iban)
                    .bind(&d_ref),
            )
            .await?
        };
        (inserted.len() as u64, duplicates)
    } else {
        (0, 0)
    };
    if n_bad > 0 {
        tx.copy_in(
            "COPY upload_rejects (upload_id, row_no, column_name, field, reason, value) FROM STDIN",
            &reject_copy,
        )
        .await?;
    }
    if imported + duplicates != n_ok as u64 {
        // A debtor this chunk collided with vanished before it could be linked (its upload
        // failed meanwhile). Undo and retry: the row then imports.
        return Err(ChunkError::Other(anyhow::anyhow!(
            "row accounting mismatch in chunk {chunk_no}: {n_ok} rows, {imported} imported + {duplicates} duplicates"
        )));
    }
    tx.execute(
        sqlx::query(
            "UPDATE upload_chunks SET done_at = now(), imported = $3, duplicates = $4, rejected = $5 \
             WHERE upload_id = $1 AND chunk_no = $2",
        )
        .bind(id)
        .bind(chunk_no)
        .bind(imported as i32)
        .bind(duplicates as i32)
        .bind(n_bad as i32),
    )
    .await?;
    let counted: Option<(i32, Option<i32>)> = tx
        .fetch_optional(
            sqlx::query_as(
                "UPDATE uploads SET chunks_done = chunks_done + 1, rows_imported = rows_imported + $2, \
                 rows_duplicate = rows_duplicate + $3, rows_rejected = rows_rejected + $4, updated_at = now() \
                 WHERE id = $1 AND status = 'importing' RETURNING chunks_done, chunks_total",
            )
            .bind(id)
            .bind(imported as i64)
            .bind(duplicates as i64)
            .bind(n_bad as i64),
        )
        .await?;
    let Some((done, total)) = counted else {
        // The upload failed meanwhile: import nothing.
        return Ok(Outcome::Skipped);
    };
    let outcome = if Some(done) == total {
        complete(&mut tx, app, id).await?;
        Outcome::Completed
    } else {
        Outcome::Imported
    };
    ctx.fence.check(&mut tx).await.map_err(|e| match e {
        crate::queue::fence::FenceError::Db(db) => ChunkError::from(db),
        stale => ChunkError::Stale(stale),
    })?;
    tx.commit().await?;
    tracing::debug!(upload_id = %id, chunk_no, imported, duplicates, rejected = n_bad, "chunk imported");
    Ok(outcome)
}

/// Marks the upload completed, after checking that every row is accounted for.
async fn complete(tx: &mut Tx, app: &AppContext, id: Uuid) -> Result<(), ChunkError> {
    let next = if app.registry.get("validation").is_some() {
        "validation enqueued"
    } else {
        "no validation job in this version: nothing was enqueued for the next stage"
    };
    let (seen, accounted): (i64, i64) = tx
        .fetch_optional(
            sqlx::query_as(
                "UPDATE uploads SET status = 'completed', finished_at = now(), updated_at = now(), \
                 note = concat_ws('; ', note, $2::text) WHERE id = $1 \
                 RETURNING rows_seen, rows_imported + rows_duplicate + rows_rejected",
            )
            .bind(id)
            .bind(next),
        )
        .await?
        .ok_or_else(|| ChunkError::Damaged(format!("upload {id} vanished")))?;
    if seen != accounted {
        return Err(ChunkError::Other(anyhow::anyhow!(
            "upload {id}: {seen} rows seen but {accounted} accounted for"
        )));
    }
    tracing::info!(upload_id = %id, rows = seen, "upload completed");
    Ok(())
}
