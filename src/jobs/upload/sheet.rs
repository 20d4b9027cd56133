//! Spreadsheets through calamine: XLSX streamed cell by cell, XLS and ODS sheet by sheet.
//!
//! Zip-based files (XLSX, ODS): the sizes the archive declares are checked first, and the
//! zip reader never unpacks a part beyond its declared size, so a zip bomb fails the upload
//! before calamine allocates anything for it. Cells become text
//! the way Excel shows them in "General" format: numbers with 15 significant digits and no
//! exponent (IBANs and references typed into numeric cells keep their digits), dates as ISO
//! dates, amounts exactly as displayed.

use std::{
    fs::File,
    io::{BufReader, Read, Seek},
};

use calamine::{
    Data, DataRef, ExcelDateTime, ExcelDateTimeType, Ods, Reader, Xls, Xlsx, open_workbook_from_rs,
};

use super::{
    source::{FileError, Format, SourceMeta, SourceRow},
    split::{RowSink, Stop},
};
use crate::uploads::{ColumnAliases, ColumnMap, FieldKind, staged::RowProblem};

/// Most entries a spreadsheet archive may have.
const MAX_ZIP_ENTRIES: usize = 10_000;

/// Checks a zip-based spreadsheet before any part is unpacked: the sizes its directory
/// declares must stay within `limit` in all, and tell XLSX from ODS. A part that unpacks to
/// more than it declares fails when read (the zip reader stops it at its declared size), so
/// the declared total bounds what reading the file can unpack.
pub fn check_zip(file: &mut File, limit: u64) -> Result<Format, FileError> {
    let damaged = |e: &dyn std::fmt::Display| {
        FileError::Unreadable(format!(
            "the spreadsheet is damaged and cannot be opened ({e})"
        ))
    };
    file.rewind().map_err(|e| damaged(&e))?;
    let mut z = zip::ZipArchive::new(BufReader::new(&mut *file)).map_err(|e| damaged(&e))?;
    if z.len() > MAX_ZIP_ENTRIES {
        return Err(FileError::Unpacked { limit });
    }
    let mut total: u64 = 0;
    let (mut xlsx, mut ods) = (false, false);
    for i in 0..z.len() {
        let entry = z.by_index_raw(i).map_err(|e| damaged(&e))?;
        match entry.name().as_deref() {
            Ok("xl/workbook.xml") => xlsx = true,
            Ok("content.xml") => ods = true,
            _ => {}
        }
        total = total.saturating_add(entry.size());
        if total > limit {
            return Err(FileError::Unpacked { limit });
        }
    }
    drop(z);
    file.rewind().map_err(|e| damaged(&e))?;
    match (xlsx, ods) {
        (true, _) => Ok(Format::Xlsx),
        (false, true) => Ok(Format::Ods),
        _ => Err(FileError::WrongFormat(
            "a zip archive without a spreadsheet in it".into(),
        )),
    }
}

