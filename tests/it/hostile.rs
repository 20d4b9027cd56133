//! Hostile files: whatever a spreadsheet claims, it fails its own upload with a sentence,
//! quickly, and the worker process (here: this test process) and its other jobs carry on.
//! Plus a bounded fuzz run over the CSV and spreadsheet readers (`FUZZ_CASES` for longer).

use std::{
    io::{Cursor, Read, Write},
    time::{Duration, Instant},
};

use finworker::{
    jobs::upload::{
        isolated::{self, Limits},
        source::{Format, SourceMeta, SourceRow},
        split::{RowSink, Stop},
        text::CsvSource,
    },
    uploads::ColumnAliases,
};
use proptest::prelude::*;
use serde_json::json;

use crate::{
    helpers::{app::TestApp, spawn_app_with},
    uploads::{submit, wait_final},
};

fn valid_xlsx(rows: usize) -> Vec<u8> {
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    for (c, h) in ["Name", "IBAN", "Amount", "Reference"].iter().enumerate() {
        ws.write_string(0, c as u16, *h).unwrap();
    }
    for r in 1..=rows as u32 {
        ws.write_string(r, 0, format!("Debtor {r}")).unwrap();
        ws.write_string(r, 1, "DE89370400440532013000").unwrap();
        ws.write_string(r, 2, "12.34").unwrap();
        ws.write_string(r, 3, format!("REF-{r}")).unwrap();
    }
    wb.save_to_buffer().unwrap()
}

/// Rewrites some parts of a zip archive (a spreadsheet).
fn rewrite_zip(bytes: &[u8], mut f: impl FnMut(&str, Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let mut z = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for i in 0..z.len() {
        let mut e = z.by_index(i).unwrap();
        let name = e.name().unwrap().to_string();
        let mut content = Vec::new();
        e.read_to_end(&mut content).unwrap();
        let content = f(&name, content);
        out.start_file(
            name,
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated),
        )
        .unwrap();
        out.write_all(&content).unwrap();
    }
    out.finish().unwrap().into_inner()
}

fn ods(content_xml: &str) -> Vec<u8> {
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    out.start_file("mimetype", stored).unwrap();
    out.write_all(b"application/vnd.oasis.opendocument.spreadsheet")
        .unwrap();
    out.start_file("content.xml", stored).unwrap();
    out.write_all(content_xml.as_bytes()).unwrap();
    out.start_file("META-INF/manifest.xml", stored).unwrap();
    out.write_all(br#"<?xml version="1.0" encoding="UTF-8"?><manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2"><manifest:file-entry manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/><manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/></manifest:manifest>"#).unwrap();
    out.finish().unwrap().into_inner()
}

fn ods_with_rows(rows_xml: &str) -> Vec<u8> {
    ods(&format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2"><office:body><office:spreadsheet><table:table table:name="Sheet1"><table:table-row><table:table-cell office:value-type="string"><text:p>Name</text:p></table:table-cell><table:table-cell office:value-type="string"><text:p>IBAN</text:p></table:table-cell><table:table-cell office:value-type="string"><text:p>Amount</text:p></table:table-cell></table:table-row>{rows_xml}</table:table></office:spreadsheet></office:body></office:document-content>"#
    ))
}

fn record(out: &mut Vec<u8>, typ: u16, data: &[u8]) {
    out.extend_from_slice(&typ.to_le_bytes());
    out.extend_from_slice(&(data.len() as u16).to_le_bytes());
    out.extend_from_slice(data);
}

fn bof(dt: u16) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&0x0600u16.to_le_bytes()); // BIFF8
    d.extend_from_slice(&dt.to_le_bytes());
    d.extend_from_slice(&[0; 12]);
    d
}

