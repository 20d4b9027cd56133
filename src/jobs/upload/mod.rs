//! `upload` (ProcessUploadJob): reads a debtor file from object storage and splits it into
//! staged chunks of `upload.chunk_rows` rows, one `upload_chunk` job each.
//!
//! - Streams: CSV is parsed straight off the object stream; spreadsheets are spooled to a
//!   temporary file (the zip format needs seeking) and read cell by cell where calamine can.
//! - Each chunk's import is enqueued as soon as it is staged, so importing overlaps the split.
//!   Completion waits for the split: the upload completes when the split has ended and every
//!   chunk is in. A file that turns out to be over a limit, unreadable half-way, or the same
//!   content as an earlier upload fails, and the failure removes what its chunks imported.
//! - Idempotent: the upload row is the state. A rerun of a split (crash, deploy) skips chunks
//!   already staged; a rerun after the split re-enqueues the chunks not yet imported, under
//!   idempotency keys, and a chunk imports once whatever happens (see `upload_chunk`).
//! - Failures: a bad file (format, size, columns, rows) fails the upload at once with a
//!   message for finance staff, and the job ends without retry. Storage errors are retried,
//!   Postgres and Redis outages snoozed (no attempt spent); when the job fails for good the
//!   runtime calls its failure hook, which marks the upload failed.

pub mod isolated;
pub mod sheet;
pub mod source;
pub mod split;
pub mod text;

use std::{collections::BTreeSet, io};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::{io::AsyncWriteExt, sync::mpsc};
use tokio_util::io::{StreamReader, SyncIoBridge};
use uuid::Uuid;

use self::{
    source::{FileError, Format},
    split::{SplitEvent, SplitTotals, Splitter, Stop},
};
use crate::{
    context::AppContext,
    jobs::upload_chunk,
    queue::job::{Job, JobContext, JobError},
    uploads::{self, ColumnAliases},
};

/// Payload of `upload`: a file already in object storage.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    /// Object key of the file in the configured storage (bucket or local folder).
    #[schemars(length(min = 1, max = 1024))]
    pub object_key: String,
    /// Original file name, shown to users; defaults to the key's last segment.
    #[serde(default)]
    pub file_name: Option<String>,
    /// Upload id to record progress under; defaults to the job id. Send your own to poll
    /// `GET /api/uploads/{id}` with an id you already know.
    #[serde(default)]
    pub upload_id: Option<Uuid>,
    /// Sheet to read from a workbook; the first sheet when absent.
    #[serde(default)]
    pub sheet: Option<String>,
    /// Import the file even when an earlier upload had exactly the same content (by default
    /// such a file is refused, naming that upload).
    #[serde(default)]
    pub allow_same_file: bool,
}

impl Upload {
    fn id(&self, job_id: &str) -> Result<Uuid, JobError> {
        match self.upload_id {
            Some(id) => Ok(id),
            None => Uuid::parse_str(job_id).map_err(|_| {
                JobError::permanent("upload_id is missing and the job id is not a UUID")
            }),
        }
    }
}

impl Job for Upload {
    const NAME: &'static str = "upload";
    const PRODUCER: bool = true;

