//! `upload_chunk` (ProcessUploadChunkJob): imports and validates one staged chunk in one
//! transaction.
//!
//! - The split already decided each row: a debtor (typed), a duplicate of an earlier row of
//!   the same file, or a reject. Here, in parallel across chunks, each debtor is validated
//!   ([`rules::check`](crate::validation::check)), given its keyed IBAN hash, and linked to the debtor it repeats from
//!   an earlier upload (`previous_debtor_id`, with what changed). Then three binary COPYs:
//!   debtors, duplicates, rejects, and the chunk's raw rows as one `upload_raw` value.
//! - Linking: a row repeats the latest debtor with the same IBAN and reference (IBAN alone
//!   when the file has no reference column) among uploads that had completed when this one
//!   began splitting (a fixed horizon: every chunk of an upload sees the same earlier uploads). Nothing is dropped for it: whether an IBAN may be charged is
//!   billing's decision, made at charge time.
//! - Exactly once: the chunk row is locked `FOR UPDATE` and stamped `done_at` and
//!   `validated_at` in the same transaction, so a retry after a crash (before or after commit)
//!   or a second copy of the job leaves one copy of each row. The counters it adds are
//!   checked: imported + duplicates + rejected must equal the rows of the chunk.
//! - The chunk that completes the upload marks it completed and validated, and starts
//!   verification. Retries: storage and Postgres errors. A damaged staged chunk fails the
//!   upload.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    context::AppContext,
    db::Tx,
    pgcopy::BinaryCopy,
    queue::{
        engine::NewJob,
        job::{Job, JobContext, JobError},
    },
    uploads::{
        Field,
        convert::Debtor,
        staged::{self, RowKind},
    },
    validation as rules,
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
pub(crate) enum ChunkError {
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

/// Starts what follows a completed upload: verification (the import validated it). An
/// upload completed by an earlier version, which validated in a separate stage, gets its
/// `validation` job instead. Idempotent.
pub async fn next_stage(app: &AppContext, upload_id: Uuid) -> anyhow::Result<()> {
    let started = start_next_stage(app, upload_id).await;
    // Then its keys go into the linking filter (after the next stage started: verification
    // need not wait for it). If this fails, the sweeper adds them later; until then imports
    // look every key up, so nothing is missed.
    if let Err(e) = crate::uploads::key_filter::add_upload(&app.db, upload_id).await {
        tracing::warn!(upload_id = %upload_id, error = %e, "the upload's keys could not be added to the linking filter yet");
    }
    started
}

async fn start_next_stage(app: &AppContext, upload_id: Uuid) -> anyhow::Result<()> {
    let mut tx = app.db.begin().await?;
    let validated: Option<(Option<chrono::DateTime<chrono::Utc>>,)> = tx
        .fetch_optional(
            sqlx::query_as("SELECT validated_at FROM uploads WHERE id = $1").bind(upload_id),
        )
        .await?;
    tx.commit().await?;
    match validated {
        Some((Some(_),)) => super::validation_chunk::after_validation(app, upload_id).await,
        Some((None,)) => {
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
            Ok(())
        }
        None => Ok(()),
    }
}

/// Columns of the debtors COPY, in order.
const DEBTOR_COLUMNS: &str = "upload_id, row_no, reference, first_name, last_name, name, email, iban, \
    bic, amount_minor, currency, mandate_id, mandate_date, country, usage, iban_key, \
    previous_debtor_id, changes, valid, sepa_name, issues";

/// A debtor of an earlier upload that a row may repeat.
#[derive(sqlx::FromRow)]
struct Previous {
    id: i64,
    iban: String,
    reference: String,
    name: String,
    bic: Option<String>,
    amount_minor: i64,
    mandate_id: Option<String>,
    mandate_date: Option<chrono::NaiveDate>,
}

/// What differs between a row and the debtor it repeats.
fn changes(d: &Debtor, p: &Previous) -> Vec<&'static str> {
    let mut c = Vec::new();
    if d.amount_minor != p.amount_minor {
        c.push("amount");
    }
    if d.mandate_id != p.mandate_id || d.mandate_date != p.mandate_date {
        c.push("mandate");
    }
    if d.name != p.name {
        c.push("name");
    }
    if d.bic != p.bic {
        c.push("bic");
    }
    c
}

/// The latest earlier debtor each row repeats: same IBAN and reference; with no reference
/// column, or none matching exactly, the latest with the same IBAN and no reference, then
/// (files without references only) the latest with the same IBAN.
struct Links {
    /// IBAN → reference → row.
    exact: HashMap<String, HashMap<String, usize>>,
    by_iban: HashMap<String, usize>,
    by_iban_unreferenced: HashMap<String, usize>,
    rows: Vec<Previous>,
}