/// A legacy Excel (BIFF8 in an OLE2 container) workbook of one sheet whose DIMENSIONS record
/// claims `rows` rows × 256 columns, holding one number.
fn xls_claiming(rows: u32) -> Vec<u8> {
    let mut sheet = Vec::new();
    record(&mut sheet, 0x0809, &bof(0x0010));
    let mut dim = Vec::new();
    dim.extend_from_slice(&0u32.to_le_bytes());
    dim.extend_from_slice(&rows.to_le_bytes());
    dim.extend_from_slice(&0u16.to_le_bytes());
    dim.extend_from_slice(&0xFFu16.to_le_bytes());
    dim.extend_from_slice(&0u16.to_le_bytes());
    record(&mut sheet, 0x0200, &dim);
    let mut num = Vec::new();
    num.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    num.extend_from_slice(&1.5f64.to_le_bytes());
    record(&mut sheet, 0x0203, &num);
    record(&mut sheet, 0x000A, &[]);

    let name = b"Sheet1";
    let mut globals = Vec::new();
    record(&mut globals, 0x0809, &bof(0x0005));
    let boundsheet_len = 4 + 8 + name.len();
    let eof_len = 4;
    let sheet_at = (globals.len() + boundsheet_len + eof_len) as u32;
    let mut bs = Vec::new();
    bs.extend_from_slice(&sheet_at.to_le_bytes());
    bs.extend_from_slice(&[0, 0, name.len() as u8, 0]);
    bs.extend_from_slice(name);
    record(&mut globals, 0x0085, &bs);
    record(&mut globals, 0x000A, &[]);
    globals.extend_from_slice(&sheet);

    let mut comp = cfb::CompoundFile::create(Cursor::new(Vec::new())).unwrap();
    {
        let mut stream = comp.create_stream("/Workbook").unwrap();
        stream.write_all(&globals).unwrap();
    }
    comp.flush().unwrap();
    comp.into_inner().into_inner()
}

fn sheet_xml_replace(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    rewrite_zip(bytes, |name, c| {
        if name == "xl/worksheets/sheet1.xml" {
            String::from_utf8(c)
                .unwrap()
                .replacen(from, to, 1)
                .into_bytes()
        } else {
            c
        }
    })
}

/// The hostile corpus: (name, bytes, words the failure message must hold, or None when the
/// file may also be read as what it truly holds).
fn corpus() -> Vec<(&'static str, Vec<u8>, Option<&'static str>)> {
    let good = valid_xlsx(5);
    let absurd_sst = rewrite_zip(&good, |name, c| {
        if name == "xl/sharedStrings.xml" {
            let s = String::from_utf8(c).unwrap();
            let s = regex_lite_replace_attr(&s, "count", "10000000000000");
            regex_lite_replace_attr(&s, "uniqueCount", "10000000000000").into_bytes()
        } else {
            c
        }
    });
    let huge_dimension = sheet_xml_replace(
        &good,
        "<dimension ref=\"A1:D6\"/>",
        "<dimension ref=\"A1:XFD1048576\"/>",
    );
    let deep = {
        let nest = 200_000;
        let inner = format!("{}{}", "<x>".repeat(nest), "</x>".repeat(nest));
        sheet_xml_replace(&good, "<sheetData>", &format!("<sheetData>{inner}"))
    };
    let huge_cell = rewrite_zip(&good, |name, c| {
        if name == "xl/sharedStrings.xml" {
            String::from_utf8(c)
                .unwrap()
                .replacen("Debtor 1<", &format!("{}<", "A".repeat(30 << 20)), 1)
                .into_bytes()
        } else {
            c
        }
    });
    let truncated = good[..good.len() / 2].to_vec();
    let ods_rows_repeated = ods_with_rows(
        r#"<table:table-row table:number-rows-repeated="1000000000"><table:table-cell office:value-type="string"><text:p>x</text:p></table:table-cell></table:table-row>"#,
    );
    let ods_cols_repeated = ods_with_rows(
        r#"<table:table-row table:number-rows-repeated="100000"><table:table-cell table:number-columns-repeated="16000" office:value-type="string"><text:p>x</text:p></table:table-cell></table:table-row>"#,
    );
    let mut xls_garbage = vec![0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
    xls_garbage.extend((0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    vec![
        (
            "absurd-shared-strings.xlsx",
            absurd_sst,
            Some("memory limit"),
        ),
        ("huge-dimension.xlsx", huge_dimension, None),
        ("deep-nesting.xlsx", deep, None),
        ("huge-cell.xlsx", huge_cell, None),
        ("truncated.xlsx", truncated, Some("damaged")),
        ("rows-repeated.ods", ods_rows_repeated, None),
        ("cols-repeated.ods", ods_cols_repeated, None),
        ("garbage.xls", xls_garbage, None),
        (
            "absurd-dimensions.xls",
            xls_claiming(u32::MAX - 1),
            Some("memory limit"),
        ),
    ]
}

/// Sets `attr="…"` in an XML text (the first occurrence).
fn regex_lite_replace_attr(s: &str, attr: &str, value: &str) -> String {
    let needle = format!(" {attr}=\"");
    let Some(i) = s.find(&needle) else {
        return s.to_string();
    };
    let start = i + needle.len();
    let end = start + s[start..].find('"').unwrap();
    format!("{}{value}{}", &s[..start], &s[end..])
}

async fn hostile_app() -> TestApp {
    spawn_app_with(|s| {
        s.upload.reader_memory = 512 << 20;
        s.upload.reader_timeout = Duration::from_secs(20);
    })
    .await
}

#[tokio::test]
async fn each_hostile_spreadsheet_fails_only_its_own_upload_quickly_and_clearly() {
    let app = hostile_app().await;
    for (name, bytes, expect) in corpus() {
        let t0 = Instant::now();
        let id = submit(&app, name, &bytes).await;
        let rec = wait_final(&app, id).await;
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(30), "{name}: took {took:?}");
        match expect {
            Some(words) => {
                assert_eq!(rec.status, "failed", "{name}");
                let err = rec.error.clone().unwrap_or_default();
                assert!(err.contains(words), "{name}: {err}");
            }
            None => {
                // Either read for what it truly holds, or refused with a sentence.
                if rec.status == "failed" {
                    let err = rec.error.clone().unwrap_or_default();
                    assert!(
                        !err.is_empty() && !err.contains("panicked") && err.len() < 400,
                        "{name}: {err}"
                    );
                }
            }
        }
        // This process (the worker) survived, and runs other jobs.
        let other = app.enqueue("noop", json!({})).await;
        assert_eq!(
            app.finished_runs(&other, Duration::from_secs(10)).await[0].status,
            "succeeded",
            "{name}"
        );
    }
}

/// Collects what a reader produces.
#[derive(Default)]
struct Collect {
    rows: usize,
}

impl RowSink for Collect {
    fn header(&mut self, _: &SourceMeta, _: Option<&str>) -> Result<(), Stop> {
        Ok(())
    }
    fn row(&mut self, _: SourceRow, _: u64) -> Result<(), Stop> {
        self.rows += 1;
        Ok(())
    }
}

fn fuzz_cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    for (at, b) in edits {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = *b;
        }
    }
    if let Some(c) = cut {
        let keep = c % (bytes.len() + 1);
        bytes.truncate(keep);
    }
    bytes
}