    fn example() -> Self {
        Upload {
            object_key: "uploads/2026/11/23/0196f1c2-7d1e-7c3a-9f00-5b2a7e0e4a11/debtors-march.csv"
                .into(),
            file_name: Some("debtors-march.csv".into()),
            upload_id: Some(Uuid::from_u128(0x0196f1c2_7d1e_7c3a_9f00_5b2a7e0e4a11)),
            sheet: None,
            allow_same_file: false,
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let id = self.id(&ctx.job_id)?;
        process(&ctx.app, id, &self)
            .await
            .map_err(JobError::Retryable)
    }

    async fn on_failure(self, ctx: JobContext, error: String) -> anyhow::Result<()> {
        let Ok(id) = self.id(&ctx.job_id) else {
            return Ok(());
        };
        tracing::error!(upload_id = %id, error = %error, "upload job failed for good");
        fail(
            &ctx.app,
            Some(&ctx.fence),
            id,
            crate::uploads::STAFF_INTERNAL_ERROR,
        )
        .await
    }
}

/// Marks an upload failed and removes what it imported (debtors that another upload's
/// duplicates point at stay, and the note says how many). `fence`: the calling attempt's
/// token, when a job attempt calls it.
pub async fn fail(
    app: &AppContext,
    fence: Option<&crate::queue::fence::Fence>,
    id: Uuid,
    message: &str,
) -> anyhow::Result<()> {
    let mut tx = app.db.begin().await?;
    if let Some(f) = fence {
        f.check(&mut tx).await?;
    }
    let n = tx
        .execute(
            sqlx::query(
                "UPDATE uploads SET status = 'failed', error = $2, finished_at = now(), updated_at = now(), \
                 content_claim = NULL WHERE id = $1 AND status <> 'completed' AND status <> 'failed'",
            )
            .bind(id)
            .bind(message),
        )
        .await?;
    if n == 1 {
        tx.execute(sqlx::query("DELETE FROM upload_duplicates WHERE upload_id = $1").bind(id))
            .await?;
        tx.execute(sqlx::query("DELETE FROM upload_rejects WHERE upload_id = $1").bind(id))
            .await?;
        tx.execute(
            sqlx::query(
                "DELETE FROM debtors d WHERE d.upload_id = $1 \
                 AND NOT EXISTS (SELECT 1 FROM upload_duplicates x WHERE x.debtor_id = d.id)",
            )
            .bind(id),
        )
        .await?;
        let kept: i64 = tx
            .scalar(
                sqlx::query_scalar("SELECT count(*) FROM debtors WHERE upload_id = $1").bind(id),
            )
            .await?;
        if kept == 0 {
            tx.execute(sqlx::query("DELETE FROM upload_raw WHERE upload_id = $1").bind(id))
                .await?;
        }
        tx.execute(
            sqlx::query(
                "UPDATE uploads SET rows_imported = $2, rows_duplicate = 0, rows_rejected = 0, \
                 note = CASE WHEN $2 > 0 THEN $2 || ' debtors were kept: later uploads list rows as their duplicates' END \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(kept),
        )
        .await?;
    }
    tx.commit().await?;
    if n == 1 {
        tracing::warn!(upload_id = %id, reason = message, "upload failed");
        cleanup_staging(app, id).await;
    }
    Ok(())
}

/// Removes staged chunks (best effort: leftovers are harmless and swept by prefix).
pub async fn cleanup_staging(app: &AppContext, id: Uuid) {
    if let Err(e) = app
        .storage
        .delete_prefix(&uploads::staging_prefix(id))
        .await
    {
        tracing::warn!(upload_id = %id, error = %e, "removing staged chunks");
    }
}

async fn process(app: &AppContext, id: Uuid, p: &Upload) -> anyhow::Result<()> {
    let file_name = p.file_name.clone().unwrap_or_else(|| {
        p.object_key
            .rsplit('/')
            .next()
            .unwrap_or("file")
            .to_string()
    });
    let settings = &app.settings.upload;

    let mut tx = app.db.begin().await?;
    uploads::create_pending(
        &mut tx,
        id,
        &p.object_key,
        &file_name,
        p.sheet.as_deref(),
        settings.chunk_rows,
        p.allow_same_file,
    )
    .await?;
    let Some(rec) = uploads::get_in(&mut tx, id, true).await? else {
        anyhow::bail!("upload {id} vanished");
    };
    match rec.status.as_str() {
        "completed" => {
            tx.commit().await?;
            upload_chunk::next_stage(app, id).await?;
            return Ok(());
        }
        "failed" => return Ok(()),
        "importing" => {
            tx.commit().await?;
            return enqueue_chunks(app, id).await;
        }
        _ => {}
    }
    tx.execute(
        sqlx::query(
            "UPDATE uploads SET status = 'splitting', started_at = coalesce(started_at, now()), \
             updated_at = now() WHERE id = $1",
        )
        .bind(id),
    )
    .await?;
    tx.commit().await?;

    let chunk_rows = u32::try_from(rec.chunk_rows).unwrap_or(settings.chunk_rows);
    match split(app, id, &rec.object_key, rec.sheet.as_deref(), chunk_rows).await? {
        Err(file_error) => {
            fail(app, None, id, &file_error.to_string()).await?;
            Ok(())
        }
        Ok((totals, notes, sha256)) => {
            let mut tx = app.db.begin().await?;
            if let Some(refusal) = same_file(&mut tx, id, &sha256).await? {
                tx.commit().await?;
                fail(app, None, id, &refusal).await?;
                return Ok(());
            }
            let ended: Option<(i32, Option<i32>)> = tx
                .fetch_optional(
                sqlx::query_as(
                    "UPDATE uploads SET status = 'importing', chunks_total = $2, chunks_staged = $2, \
                     rows_seen = $3, rows_blank = $4, split_at = clock_timestamp(), note = $5, updated_at = now(), \
                     content_sha256 = $6, content_claim = CASE WHEN allow_same_file THEN NULL ELSE $6 END \
                     WHERE id = $1 AND status = 'splitting' RETURNING chunks_done, chunks_total",
                )
                .bind(id)
                .bind(i32::try_from(totals.chunks).unwrap_or(i32::MAX))
                .bind(i64::try_from(totals.rows_seen).unwrap_or(i64::MAX))
                .bind(i64::try_from(totals.rows_blank).unwrap_or(i64::MAX))
                .bind((!notes.is_empty()).then(|| notes.join("; ")))
                .bind(sha256.as_slice()),
            )
            .await?;
            // Every chunk may already be in (imports overlap the split): then the split ends
            // the upload. The row lock orders this against the chunks' own counting.
            let completed = matches!(ended, Some((done, Some(total))) if done == total);
            if completed {
                upload_chunk::complete(&mut tx, id).await?;
            }
            tx.commit().await?;
            tracing::info!(upload_id = %id, rows = totals.rows_seen, chunks = totals.chunks, "upload split");
            if completed {
                upload_chunk::next_stage(app, id).await?;
                cleanup_staging(app, id).await;
                return Ok(());
            }
            enqueue_chunks(app, id).await
        }
    }
}

/// The refusal of a file whose content an earlier upload already holds, unless this upload
/// allows it. (The claim itself is a unique index: two uploads of one file at the same moment
/// cannot both pass; the loser's update fails and its retry finds the winner here.)
async fn same_file(
    tx: &mut crate::db::Tx,
    id: Uuid,
    sha256: &[u8],
) -> anyhow::Result<Option<String>> {
    let earlier: Option<(Uuid, String, chrono::DateTime<chrono::Utc>, bool)> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT e.id, e.file_name, e.created_at, u.allow_same_file FROM uploads u \
                 JOIN uploads e ON e.content_claim = $2 AND e.id <> u.id WHERE u.id = $1",
            )
            .bind(id)
            .bind(sha256),
        )
        .await?;
    Ok(match earlier {
        Some((other, name, at, false)) => Some(format!(
            "this file has exactly the same content as upload {other} (\"{name}\", uploaded {}); \
             it was not imported again. To import it anyway, upload it with --allow-same-file \
             (API: \"allow_same_file\": true)",
            at.format("%Y-%m-%d %H:%M UTC")
        )),
        _ => None,
    })
}

