//! The staged-chunk format: what the `upload` job writes and each `upload_chunk` job reads.
//!
//! A staged chunk is a magic line naming the format and its version, then one postcard
//! record per file row, in file order (a compact binary serde format: no escaping and no
//! number formatting, so staging costs little beside the parse). Each row carries its raw
//! cells (kept for audit) and what the split decided: a debtor (typed values), a duplicate
//! of an earlier row of the same file, or a reject with its reason. Checks that are
//! expensive (IBAN checksum, BIC, names) are left to the chunk jobs, which run in parallel.

use serde::{Deserialize, Serialize};

use super::{Field, convert::Debtor};

/// The first line of every staged chunk.
const MAGIC: &[u8] = b"finworker-staged/3\n";

/// A problem the split found in a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowProblem {
    /// The field at fault, if one.
    pub field: Option<Field>,
    /// The column header at fault, as written in the file.
    pub column: Option<String>,
    /// Why the row cannot be imported.
    pub reason: String,
    /// The offending value.
    pub value: Option<String>,
}

/// What the split decided about a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowKind {
    /// Importable.
    Debtor(Debtor),
    /// Repeats an earlier row of the same file (same IBAN and reference).
    Duplicate {
        /// The first row with that key.
        first_row: u32,
    },
    /// Cannot be imported.
    Rejected(RowProblem),
}

/// One staged row, its raw cells borrowed from the chunk's bytes.
#[derive(Debug, Serialize, Deserialize)]
pub struct StagedRow<'a> {
    /// Row number in the file (header = 1).
    pub row_no: u32,
    /// Every cell of the row as text, in file column order.
    #[serde(borrow)]
    pub raw: Vec<&'a str>,
    /// The decision.
    pub kind: RowKind,
}

/// Builds a staged chunk in memory.
pub struct ChunkWriter {
    buf: Vec<u8>,
    rows: u32,
    first_row: u32,
    last_row: u32,
}

impl Default for ChunkWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkWriter {
    /// An empty chunk.
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(MAGIC);
        Self {
            buf,
            rows: 0,
            first_row: 0,
            last_row: 0,
        }
    }

    /// Appends a row.
    pub fn push(&mut self, row_no: u32, raw: &[String], kind: &RowKind) {
        if self.rows == 0 {
            self.first_row = row_no;
        }
        self.rows += 1;
        self.last_row = row_no;
        #[derive(Serialize)]
        struct Ref<'a> {
            row_no: u32,
            raw: &'a [String],
            kind: &'a RowKind,
        }
        // Serialising plain data into a Vec cannot fail.
        let _ = postcard::to_io(&Ref { row_no, raw, kind }, &mut self.buf);
    }

    /// Rows so far.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Bytes staged so far.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// (first row, last row, rows, bytes).
    pub fn finish(self) -> (u32, u32, u32, Vec<u8>) {
        (self.first_row, self.last_row, self.rows, self.buf)
    }
}

/// Why a staged chunk cannot be read back (a bug or a damaged object: not retried).
#[derive(Debug, thiserror::Error)]
#[error("staged chunk is damaged at record {record}: {message}")]
pub struct StagedError {
    /// Record in the chunk (0 = the magic line).
    pub record: usize,
    /// What is wrong.
    pub message: String,
}

/// Reads a staged chunk back.
pub fn read_chunk(bytes: &[u8]) -> Result<Vec<StagedRow<'_>>, StagedError> {
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        return Err(StagedError {
            record: 0,
            message: "not a finworker staged chunk of version 3 (staged by another version?)"
                .into(),
        });
    };
    let mut rows = Vec::new();
    while !rest.is_empty() {
        let (row, tail) = postcard::take_from_bytes(rest).map_err(|e| StagedError {
            record: rows.len() + 1,
            message: e.to_string(),
        })?;
        rows.push(row);
        rest = tail;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_rows_survive_a_round_trip_with_quotes_newlines_and_problems() {
        let mut w = ChunkWriter::new();
        let cells = vec!["Jörg \"JJ\" Müller;\nGmbH".to_string(), "DE89 3704".into()];
        let p = RowProblem {
            field: Some(Field::Amount),
            column: Some("Betrag".into()),
            reason: "row has 3 fields, the header has 5".into(),
            value: None,
        };
        w.push(2, &cells, &RowKind::Rejected(p.clone()));
        w.push(4, &[], &RowKind::Duplicate { first_row: 2 });
        let (first, last, rows, bytes) = w.finish();
        assert_eq!((first, last, rows), (2, 4, 2));
        let back = read_chunk(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].row_no, 2);
        assert_eq!(back[0].raw, cells);
        assert_eq!(back[0].kind, RowKind::Rejected(p));
        assert_eq!(back[1].kind, RowKind::Duplicate { first_row: 2 });
        assert!(read_chunk(b"1,2,3\n").is_err());
        // A chunk cut short is damaged, not silently shorter.
        assert!(read_chunk(&bytes[..bytes.len() - 3]).is_err());
    }
}
