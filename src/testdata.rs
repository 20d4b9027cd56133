//! `finworker gen debtors`: deterministic, realistic debtor files for tests, the demo and
//! benchmarks. Each row is a pure function of (seed, row index), so memory stays flat at any
//! size and the same arguments always give the same bytes.
//!
//! About `--duplicates`% of rows repeat an earlier debtor (same IBAN and reference) and
//! `--malformed`% are broken in one of several ways (empty IBAN, an amount that is not a
//! number or has three decimals, an impossible date, an empty name, a short row). The
//! summary says how many of each, so tests can assert the upload's totals exactly.

use std::{io::Write, path::PathBuf};

use anyhow::Context as _;
use chrono::NaiveDate;
use clap::{Args, ValueEnum};
use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
use serde::Serialize;

/// File format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum GenFormat {
    /// Delimited text.
    Csv,
    /// Excel workbook.
    Xlsx,
}

/// Text encoding of a CSV.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum GenEncoding {
    /// UTF-8.
    Utf8,
    /// Windows-1252 (Latin-1).
    Windows1252,
}

/// `gen debtors` arguments.
#[derive(Debug, Clone, Args)]
pub struct DebtorArgs {
    /// Data rows.
    #[arg(long, default_value_t = 1000)]
    pub rows: u64,
    /// csv or xlsx.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: GenFormat,
    /// Seed: same seed, same file.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
    /// CSV delimiter.
    #[arg(long, default_value = ";")]
    pub delimiter: char,
    /// CSV encoding.
    #[arg(long, value_enum, default_value = "utf8")]
    pub encoding: GenEncoding,
    /// Start a UTF-8 CSV with a byte-order mark.
    #[arg(long)]
    pub bom: bool,
    /// CRLF line ends.
    #[arg(long)]
    pub crlf: bool,
    /// Percent of rows that repeat an earlier debtor.
    #[arg(long, default_value_t = 10.0)]
    pub duplicates: f64,
    /// Percent of malformed rows.
    #[arg(long, default_value_t = 2.0)]
    pub malformed: f64,
    /// Percent of rows that import but fail validation (IBAN check digits, a mandate signed
    /// in the future, a BIC of another country).
    #[arg(long, default_value_t = 0.0)]
    pub invalid: f64,
    /// Never write rows with missing cells (keeps the file loadable by `psql \copy`).
    #[arg(long)]
    pub no_short_rows: bool,
}

/// What a generated file holds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct GenSummary {
    /// Data rows.
    pub rows: u64,
    /// Rows that should import.
    pub unique: u64,
    /// Rows that repeat an earlier one.
    pub duplicates: u64,
    /// Rows that should be rejected.
    pub malformed: u64,
    /// Of the rows that import, those that should fail validation.
    pub invalid: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Duplicate(u64),
    Malformed(u8),
    Invalid(u8),
}

const HEADERS: [&str; 11] = [
    "Customer Number",
    "First Name",
    "Last Name",
    "E-Mail",
    "IBAN",
    "BIC",
    "Amount",
    "Currency",
    "Mandate Reference",
    "Mandate Date",
    "Usage",
];

const FIRST: &[&str] = &[
    "José",
    "François",
    "Jörg",
    "Søren",
    "Zoë",
    "Chloé",
    "Björn",
    "Mário",
    "Íñigo",
    "Anaïs",
    "Renée",
    "Günther",
    "Ørjan",
    "Maëlle",
    "Jürgen",
    "Agnès",
    "Hélène",
    "Ólafur",
    "Anna",
    "Lukas",
    "Marie",
    "Paul",
    "Sofia",
    "Luca",
];
const LAST: &[&str] = &[
    "Müller",
    "Sánchez",
    "Núñez",
    "Gómez",
    "Dubois",
    "Lefèvre",
    "Schröder",
    "Weiß",
    "Ødegård",
    "Fernández",
    "Jäger",
    "Brontë",
    "Çelik",
    "Åkesson",
    "Rossi",
    "Ferrari",
    "De Jong",
    "O'Brien",
    "García",
    "Meyer, Jr.",
    "Dupont \"Le Grand\"",
    "Schmidt",
];
/// (country, BBAN length, letters at the start of the BBAN, a BIC there).
const COUNTRIES: &[(&str, usize, usize, &str)] = &[
    ("DE", 18, 0, "COBADEFFXXX"),
    ("FR", 23, 0, "BNPAFRPPXXX"),
    ("ES", 20, 0, "CAIXESBBXXX"),
    ("IT", 23, 1, "UNCRITMMXXX"),
    ("NL", 14, 4, "INGBNL2AXXX"),
    ("AT", 16, 0, "BKAUATWWXXX"),
    ("BE", 12, 0, "GEBABEBBXXX"),
    ("PT", 21, 0, "BCOMPTPLXXX"),
    ("FI", 14, 0, "NDEAFIHHXXX"),
    ("IE", 18, 4, "AIBKIE2DXXX"),
    ("LU", 16, 0, "BCEELULLXXX"),
    ("SK", 20, 0, "TATRSKBXXXX"),
];

