//! What every file reader shares: file-level errors, format detection by content, and the
//! row stream the splitter consumes.

use crate::uploads::{ColumnMap, staged::RowProblem};

/// A problem with the file as a whole. The message is for a finance user: it says what is
/// wrong and, where it helps, where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileError {
    /// Zero bytes.
    #[error("the file is empty")]
    Empty,
    /// Not a CSV or spreadsheet.
    #[error("the file is {0}, not a CSV or Excel/OpenDocument spreadsheet")]
    WrongFormat(String),
    /// Binary data that no known format claims.
    #[error(
        "the file is not a readable CSV/XLSX/XLS/ODS file: it holds binary data ({controls} control bytes in its first 8 KiB), not text"
    )]
    NotText {
        /// Control bytes found in the sample.
        controls: usize,
    },
    /// Over `upload.max_bytes`.
    #[error("the file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Size.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// Over `upload.max_rows`.
    #[error("the file has more than {limit} data rows (the limit); split it into smaller files")]
    TooManyRows {
        /// Limit.
        limit: u64,
    },
    /// A zip-based spreadsheet that unpacks beyond `upload.max_decompressed_bytes`.
    #[error(
        "the spreadsheet unpacks to more than {limit} bytes (the limit); it is damaged or not a normal spreadsheet"
    )]
    Unpacked {
        /// Limit.
        limit: u64,
    },
    /// No header row found.
    #[error("the file has no header row (it holds no values)")]
    NoHeader,
    /// A header row but nothing under it.
    #[error("the file has a header row but no data rows")]
    NoDataRows,
    /// Required columns missing, or ambiguous.
    #[error("{0}")]
    Columns(String),
    /// A sheet name that is not in the workbook.
    #[error("the workbook has no sheet named \"{name}\"; its sheets are: {available}")]
    NoSuchSheet {
        /// Asked for.
        name: String,
        /// Sheet names.
        available: String,
    },
    /// The reader could not go on (damaged file, unclosed quote).
    #[error("{0}")]
    Unreadable(String),
}

/// Spreadsheet and text formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Delimited text.
    Csv,
    /// Office Open XML workbook.
    Xlsx,
    /// Legacy Excel (BIFF, in an OLE2 container).
    Xls,
    /// OpenDocument spreadsheet.
    Ods,
}

impl Format {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Xlsx => "xlsx",
            Format::Xls => "xls",
            Format::Ods => "ods",
        }
    }
}

/// Decides the format from the first bytes, whatever the file is called. A zip archive is
/// told apart (XLSX or ODS) once it has been spooled and its entries can be listed.
pub fn detect(head: &[u8]) -> Result<Format, FileError> {
    if head.is_empty() {
        return Err(FileError::Empty);
    }
    let starts = |m: &[u8]| head.starts_with(m);
    if starts(b"PK\x03\x04") {
        const ODS: &[u8] = b"application/vnd.oasis.opendocument.spreadsheet";
        let ods = head.windows(ODS.len()).any(|w| w == ODS);
        return Ok(if ods { Format::Ods } else { Format::Xlsx });
    }
    if starts(b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1") {
        return Ok(Format::Xls);
    }
    let known: &[(&[u8], &str)] = &[
        (b"%PDF", "a PDF document"),
        (b"\x89PNG", "a PNG image"),
        (b"\xFF\xD8\xFF", "a JPEG image"),
        (b"GIF8", "a GIF image"),
        (b"\x1F\x8B", "gzip-compressed (upload the file inside it)"),
        (b"Rar!", "a RAR archive"),
        (b"7z\xBC\xAF", "a 7-Zip archive"),
        (b"PK\x05\x06", "an empty zip archive"),
    ];
    for (magic, what) in known {
        if starts(magic) {
            return Err(FileError::WrongFormat((*what).to_string()));
        }
    }
    let utf16 = starts(b"\xFF\xFE") || starts(b"\xFE\xFF");
    // Text holds no control bytes but tab, CR and LF (and the odd form feed or EOF mark of
    // old exports); random binary data holds about 11% of them. A stray one is a damaged row
    // (rejected with its line and column); more than 1% of the first 8 KiB is not text.
    let sample = &head[..head.len().min(8192)];
    let controls = sample
        .iter()
        .filter(|b| matches!(**b, 0x00..=0x08 | 0x0B | 0x0E..=0x1A | 0x1C..=0x1F | 0x7F))
        .count();
    if !utf16 && controls >= 4 && controls * 100 > sample.len() {
        return Err(FileError::NotText { controls });
    }
    Ok(Format::Csv)
}

