//! The splitter: rows in, staged chunks of `upload.chunk_rows` rows out (to the async side
//! through a bounded channel, so memory holds at most a couple of chunks).

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
};

use tokio::sync::mpsc;

use super::source::{FileError, RowSource, SourceMeta, SourceRow, place};
use crate::uploads::{
    Field,
    convert::Rules,
    staged::{ChunkWriter, RowKind, RowProblem},
};

/// Why the split stopped early.
#[derive(Debug)]
pub enum Stop {
    /// The file is bad: the upload fails with this message.
    File(FileError),
    /// The receiving side is gone (the job was aborted).
    Cancelled,
}

impl From<FileError> for Stop {
    fn from(e: FileError) -> Self {
        Stop::File(e)
    }
}

/// Where readers put what they read.
pub trait RowSink {
    /// The header has been mapped.
    fn header(&mut self, meta: &SourceMeta, sheet: Option<&str>) -> Result<(), Stop>;
    /// One row after the header; `bytes_read` of the original file so far (0 if unknown).
    fn row(&mut self, row: SourceRow, bytes_read: u64) -> Result<(), Stop>;
}

/// One staged chunk, ready to store.
#[derive(Debug)]
pub struct StagedChunk {
    /// From 0.
    pub chunk_no: u32,
    /// First file row in it.
    pub first_row: u32,
    /// Last file row in it.
    pub last_row: u32,
    /// Rows in it.
    pub rows: u32,
    /// The staged rows (see [`crate::uploads::staged`]).
    pub bytes: Vec<u8>,
    /// Data rows split so far, this chunk included.
    pub rows_seen: u64,
    /// Bytes of the file read so far.
    pub bytes_read: u64,
}

/// What the splitter sends.
#[derive(Debug)]
pub enum SplitEvent {
    /// The header was mapped.
    Header(SourceMeta, Option<String>),
    /// A chunk is ready.
    Chunk(StagedChunk),
}

/// Totals at the end of a split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SplitTotals {
    /// Data rows.
    pub rows_seen: u64,
    /// Blank rows.
    pub rows_blank: u64,
    /// Chunks.
    pub chunks: u32,
}

/// Accumulates rows into chunks.
pub struct Splitter {
    tx: mpsc::Sender<SplitEvent>,
    chunk_rows: u32,
    max_rows: u64,
    /// A value longer than this rejects its row here, so it is never staged.
    max_field_bytes: usize,
    /// A chunk is sent once it holds this many bytes, even short of `chunk_rows`: memory
    /// stays bounded whatever the row shape.
    max_chunk_bytes: usize,
    columns: crate::uploads::ColumnMap,
    default_currency: String,
    current: ChunkWriter,
    totals: SplitTotals,
    bytes_read: u64,
    /// Within-file duplicates: 128-bit hash of (IBAN, reference) → first row. About 32 bytes
    /// a distinct debtor (a 1M-row file: ~32 MB). The hash is keyed at random per process;
    /// two different keys collide with probability ~n²/2^129, i.e. never.
    seen: HashMap<u128, u32>,
    hashers: (RandomState, RandomState),
}

impl Splitter {
    /// A splitter sending to `tx`.
    pub fn new(tx: mpsc::Sender<SplitEvent>, chunk_rows: u32, max_rows: u64) -> Self {
        Self {
            tx,
            chunk_rows,
            max_rows,
            max_field_bytes: usize::MAX,
            max_chunk_bytes: usize::MAX,
            columns: Default::default(),
            default_currency: "EUR".into(),
            current: ChunkWriter::new(),
            totals: SplitTotals::default(),
            bytes_read: 0,
            seen: HashMap::new(),
            hashers: (RandomState::new(), RandomState::new()),
        }
    }

    /// Currency of rows without one (`upload.default_currency`).
    pub fn with_default_currency(mut self, currency: &str) -> Self {
        self.default_currency = currency.to_string();
        self
    }