fn mix(seed: u64, i: u64, salt: u64) -> u64 {
    // splitmix64 of the three inputs: cheap, well spread, stable across versions.
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(i.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(salt.wrapping_mul(0x94D0_49BB_1331_11EB))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// IBAN check digits (ISO 7064 mod 97-10) for a country and BBAN.
pub fn iban_with_check(country: &str, bban: &str) -> String {
    let rearranged = format!("{bban}{country}00");
    let mut rem: u32 = 0;
    for c in rearranged.chars() {
        let v = if c.is_ascii_digit() {
            c as u32 - '0' as u32
        } else {
            c.to_ascii_uppercase() as u32 - 'A' as u32 + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    format!("{country}{:02}{bban}", 98 - rem)
}

struct Gen {
    seed: u64,
    dup_per_mille: u64,
    mal_per_mille: u64,
    inv_per_mille: u64,
    short_rows: bool,
}

/// One row's cells.
struct Row {
    reference: String,
    first: &'static str,
    last: &'static str,
    email: String,
    iban: String,
    bic: &'static str,
    amount_minor: i64,
    amount_text: Option<String>,
    mandate: String,
    date: Option<NaiveDate>,
    date_text: Option<String>,
    usage: String,
    short: bool,
}

impl Gen {
    fn kind(&self, i: u64) -> Kind {
        let r = mix(self.seed, i, 0) % 1000;
        if r < self.dup_per_mille && i > 0 {
            let back = 1 + mix(self.seed, i, 1) % i.min(5000);
            let mut j = i - back;
            loop {
                if self.kind_no_dup(j) == Kind::Normal {
                    return Kind::Duplicate(j);
                }
                if j == 0 {
                    return Kind::Normal;
                }
                j -= 1;
            }
        }
        self.kind_no_dup(i)
    }

    fn kind_no_dup(&self, i: u64) -> Kind {
        let r = mix(self.seed, i, 0) % 1000;
        if r < self.dup_per_mille && i > 0 {
            // A duplicate row is never the original of another.
            return Kind::Malformed(u8::MAX);
        }
        if r < self.dup_per_mille + self.mal_per_mille {
            let kinds = if self.short_rows { 6 } else { 5 };
            return Kind::Malformed((mix(self.seed, i, 2) % kinds) as u8);
        }
        if r < self.dup_per_mille + self.mal_per_mille + self.inv_per_mille {
            return Kind::Invalid((mix(self.seed, i, 8) % 3) as u8);
        }
        Kind::Normal
    }

    fn normal(&self, i: u64) -> Row {
        let h = |salt| mix(self.seed, i, salt);
        let (cc, len, letters, bic) = COUNTRIES[(h(3) % COUNTRIES.len() as u64) as usize];
        let mut bban = String::with_capacity(len);
        for k in 0..len {
            let v = mix(self.seed, i, 100 + k as u64);
            if k < letters {
                bban.push((b'A' + (v % 26) as u8) as char);
            } else {
                bban.push((b'0' + (v % 10) as u8) as char);
            }
        }
        let first = FIRST[(h(4) % FIRST.len() as u64) as usize];
        let last = LAST[(h(5) % LAST.len() as u64) as usize];
        let date = NaiveDate::from_ymd_opt(2019, 1, 1)
            .and_then(|d| d.checked_add_days(chrono::Days::new(h(7) % 2000)));
        Row {
            reference: format!(
                "{}",
                900_000_000_000_000 + self.seed % 1000 * 1_000_000_000 + i
            ),
            first,
            last,
            email: format!("debtor{i}@example.com"),
            iban: iban_with_check(cc, &bban),
            bic,
            amount_minor: 100 + (h(6) % 199_900) as i64,
            amount_text: None,
            mandate: format!("MNDT-{}-{i:08}", self.seed),
            date,
            date_text: None,
            usage: format!("Invoice {}", 10_000 + i),
            short: false,
        }
    }

    fn row(&self, i: u64) -> (Kind, Row) {
        let kind = self.kind(i);
        let row = match kind {
            Kind::Normal => self.normal(i),
            Kind::Duplicate(j) => {
                let mut r = self.normal(j);
                r.usage = format!("Invoice {}", 10_000 + i);
                r
            }
            Kind::Invalid(m) => {
                let mut r = self.normal(i);
                match m {
                    0 => {
                        // Other check digits: mod 97 fails.
                        let cd: u32 = r.iban[2..4].parse().unwrap_or(0);
                        r.iban = format!("{}{:02}{}", &r.iban[..2], (cd + 1) % 100, &r.iban[4..]);
                    }
                    1 => r.date = NaiveDate::from_ymd_opt(2099, 6, 30),
                    _ => {
                        r.bic = if r.iban.starts_with("FR") {
                            "COBADEFFXXX"
                        } else {
                            "BNPAFRPPXXX"
                        }
                    }
                }
                r
            }
            Kind::Malformed(m) => {
                let mut r = self.normal(i);
                match m {
                    0 => r.iban = String::new(),
                    1 => r.amount_text = Some("n/a".into()),
                    2 => r.amount_text = Some("12.345".into()),
                    3 => r.date_text = Some("31.02.2024".into()),
                    4 => {
                        r.first = "";
                        r.last = "";
                    }
                    _ => r.short = true,
                }
                r
            }
        };
        (kind, row)
    }
}

fn amount_text(minor: i64, comma: bool) -> String {
    let (int, frac) = (minor / 100, minor % 100);
    if comma {
        let int_s = int.to_string();
        let grouped = if int >= 1000 {
            format!(
                "{}.{}",
                &int_s[..int_s.len() - 3],
                &int_s[int_s.len() - 3..]
            )
        } else {
            int_s
        };
        format!("{grouped},{frac:02}")
    } else {
        format!("{int}.{frac:02}")
    }
}

/// Writes the file and returns what it holds.
pub fn debtors(args: &DebtorArgs) -> anyhow::Result<GenSummary> {
    let g = Gen {
        seed: args.seed,
        dup_per_mille: (args.duplicates * 10.0).round() as u64,
        mal_per_mille: (args.malformed * 10.0).round() as u64,
        inv_per_mille: (args.invalid * 10.0).round() as u64,
        short_rows: !args.no_short_rows && args.format == GenFormat::Csv,
    };
    let mut summary = GenSummary {
        rows: args.rows,
        ..Default::default()
    };
    let mut count = |k: Kind| match k {
        Kind::Normal => summary.unique += 1,
        Kind::Duplicate(_) => summary.duplicates += 1,
        Kind::Malformed(_) => summary.malformed += 1,
        Kind::Invalid(_) => {
            summary.unique += 1;
            summary.invalid += 1;
        }
    };
    match args.format {
        GenFormat::Csv => {
            let file = std::fs::File::create(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            if args.bom && args.encoding == GenEncoding::Utf8 {
                out.write_all(b"\xEF\xBB\xBF")?;
            }
            let builder = {
                let mut b = csv::WriterBuilder::new();
                b.delimiter(args.delimiter as u8)
                    .buffer_capacity(1024)
                    .terminator(if args.crlf {
                        csv::Terminator::CRLF
                    } else {
                        csv::Terminator::Any(b'\n')
                    });
                b
            };
            let comma = args.delimiter == ';';
            let write = |out: &mut std::io::BufWriter<std::fs::File>,
                         cells: &[&str]|
             -> anyhow::Result<()> {
                let mut w = builder.from_writer(Vec::with_capacity(256));
                w.write_record(cells)?;
                let buf = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
                if args.encoding == GenEncoding::Windows1252 {
                    let text = std::str::from_utf8(&buf)?;
                    let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(text);
                    out.write_all(&bytes)?;
                } else {
                    out.write_all(&buf)?;
                }
                Ok(())
            };
            write(&mut out, &HEADERS)?;
            for i in 0..args.rows {
                let (kind, r) = g.row(i);
                count(kind);
                let amount = r
                    .amount_text
                    .clone()
                    .unwrap_or_else(|| amount_text(r.amount_minor, comma));
                let date = r.date_text.clone().unwrap_or_else(|| {
                    r.date
                        .map(|d| {
                            if comma {
                                d.format("%d.%m.%Y").to_string()
                            } else {
                                d.format("%Y-%m-%d").to_string()
                            }
                        })
                        .unwrap_or_default()
                });
                let cells = [
                    r.reference.as_str(),
                    r.first,
                    r.last,
                    &r.email,
                    &r.iban,
                    r.bic,
                    &amount,
                    "EUR",
                    &r.mandate,
                    &date,
                    &r.usage,
                ];
                if r.short {
                    write(&mut out, &cells[..5])?;
                } else {
                    write(&mut out, &cells)?;
                }
            }
            out.flush()?;
        }
        GenFormat::Xlsx => {
            let mut wb = Workbook::new();
            let date_fmt = Format::new().set_num_format("dd.mm.yyyy");
            let money = Format::new().set_num_format("#,##0.00 [$€-407]");
            let ws = wb.add_worksheet_with_constant_memory()?;
            ws.set_name("Debtors")?;
            for (c, h) in HEADERS.iter().enumerate() {
                ws.write_string(0, c as u16, *h)?;
            }
            for i in 0..args.rows {
                let (kind, r) = g.row(i);
                count(kind);
                let row = u32::try_from(i + 1)?;
                // A 15-digit customer number in a numeric cell: must come back without an exponent.
                let reference: f64 = r.reference.parse().unwrap_or(0.0);
                ws.write_number(row, 0, reference)?;
                ws.write_string(row, 1, r.first)?;
                ws.write_string(row, 2, r.last)?;
                ws.write_string(row, 3, &r.email)?;
                ws.write_string(row, 4, &r.iban)?;
                ws.write_string(row, 5, r.bic)?;
                match &r.amount_text {
                    Some(t) => ws.write_string(row, 6, t)?,
                    None => {
                        ws.write_number_with_format(row, 6, r.amount_minor as f64 / 100.0, &money)?
                    }
                };
                ws.write_string(row, 7, "EUR")?;
                ws.write_string(row, 8, &r.mandate)?;
                match (&r.date_text, r.date) {
                    (Some(t), _) => {
                        ws.write_string(row, 9, t)?;
                    }
                    (None, Some(d)) => {
                        let x = ExcelDateTime::from_ymd(
                            u16::try_from(chrono::Datelike::year(&d))?,
                            u8::try_from(chrono::Datelike::month(&d))?,
                            u8::try_from(chrono::Datelike::day(&d))?,
                        )?;
                        ws.write_datetime_with_format(row, 9, &x, &date_fmt)?;
                    }
                    (None, None) => {}
                }
                ws.write_string(row, 10, &r.usage)?;
            }
            wb.save(&args.out)
                .with_context(|| format!("writing {}", args.out.display()))?;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ibans_pass_a_real_iban_validator() {
        let g = Gen {
            seed: 7,
            dup_per_mille: 0,
            mal_per_mille: 0,
            inv_per_mille: 0,
            short_rows: false,
        };
        let mut countries = std::collections::BTreeSet::new();
        for i in 0..500 {
            let r = g.normal(i);
            use iban::IbanLike as _;
            let parsed: iban::Iban = r
                .iban
                .parse()
                .unwrap_or_else(|e| panic!("{}: {e:?}", r.iban));
            countries.insert(parsed.country_code().to_string());
        }
        assert!(countries.len() >= 10, "{countries:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_rows_and_kinds_add_up() {
        let g = Gen {
            seed: 3,
            dup_per_mille: 100,
            mal_per_mille: 20,
            inv_per_mille: 0,
            short_rows: true,
        };
        let (mut d, mut m, mut n) = (0, 0, 0);
        for i in 0..10_000 {
            match g.kind(i) {
                Kind::Normal => n += 1,
                Kind::Duplicate(j) => {
                    assert!(j < i);
                    assert_eq!(g.kind(j), Kind::Normal);
                    d += 1;
                }
                Kind::Malformed(_) | Kind::Invalid(_) => m += 1,
            }
        }
        assert_eq!(n + d + m, 10_000);
        assert!((800..1200).contains(&d), "{d}");
        assert!((100..300).contains(&m), "{m}");
        assert_eq!(g.normal(42).iban, g.normal(42).iban);
    }
}
