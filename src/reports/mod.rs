//! Reports finance staff download: records (`reports`), the VOP compliance report's
//! content, CSV/XLSX writers, formula-injection neutralising and signed download links.

use std::{borrow::Cow, io::Write, path::Path};

use chrono::{DateTime, NaiveDate, Utc};
use hmac::{Hmac, Mac};
use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

pub mod finance;

use crate::{
    db::{Db, DbError},
    uploads::mask_iban,
};

/// File format of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated, UTF-8.
    Csv,
    /// Excel workbook: a Summary sheet and a Results sheet.
    #[default]
    Xlsx,
}

impl Format {
    /// As stored and as the file extension.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Xlsx => "xlsx",
        }
    }

    /// From its stored / command-line name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "csv" => Some(Format::Csv),
            "xlsx" => Some(Format::Xlsx),
            _ => None,
        }
    }

    /// HTTP content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        }
    }
}

/// A `reports` row.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct ReportRecord {
    /// Id (also in the download link).
    pub id: Uuid,
    /// `vop`.
    pub kind: String,
    /// `csv` | `xlsx`.
    pub format: String,
    /// Upload reported on, if one.
    pub upload_id: Option<Uuid>,
    /// Range start (checked_at date), if a range.
    pub date_from: Option<NaiveDate>,
    /// Range end (inclusive).
    pub date_to: Option<NaiveDate>,
    /// `pending` | `ready` | `failed`.
    pub status: String,
    /// Where the file is.
    pub object_key: Option<String>,
    /// Download file name.
    pub file_name: Option<String>,
    /// Result rows in the file.
    pub rows: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Requested.
    pub created_at: DateTime<Utc>,
    /// Written.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The report row of a given id.
pub async fn get(db: &Db, id: Uuid) -> Result<Option<ReportRecord>, DbError> {
    let mut tx = db.begin().await?;
    let r = tx
        .fetch_optional(sqlx::query_as("SELECT * FROM reports WHERE id = $1").bind(id))
        .await?;
    tx.commit().await?;
    Ok(r)
}

/// The latest reports, newest first.
pub async fn list(db: &Db, limit: i64) -> Result<Vec<ReportRecord>, DbError> {
    let mut tx = db.begin().await?;
    let r = tx
        .fetch_all(
            sqlx::query_as("SELECT * FROM reports ORDER BY created_at DESC LIMIT $1").bind(limit),
        )
        .await?;
    tx.commit().await?;
    Ok(r)
}

/// Cells starting with these are formulas to a spreadsheet program.
const FORMULA_START: &[char] = &['=', '+', '-', '@', '\t', '\r'];

/// Makes a text cell inert in spreadsheet programs: a leading `'` before `= + - @`, tab
/// or CR (OWASP's CSV-injection advice).
pub fn neutralise(s: &str) -> Cow<'_, str> {
    if s.starts_with(FORMULA_START) {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Result columns of the VOP report, in order.
pub const VOP_COLUMNS: [&str; 11] = [
    "row",
    "debtor_reference",
    "name",
    "iban",
    "bic",
    "vop_result",
    "suggested_name",
    "bav_result",
    "checked_at",
    "provider_reference",
    "error",
];

/// One result row of the VOP report (IBAN masked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VopRow {
    /// Values in [`VOP_COLUMNS`] order, not yet neutralised.
    pub cells: [String; 11],
}

impl AsRef<[String]> for VopRow {
    fn as_ref(&self) -> &[String] {
        &self.cells
    }
}

/// Totals shown on the report's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// (label, value) pairs, in order.
    pub lines: Vec<(String, String)>,
}

/// What a VOP report covers.
#[derive(Debug, Clone)]
pub struct Scope {
    /// One upload…
    pub upload_id: Option<Uuid>,
    /// …or results checked within these dates (inclusive).
    pub from: Option<NaiveDate>,
    /// End date.
    pub to: Option<NaiveDate>,
}

