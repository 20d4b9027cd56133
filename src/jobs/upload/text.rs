//! CSV reading: encoding and delimiter sniffing, then a streamed row source.
//!
//! Encoding: a UTF-8 BOM or valid UTF-8 → UTF-8; a UTF-16 BOM → transcoded; otherwise
//! Windows-1252 (a superset of ISO-8859-1), so names with umlauts and accents survive. In a
//! UTF-8 file, a stray non-UTF-8 cell is read as Windows-1252 too, and counted in the note.
//! Delimiter: of `;` `,` tab `|`, the one whose header row names the most known columns.

use std::{
    io::{self, Cursor, Read},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use encoding_rs::WINDOWS_1252;

use super::source::{FileError, Format, RowSource, SourceMeta, SourceRow};
use crate::uploads::{ColumnAliases, staged::RowProblem};

/// Bytes looked at for sniffing.
const SNIFF_BYTES: u64 = 64 * 1024;
/// A record longer than this is an unclosed quote swallowing the file, not a debtor row.
const RUNAWAY_BYTES: u64 = 1024 * 1024;
/// A record spanning more lines than this is the same mistake in a smaller file.
const RUNAWAY_LINES: u64 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enc {
    Utf8,
    Windows1252,
}

/// Counts bytes read and refuses to read far past the last record boundary.
struct Guarded<R> {
    inner: R,
    read: Arc<AtomicU64>,
    mark: Arc<AtomicU64>,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total.saturating_sub(self.mark.load(Ordering::Relaxed)) > RUNAWAY_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "runaway record"));
        }
        Ok(n)
    }
}

/// Remembers where the newlines are in the bytes the CSV parser reads, so a record's byte
/// offset gives its exact line (the parser's own line count skips blank lines). Only the
/// newlines the parser has not passed yet are kept: memory is one read-ahead buffer.
#[derive(Default)]
struct Lines {
    /// (first byte of the line ending: `\r` of CRLF or the `\n`, the `\n`, delimiters read
    /// before it).
    ends: std::collections::VecDeque<(u64, u64, u64)>,
    passed: u64,
    read: u64,
    last: u8,
    /// The delimiter (to name the column of a runaway value).
    delimiter: u8,
    /// Delimiters read so far, and up to the last newline passed.
    delims: u64,
    delims_passed: u64,
    /// Offset of the last quote character read.
    last_quote: Option<u64>,
}

impl Lines {
    /// For a record starting at `start` (just after a newline the parser passed) that ran
    /// away: whether a quote was read since its start (then an unclosed quote is the likely
    /// cause), and the 0-based column the reader was in (exact when no quote is open).
    fn runaway_at(&self, start: u64) -> (bool, usize) {
        let quoted = self.last_quote.is_some_and(|q| q >= start);
        let column = usize::try_from(self.delims - self.delims_passed).unwrap_or(usize::MAX);
        (quoted, column)
    }

    fn pop(&mut self) {
        if let Some((_, _, delims)) = self.ends.pop_front() {
            self.passed += 1;
            self.delims_passed = delims;
        }
    }

    /// 1-based line of a byte offset; offsets must not go backwards.
    fn line_at(&mut self, byte: u64) -> u64 {
        while self.ends.front().is_some_and(|(_, nl, _)| *nl < byte) {
            self.pop();
        }
        self.passed + 1
    }

    /// Line where a record starting at `byte` has its first value: the parser's record
    /// position includes the blank lines it skipped before the record.
    fn content_line_at(&mut self, byte: u64) -> u64 {
        let mut at = byte;
        self.line_at(at);
        while let Some((start, nl, _)) = self.ends.front().copied() {
            if start != at {
                break;
            }
            self.pop();
            at = nl + 1;
        }
        self.passed + 1
    }
}

/// Counts what [`Lines`] needs in every block the parser reads.
struct LineTracker<R> {
    inner: R,
    lines: Arc<std::sync::Mutex<Lines>>,
}