/// A number as Excel's "General" format shows it: at most 15 significant digits, never an
/// exponent, no trailing zeros. `1.2345678901234567e19` → `"12345678901234600000"`,
/// `11.899999999999999` → `"11.9"`.
pub fn excel_number_text(f: f64) -> String {
    if !f.is_finite() {
        return f.to_string();
    }
    if f == 0.0 {
        return "0".into();
    }
    let sci = format!("{:.14e}", f); // "-1.18999999999999e1"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    // Decimal point sits after digit index `exp` (0-based: after the first digit when exp = 0).
    let point = exp + 1;
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(digits);
    } else if point as usize >= digits.len() {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', point as usize - digits.len()));
    } else {
        let (int, frac) = digits.split_at(point as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// A cell, whichever reader produced it.
enum Cell<'a> {
    Empty,
    Text(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    Date(ExcelDateTime),
    DateIso(&'a str),
    Error(String),
}

impl<'a> From<&'a DataRef<'a>> for Cell<'a> {
    fn from(d: &'a DataRef<'a>) -> Self {
        match d {
            DataRef::Empty => Cell::Empty,
            DataRef::String(s) => Cell::Text(s),
            DataRef::SharedString(s) => Cell::Text(s),
            DataRef::Int(i) => Cell::Int(*i),
            DataRef::Float(f) => Cell::Float(*f),
            DataRef::Bool(b) => Cell::Bool(*b),
            DataRef::DateTime(d) => Cell::Date(*d),
            DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => Cell::DateIso(s),
            DataRef::Error(e) => Cell::Error(e.to_string()),
        }
    }
}

impl<'a> From<&'a Data> for Cell<'a> {
    fn from(d: &'a Data) -> Self {
        match d {
            Data::Empty => Cell::Empty,
            Data::String(s) => Cell::Text(s),
            Data::Int(i) => Cell::Int(*i),
            Data::Float(f) => Cell::Float(*f),
            Data::Bool(b) => Cell::Bool(*b),
            Data::DateTime(d) => Cell::Date(*d),
            Data::DateTimeIso(s) | Data::DurationIso(s) => Cell::DateIso(s),
            Data::Error(e) => Cell::Error(e.to_string()),
        }
    }
}

impl Cell<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Cell::Empty => true,
            Cell::Text(s) => s.trim().is_empty(),
            _ => false,
        }
    }

    /// Header text.
    fn header(&self) -> String {
        self.text(FieldKind::Text).unwrap_or_default()
    }

    /// The cell as shown for the raw row when it cannot be a field's text: what a
    /// spreadsheet displays (an error code, a number in full, a date).
    fn shown(&self) -> String {
        match self {
            Cell::Empty => String::new(),
            Cell::Text(s) | Cell::DateIso(s) => (*s).to_string(),
            Cell::Error(e) => format!("#{e}"),
            Cell::Bool(b) => if *b { "TRUE" } else { "FALSE" }.into(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => excel_number_text(*f),
            Cell::Date(d) => d
                .as_datetime()
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| d.as_f64().to_string()),
        }
    }

    /// The cell as text for a field of this kind, or why it cannot be.
    fn text(&self, kind: FieldKind) -> Result<String, String> {
        let date_of = |d: &ExcelDateTime| {
            d.as_datetime()
                .map(|t| t.date().format("%Y-%m-%d").to_string())
                .ok_or_else(|| "the cell holds a date Excel cannot show".to_string())
        };
        match (self, kind) {
            (Cell::Empty, _) => Ok(String::new()),
            (Cell::Text(s), _) | (Cell::DateIso(s), _) => Ok((*s).to_string()),
            (Cell::Error(e), _) => Err(format!("the cell shows the Excel error {e}")),
            (Cell::Bool(b), FieldKind::Text) => Ok(if *b { "TRUE" } else { "FALSE" }.into()),
            (Cell::Bool(_), _) => Err("the cell holds TRUE/FALSE".into()),
            (Cell::Int(i), FieldKind::Date) => date_of(&ExcelDateTime::new(
                *i as f64,
                ExcelDateTimeType::DateTime,
                false,
            )),
            (Cell::Float(f), FieldKind::Date) => {
                date_of(&ExcelDateTime::new(*f, ExcelDateTimeType::DateTime, false))
            }
            (Cell::Int(i), _) => Ok(i.to_string()),
            // A spreadsheet keeps 15 significant digits of a number: an identifier of 16 or
            // more digits typed into a number cell has already lost its tail (19 digits come
            // back as 1234567890123460000). Never invent digits: refuse, saying how to fix it.
            (Cell::Float(f), FieldKind::Text) if f.abs() >= 1e15 => Err(format!(
                "the cell holds the number {}, and spreadsheets keep only 15 significant digits of a \
                 number: digits of this identifier may be lost; format the column as text and export again",
                excel_number_text(*f)
            )),
            (Cell::Float(f), _) => Ok(excel_number_text(*f)),
            (Cell::Date(d), FieldKind::Date | FieldKind::Text) => date_of(d),
            (Cell::Date(_), FieldKind::Amount) => {
                Err("the cell holds a date, not an amount".into())
            }
        }
    }
}

