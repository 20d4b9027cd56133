//! Upload records: the `uploads` table, progress figures, and what the CLI and HTTP show.
//!
//! Status moves `pending → splitting → importing → completed | failed`. The `upload` job
//! splits a file into staged chunks; each `upload_chunk` job imports one. Totals always add
//! up: rows seen = imported + duplicates + rejected (blank rows are counted apart).

pub mod convert;
mod field;
pub mod key_filter;
pub mod staged;

pub use field::{ColumnAliases, ColumnMap, Field, FieldKind, normalize_header};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::db::{Db, DbError, Tx};

/// Where an uploaded file is stored: `uploads/<yyyy>/<mm>/<dd>/<id>/<file name>`.
pub fn object_key_for(id: Uuid, file_name: &str, now: DateTime<Utc>) -> String {
    let safe: String = file_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.');
    let safe = if safe.is_empty() { "file" } else { safe };
    format!("uploads/{}/{id}/{safe}", now.format("%Y/%m/%d"))
}

/// What finance staff read in `uploads.error` when the failure was internal (database,
/// storage, a bug): a sentence, never the error chain — ops find that in the job's log line
/// and in `finworker jobs show`.
pub const STAFF_INTERNAL_ERROR: &str = "the file could not be processed because of an internal error; \
    operations have been alerted and can retry the upload";

/// Prefix of one upload's staged chunks (removed when the upload ends).
pub fn staging_prefix(id: Uuid) -> String {
    format!("staging/{id}")
}

/// Key of one staged chunk.
pub fn staged_key(id: Uuid, chunk_no: u32) -> String {
    format!("staging/{id}/chunk-{chunk_no:06}.rows")
}

/// One row of `uploads`.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct UploadRecord {
    /// Upload id.
    pub id: Uuid,
    /// Object key of the file.
    pub object_key: String,
    /// Original file name.
    pub file_name: String,
    /// Sheet asked for (spreadsheets).
    pub sheet: Option<String>,
    /// Detected format: csv, xlsx, xls, ods.
    pub format: Option<String>,
    /// Detected text encoding (CSV).
    pub encoding: Option<String>,
    /// Detected delimiter (CSV).
    pub delimiter: Option<String>,
    /// pending, splitting, importing, completed, failed.
    pub status: String,
    /// File size.
    pub size_bytes: Option<i64>,
    /// Bytes the split has read (CSV), for the estimate while it runs.
    pub bytes_read: i64,
    /// Rows per chunk.
    pub chunk_rows: i32,
    /// Chunks in all, once the split has ended.
    pub chunks_total: Option<i32>,
    /// Chunks staged so far.
    pub chunks_staged: i32,
    /// Chunks imported.
    pub chunks_done: i32,
    /// Data rows read by the split so far (final once it ends).
    pub rows_seen: i64,
    /// Rows with no value at all (not debtors; not in rows_seen).
    pub rows_blank: i64,
    /// Rows imported as debtors.
    pub rows_imported: i64,
    /// Rows that duplicate a debtor (listed in upload_duplicates).
    pub rows_duplicate: i64,
    /// Rows rejected (listed in upload_rejects).
    pub rows_rejected: i64,
    /// Column mapping found from the header.
    pub columns: Option<serde_json::Value>,
    /// Error that failed the upload.
    pub error: Option<String>,
    /// Remarks (ignored columns, encoding fallbacks, next stage).
    pub note: Option<String>,
    /// When the record was made.
    pub created_at: DateTime<Utc>,
    /// When the split began.
    pub started_at: Option<DateTime<Utc>>,
    /// When the split ended.
    pub split_at: Option<DateTime<Utc>>,
    /// When the upload completed or failed.
    pub finished_at: Option<DateTime<Utc>>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Chunks validated.
    pub chunks_validated: i32,
    /// Debtors that passed validation.
    pub rows_valid: i64,
    /// Debtors that failed validation.
    pub rows_invalid: i64,
    /// When validation ended.
    pub validated_at: Option<DateTime<Utc>>,
    /// Chunks whose valid debtors were verified (VOP/BAV).
    pub chunks_verified: i32,
    /// When verification ended.
    pub verified_at: Option<DateTime<Utc>>,
    /// Imported debtors that repeat no earlier upload's debtor.
    pub rows_new: i64,
    /// Imported debtors that repeat an earlier upload's debtor unchanged.
    pub rows_unchanged: i64,
    /// Imported debtors that repeat an earlier upload's debtor with a change (amount,
    /// mandate, name or BIC; listed per debtor in `debtors.changes`).
    pub rows_changed: i64,
    /// Import the file even when an earlier upload had the same content.
    pub allow_same_file: bool,
}