/// One row as the splitter sees it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[allow(clippy::large_enum_variant)] // built and consumed one at a time; boxing would only add an allocation per row
pub enum SourceRow {
    /// A row with no value in any cell: counted, not a debtor.
    Blank,
    /// A data row.
    Row {
        /// Row number in the file (header = 1).
        row_no: u32,
        /// Set when the reader already knows the row is bad.
        problem: Option<RowProblem>,
        /// Every cell as text, in file column order (kept for audit); the fields are read
        /// from it through the column map ([`place`]).
        raw: Vec<String>,
    },
}

/// What a reader found out about the file, kept on the upload record.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SourceMeta {
    /// Format.
    pub format: Option<Format>,
    /// CSV text encoding.
    pub encoding: Option<String>,
    /// CSV delimiter, printable.
    pub delimiter: Option<String>,
    /// Column mapping.
    pub columns: ColumnMap,
    /// The header row as written (names the cells of each raw row).
    #[serde(default)]
    pub headers: Vec<String>,
}

/// A stream of rows after the header.
pub trait RowSource {
    /// What the reader found out.
    fn meta(&self) -> &SourceMeta;
    /// The next row, or `None` at the end.
    fn next_row(&mut self) -> Result<Option<SourceRow>, FileError>;
    /// Bytes of the original file consumed so far (0 when unknown).
    fn bytes_read(&self) -> u64 {
        0
    }
    /// Remarks for the upload record (encoding fallbacks and the like).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Places mapped cells into the field array.
pub fn place<'a>(columns: &ColumnMap, cells: &'a [String]) -> [&'a str; 14] {
    let mut values = [""; 14];
    for (field, col, _) in &columns.columns {
        if let Some(c) = cells.get(*col) {
            values[field.index()] = c;
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_content_not_name() {
        assert_eq!(detect(b"IBAN;Name\n"), Ok(Format::Csv));
        assert_eq!(detect(b"PK\x03\x04rest"), Ok(Format::Xlsx));
        assert_eq!(
            detect(b"PK\x03\x04....................................mimetypeapplication/vnd.oasis.opendocument.spreadsheet"),
            Ok(Format::Ods)
        );
        assert_eq!(
            detect(b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1...."),
            Ok(Format::Xls)
        );
        assert_eq!(detect(b"\xFF\xFEI\0B\0"), Ok(Format::Csv));
        assert_eq!(detect(b""), Err(FileError::Empty));
        assert_eq!(
            detect(b"%PDF-1.7").unwrap_err().to_string(),
            "the file is a PDF document, not a CSV or Excel/OpenDocument spreadsheet"
        );
        assert_eq!(
            detect(b"Name;IBAN\nA\0B;DE89370400440532013000\n"),
            Ok(Format::Csv)
        );
        assert!(matches!(
            detect(b"abc\0\0\0\0\0\0def"),
            Err(FileError::NotText { controls: 6 })
        ));
        // Random bytes with hardly a NUL among them are still not text.
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8 | 0x01)
            .collect();
        assert!(
            detect(&garbage)
                .unwrap_err()
                .to_string()
                .starts_with("the file is not a readable CSV/XLSX/XLS/ODS file")
        );
    }
}