impl<R: Read> Read for LineTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let block = &buf[..n];
        if let (Ok(mut l), Some(&last)) = (self.lines.lock(), block.last()) {
            let base = l.read;
            // memchr3 skips the plain bytes in SIMD strides; this runs over every byte read.
            for i in memchr::memchr3_iter(b'\n', l.delimiter, b'"', block) {
                let at = base + i as u64;
                let b = block[i];
                if b == b'\n' {
                    let prev = if i == 0 { l.last } else { block[i - 1] };
                    let start = if prev == b'\r' { at - 1 } else { at };
                    let delims = l.delims;
                    l.ends.push_back((start, at, delims));
                } else if b == l.delimiter {
                    l.delims += 1;
                } else {
                    l.last_quote = Some(at);
                }
            }
            l.last = last;
            l.read += n as u64;
        }
        Ok(n)
    }
}

/// A CSV file as a stream of rows.
pub struct CsvSource {
    rdr: csv::Reader<Box<dyn Read + Send>>,
    meta: SourceMeta,
    enc: Enc,
    header_len: usize,
    rec: csv::ByteRecord,
    read: Arc<AtomicU64>,
    mark: Arc<AtomicU64>,
    fallback_cells: u64,
    utf16: bool,
    lines: Arc<std::sync::Mutex<Lines>>,
    /// The header row as written, to name a column in messages.
    headers: Vec<String>,
}

fn decode(enc: Enc, bytes: &[u8], fallbacks: &mut u64) -> String {
    match enc {
        Enc::Utf8 => match std::str::from_utf8(bytes) {
            Ok(s) => s.to_string(),
            Err(_) => {
                *fallbacks += 1;
                WINDOWS_1252
                    .decode_without_bom_handling(bytes)
                    .0
                    .into_owned()
            }
        },
        Enc::Windows1252 => WINDOWS_1252
            .decode_without_bom_handling(bytes)
            .0
            .into_owned(),
    }
}

fn is_blank(rec: &csv::ByteRecord) -> bool {
    rec.iter().all(|f| f.iter().all(u8::is_ascii_whitespace))
}

/// Picks the delimiter whose first non-blank record names the most known columns; ties go
/// to the one that splits the following records most consistently.
fn sniff_delimiter(sample: &[u8], enc: Enc, aliases: &ColumnAliases) -> u8 {
    let mut best = (b';', (0usize, 0usize, 0usize));
    for d in [b';', b',', b'\t', b'|'] {
        let mut r = csv::ReaderBuilder::new()
            .delimiter(d)
            .has_headers(false)
            .flexible(true)
            .from_reader(sample);
        let mut header: Option<Vec<String>> = None;
        let mut consistent = 0;
        let mut rec = csv::ByteRecord::new();
        let mut lens = Vec::new();
        while let Ok(true) = r.read_byte_record(&mut rec) {
            if is_blank(&rec) {
                continue;
            }
            match &header {
                None => {
                    let mut fb = 0;
                    header = Some(rec.iter().map(|f| decode(enc, f, &mut fb)).collect());
                }
                Some(_) => lens.push(rec.len()),
            }
            if lens.len() > 50 {
                break;
            }
        }
        // The sample may end mid-record.
        lens.pop();
        let Some(h) = header else { continue };
        for l in &lens {
            if *l == h.len() {
                consistent += 1;
            }
        }
        let score = aliases.score(h.iter().map(String::as_str));
        let key = (score, consistent, h.len());
        if key > best.1 {
            best = (d, key);
        }
    }
    best.0
}

fn printable(d: u8) -> String {
    match d {
        b'\t' => "tab".into(),
        other => (other as char).to_string(),
    }
}

impl CsvSource {
    /// What is left of the input (nothing once every row was read).
    pub fn into_inner(self) -> Box<dyn Read + Send> {
        self.rdr.into_inner()
    }