/// Progress figures derived from a record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Progress {
    /// Chunks imported.
    pub chunks_done: i64,
    /// Chunks in all (an estimate from the bytes read while the split runs).
    pub chunks_total: Option<i64>,
    /// Whether `chunks_total` is final.
    pub chunks_total_final: bool,
    /// Rows settled (imported + duplicates + rejected).
    pub rows_done: i64,
    /// Rows settled per second since the split began.
    pub rows_per_second: Option<f64>,
    /// Seconds left at the current rate.
    pub eta_seconds: Option<f64>,
    /// 0..=100.
    pub percent: f64,
}

/// A record with its progress, as `uploads show` and `GET /api/uploads/{id}` print it.
#[derive(Debug, Clone, Serialize)]
pub struct UploadView {
    /// The record.
    #[serde(flatten)]
    pub record: UploadRecord,
    /// Progress.
    pub progress: Progress,
    /// Debtors stored for this upload.
    pub rows_accounted: bool,
}

impl UploadRecord {
    /// Whether the upload has ended.
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed")
    }

    /// Progress at `now`.
    pub fn progress(&self, now: DateTime<Utc>) -> Progress {
        let rows_done = self.rows_imported + self.rows_duplicate + self.rows_rejected;
        let chunks_done = i64::from(self.chunks_done);
        let (total, is_final) = match self.chunks_total {
            Some(t) => (Some(i64::from(t)), true),
            None => {
                // While splitting: scale the chunks staged by the share of the file read.
                let est = match (self.size_bytes, self.bytes_read) {
                    (Some(size), read) if read > 0 && size > 0 && self.chunks_staged > 0 => {
                        let scaled = f64::from(self.chunks_staged) * size as f64 / read as f64;
                        Some((scaled.ceil() as i64).max(i64::from(self.chunks_staged)))
                    }
                    _ => None,
                };
                (est.or(Some(i64::from(self.chunks_staged))), false)
            }
        };
        let elapsed = self
            .started_at
            .map(|s| (self.finished_at.unwrap_or(now) - s).num_milliseconds() as f64 / 1000.0);
        let rate = match elapsed {
            Some(e) if e > 0.0 && rows_done > 0 => Some(rows_done as f64 / e),
            _ => None,
        };
        let percent = match (self.status.as_str(), total) {
            ("completed", _) => 100.0,
            (_, Some(t)) if t > 0 => (chunks_done as f64 * 100.0 / t as f64).min(100.0),
            _ => 0.0,
        };
        let eta = match (self.is_final(), rate, total) {
            (true, _, _) => Some(0.0),
            (false, Some(r), Some(_)) if is_final => {
                let rows_total = self.rows_seen.max(rows_done) as f64;
                Some(((rows_total - rows_done as f64) / r).max(0.0))
            }
            _ => None,
        };
        Progress {
            chunks_done,
            chunks_total: total,
            chunks_total_final: is_final,
            rows_done,
            rows_per_second: rate.map(|r| (r * 10.0).round() / 10.0),
            eta_seconds: eta.map(|e| (e * 10.0).round() / 10.0),
            percent: (percent * 10.0).round() / 10.0,
        }
    }

    /// The record with its progress.
    pub fn view(self, now: DateTime<Utc>) -> UploadView {
        let progress = self.progress(now);
        let rows_accounted = self.status != "completed"
            || self.rows_seen == self.rows_imported + self.rows_duplicate + self.rows_rejected;
        UploadView {
            record: self,
            progress,
            rows_accounted,
        }
    }
}