    /// The file row a debtor with this key first appeared in, recording it if new. The key
    /// is (IBAN, reference); a file without a reference column has '' for every row, so its
    /// key is the IBAN alone.
    fn first_row_of(&mut self, iban: &str, reference: &str, row_no: u32) -> Option<u32> {
        let key = (iban, reference);
        let h = (u128::from(self.hashers.0.hash_one(key)) << 64)
            | u128::from(self.hashers.1.hash_one(key));
        match self.seen.entry(h) {
            std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(row_no);
                None
            }
        }
    }

    /// Value and chunk size limits (`upload.max_field_bytes`, `upload.chunk_max_bytes`).
    pub fn with_limits(mut self, max_field_bytes: usize, max_chunk_bytes: usize) -> Self {
        self.max_field_bytes = max_field_bytes;
        self.max_chunk_bytes = max_chunk_bytes;
        self
    }

    fn flush(&mut self) -> Result<(), Stop> {
        let w = std::mem::take(&mut self.current);
        let (first_row, last_row, rows, bytes) = w.finish();
        let chunk = StagedChunk {
            chunk_no: self.totals.chunks,
            first_row,
            last_row,
            rows,
            bytes,
            rows_seen: self.totals.rows_seen,
            bytes_read: self.bytes_read,
        };
        self.totals.chunks += 1;
        self.tx
            .blocking_send(SplitEvent::Chunk(chunk))
            .map_err(|_| Stop::Cancelled)
    }

    /// Sends the last partial chunk and returns the totals.
    pub fn finish(mut self) -> Result<SplitTotals, Stop> {
        if self.current.rows() > 0 {
            self.flush()?;
        }
        Ok(self.totals)
    }
}

impl Splitter {
    /// The raw cells as kept for audit: a value over `max_field_bytes` is cut there (its row
    /// is rejected for it anyway), so no cell of any size reaches staging or the database.
    fn capped(&self, mut raw: Vec<String>) -> Vec<String> {
        for c in &mut raw {
            if c.len() > self.max_field_bytes {
                let len = c.len();
                let cut = crate::uploads::cut_at_char_boundary(c, self.max_field_bytes).len();
                c.truncate(cut);
                c.push_str(&format!("…[cut: {len} bytes]"));
            }
        }
        raw
    }

    /// Converts a row and decides: a debtor, a repeat of an earlier row, or a reject.
    fn decide(&mut self, row_no: u32, raw: &[String]) -> RowKind {
        let values = place(&self.columns, raw);
        // Over-long values are refused here, so they are never staged.
        if let Some(f) = Field::ALL
            .into_iter()
            .find(|f| values[f.index()].len() > self.max_field_bytes)
        {
            let v = &values[f.index()];
            return RowKind::Rejected(RowProblem {
                field: Some(f),
                column: self.columns.header_of(f).map(str::to_string),
                reason: crate::uploads::too_long(f, v.len(), self.max_field_bytes),
                value: Some(crate::uploads::cut_at_char_boundary(v, 64).to_string()),
            });
        }
        let rules = Rules {
            columns: &self.columns,
            max_field_bytes: self.max_field_bytes,
            default_currency: &self.default_currency,
        };
        match rules.convert(row_no, &values) {
            Err(p) => RowKind::Rejected(p),
            Ok(d) => match self.first_row_of(&d.iban, &d.reference, row_no) {
                Some(first_row) => RowKind::Duplicate { first_row },
                None => RowKind::Debtor(d),
            },
        }
    }
}

impl RowSink for Splitter {
    fn header(&mut self, meta: &SourceMeta, sheet: Option<&str>) -> Result<(), Stop> {
        self.columns = meta.columns.clone();
        self.tx
            .blocking_send(SplitEvent::Header(meta.clone(), sheet.map(str::to_string)))
            .map_err(|_| Stop::Cancelled)
    }

    fn row(&mut self, row: SourceRow, bytes_read: u64) -> Result<(), Stop> {
        self.bytes_read = bytes_read;
        match row {
            SourceRow::Blank => self.totals.rows_blank += 1,
            SourceRow::Row {
                row_no,
                problem,
                raw,
            } => {
                self.totals.rows_seen += 1;
                if self.totals.rows_seen > self.max_rows {
                    return Err(Stop::File(FileError::TooManyRows {
                        limit: self.max_rows,
                    }));
                }
                // Decided on the cells as read (a value's real length names it), kept capped.
                let kind = match problem {
                    Some(p) => RowKind::Rejected(p),
                    None => self.decide(row_no, &raw),
                };
                let raw_cells = self.capped(raw);
                self.current.push(row_no, &raw_cells, &kind);
                if self.current.rows() >= self.chunk_rows
                    || self.current.bytes() >= self.max_chunk_bytes
                {
                    self.flush()?;
                }
            }
        }
        Ok(())
    }
}

/// Runs a row source to its end into a sink.
pub fn drive(source: &mut impl RowSource, sink: &mut impl RowSink) -> Result<(), Stop> {
    sink.header(source.meta(), None)?;
    while let Some(row) = source.next_row()? {
        let read = source.bytes_read();
        sink.row(row, read)?;
    }
    Ok(())
}