    /// Sniffs the encoding and delimiter, reads the header row and maps its columns.
    pub fn open(
        mut input: Box<dyn Read + Send>,
        aliases: &ColumnAliases,
    ) -> Result<Self, FileError> {
        let mut head = Vec::with_capacity(SNIFF_BYTES as usize);
        (&mut input)
            .take(SNIFF_BYTES)
            .read_to_end(&mut head)
            .map_err(|e| FileError::Unreadable(format!("the file cannot be read: {e}")))?;
        if head.is_empty() {
            return Err(FileError::Empty);
        }
        let read = Arc::new(AtomicU64::new(head.len() as u64));
        let mark = Arc::new(AtomicU64::new(0));
        let rest = Guarded {
            inner: input,
            read: Arc::clone(&read),
            mark: Arc::clone(&mark),
        };
        let utf16 = head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF");
        let (enc, encoding_name, sample, reader): (Enc, &str, Vec<u8>, Box<dyn Read + Send>) =
            if utf16 {
                let enc = if head.starts_with(b"\xFF\xFE") {
                    encoding_rs::UTF_16LE
                } else {
                    encoding_rs::UTF_16BE
                };
                let sample = enc.decode(&head).0.into_owned().into_bytes();
                let reader = encoding_rs_io::DecodeReaderBytesBuilder::new()
                    .bom_sniffing(true)
                    .build(Cursor::new(head).chain(rest));
                (Enc::Utf8, enc.name(), sample, Box::new(reader))
            } else {
                let body = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&head).to_vec();
                let enc = match std::str::from_utf8(&body) {
                    Ok(_) => Enc::Utf8,
                    // Cut mid-character at the end of the sample: still UTF-8.
                    Err(e) if e.error_len().is_none() => Enc::Utf8,
                    Err(_) => Enc::Windows1252,
                };
                let name = if enc == Enc::Utf8 {
                    "UTF-8"
                } else {
                    "windows-1252"
                };
                (
                    enc,
                    name,
                    body.clone(),
                    Box::new(Cursor::new(body).chain(rest)),
                )
            };
        let delimiter = sniff_delimiter(&sample, enc, aliases);
        let lines = Arc::new(std::sync::Mutex::new(Lines {
            delimiter,
            ..Lines::default()
        }));
        let reader: Box<dyn Read + Send> = Box::new(LineTracker {
            inner: reader,
            lines: Arc::clone(&lines),
        });
        let mut rdr = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .from_reader(reader);
        let mut rec = csv::ByteRecord::new();
        let mut fb = 0;
        let headers: Vec<String> = loop {
            match rdr.read_byte_record(&mut rec) {
                Ok(false) => return Err(FileError::NoHeader),
                Ok(true) if is_blank(&rec) => continue,
                Ok(true) => break rec.iter().map(|f| decode(enc, f, &mut fb)).collect(),
                Err(e) => {
                    return Err(FileError::Unreadable(format!(
                        "the header row cannot be read: {e}"
                    )));
                }
            }
        };
        let columns = aliases.map(&headers).map_err(FileError::Columns)?;
        // A trailing delimiter leaves an empty last header: not a column.
        let header_len = headers
            .iter()
            .rposition(|h| !h.trim().is_empty())
            .map_or(0, |i| i + 1);
        mark.store(rdr.position().byte(), Ordering::Relaxed);
        Ok(Self {
            rdr,
            meta: SourceMeta {
                format: Some(Format::Csv),
                encoding: Some(encoding_name.to_string()),
                delimiter: Some(printable(delimiter)),
                columns,
                headers: headers.clone(),
            },
            enc,
            header_len,
            rec,
            read,
            mark,
            fallback_cells: 0,
            utf16,
            lines,
            headers,
        })
    }
}

impl RowSource for CsvSource {
    fn meta(&self) -> &SourceMeta {
        &self.meta
    }