impl Links {
    fn new(rows: Vec<Previous>) -> Self {
        let mut l = Links {
            exact: HashMap::new(),
            by_iban: HashMap::new(),
            by_iban_unreferenced: HashMap::new(),
            rows: Vec::new(),
        };
        // Rows come in any order: keep the highest id (the latest debtor) per key.
        fn keep<K: std::hash::Hash + Eq>(
            m: &mut HashMap<K, usize>,
            k: K,
            i: usize,
            rows: &[Previous],
        ) {
            let e = m.entry(k).or_insert(i);
            if rows[*e].id < rows[i].id {
                *e = i;
            }
        }
        for (i, p) in rows.iter().enumerate() {
            let by_reference = l.exact.entry(p.iban.clone()).or_default();
            keep(by_reference, p.reference.clone(), i, &rows);
            keep(&mut l.by_iban, p.iban.clone(), i, &rows);
            if p.reference.is_empty() {
                keep(&mut l.by_iban_unreferenced, p.iban.clone(), i, &rows);
            }
        }
        l.rows = rows;
        l
    }

    fn find(&self, d: &Debtor, file_has_reference: bool) -> Option<&Previous> {
        if self.rows.is_empty() {
            return None;
        }
        let i = if file_has_reference {
            self.exact
                .get(d.iban.as_str())
                .and_then(|m| m.get(d.reference.as_str()))
                .or_else(|| self.by_iban_unreferenced.get(d.iban.as_str()))
        } else {
            self.by_iban.get(d.iban.as_str())
        };
        i.map(|&i| &self.rows[i])
    }
}

/// A chunk made ready to store.
#[derive(Default)]
struct Prepared {
    debtors: BinaryCopy,
    duplicates: BinaryCopy,
    rejects: BinaryCopy,
    /// Every row's cells: `[[row_no, [cell, ...]], ...]`.
    raw: String,
    first_row: i32,
    last_row: i32,
    counts: Counts,
}

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    imported: i64,
    duplicates: i64,
    rejected: i64,
    new: i64,
    unchanged: i64,
    changed: i64,
    valid: i64,
    invalid: i64,
}