const SELECT: &str = "SELECT id, object_key, file_name, sheet, format, encoding, delimiter, status, \
     size_bytes, bytes_read, chunk_rows, chunks_total, chunks_staged, chunks_done, rows_seen, rows_blank, \
     rows_imported, rows_duplicate, rows_rejected, columns, error, note, created_at, started_at, \
     split_at, finished_at, updated_at, chunks_validated, rows_valid, rows_invalid, validated_at, \
     chunks_verified, verified_at, rows_new, rows_unchanged, rows_changed, allow_same_file FROM uploads";

/// Reads one record.
pub async fn get(db: &Db, id: Uuid) -> Result<Option<UploadRecord>, DbError> {
    let mut tx = db.begin().await?;
    let r = get_in(&mut tx, id, false).await?;
    tx.commit().await?;
    Ok(r)
}

/// The latest records, newest first.
pub async fn list(db: &Db, limit: i64) -> Result<Vec<UploadRecord>, DbError> {
    let mut tx = db.begin().await?;
    let sql = format!("{SELECT} ORDER BY created_at DESC LIMIT $1");
    let r = tx
        .fetch_all(sqlx::query_as::<_, UploadRecord>(&sql).bind(limit))
        .await?;
    tx.commit().await?;
    Ok(r)
}

/// Reads one record inside a transaction, optionally locking it.
pub async fn get_in(tx: &mut Tx, id: Uuid, lock: bool) -> Result<Option<UploadRecord>, DbError> {
    let sql = format!(
        "{SELECT} WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    tx.fetch_optional(sqlx::query_as::<_, UploadRecord>(&sql).bind(id))
        .await
}

/// Inserts a `pending` record unless one with this id exists.
pub async fn create_pending(
    tx: &mut Tx,
    id: Uuid,
    object_key: &str,
    file_name: &str,
    sheet: Option<&str>,
    chunk_rows: u32,
    allow_same_file: bool,
) -> Result<(), DbError> {
    tx.execute(
        sqlx::query(
            "INSERT INTO uploads (id, object_key, file_name, sheet, chunk_rows, allow_same_file) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(object_key)
        .bind(file_name)
        .bind(sheet)
        .bind(i32::try_from(chunk_rows).unwrap_or(i32::MAX))
        .bind(allow_same_file),
    )
    .await?;
    Ok(())
}

/// One rejected row.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, PartialEq)]
pub struct Reject {
    /// Row in the file (CSV: line where the record starts; spreadsheets: sheet row; header = 1).
    pub row_no: i32,
    /// Column header as written in the file, when one column is at fault.
    pub column_name: Option<String>,
    /// The debtor field, when one is at fault.
    pub field: Option<String>,
    /// Why.
    pub reason: String,
    /// The offending value (IBANs masked), truncated.
    pub value: Option<String>,
}

/// The first `limit` rejects of an upload, in file order.
pub async fn rejects(db: &Db, id: Uuid, limit: i64) -> Result<Vec<Reject>, DbError> {
    let mut tx = db.begin().await?;
    let r = tx
        .fetch_all(
            sqlx::query_as::<_, Reject>(
                "SELECT row_no, column_name, field, reason, value FROM upload_rejects \
                 WHERE upload_id = $1 ORDER BY row_no LIMIT $2",
            )
            .bind(id)
            .bind(limit),
        )
        .await?;
    tx.commit().await?;
    Ok(r)
}

pub use crate::iban::mask as mask_iban;

/// Gives debtors stored before keyed IBAN hashing their lookup key (`iban_key`), in
/// batches. Run by `finworker migrate` and by workers that import at start; a no-op once
/// done (an index probe).
pub async fn backfill_iban_keys(db: &Db, hasher: &crate::iban::IbanHasher) -> Result<u64, DbError> {
    let mut total = 0u64;
    loop {
        let mut tx = db.begin().await?;
        let rows: Vec<(i64, String)> = tx
            .fetch_all(sqlx::query_as(
                "SELECT id, iban FROM debtors WHERE iban_key IS NULL LIMIT 10000 FOR UPDATE SKIP LOCKED",
            ))
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(total);
        }
        let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
        let keys: Vec<i64> = rows.iter().map(|(_, iban)| hasher.key(iban)).collect();
        total += tx
            .execute(
                sqlx::query(
                    "UPDATE debtors d SET iban_key = v.k FROM unnest($1::bigint[], $2::bigint[]) AS v(id, k) WHERE d.id = v.id",
                )
                .bind(&ids)
                .bind(&keys),
            )
            .await?;
        // Their uploads' keys are not all in the linking filter any more: imports probe every
        // key until it has them again (key_filter::catch_up).
        tx.execute(
            sqlx::query(
                "UPDATE uploads SET key_filtered = false WHERE key_filtered AND id IN (SELECT DISTINCT upload_id FROM debtors WHERE id = ANY($1))",
            )
            .bind(&ids),
        )
        .await?;
        tx.commit().await?;
    }
}

/// Stores a local file and enqueues its `upload` job (what `finworker upload` does).
pub async fn submit(
    ctx: &crate::context::AppContext,
    file: &std::path::Path,
    name: Option<&str>,
    sheet: Option<&str>,
    allow_same_file: bool,
) -> anyhow::Result<Uuid> {
    use anyhow::Context as _;
    let id = Uuid::now_v7();
    let file_name = name
        .map(str::to_string)
        .or_else(|| file.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "upload".into());
    let key = object_key_for(id, &file_name, Utc::now());
    ctx.storage
        .put_file(&key, file)
        .await
        .with_context(|| format!("storing {} in {}", file.display(), ctx.storage.label()))?;
    let mut tx = ctx.db.begin().await?;
    create_pending(
        &mut tx,
        id,
        &key,
        &file_name,
        sheet,
        ctx.settings.upload.chunk_rows,
        allow_same_file,
    )
    .await?;
    tx.commit().await?;
    let job = crate::jobs::Upload {
        object_key: key,
        file_name: Some(file_name),
        upload_id: Some(id),
        sheet: sheet.map(str::to_string),
        allow_same_file,
    };
    ctx.enqueue(
        &job,
        crate::context::EnqueueOptions {
            idempotency_key: Some(format!("upload:{id}")),
            ..Default::default()
        },
    )
    .await?;
    Ok(id)
}

/// Polls an upload until it ends, drawing a progress bar on a terminal.
pub async fn watch(
    ctx: &crate::context::AppContext,
    id: Uuid,
    every: std::time::Duration,
) -> anyhow::Result<UploadRecord> {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} chunks  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut outage_since: Option<std::time::Instant> = None;
    loop {
        let rec = match get(&ctx.db, id).await {
            Ok(rec) => rec.ok_or_else(|| anyhow::anyhow!("no upload {id}"))?,
            // The workers ride out a database outage (their jobs are snoozed); so does the
            // one waiting for them: say so, and keep polling.
            Err(e) if e.is_outage() => {
                let since = *outage_since.get_or_insert_with(std::time::Instant::now);
                bar.set_message(format!(
                    "database unreachable for {}s; waiting for it (the upload resumes by itself)",
                    since.elapsed().as_secs()
                ));
                bar.tick();
                tokio::time::sleep(every).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        outage_since = None;
        let p = rec.progress(Utc::now());
        bar.set_length(u64::try_from(p.chunks_total.unwrap_or(0)).unwrap_or(0));
        bar.set_position(u64::try_from(p.chunks_done).unwrap_or(0));
        bar.set_message(format!(
            "{}  {} rows/s  ETA {}",
            rec.status,
            p.rows_per_second.map_or("-".into(), |r| format!("{r:.0}")),
            p.eta_seconds.map_or("-".into(), |e| format!("{e:.0}s"))
        ));
        if rec.is_final() {
            bar.finish_and_clear();
            return Ok(rec);
        }
        tokio::time::sleep(every).await;
    }
}

/// Human-readable summary of an upload (the CLI prints it).
pub fn describe(rec: &UploadRecord, now: DateTime<Utc>) -> String {
    use std::fmt::Write as _;
    let p = rec.progress(now);
    let mut s = String::new();
    let _ = writeln!(s, "upload     {}", rec.id);
    let _ = writeln!(s, "file       {} ({})", rec.file_name, rec.object_key);
    let _ = writeln!(
        s,
        "format     {}{}{}",
        rec.format.as_deref().unwrap_or("-"),
        rec.encoding
            .as_deref()
            .map(|e| format!(", {e}"))
            .unwrap_or_default(),
        rec.delimiter
            .as_deref()
            .map(|d| format!(", delimiter {d}"))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "status     {}", rec.status);
    let _ = writeln!(
        s,
        "chunks     {}/{}{}",
        p.chunks_done,
        p.chunks_total.map_or("?".into(), |t| t.to_string()),
        if p.chunks_total_final {
            ""
        } else {
            " (estimate)"
        }
    );
    let _ = writeln!(
        s,
        "rows       {} seen: {} imported, {} duplicates, {} rejected ({} blank rows skipped)",
        rec.rows_seen, rec.rows_imported, rec.rows_duplicate, rec.rows_rejected, rec.rows_blank
    );
    if rec.rows_imported > 0 {
        let _ = writeln!(
            s,
            "debtors    {} new, {} repeated from earlier uploads unchanged, {} repeated with changes",
            rec.rows_new, rec.rows_unchanged, rec.rows_changed
        );
    }
    let _ = writeln!(
        s,
        "rate       {} rows/s, ETA {}",
        p.rows_per_second.map_or("-".into(), |r| format!("{r:.0}")),
        p.eta_seconds.map_or("-".into(), |e| format!("{e:.1}s"))
    );
    if rec.chunks_validated > 0 {
        let _ = writeln!(
            s,
            "validated  {}/{} chunks: {} valid, {} invalid{}",
            rec.chunks_validated,
            p.chunks_total.map_or("?".into(), |t| t.to_string()),
            rec.rows_valid,
            rec.rows_invalid,
            if rec.validated_at.is_some() {
                ""
            } else {
                " (running)"
            }
        );
    }
    if rec.chunks_verified > 0 {
        let _ = writeln!(
            s,
            "verified   {}/{} chunks{}",
            rec.chunks_verified,
            p.chunks_total.map_or("?".into(), |t| t.to_string()),
            if rec.verified_at.is_some() {
                ""
            } else {
                " (running)"
            }
        );
    }
    if let Some(e) = &rec.error {
        let _ = writeln!(s, "error      {e}");
    }
    if let Some(n) = &rec.note {
        let _ = writeln!(s, "note       {n}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> UploadRecord {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        UploadRecord {
            id: Uuid::nil(),
            object_key: "k".into(),
            file_name: "f.csv".into(),
            sheet: None,
            format: Some("csv".into()),
            encoding: None,
            delimiter: None,
            status: "importing".into(),
            size_bytes: Some(1000),
            bytes_read: 0,
            chunk_rows: 10,
            chunks_total: Some(10),
            chunks_staged: 10,
            chunks_done: 4,
            rows_seen: 100,
            rows_blank: 0,
            rows_imported: 35,
            rows_duplicate: 3,
            rows_rejected: 2,
            columns: None,
            error: None,
            note: None,
            created_at: t0,
            started_at: Some(t0),
            split_at: Some(t0),
            finished_at: None,
            updated_at: t0,
            chunks_validated: 0,
            rows_valid: 0,
            rows_invalid: 0,
            validated_at: None,
            chunks_verified: 0,
            verified_at: None,
            rows_new: 0,
            rows_unchanged: 0,
            rows_changed: 0,
            allow_same_file: false,
        }
    }

    #[test]
    fn progress_gives_rate_and_eta_from_rows_settled() {
        let r = record();
        let now = r.started_at.unwrap() + chrono::Duration::seconds(4);
        let p = r.progress(now);
        assert_eq!(p.rows_done, 40);
        assert_eq!(p.rows_per_second, Some(10.0));
        assert_eq!(p.eta_seconds, Some(6.0));
        assert_eq!(p.percent, 40.0);
        assert!(p.chunks_total_final);
    }

    #[test]
    fn while_splitting_the_chunk_total_is_an_estimate() {
        let mut r = record();
        r.chunks_total = None;
        r.chunks_staged = 3;
        r.bytes_read = 250;
        let p = r.progress(r.started_at.unwrap());
        assert!(!p.chunks_total_final);
        assert_eq!(p.eta_seconds, None);
        assert_eq!(p.chunks_total, Some(12));
    }

    #[test]
    fn ibans_are_masked_but_keep_country_check_digits_and_tail() {
        assert_eq!(
            mask_iban("DE89370400440532013000"),
            "DE89**************3000"
        );
        assert_eq!(
            mask_iban("DE89 3704 0044 0532 0130 00"),
            "DE89**************3000"
        );
        assert_eq!(mask_iban("short"), "*****");
    }

    #[test]
    fn object_keys_are_dated_and_safe() {
        let t = DateTime::parse_from_rfc3339("2026-03-05T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let k = object_key_for(Uuid::nil(), "../März Liste.csv", t);
        assert_eq!(
            k,
            "uploads/2026/03/05/00000000-0000-0000-0000-000000000000/_M_rz_Liste.csv"
        );
    }
}

/// VOP/BAV results of an upload so far.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Verification {
    /// Debtors with a result.
    pub checked: i64,
    /// Count per VOP result (match, close_match, no_match, not_possible, error).
    pub vop: std::collections::BTreeMap<String, i64>,
    /// Count per BAV result (valid, closed, no_direct_debit, not_possible, error).
    pub bav: std::collections::BTreeMap<String, i64>,
    /// Results reused from the cache (no provider call).
    pub from_cache: i64,
}

impl Verification {
    /// One line for `uploads show`.
    pub fn describe(&self) -> String {
        let join = |m: &std::collections::BTreeMap<String, i64>| {
            m.iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "vop        {} checked ({} from cache): {}\nbav        {}\n",
            self.checked,
            self.from_cache,
            join(&self.vop),
            join(&self.bav)
        )
    }
}

/// Counts an upload's VOP/BAV results.
pub async fn verification(db: &Db, id: Uuid) -> Result<Verification, DbError> {
    let mut tx = db.begin().await?;
    let rows: Vec<(String, String, bool, i64)> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT vop_result, bav_result, from_cache, count(*) FROM vop_results WHERE upload_id = $1 \
                 GROUP BY 1, 2, 3",
            )
            .bind(id),
        )
        .await?;
    tx.commit().await?;
    let mut v = Verification::default();
    for (vop, bav, cached, n) in rows {
        v.checked += n;
        *v.vop.entry(vop).or_default() += n;
        *v.bav.entry(bav).or_default() += n;
        if cached {
            v.from_cache += n;
        }
    }
    Ok(v)
}

/// Why a value over `upload.max_field_bytes` rejects its row (split and import say it alike).
pub fn too_long(field: Field, len: usize, max: usize) -> String {
    format!(
        "the {} is {len} bytes long; at most {max} are accepted",
        field.as_str()
    )
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary
/// (`str::truncate` at a byte in the middle of a character panics).
pub fn cut_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod cut_tests {
    use super::cut_at_char_boundary;

    #[test]
    fn a_multibyte_character_at_the_limit_is_left_out_whole() {
        let s = format!("{}é and more", "a".repeat(199)); // 'é' spans bytes 199 and 200
        assert_eq!(cut_at_char_boundary(&s, 200), "a".repeat(199));
        assert_eq!(cut_at_char_boundary("short", 200), "short");
        assert_eq!(cut_at_char_boundary("€€", 4), "€");
    }
}
