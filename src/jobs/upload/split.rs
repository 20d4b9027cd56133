//! The splitter: rows in, staged chunks of `upload.chunk_rows` rows out (to the async side
//! through a bounded channel, so memory holds at most a couple of chunks).

use tokio::sync::mpsc;

use super::source::{FileError, RowSource, SourceMeta, SourceRow};
use crate::uploads::staged::{ChunkWriter, RowProblem};

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
    /// The staged CSV.
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
    current: ChunkWriter,
    totals: SplitTotals,
    bytes_read: u64,
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
            current: ChunkWriter::new(),
            totals: SplitTotals::default(),
            bytes_read: 0,
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
                values,
            } => {
                self.totals.rows_seen += 1;
                if self.totals.rows_seen > self.max_rows {
                    return Err(Stop::File(FileError::TooManyRows {
                        limit: self.max_rows,
                    }));
                }
                let too_long = problem.is_none().then(|| {
                    crate::uploads::Field::ALL
                        .into_iter()
                        .find(|f| values[f.index()].len() > self.max_field_bytes)
                });
                if let Some(Some(f)) = too_long {
                    let v = &values[f.index()];
                    let p = RowProblem {
                        field: Some(f),
                        column: self.columns.header_of(f).map(str::to_string),
                        reason: crate::uploads::too_long(f, v.len(), self.max_field_bytes),
                        value: Some(crate::uploads::cut_at_char_boundary(v, 64).to_string()),
                    };
                    self.current.push(row_no, Some(&p), &Default::default());
                } else {
                    let refs: [&str; 14] = std::array::from_fn(|i| values[i].as_str());
                    self.current.push(row_no, problem.as_ref(), &refs);
                }
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
