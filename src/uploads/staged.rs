//! The staged-chunk format: what the `upload` job writes and each `upload_chunk` job reads.
//!
//! A staged chunk is UTF-8 CSV without a header. Each record is
//! `row_no, error_field, error_column, error_reason, error_value, <14 field values>` with the
//! fields in [`Field::ALL`] order. A record with an error reason is a row the split already
//! knows is bad (wrong field count, an Excel error cell); it is rejected as it stands.
//! Values are the file's text after decoding (spreadsheet cells already turned into text),
//! not yet checked: checking happens in the chunk job, in parallel.

use super::Field;

/// Columns before the field values.
const LEAD: usize = 5;

/// A problem the split found in a row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// One staged row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedRow {
    /// Row number in the file (header = 1).
    pub row_no: u32,
    /// Set when the split already rejects the row.
    pub problem: Option<RowProblem>,
    /// Field values in [`Field::ALL`] order; empty when the file has no such column.
    pub values: [String; 14],
}

/// Builds a staged chunk in memory.
pub struct ChunkWriter {
    w: csv::Writer<Vec<u8>>,
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
        Self {
            w: csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(Vec::with_capacity(1 << 20)),
            rows: 0,
            first_row: 0,
            last_row: 0,
        }
    }

    /// Appends a row.
    pub fn push(&mut self, row_no: u32, problem: Option<&RowProblem>, values: &[&str; 14]) {
        if self.rows == 0 {
            self.first_row = row_no;
        }
        self.rows += 1;
        self.last_row = row_no;
        let row = row_no.to_string();
        let (field, column, reason, value) = match problem {
            Some(p) => (
                p.field.map(Field::as_str).unwrap_or(""),
                p.column.as_deref().unwrap_or(""),
                p.reason.as_str(),
                p.value.as_deref().unwrap_or(""),
            ),
            None => ("", "", "", ""),
        };
        let lead = [row.as_str(), field, column, reason, value];
        // Writing into a Vec cannot fail.
        let _ = self.w.write_record(lead.iter().chain(values.iter()));
    }

    /// Rows so far.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Bytes staged so far (give or take the writer's small buffer).
    pub fn bytes(&self) -> usize {
        self.w.get_ref().len()
    }

    /// (first row, last row, rows, bytes).
    pub fn finish(self) -> (u32, u32, u32, Vec<u8>) {
        let bytes = self.w.into_inner().unwrap_or_default();
        (self.first_row, self.last_row, self.rows, bytes)
    }
}

/// Why a staged chunk cannot be read back (a bug or a damaged object: not retried).
#[derive(Debug, thiserror::Error)]
#[error("staged chunk is damaged at record {record}: {message}")]
pub struct StagedError {
    /// Record index in the chunk.
    pub record: usize,
    /// What is wrong.
    pub message: String,
}

/// Reads a staged chunk back.
pub fn read_chunk(bytes: &[u8]) -> Result<Vec<StagedRow>, StagedError> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(bytes);
    let mut out = Vec::new();
    let mut rec = csv::StringRecord::new();
    let mut i = 0;
    loop {
        match r.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                return Err(StagedError {
                    record: i,
                    message: e.to_string(),
                });
            }
        }
        if rec.len() != LEAD + Field::ALL.len() {
            return Err(StagedError {
                record: i,
                message: format!("{} columns", rec.len()),
            });
        }
        let row_no: u32 = rec[0].parse().map_err(|_| StagedError {
            record: i,
            message: format!("row number `{}`", &rec[0]),
        })?;
        let problem = if rec[3].is_empty() {
            None
        } else {
            let field = Field::ALL.iter().copied().find(|f| f.as_str() == &rec[1]);
            let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
            Some(RowProblem {
                field,
                column: opt(&rec[2]),
                reason: rec[3].to_string(),
                value: opt(&rec[4]),
            })
        };
        let values: [String; 14] = std::array::from_fn(|k| rec[LEAD + k].to_string());
        out.push(StagedRow {
            row_no,
            problem,
            values,
        });
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_rows_survive_a_round_trip_with_quotes_newlines_and_problems() {
        let mut w = ChunkWriter::new();
        let mut v: [&str; 14] = [""; 14];
        v[Field::Name.index()] = "Jörg \"JJ\" Müller;\nGmbH";
        v[Field::Iban.index()] = "DE89 3704 0044 0532 0130 00";
        w.push(2, None, &v);
        let p = RowProblem {
            field: Some(Field::Amount),
            column: Some("Betrag".into()),
            reason: "row has 3 fields, the header has 5".into(),
            value: None,
        };
        w.push(4, Some(&p), &[""; 14]);
        let (first, last, rows, bytes) = w.finish();
        assert_eq!((first, last, rows), (2, 4, 2));
        let back = read_chunk(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].row_no, 2);
        assert_eq!(
            back[0].values[Field::Name.index()],
            "Jörg \"JJ\" Müller;\nGmbH"
        );
        assert_eq!(back[0].problem, None);
        assert_eq!(back[1].problem.as_ref(), Some(&p));
    }
}