    fn next_row(&mut self) -> Result<Option<SourceRow>, FileError> {
        let here = self.rdr.position().byte();
        let start_line = self.lines.lock().map_or(0, |mut l| l.line_at(here));
        match self.rdr.read_byte_record(&mut self.rec) {
            Ok(false) => return Ok(None),
            Ok(true) => {}
            Err(e) => {
                let runaway = matches!(e.kind(), csv::ErrorKind::Io(io) if io.kind() == io::ErrorKind::InvalidData);
                if !runaway {
                    return Err(FileError::Unreadable(format!(
                        "the file cannot be read after line {start_line}: {e}"
                    )));
                }
                let (quoted, column) = self.lines.lock().map_or((true, 0), |l| l.runaway_at(here));
                return Err(FileError::Unreadable(if quoted {
                    format!(
                        "from line {start_line} on, a quoted value is never closed, so the rest of the file would be one cell; check the quote characters (\") on that line"
                    )
                } else {
                    let header = self
                        .headers
                        .get(column)
                        .filter(|h| !h.trim().is_empty())
                        .map(|h| format!(" (\"{h}\")"))
                        .unwrap_or_default();
                    format!(
                        "line {start_line}, column {}{header}: a value over {} MiB long (values are limited to upload.max_field_bytes, and one this long is not a debtor file's); the file is refused",
                        column + 1,
                        RUNAWAY_BYTES >> 20
                    )
                }));
            }
        }
        let line = match (self.rec.position(), self.lines.lock()) {
            (Some(p), Ok(mut l)) => l.content_line_at(p.byte()),
            (Some(p), Err(_)) => p.line(),
            (None, _) => start_line,
        };
        let end = self.rdr.position();
        if !self.utf16 {
            self.mark.store(end.byte(), Ordering::Relaxed);
        } else {
            self.mark
                .store(self.read.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let end_line = self
            .lines
            .lock()
            .map_or(end.line(), |mut l| l.line_at(end.byte()));
        if end_line.saturating_sub(line) > RUNAWAY_LINES {
            return Err(FileError::Unreadable(format!(
                "the row at line {line} runs over {} lines: a quoted value is probably never closed; check the quote characters (\") on that line",
                end_line - line
            )));
        }
        if is_blank(&self.rec) {
            return Ok(Some(SourceRow::Blank));
        }
        let row_no = u32::try_from(line).unwrap_or(u32::MAX);
        let n = self.rec.len();
        let extra_non_empty = self
            .rec
            .iter()
            .skip(self.header_len)
            .any(|f| !f.iter().all(u8::is_ascii_whitespace));
        if n < self.header_len || extra_non_empty {
            let shown = if extra_non_empty {
                n
            } else {
                // Count without trailing empty cells for the message.
                self.rec
                    .iter()
                    .rposition(|f| !f.is_empty())
                    .map_or(0, |i| i + 1)
                    .max(n.min(self.header_len))
            };
            return Ok(Some(SourceRow::Row {
                row_no,
                problem: Some(RowProblem {
                    field: None,
                    column: None,
                    reason: format!(
                        "the row has {shown} values but the header has {} columns",
                        self.header_len
                    ),
                    value: None,
                }),
                raw: {
                    let (enc, fb) = (self.enc, &mut self.fallback_cells);
                    self.rec.iter().map(|b| decode(enc, b, fb)).collect()
                },
            }));
        }
        let (enc, fb) = (self.enc, &mut self.fallback_cells);
        let raw: Vec<String> = self.rec.iter().map(|b| decode(enc, b, fb)).collect();
        Ok(Some(SourceRow::Row {
            row_no,
            problem: None,
            raw,
        }))
    }

    fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    fn notes(&self) -> Vec<String> {
        let mut n = Vec::new();
        if self.enc == Enc::Windows1252 {
            n.push("the file is not UTF-8: read as Windows-1252 (Latin-1)".to_string());
        }
        if self.fallback_cells > 0 {
            n.push(format!(
                "{} cells were not valid UTF-8 and were read as Windows-1252",
                self.fallback_cells
            ));
        }
        n
    }
}