proptest! {
    // Bounded in CI; `FUZZ_CASES=100000 cargo nextest run fuzz` for a longer run (docs/uploads.md).
    #![proptest_config(ProptestConfig { cases: fuzz_cases(24), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_isolated_spreadsheet_reader_ends_cleanly_on_any_mutation(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..16),
        cut in proptest::option::of(any::<usize>()),
        ods_file in any::<bool>(),
    ) {
        let base = if ods_file {
            ods_with_rows(r#"<table:table-row><table:table-cell office:value-type="string"><text:p>Ann</text:p></table:table-cell><table:table-cell office:value-type="string"><text:p>DE89370400440532013000</text:p></table:table-cell><table:table-cell office:value-type="float" office:value="1.5"><text:p>1.5</text:p></table:table-cell></table:table-row>"#)
        } else {
            valid_xlsx(3)
        };
        let bytes = mutate(base, &edits, cut);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        let limits = Limits {
            exe: env!("CARGO_BIN_EXE_finworker").into(),
            memory: 512 << 20,
            time: Duration::from_secs(20),
            max_decompressed: 64 << 20,
        };
        let t0 = Instant::now();
        let r = isolated::read(file, if ods_file { Format::Ods } else { Format::Xlsx }, None, &limits, &mut Collect::default());
        prop_assert!(t0.elapsed() < Duration::from_secs(25));
        if let Err(Stop::File(e)) = &r {
            prop_assert!(!e.to_string().is_empty());
        }
        prop_assert!(!matches!(r, Err(Stop::Cancelled)));
    }

    #[test]
    fn the_csv_reader_ends_cleanly_on_any_input(
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        header in any::<bool>(),
    ) {
        let mut bytes = if header { b"Name;IBAN;Amount\n".to_vec() } else { Vec::new() };
        bytes.extend(data);
        let aliases = ColumnAliases::new(&finworker::config::Settings::load_from(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config").as_path(), &[]).unwrap().upload.columns);
        if let Ok(mut src) = CsvSource::open(Box::new(Cursor::new(bytes)), &aliases) {
            let mut sink = Collect::default();
            let _ = finworker::jobs::upload::split::drive(&mut src, &mut sink);
        }
    }
}