const SCOPE_SQL: &str = "($1::uuid IS NULL OR r.upload_id = $1) \
    AND ($2::date IS NULL OR r.checked_at >= $2::date) \
    AND ($3::date IS NULL OR r.checked_at < $3::date + 1)";

/// Reads the results in scope (ordered by upload and row) and the summary.
pub async fn vop_content(db: &Db, scope: &Scope) -> Result<(Summary, Vec<VopRow>), DbError> {
    let mut tx = db.begin().await?;
    type R = (
        i32,
        String,
        String,
        String,
        Option<String>,
        String,
        Option<String>,
        String,
        DateTime<Utc>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<R> = tx
        .fetch_all(
            sqlx::query_as(&format!(
                "SELECT d.row_no, d.reference, d.name, d.iban, d.bic, r.vop_result, r.suggested_name, r.bav_result, \
                 r.checked_at, r.vop_reference, r.bav_reference, r.error \
                 FROM vop_results r JOIN debtors d ON d.id = r.debtor_id WHERE {SCOPE_SQL} \
                 ORDER BY r.upload_id, d.row_no"
            ))
            .bind(scope.upload_id)
            .bind(scope.from)
            .bind(scope.to),
        )
        .await?;
    let mut summary = Summary::default();
    summary.lines.push((
        "Report".into(),
        "Verification of Payee / Bank Account Verification".into(),
    ));
    if let Some(u) = scope.upload_id {
        summary.lines.push(("Upload".into(), u.to_string()));
        let totals: Option<(String, i64, i64, i64, i64)> = tx
            .fetch_optional(
                sqlx::query_as(
                    "SELECT file_name, rows_seen, rows_imported, rows_valid, rows_invalid FROM uploads WHERE id = $1",
                )
                .bind(u),
            )
            .await?;
        if let Some((file, seen, imported, valid, invalid)) = totals {
            for (k, v) in [
                ("File", file),
                ("Rows in file", seen.to_string()),
                ("Debtors imported", imported.to_string()),
                ("Valid", valid.to_string()),
                ("Invalid (not verified)", invalid.to_string()),
            ] {
                summary.lines.push((k.into(), v));
            }
        }
    }
    if scope.from.is_some() || scope.to.is_some() {
        summary.lines.push((
            "Checked between".into(),
            format!(
                "{} and {}",
                scope
                    .from
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "the start".into()),
                scope
                    .to
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "today".into())
            ),
        ));
    }
    summary
        .lines
        .push(("Verified".into(), rows.len().to_string()));
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &rows {
        *counts.entry(format!("VOP {}", r.5)).or_default() += 1;
        *counts.entry(format!("BAV {}", r.7)).or_default() += 1;
    }
    for (k, v) in counts {
        summary.lines.push((k, v.to_string()));
    }
    summary
        .lines
        .push(("Generated at".into(), Utc::now().to_rfc3339()));
    tx.commit().await?;
    let rows = rows
        .into_iter()
        .map(|r| VopRow {
            cells: [
                r.0.to_string(),
                r.1,
                r.2,
                mask_iban(&r.3),
                r.4.unwrap_or_default(),
                r.5,
                r.6.unwrap_or_default(),
                r.7,
                r.8.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                match (r.9, r.10) {
                    (Some(a), Some(b)) => format!("{a} / {b}"),
                    (a, b) => a.or(b).unwrap_or_default(),
                },
                r.11.unwrap_or_default(),
            ],
        })
        .collect();
    Ok((summary, rows))
}

/// Writes the report as CSV: the summary as `key,value` lines, a blank line, then the
/// result table with a header. Every text cell is neutralised.
pub fn write_csv<R: AsRef<[String]>>(
    path: &Path,
    summary: &Summary,
    columns: &[&str],
    rows: &[R],
) -> anyhow::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut w = csv::WriterBuilder::new().flexible(true).from_writer(file);
    for (k, v) in &summary.lines {
        w.write_record([neutralise(k).as_ref(), neutralise(v).as_ref()])?;
    }
    w.write_record([""])?;
    w.write_record(columns)?;
    for r in rows {
        w.write_record(r.as_ref().iter().map(|c| neutralise(c).into_owned()))?;
    }
    w.into_inner()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .flush()?;
    Ok(())
}

