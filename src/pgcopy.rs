//! Postgres binary COPY encoding (`COPY … FROM STDIN WITH (FORMAT binary)`).
//!
//! Binary COPY is the cheapest way into a table: no text escaping on our side, no text
//! parsing of integers, dates and uuids on the server's. Layout (Postgres docs, "COPY File
//! Formats"): a fixed header, then per row a 16-bit field count and, per field, a 32-bit
//! length (-1 for NULL) and the value in the type's binary (`send`) format.

use chrono::NaiveDate;
use uuid::Uuid;

/// Days from 0001-01-01 (chrono's day 1) to 2000-01-01, Postgres's date epoch.
const PG_EPOCH_DAYS_FROM_CE: i32 = 730_120;

/// Type oid of `text`, for array elements.
const TEXT_OID: i32 = 25;

/// Builds the binary COPY data of one table's rows.
pub struct BinaryCopy {
    buf: Vec<u8>,
    rows: usize,
}

impl Default for BinaryCopy {
    fn default() -> Self {
        Self::new()
    }
}

impl BinaryCopy {
    /// An empty copy: only the header.
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        Self { buf, rows: 0 }
    }

    /// Starts a row of `fields` fields; push exactly that many values next.
    pub fn row(&mut self, fields: i16) -> &mut Self {
        self.rows += 1;
        self.buf.extend_from_slice(&fields.to_be_bytes());
        self
    }

    fn len(&mut self, n: usize) {
        // Values are bounded far below 2 GiB by the upload limits.
        self.buf
            .extend_from_slice(&i32::try_from(n).unwrap_or(i32::MAX).to_be_bytes());
    }

    /// NULL.
    pub fn null(&mut self) -> &mut Self {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    /// `text` (or `varchar`).
    pub fn text(&mut self, v: &str) -> &mut Self {
        self.len(v.len());
        self.buf.extend_from_slice(v.as_bytes());
        self
    }

    /// Nullable `text`.
    pub fn opt_text(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    /// `jsonb`, from its JSON text (binary format version 1).
    pub fn jsonb(&mut self, json: Option<&str>) -> &mut Self {
        match json {
            Some(j) => {
                self.len(j.len() + 1);
                self.buf.push(1);
                self.buf.extend_from_slice(j.as_bytes());
                self
            }
            None => self.null(),
        }
    }

    /// `integer`.
    pub fn int4(&mut self, v: i32) -> &mut Self {
        self.len(4);
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// `bigint`.
    pub fn int8(&mut self, v: i64) -> &mut Self {
        self.len(8);
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Nullable `bigint`.
    pub fn opt_int8(&mut self, v: Option<i64>) -> &mut Self {
        match v {
            Some(v) => self.int8(v),
            None => self.null(),
        }
    }

    /// `boolean`.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.len(1);
        self.buf.push(u8::from(v));
        self
    }

    /// `uuid`.
    pub fn uuid(&mut self, v: Uuid) -> &mut Self {
        self.len(16);
        self.buf.extend_from_slice(v.as_bytes());
        self
    }

    /// Nullable `date`.
    pub fn opt_date(&mut self, v: Option<NaiveDate>) -> &mut Self {
        use chrono::Datelike;
        match v {
            Some(d) => {
                self.len(4);
                let days = d.num_days_from_ce() - PG_EPOCH_DAYS_FROM_CE;
                self.buf.extend_from_slice(&days.to_be_bytes());
                self
            }
            None => self.null(),
        }
    }

    /// Nullable one-dimensional `text[]`.
    pub fn opt_text_array(&mut self, v: Option<&[&str]>) -> &mut Self {
        let Some(items) = v else {
            return self.null();
        };
        let body: usize = 20 + items.iter().map(|s| 4 + s.len()).sum::<usize>();
        self.len(body);
        self.buf.extend_from_slice(&1i32.to_be_bytes()); // dimensions
        self.buf.extend_from_slice(&0i32.to_be_bytes()); // has nulls
        self.buf.extend_from_slice(&TEXT_OID.to_be_bytes());
        self.buf
            .extend_from_slice(&i32::try_from(items.len()).unwrap_or(0).to_be_bytes());
        self.buf.extend_from_slice(&1i32.to_be_bytes()); // lower bound
        for s in items {
            self.len(s.len());
            self.buf.extend_from_slice(s.as_bytes());
        }
        self
    }

    /// Rows so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The finished data (with the trailer).
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_days_from_the_postgres_epoch() {
        let mut c = BinaryCopy::new();
        c.row(1)
            .opt_date(Some(NaiveDate::from_ymd_opt(2000, 1, 2).unwrap()));
        let data = c.finish();
        // header 19 bytes, field count 2, length 4, value 4, trailer 2
        assert_eq!(&data[19..21], &1i16.to_be_bytes());
        assert_eq!(&data[21..25], &4i32.to_be_bytes());
        assert_eq!(&data[25..29], &1i32.to_be_bytes());
        assert_eq!(&data[29..], &(-1i16).to_be_bytes());
    }
}