/// Turns positioned cells into a row for the splitter.
fn build_row(columns: &ColumnMap, row_no: u32, cells: &[(u32, Cell<'_>)]) -> SourceRow {
    if cells.iter().all(|(_, c)| c.is_empty()) {
        return SourceRow::Blank;
    }
    let width = cells
        .iter()
        .map(|(c, _)| *c as usize + 1)
        .max()
        .unwrap_or(0);
    let mut raw = vec![String::new(); width];
    let mut problem = None;
    for (col, cell) in cells {
        let mapped = columns.columns.iter().find(|(_, c, _)| *c == *col as usize);
        let kind = mapped.map_or(FieldKind::Text, |(f, _, _)| f.kind());
        raw[*col as usize] = match cell.text(kind) {
            Ok(t) => t,
            Err(reason) => {
                if let (Some((field, _, header)), None) = (mapped, &problem) {
                    problem = Some(RowProblem {
                        field: Some(*field),
                        column: Some(header.clone()),
                        reason: reason.clone(),
                        value: None,
                    });
                }
                cell.shown()
            }
        };
    }
    SourceRow::Row {
        row_no,
        problem,
        raw,
    }
}

fn header_of(cells: &[(u32, Cell<'_>)]) -> Vec<String> {
    let width = cells
        .iter()
        .map(|(c, _)| *c as usize + 1)
        .max()
        .unwrap_or(0);
    let mut h = vec![String::new(); width];
    for (c, cell) in cells {
        h[*c as usize] = cell.header();
    }
    h
}

fn pick_sheet(names: &[String], wanted: Option<&str>) -> Result<String, FileError> {
    match wanted {
        None => names
            .first()
            .cloned()
            .ok_or_else(|| FileError::Unreadable("the workbook has no sheets".into())),
        Some(w) => names
            .iter()
            .find(|n| n.as_str() == w || n.trim().eq_ignore_ascii_case(w.trim()))
            .cloned()
            .ok_or_else(|| FileError::NoSuchSheet {
                name: w.to_string(),
                available: names.join(", "),
            }),
    }
}

/// Feeds positioned rows to the sink: the first non-blank row is the header.
struct Rows<'s, S> {
    sink: &'s mut S,
    aliases: &'s ColumnAliases,
    meta: Option<SourceMeta>,
    format: Format,
    sheet: String,
}

impl<S: RowSink> Rows<'_, S> {
    fn row(&mut self, row_index: u32, cells: &[(u32, Cell<'_>)]) -> Result<(), Stop> {
        let row_no = row_index + 1;
        match &self.meta {
            None => {
                if cells.iter().all(|(_, c)| c.is_empty()) {
                    return Ok(());
                }
                let headers = header_of(cells);
                let columns = self
                    .aliases
                    .map(&headers)
                    .map_err(|m| Stop::File(FileError::Columns(m)))?;
                let meta = SourceMeta {
                    format: Some(self.format),
                    encoding: None,
                    delimiter: None,
                    columns,
                    headers,
                };
                self.sink.header(&meta, Some(&self.sheet))?;
                self.meta = Some(meta);
                Ok(())
            }
            Some(meta) => {
                let row = build_row(&meta.columns, row_no, cells);
                self.sink.row(row, 0)
            }
        }
    }

    fn finish(self) -> Result<(), Stop> {
        if self.meta.is_none() {
            return Err(Stop::File(FileError::NoHeader));
        }
        Ok(())
    }
}

/// Reads a spooled spreadsheet into the sink.
pub fn read(
    mut file: File,
    format: Format,
    sheet: Option<&str>,
    aliases: &ColumnAliases,
    max_decompressed: u64,
    sink: &mut impl RowSink,
) -> Result<(), Stop> {
    let format = match format {
        Format::Xlsx | Format::Ods => check_zip(&mut file, max_decompressed).map_err(Stop::File)?,
        other => other,
    };
    let damaged = |e: &dyn std::fmt::Display| {
        let e = e.to_string();
        Stop::File(FileError::Unreadable(
            if e.contains("declared uncompressed size") {
                format!(
                    "the {} file is damaged: a part of it unpacks to more than the size it declares (as a zip bomb does); it is refused",
                    format.as_str().to_uppercase()
                )
            } else {
                format!(
                    "the {} file cannot be read ({e})",
                    format.as_str().to_uppercase()
                )
            },
        ))
    };
    let reader = BufReader::new(file);
    match format {
        Format::Xlsx => {
            let mut wb: Xlsx<_> = open_workbook_from_rs(reader).map_err(|e| damaged(&e))?;
            let name = pick_sheet(&wb.sheet_names(), sheet).map_err(Stop::File)?;
            let mut cells = wb.worksheet_cells_reader(&name).map_err(|e| damaged(&e))?;
            let mut rows = Rows {
                sink,
                aliases,
                meta: None,
                format,
                sheet: name.clone(),
            };
            let mut current: Option<u32> = None;
            let mut buf: Vec<(u32, DataRef<'_>)> = Vec::new();
            loop {
                let next = cells.next_cell().map_err(|e| damaged(&e))?;
                let row_of_next = next.as_ref().map(|c| c.get_position().0);
                if current.is_some() && row_of_next != current {
                    let converted: Vec<(u32, Cell<'_>)> =
                        buf.iter().map(|(c, d)| (*c, Cell::from(d))).collect();
                    rows.row(current.unwrap_or(0), &converted)?;
                    buf.clear();
                }
                let Some(cell) = next else { break };
                current = Some(cell.get_position().0);
                let col = cell.get_position().1;
                buf.push((col, cell.get_value().clone()));
            }
            rows.finish()
        }
        Format::Xls => {
            let wb: Xls<_> = open_workbook_from_rs(reader).map_err(|e| damaged(&e))?;
            range_rows(wb, format, sheet, aliases, sink)
        }
        Format::Ods => {
            let wb: Ods<_> = open_workbook_from_rs(reader).map_err(|e| damaged(&e))?;
            range_rows(wb, format, sheet, aliases, sink)
        }
        Format::Csv => Err(Stop::File(FileError::WrongFormat("text".into()))),
    }
}

/// XLS and ODS have no streaming reader in calamine: the sheet is read whole (their size is
/// bounded by `upload.max_bytes` and, for ODS, the unpacked-size check).
fn range_rows<RS: Read + Seek, R: Reader<RS>>(
    mut wb: R,
    format: Format,
    sheet: Option<&str>,
    aliases: &ColumnAliases,
    sink: &mut impl RowSink,
) -> Result<(), Stop>
where
    R::Error: std::fmt::Display,
{
    let name = pick_sheet(&wb.sheet_names(), sheet).map_err(Stop::File)?;
    let range = wb.worksheet_range(&name).map_err(|e| {
        Stop::File(FileError::Unreadable(format!(
            "the sheet \"{name}\" cannot be read ({e})"
        )))
    })?;
    let (r0, c0) = range.start().unwrap_or((0, 0));
    let mut rows = Rows {
        sink,
        aliases,
        meta: None,
        format,
        sheet: name,
    };
    for (i, row) in range.rows().enumerate() {
        let cells: Vec<(u32, Cell<'_>)> = row
            .iter()
            .enumerate()
            .map(|(j, d)| (c0 + j as u32, Cell::from(d)))
            .collect();
        rows.row(r0 + i as u32, &cells)?;
    }
    rows.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_excel_shows_them() {
        assert_eq!(excel_number_text(11.899999999999999), "11.9");
        assert_eq!(excel_number_text(0.1 + 0.2), "0.3");
        assert_eq!(excel_number_text(19.99), "19.99");
        assert_eq!(excel_number_text(1234.5), "1234.5");
        assert_eq!(excel_number_text(-5.0), "-5");
        assert_eq!(excel_number_text(0.005), "0.005");
        assert_eq!(excel_number_text(123456789012345.0), "123456789012345");
        assert_eq!(
            excel_number_text(1.2345678901234567e19),
            "12345678901234600000"
        );
        assert_eq!(excel_number_text(1e21), "1000000000000000000000");
    }

    #[test]
    fn date_cells_and_serials_become_iso_dates() {
        let d = ExcelDateTime::new(45366.0, ExcelDateTimeType::DateTime, false);
        assert_eq!(Cell::Date(d).text(FieldKind::Date).unwrap(), "2024-03-15");
        assert_eq!(
            Cell::Float(45366.0).text(FieldKind::Date).unwrap(),
            "2024-03-15"
        );
        assert_eq!(Cell::Int(45366).text(FieldKind::Text).unwrap(), "45366");
        assert!(
            Cell::Error("#N/A".into())
                .text(FieldKind::Text)
                .unwrap_err()
                .contains("#N/A")
        );
    }
}