/// Writes the report as XLSX: a `Summary` sheet and a `Results` sheet (constant memory).
pub fn write_xlsx<R: AsRef<[String]>>(
    path: &Path,
    summary: &Summary,
    columns: &[&str],
    rows: &[R],
) -> anyhow::Result<()> {
    use rust_xlsxwriter::{Format as XFormat, Workbook};
    let mut wb = Workbook::new();
    let bold = XFormat::new().set_bold();
    {
        let s = wb.add_worksheet_with_constant_memory()?;
        s.set_name("Summary")?;
        s.set_column_width(0, 28)?;
        s.set_column_width(1, 48)?;
        for (i, (k, v)) in summary.lines.iter().enumerate() {
            let r = u32::try_from(i)?;
            s.write_string_with_format(r, 0, neutralise(k).as_ref(), &bold)?;
            s.write_string(r, 1, neutralise(v).as_ref())?;
        }
    }
    {
        let s = wb.add_worksheet_with_constant_memory()?;
        s.set_name("Results")?;
        for (c, h) in columns.iter().enumerate() {
            s.write_string_with_format(0, u16::try_from(c)?, *h, &bold)?;
        }
        for (i, r) in rows.iter().enumerate() {
            let row = u32::try_from(i + 1)?;
            for (c, v) in r.as_ref().iter().enumerate() {
                s.write_string(row, u16::try_from(c)?, neutralise(v).as_ref())?;
            }
        }
    }
    wb.save(path)?;
    Ok(())
}

/// What a generated report is about (the `reports` row's own columns).
#[derive(Debug, Clone)]
pub struct Meta<'a> {
    /// Report id (deterministic per request: a repeat writes the same report).
    pub id: Uuid,
    /// `vop`, `ledger_sync`, `billing_run`, `returns`.
    pub kind: &'a str,
    /// File format.
    pub format: Format,
    /// Download file name (without extension).
    pub name: String,
    /// First day covered.
    pub date_from: Option<NaiveDate>,
    /// Last day covered.
    pub date_to: Option<NaiveDate>,
}