/// Enqueues every chunk not yet imported. Keys make a repeat a no-op.
async fn enqueue_chunks(app: &AppContext, id: Uuid) -> anyhow::Result<()> {
    crate::pipeline::start_chunk_stage(app, id, crate::pipeline::Stage::Import).await?;
    Ok(())
}

/// Reads the first bytes of a stream and gives back the whole stream.
async fn peek(
    mut stream: futures::stream::BoxStream<'static, Result<Bytes, crate::storage::StorageError>>,
) -> anyhow::Result<(
    Vec<u8>,
    futures::stream::BoxStream<'static, Result<Bytes, crate::storage::StorageError>>,
)> {
    let mut head: Vec<Bytes> = Vec::new();
    let mut len = 0;
    while len < 4096 {
        match stream.next().await {
            Some(b) => {
                let b = b?;
                len += b.len();
                head.push(b);
            }
            None => break,
        }
    }
    let bytes: Vec<u8> = head.iter().flat_map(|b| b.iter().copied()).collect();
    let rest = futures::stream::iter(head.into_iter().map(Ok))
        .chain(stream)
        .boxed();
    Ok((bytes, rest))
}

/// Splits the file into staged chunks. Outer error: retry; inner error: the file is bad.
async fn split(
    app: &AppContext,
    id: Uuid,
    key: &str,
    sheet: Option<&str>,
    chunk_rows: u32,
) -> anyhow::Result<Result<(SplitTotals, Vec<String>, Vec<u8>), FileError>> {
    let settings = app.settings.upload.clone();
    let obj = match app.storage.get_stream(key).await {
        Ok(o) => o,
        Err(crate::storage::StorageError::NotFound(k)) => {
            return Ok(Err(FileError::Unreadable(format!(
                "there is no file at \"{k}\" in storage ({}); a local storage folder is per \
                 machine and set by storage.local_root: the worker and `finworker upload` must share it",
                app.storage.label()
            ))));
        }
        Err(e) => return Err(e.into()),
    };
    if obj.size > settings.max_bytes {
        return Ok(Err(FileError::TooLarge {
            size: obj.size,
            limit: settings.max_bytes,
        }));
    }
    {
        let mut tx = app.db.begin().await?;
        tx.execute(
            sqlx::query("UPDATE uploads SET size_bytes = $2 WHERE id = $1")
                .bind(id)
                .bind(i64::try_from(obj.size).unwrap_or(i64::MAX)),
        )
        .await?;
        tx.commit().await?;
    }
    let (head, stream) = peek(obj.stream).await?;
    // The content hash, taken as the bytes go by (the same file twice is refused).
    let digest = std::sync::Arc::new(std::sync::Mutex::new(<sha2::Sha256 as sha2::Digest>::new()));
    let stream = {
        let digest = digest.clone();
        stream
            .map_ok(move |b| {
                if let Ok(mut d) = digest.lock() {
                    sha2::Digest::update(&mut *d, &b);
                }
                b
            })
            .boxed()
    };
    let format = match source::detect(&head) {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    let aliases = ColumnAliases::new(&settings.columns);
    let (tx_ev, mut rx) = mpsc::channel::<SplitEvent>(2);
    let max_rows = settings.max_rows;

    // Spreadsheets are spooled first; CSV is parsed as it arrives.
    let reader: tokio::task::JoinHandle<Result<(SplitTotals, Vec<String>), Stop>> = match format {
        Format::Csv => {
            let async_read = StreamReader::new(stream.map_err(io::Error::other));
            tokio::task::spawn_blocking(move || {
                let bridge = SyncIoBridge::new(async_read);
                let mut src = text::CsvSource::open(Box::new(bridge), &aliases)?;
                let mut sink = Splitter::new(tx_ev, chunk_rows, max_rows)
                    .with_limits(settings.max_field_bytes, settings.chunk_max_bytes)
                    .with_default_currency(&settings.default_currency);
                split::drive(&mut src, &mut sink)?;
                let notes = source::RowSource::notes(&src);
                // Read to the end, so the content hash covers every byte.
                let mut rest = src.into_inner();
                io::copy(&mut rest, &mut io::sink()).map_err(|e| {
                    Stop::File(FileError::Unreadable(format!(
                        "the file cannot be read: {e}"
                    )))
                })?;
                Ok((sink.finish()?, notes))
            })
        }
        _ => {
            let file = if settings.spool_dir.is_empty() {
                tempfile::tempfile()?
            } else {
                tempfile::tempfile_in(&settings.spool_dir)?
            };
            let mut out = tokio::fs::File::from_std(file);
            let mut s = stream;
            let mut total = 0u64;
            while let Some(b) = s.next().await {
                let b = b?;
                total += b.len() as u64;
                if total > settings.max_bytes {
                    return Ok(Err(FileError::TooLarge {
                        size: total,
                        limit: settings.max_bytes,
                    }));
                }
                out.write_all(&b).await?;
            }
            out.flush().await?;
            let file = out.into_std().await;
            let sheet = sheet.map(str::to_string);
            let limits = isolated::Limits {
                exe: if settings.reader_binary.is_empty() {
                    std::env::current_exe()?
                } else {
                    settings.reader_binary.clone().into()
                },
                memory: settings.reader_memory,
                time: settings.reader_timeout,
                max_decompressed: settings.max_decompressed_bytes,
            };
            drop(aliases); // the child maps the header with the same configuration
            tokio::task::spawn_blocking(move || {
                let mut sink = Splitter::new(tx_ev, chunk_rows, max_rows)
                    .with_limits(settings.max_field_bytes, settings.chunk_max_bytes)
                    .with_default_currency(&settings.default_currency);
                isolated::read(file, format, sheet.as_deref(), &limits, &mut sink)?;
                Ok((sink.finish()?, Vec::new()))
            })
        }
    };

    let staged: BTreeSet<i32> = {
        let mut tx = app.db.begin().await?;
        let rows: Vec<(i32,)> = tx
            .fetch_all(
                sqlx::query_as("SELECT chunk_no FROM upload_chunks WHERE upload_id = $1").bind(id),
            )
            .await?;
        tx.commit().await?;
        rows.into_iter().map(|(n,)| n).collect()
    };
    let mut ignored_note: Option<String> = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            SplitEvent::Header(meta, sheet_name) => {
                let columns: serde_json::Map<String, serde_json::Value> = meta
                    .columns
                    .columns
                    .iter()
                    .map(|(f, _, h)| (f.as_str().to_string(), h.clone().into()))
                    .collect();
                if !meta.columns.ignored.is_empty() {
                    ignored_note = Some(format!(
                        "columns not imported: {}",
                        meta.columns.ignored.join(", ")
                    ));
                }
                let mut tx = app.db.begin().await?;
                tx.execute(
                    sqlx::query(
                        "UPDATE uploads SET format = $2, encoding = $3, delimiter = $4, columns = $5, \
                         sheet = coalesce($6, sheet), headers = $7, updated_at = now() WHERE id = $1",
                    )
                    .bind(id)
                    .bind(meta.format.map(Format::as_str))
                    .bind(meta.encoding.as_deref())
                    .bind(meta.delimiter.as_deref())
                    .bind(serde_json::Value::Object(columns))
                    .bind(sheet_name)
                    .bind(serde_json::Value::from(meta.headers.clone())),
                )
                .await?;
                tx.commit().await?;
            }
            SplitEvent::Chunk(c) => {
                let n = i32::try_from(c.chunk_no).unwrap_or(i32::MAX);
                let key = uploads::staged_key(id, c.chunk_no);
                if !staged.contains(&n) {
                    app.storage.put(&key, Bytes::from(c.bytes)).await?;
                }
                let mut tx = app.db.begin().await?;
                tx.execute(
                    sqlx::query(
                        "INSERT INTO upload_chunks (upload_id, chunk_no, first_row, last_row, rows, staged_key) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                    )
                    .bind(id)
                    .bind(n)
                    .bind(i32::try_from(c.first_row).unwrap_or(i32::MAX))
                    .bind(i32::try_from(c.last_row).unwrap_or(i32::MAX))
                    .bind(i32::try_from(c.rows).unwrap_or(i32::MAX))
                    .bind(&key),
                )
                .await?;
                tx.execute(
                    sqlx::query(
                        "UPDATE uploads SET chunks_staged = $2, rows_seen = $3, bytes_read = $4, \
                         updated_at = now() WHERE id = $1",
                    )
                    .bind(id)
                    .bind(n + 1)
                    .bind(i64::try_from(c.rows_seen).unwrap_or(i64::MAX))
                    .bind(i64::try_from(c.bytes_read).unwrap_or(i64::MAX)),
                )
                .await?;
                tx.commit().await?;
                crate::pipeline::push_import_chunk(app, id, c.chunk_no).await?;
            }
        }
    }
    let outcome = reader.await?;
    match outcome {
        Ok((totals, mut notes)) => {
            if totals.rows_seen == 0 {
                return Ok(Err(FileError::NoDataRows));
            }
            if let Some(n) = ignored_note {
                notes.push(n);
            }
            if totals.rows_blank > 0 {
                notes.push(format!("{} empty rows skipped", totals.rows_blank));
            }
            let sha256 = match digest.lock() {
                Ok(d) => sha2::Digest::finalize(d.clone()).to_vec(),
                Err(_) => anyhow::bail!("the content hash was poisoned"),
            };
            Ok(Ok((totals, notes, sha256)))
        }
        Err(Stop::File(e)) => Ok(Err(e)),
        Err(Stop::Cancelled) => anyhow::bail!("the split was cancelled"),
    }
}