/// Validates and links the chunk's rows and encodes the three COPYs.
fn prepare(
    upload_id: Uuid,
    rows: &[staged::StagedRow<'_>],
    keys: &[Option<i64>],
    links: &Links,
    file_has_reference: bool,
    rules_cfg: &crate::config::ValidationSettings,
    today: chrono::NaiveDate,
) -> Prepared {
    let mut p = Prepared::default();
    for (row, key) in rows.iter().zip(keys) {
        let row_no = i32::try_from(row.row_no).unwrap_or(i32::MAX);
        match &row.kind {
            RowKind::Debtor(d) => {
                let verdict = rules::check_view(rules::DebtorView::from(d), rules_cfg, today);
                let previous = links.find(d, file_has_reference);
                let changed = previous.map(|prev| changes(d, prev));
                let c = &mut p.counts;
                c.imported += 1;
                match &changed {
                    None => c.new += 1,
                    Some(v) if v.is_empty() => c.unchanged += 1,
                    Some(_) => c.changed += 1,
                }
                if verdict.valid {
                    c.valid += 1;
                } else {
                    c.invalid += 1;
                }
                let issues = verdict.issues_json();
                p.debtors
                    .row(21)
                    .uuid(upload_id)
                    .int4(row_no)
                    .text(&d.reference)
                    .opt_text(d.first_name.as_deref())
                    .opt_text(d.last_name.as_deref())
                    .text(&d.name)
                    .opt_text(d.email.as_deref())
                    .text(&d.iban)
                    .opt_text(d.bic.as_deref())
                    .int8(d.amount_minor)
                    .text(&d.currency)
                    .opt_text(d.mandate_id.as_deref())
                    .opt_date(d.mandate_date)
                    .opt_text(d.country.as_deref())
                    .opt_text(d.usage.as_deref())
                    .opt_int8(*key)
                    .opt_int8(previous.map(|p| p.id))
                    .opt_text_array(changed.as_deref())
                    .bool(verdict.valid)
                    .opt_text(verdict.sepa_name_if_changed(&d.name))
                    .jsonb(issues.as_deref());
            }
            RowKind::Duplicate { first_row } => {
                p.counts.duplicates += 1;
                p.duplicates
                    .row(3)
                    .uuid(upload_id)
                    .int4(row_no)
                    .int4(i32::try_from(*first_row).unwrap_or(i32::MAX));
            }
            RowKind::Rejected(r) => {
                p.counts.rejected += 1;
                p.rejects
                    .row(6)
                    .uuid(upload_id)
                    .int4(row_no)
                    .opt_text(r.column.as_deref())
                    .opt_text(r.field.map(Field::as_str))
                    .text(&r.reason)
                    .opt_text(r.value.as_deref());
            }
        }
    }
    let raw: Vec<(u32, &[&str])> = rows.iter().map(|r| (r.row_no, &r.raw[..])).collect();
    // Plain strings and numbers: serialising cannot fail.
    p.raw = serde_json::to_string(&raw).unwrap_or_default();
    let row_no = |r: Option<&staged::StagedRow<'_>>| {
        r.map_or(0, |r| i32::try_from(r.row_no).unwrap_or(i32::MAX))
    };
    (p.first_row, p.last_row) = (row_no(rows.first()), row_no(rows.last()));
    p
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
    #[allow(clippy::type_complexity)]
    let status: Option<(
        String,
        Option<serde_json::Value>,
        i32,
        Option<i32>,
        Option<chrono::DateTime<chrono::Utc>>,
    )> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT status, columns, chunks_done, chunks_total, started_at FROM uploads WHERE id = $1",
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
    let Some((status, columns, done, total, started_at)) = status else {
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
    if status != "importing" && status != "splitting" {
        return Ok(Outcome::Skipped);
    }
    let file_has_reference = matches!(&columns, Some(serde_json::Value::Object(o)) if o.contains_key(Field::Reference.as_str()));
    let Some(hasher) = app.iban.as_ref() else {
        return Err(ChunkError::Other(anyhow::anyhow!(
            "privacy.iban_key is not set: this worker cannot import debtors"
        )));
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
    let rows = staged::read_chunk(&bytes).map_err(|e| ChunkError::Damaged(e.to_string()))?;
    if rows.len() != usize::try_from(expected_rows).unwrap_or(0) {
        return Err(ChunkError::Damaged(format!(
            "{} staged rows where {expected_rows} were recorded",
            rows.len()
        )));
    }
    let keys: Vec<Option<i64>> = rows
        .iter()
        .map(|r| match &r.kind {
            RowKind::Debtor(d) => Some(hasher.key(&d.iban)),
            _ => None,
        })
        .collect();
    let mut lookup: Vec<i64> = keys.iter().flatten().copied().collect();
    lookup.sort_unstable();
    lookup.dedup();
    // Only the keys an earlier debtor may have (uploads::key_filter).
    if let Some(at) = started_at.filter(|_| !lookup.is_empty()) {
        let p = app.key_filter.to_probe(&app.db, at, lookup).await?;
        for (outcome, n) in [("probed", p.keys.len()), ("skipped", p.skipped)] {
            app.metrics
                .link_keys
                .get_or_create(&crate::metrics::OutcomeLabels {
                    outcome: outcome.into(),
                })
                .inc_by(n as u64);
        }
        lookup = p.keys;
    }

    let mut tx = app.db.begin().await?;
    // Earlier debtors this chunk may repeat, by index probes on the keyed IBAN hash (never a
    // scan: the planner cannot see how few keys the array holds).
    let previous: Vec<Previous> = if lookup.is_empty() || started_at.is_none() {
        Vec::new()
    } else {
        tx.execute_raw("SET LOCAL enable_hashjoin = off").await?;
        tx.execute_raw("SET LOCAL enable_mergejoin = off").await?;
        tx.fetch_all(
            sqlx::query_as(
                "SELECT d.id, d.iban, d.reference, d.name, d.bic, d.amount_minor, d.mandate_id, d.mandate_date \
                 FROM debtors d JOIN uploads u ON u.id = d.upload_id \
                 WHERE d.iban_key = ANY($1) AND u.status = 'completed' AND u.finished_at < $2",
            )
            .bind(&lookup)
            .bind(started_at),
        )
        .await?
    };
    let links = Links::new(previous);
    let today = chrono::Utc::now().date_naive();
    let prepared = prepare(
        id,
        &rows,
        &keys,
        &links,
        file_has_reference,
        &app.settings.validation,
        today,
    );
    drop(rows);
    drop(bytes);
    let c = prepared.counts;

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
    let stored = (
        copy(
            &mut tx,
            &format!("debtors ({DEBTOR_COLUMNS})"),
            prepared.debtors,
        )
        .await?,
        copy(
            &mut tx,
            "upload_duplicates (upload_id, row_no, first_row)",
            prepared.duplicates,
        )
        .await?,
        copy(
            &mut tx,
            "upload_rejects (upload_id, row_no, column_name, field, reason, value)",
            prepared.rejects,
        )
        .await?,
    );
    tx.execute(
        sqlx::query(
            "INSERT INTO upload_raw (upload_id, first_row, last_row, rows) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(prepared.first_row)
        .bind(prepared.last_row)
        .bind(&prepared.raw),
    )
    .await?;
    let want = (c.imported as u64, c.duplicates as u64, c.rejected as u64);
    if stored != want || c.imported + c.duplicates + c.rejected != i64::from(expected_rows) {
        return Err(ChunkError::Other(anyhow::anyhow!(
            "row accounting mismatch in chunk {chunk_no}: {expected_rows} rows; stored {stored:?}, counted {want:?}"
        )));
    }
    tx.execute(
        sqlx::query(
            "UPDATE upload_chunks SET done_at = now(), imported = $3, duplicates = $4, rejected = $5, \
             validated_at = now(), valid = $6, invalid = $7 WHERE upload_id = $1 AND chunk_no = $2",
        )
        .bind(id)
        .bind(chunk_no)
        .bind(c.imported as i32)
        .bind(c.duplicates as i32)
        .bind(c.rejected as i32)
        .bind(c.valid as i32)
        .bind(c.invalid as i32),
    )
    .await?;
    let counted: Option<(i32, Option<i32>)> = tx
        .fetch_optional(
            sqlx::query_as(
                "UPDATE uploads SET chunks_done = chunks_done + 1, chunks_validated = chunks_validated + 1, \
                 rows_imported = rows_imported + $2, rows_duplicate = rows_duplicate + $3, \
                 rows_rejected = rows_rejected + $4, rows_new = rows_new + $5, \
                 rows_unchanged = rows_unchanged + $6, rows_changed = rows_changed + $7, \
                 rows_valid = rows_valid + $8, rows_invalid = rows_invalid + $9, updated_at = now() \
                 WHERE id = $1 AND status IN ('splitting', 'importing') RETURNING chunks_done, chunks_total",
            )
            .bind(id)
            .bind(c.imported)
            .bind(c.duplicates)
            .bind(c.rejected)
            .bind(c.new)
            .bind(c.unchanged)
            .bind(c.changed)
            .bind(c.valid)
            .bind(c.invalid),
        )
        .await?;
    let Some((done, total)) = counted else {
        // The upload failed meanwhile: import nothing.
        return Ok(Outcome::Skipped);
    };
    // chunks_total is set when the split ends: until then no chunk completes the upload.
    let outcome = if Some(done) == total {
        complete(&mut tx, id).await?;
        Outcome::Completed
    } else {
        Outcome::Imported
    };
    ctx.fence.check(&mut tx).await.map_err(|e| match e {
        crate::queue::fence::FenceError::Db(db) => ChunkError::from(db),
        stale => ChunkError::Stale(stale),
    })?;
    tx.commit().await?;
    tracing::debug!(upload_id = %id, chunk_no, ?c, "chunk imported");
    let m = &ctx.app.metrics;
    for (outcome, n) in [
        ("imported", c.imported),
        ("duplicate", c.duplicates),
        ("rejected", c.rejected),
    ] {
        m.upload_rows
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc_by(u64::try_from(n).unwrap_or(0));
    }
    m.count_validated(c.valid, c.invalid);
    Ok(outcome)
}

/// Binary COPY of `rows` into `target` ("table (columns)"); nothing to send, nothing sent.
async fn copy(tx: &mut Tx, target: &str, rows: BinaryCopy) -> Result<u64, crate::db::DbError> {
    if rows.rows() == 0 {
        return Ok(0);
    }
    tx.copy_in(
        &format!("COPY {target} FROM STDIN WITH (FORMAT binary)"),
        &rows.finish(),
    )
    .await
}

/// Marks the upload completed and validated, after checking that every row is accounted
/// for.
pub(crate) async fn complete(tx: &mut Tx, id: Uuid) -> Result<(), ChunkError> {
    let (seen, accounted): (i64, i64) = tx
        .fetch_optional(
            sqlx::query_as(
                "UPDATE uploads SET status = 'completed', finished_at = now(), validated_at = now(), \
                 updated_at = now() WHERE id = $1 \
                 RETURNING rows_seen, rows_imported + rows_duplicate + rows_rejected",
            )
            .bind(id),
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