/// Writes a report (summary, header, rows; formula-safe) to object storage and records it as
/// ready in `reports`, downloadable through a signed link.
pub async fn publish<R: AsRef<[String]> + Send + Sync + 'static>(
    app: &crate::context::AppContext,
    meta: Meta<'_>,
    summary: Summary,
    columns: &'static [&'static str],
    rows: Vec<R>,
) -> anyhow::Result<()> {
    let mut tx = app.db.begin().await?;
    tx.execute(
        sqlx::query(
            "INSERT INTO reports (id, kind, format, date_from, date_to) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(meta.id)
        .bind(meta.kind)
        .bind(meta.format.as_str())
        .bind(meta.date_from)
        .bind(meta.date_to),
    )
    .await?;
    tx.commit().await?;
    let n = rows.len();
    let file_name = format!("{}.{}", meta.name, meta.format.as_str());
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(&file_name);
    let (p, format) = (path.clone(), meta.format);
    tokio::task::spawn_blocking(move || match format {
        Format::Csv => write_csv(&p, &summary, columns, &rows),
        Format::Xlsx => write_xlsx(&p, &summary, columns, &rows),
    })
    .await??;
    let key = format!("reports/{}/{file_name}", meta.id);
    app.storage.put_file(&key, &path).await?;
    let mut tx = app.db.begin().await?;
    tx.execute(
        sqlx::query(
            "UPDATE reports SET status = 'ready', object_key = $2, file_name = $3, rows = $4, error = NULL, \
             finished_at = now() WHERE id = $1",
        )
        .bind(meta.id)
        .bind(&key)
        .bind(&file_name)
        .bind(i64::try_from(n)?),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(report_id = %meta.id, kind = meta.kind, rows = n, "report ready");
    Ok(())
}

/// Why a download link is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Past its expiry.
    #[error("this download link has expired; ask for a new one")]
    Expired,
    /// Signature does not match (altered id, expiry or signature).
    #[error("this download link is not valid")]
    BadSignature,
}

fn mac(secret: &SecretString, id: Uuid, expires: i64) -> Hmac<Sha256> {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(format!("{id}.{expires}").as_bytes());
    m
}

/// Hex HMAC-SHA256 over `"<id>.<expires>"`.
pub fn sign(secret: &SecretString, id: Uuid, expires: i64) -> String {
    hex::encode(mac(secret, id, expires).finalize().into_bytes())
}

/// Checks a link's signature (constant time) and expiry.
pub fn verify(
    secret: &SecretString,
    id: Uuid,
    expires: i64,
    signature: &str,
    now: DateTime<Utc>,
) -> Result<(), LinkError> {
    let sig = hex::decode(signature).map_err(|_| LinkError::BadSignature)?;
    mac(secret, id, expires)
        .verify_slice(&sig)
        .map_err(|_| LinkError::BadSignature)?;
    if now.timestamp() > expires {
        return Err(LinkError::Expired);
    }
    Ok(())
}

/// A signed download URL of a report valid for `ttl` (default `reports.link_ttl`), and its
/// expiry; `None` without `reports.link_secret`.
pub fn signed_link(
    s: &crate::config::ReportSettings,
    id: Uuid,
    ttl: Option<std::time::Duration>,
) -> Option<(String, DateTime<Utc>)> {
    let secret = s.link_secret.as_ref()?;
    let ttl = chrono::Duration::from_std(ttl.unwrap_or(s.link_ttl))
        .unwrap_or(chrono::Duration::hours(24));
    let expires = Utc::now() + ttl;
    Some((
        link(&s.public_url, secret, id, expires.timestamp()),
        expires,
    ))
}

/// The signed download URL of a report, valid until `expires` (Unix seconds).
pub fn link(public_url: &str, secret: &SecretString, id: Uuid, expires: i64) -> String {
    format!(
        "{}/reports/{id}/download?expires={expires}&signature={}",
        public_url.trim_end_matches('/'),
        sign(secret, id, expires)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_starts_are_neutralised_and_nothing_else() {
        for s in ["=1+1", "+49 30 1234", "-2", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(neutralise(s), format!("'{s}"));
        }
        for s in ["Anna", "", "1=1", "DE89****3000", "a-b"] {
            assert_eq!(neutralise(s), s);
        }
    }

    #[test]
    fn links_verify_until_expiry_and_refuse_any_change() {
        let secret = SecretString::from("s3cret-key");
        let id = Uuid::now_v7();
        let now = Utc::now();
        let exp = now.timestamp() + 60;
        let sig = sign(&secret, id, exp);
        assert_eq!(verify(&secret, id, exp, &sig, now), Ok(()));
        assert_eq!(
            verify(&secret, id, exp, &sig, now + chrono::Duration::seconds(61)),
            Err(LinkError::Expired)
        );
        // A longer expiry, another id, another key, a flipped signature: all refused.
        assert_eq!(
            verify(&secret, id, exp + 3600, &sig, now),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            verify(&secret, Uuid::now_v7(), exp, &sig, now),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            verify(&SecretString::from("other"), id, exp, &sig, now),
            Err(LinkError::BadSignature)
        );
        let mut bad = sig.clone().into_bytes();
        bad[0] = if bad[0] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            verify(&secret, id, exp, std::str::from_utf8(&bad).unwrap(), now),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            verify(&secret, id, exp, "zz", now),
            Err(LinkError::BadSignature)
        );
        let url = link("http://x:8080/", &secret, id, exp);
        assert!(url.starts_with(&format!(
            "http://x:8080/reports/{id}/download?expires={exp}&signature="
        )));
    }
}
