//! Upload ingestion end to end: file → storage → `upload` → `upload_chunk` → Postgres.
//! Every test checks the row invariant (seen = imported + duplicates + rejected, and each
//! table holds exactly what the totals say).

use std::{io::Write, time::Duration};

use finworker::{
    testdata::{self, DebtorArgs, GenEncoding, GenFormat},
    uploads::{self, UploadRecord},
};
use sqlx::Row;
use uuid::Uuid;

use crate::helpers::{app::TestApp, eventually, spawn_app, spawn_app_with};

/// Writes `bytes` to a temp file and submits it like `finworker upload` does.
pub async fn submit(app: &TestApp, name: &str, bytes: &[u8]) -> Uuid {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    uploads::submit(&app.ctx, &path, None, None, false)
        .await
        .unwrap()
}

pub async fn wait_final(app: &TestApp, id: Uuid) -> UploadRecord {
    eventually(
        Duration::from_secs(60),
        &format!("upload {id} to end"),
        || async {
            uploads::get(&app.ctx.db, id)
                .await
                .unwrap()
                .filter(UploadRecord::is_final)
        },
    )
    .await
}

/// Submits and waits; returns the final record after checking the invariant.
pub async fn ingest(app: &TestApp, name: &str, bytes: &[u8]) -> UploadRecord {
    let id = submit(app, name, bytes).await;
    let rec = wait_final(app, id).await;
    assert_accounted(app, &rec).await;
    rec
}

/// Every row in exactly one place, and the totals equal the table contents.
pub async fn assert_accounted(app: &TestApp, rec: &UploadRecord) {
    let mut c = app.db.connect().await;
    let mut counts = Vec::new();
    for sql in [
        "SELECT count(*) FROM debtors WHERE upload_id = $1",
        "SELECT count(*) FROM upload_duplicates WHERE upload_id = $1",
        "SELECT count(*) FROM upload_rejects WHERE upload_id = $1",
        "SELECT count(DISTINCT row_no) FROM (SELECT row_no FROM debtors WHERE upload_id = $1 \
         UNION ALL SELECT row_no FROM upload_duplicates WHERE upload_id = $1 \
         UNION ALL SELECT row_no FROM upload_rejects WHERE upload_id = $1) r",
    ] {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(rec.id)
            .fetch_one(&mut c)
            .await
            .unwrap();
        counts.push(n);
    }
    let (debtors, dups, rejects, distinct_rows) = (counts[0], counts[1], counts[2], counts[3]);
    if rec.status == "completed" {
        assert_eq!(
            rec.rows_seen,
            rec.rows_imported + rec.rows_duplicate + rec.rows_rejected,
            "{rec:?}"
        );
        assert_eq!(
            (debtors, dups, rejects),
            (rec.rows_imported, rec.rows_duplicate, rec.rows_rejected)
        );
        assert_eq!(
            distinct_rows, rec.rows_seen,
            "a row is in two places or none"
        );
    } else {
        assert_eq!(
            (debtors, dups, rejects),
            (0, 0, 0),
            "a failed upload keeps rows"
        );
    }
}

async fn names(app: &TestApp, id: Uuid) -> Vec<(i32, String, String, i64)> {
    let mut c = app.db.connect().await;
    sqlx::query(
        "SELECT row_no, name, iban, amount_minor FROM debtors WHERE upload_id = $1 ORDER BY row_no",
    )
    .bind(id)
    .fetch_all(&mut c)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

async fn rejects(app: &TestApp, id: Uuid) -> Vec<uploads::Reject> {
    uploads::rejects(&app.ctx.db, id, 1000).await.unwrap()
}

pub fn generate(args: DebtorArgs) -> (Vec<u8>, testdata::GenSummary) {
    let summary = testdata::debtors(&args).unwrap();
    let bytes = std::fs::read(&args.out).unwrap();
    (bytes, summary)
}

pub fn gen_args(dir: &tempfile::TempDir, rows: u64, format: GenFormat, seed: u64) -> DebtorArgs {
    DebtorArgs {
        rows,
        format,
        seed,
        out: dir.path().join(format!(
            "gen-{seed}.{}",
            if format == GenFormat::Csv {
                "csv"
            } else {
                "xlsx"
            }
        )),
        delimiter: ';',
        encoding: GenEncoding::Utf8,
        bom: false,
        crlf: false,
        duplicates: 10.0,
        malformed: 2.0,
        invalid: 0.0,
        no_short_rows: false,
    }
}

/// The same four debtors in many CSV dialects.
const EXPECTED: [(&str, &str, i64); 4] = [
    ("Jörg Müller", "DE89370400440532013000", 1999),
    ("François Lefèvre", "FR1420041010050500013M02606", 123_456),
    (
        "Ñoño; \"El Grande\"\nGarcía",
        "ES9121000418450200051332",
        500,
    ),
    ("Zoë Ødegård", "NL91ABNA0417164300", 7),
];

fn dialect(delim: &str, crlf: bool, decimal_comma: bool) -> String {
    dialect_ref(delim, crlf, decimal_comma, "A")
}

fn dialect_ref(delim: &str, crlf: bool, decimal_comma: bool, tag: &str) -> String {
    let nl = if crlf { "\r\n" } else { "\n" };
    let amount = |a: &str| {
        if decimal_comma {
            a.replace('.', "#").replace(',', ".").replace('#', ",")
        } else {
            a.to_string()
        }
    };
    let q = |s: &str| {
        if s.contains(delim) || s.contains('"') || s.contains('\n') {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = format!("Name{delim}IBAN{delim}Amount{delim}Reference{nl}");
    let rows = [
        ("Jörg Müller", "DE89 3704 0044 0532 0130 00", "19.99", "1"),
        (
            "François Lefèvre",
            "FR14 2004 1010 0505 0001 3M02 606",
            "1,234.56",
            "2",
        ),
        (
            "Ñoño; \"El Grande\"\nGarcía",
            "ES9121000418450200051332",
            "5",
            "3",
        ),
        ("Zoë Ødegård", "nl91abna0417164300", "0.07", "4"),
    ];
    for (n, iban, a, r) in rows {
        let r = &format!("{tag}-{r}");
        out.push_str(&format!(
            "{}{delim}{}{delim}{}{delim}{}{nl}",
            q(n),
            q(iban),
            q(&amount(a)),
            q(r)
        ));
    }
    out
}

async fn assert_four(app: &TestApp, rec: &UploadRecord, what: &str) {
    assert_eq!(rec.status, "completed", "{what}: {rec:?}");
    assert_eq!((rec.rows_seen, rec.rows_imported), (4, 4), "{what}");
    let got = names(app, rec.id).await;
    let got: Vec<(&str, &str, i64)> = got
        .iter()
        .map(|(_, n, i, a)| (n.as_str(), i.as_str(), *a))
        .collect();
    assert_eq!(got, EXPECTED.to_vec(), "{what}");
}

#[tokio::test]
async fn every_csv_dialect_imports_the_same_debtors_intact() {
    let app = spawn_app().await;
    // Each file carries its own references, so no file's rows duplicate another's.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("comma", dialect_ref(",", false, false, "c1").into_bytes()),
        (
            "semicolon, decimal comma",
            dialect_ref(";", false, true, "c2").into_bytes(),
        ),
        ("tab", dialect_ref("\t", false, false, "c3").into_bytes()),
        ("pipe", dialect_ref("|", false, false, "c4").into_bytes()),
        ("CRLF", dialect_ref(";", true, true, "c5").into_bytes()),
        ("UTF-8 BOM", {
            let mut b = b"\xEF\xBB\xBF".to_vec();
            b.extend(dialect_ref(";", true, true, "c6").into_bytes());
            b
        }),
        (
            "Windows-1252",
            encoding_rs::WINDOWS_1252
                .encode(&dialect_ref(";", true, true, "c7"))
                .0
                .into_owned(),
        ),
        ("UTF-16LE with BOM (Excel Unicode text)", {
            let text = dialect_ref("\t", true, false, "c8");
            let mut b = vec![0xFF, 0xFE];
            for u in text.encode_utf16() {
                b.extend(u.to_le_bytes());
            }
            b
        }),
    ];
    for (what, bytes) in cases {
        let rec = ingest(&app, &format!("{}.csv", what.replace(' ', "_")), &bytes).await;
        assert_four(&app, &rec, what).await;
        let expected_delim = match what {
            "comma" => ",",
            "tab" | "UTF-16LE with BOM (Excel Unicode text)" => "tab",
            "pipe" => "|",
            _ => ";",
        };
        assert_eq!(rec.delimiter.as_deref(), Some(expected_delim), "{what}");
        if what == "Windows-1252" {
            assert_eq!(rec.encoding.as_deref(), Some("windows-1252"));
            assert!(rec.note.as_deref().unwrap_or("").contains("Windows-1252"));
        }
    }
}

#[tokio::test]
async fn blank_lines_and_trailing_delimiters_are_not_rows() {
    let app = spawn_app().await;
    let csv = "\n\nName;IBAN;Amount;\n\nJörg Müller;DE89370400440532013000;19,99;\n;;;\n\nZoë Ødegård;NL91ABNA0417164300;0,07;\r\n\n";
    let rec = ingest(&app, "blank.csv", csv.as_bytes()).await;
    assert_eq!(rec.status, "completed", "{rec:?}");
    assert_eq!(
        (rec.rows_seen, rec.rows_imported, rec.rows_blank),
        (2, 2, 1)
    );
    let got = names(&app, rec.id).await;
    assert_eq!(got[0].1, "Jörg Müller");
    assert_eq!(got[0].0, 5, "row numbers are file lines");
    assert_eq!(got[1].3, 7);
}

#[tokio::test]
async fn every_kind_of_malformed_row_is_rejected_with_row_column_and_reason() {
    let app = spawn_app().await;
    let long = "x".repeat(1500);
    let csv = format!(
        "Name;IBAN;Betrag;Mandatsdatum;Reference\n\
         Good Row;DE89370400440532013000;10,00;15.03.2024;R1\n\
         No Iban;;10,00;15.03.2024;R2\n\
         Bad Iban;DE89-3704/0044;10,00;15.03.2024;R3\n\
         Bad Amount;DE89370400440532013000;zehn;15.03.2024;R4\n\
         Three Decimals;DE89370400440532013000;10,123;15.03.2024;R5\n\
         Bad Date;DE89370400440532013000;10,00;31.02.2024;R6\n\
         ;DE89370400440532013000;10,00;15.03.2024;R7\n\
         Short Row;DE89370400440532013000\n\
         Long Row;DE89370400440532013000;10,00;15.03.2024;R9;surprise\n\
         {long};DE89370400440532013000;10,00;15.03.2024;R10\n\
         Nul\0Name;DE89370400440532013000;10,00;15.03.2024;R11\n"
    );
    let rec = ingest(&app, "bad.csv", csv.as_bytes()).await;
    assert_eq!(rec.status, "completed", "{rec:?}");
    assert_eq!(
        (rec.rows_seen, rec.rows_imported, rec.rows_rejected),
        (11, 1, 10)
    );
    let r = rejects(&app, rec.id).await;
    let got: Vec<(i32, Option<&str>, &str)> = r
        .iter()
        .map(|x| (x.row_no, x.column_name.as_deref(), x.reason.as_str()))
        .collect();
    let expect: [(i32, Option<&str>, &str); 10] = [
        (3, Some("IBAN"), "the IBAN is empty"),
        (4, Some("IBAN"), "letters and digits"),
        (5, Some("Betrag"), "is not a number"),
        (6, Some("Betrag"), "ambiguous"),
        (7, Some("Mandatsdatum"), "is not a date"),
        (8, Some("Name"), "the name is empty"),
        (9, None, "the row has 2 values but the header has 5 columns"),
        (
            10,
            None,
            "the row has 6 values but the header has 5 columns",
        ),
        (11, Some("Name"), "at most 1000 are accepted"),
        (12, Some("Name"), "NUL character"),
    ];
    assert_eq!(got.len(), expect.len(), "{got:?}");
    for (g, e) in got.iter().zip(expect) {
        assert_eq!((g.0, g.1), (e.0, e.1), "{g:?}");
        assert!(
            g.2.contains(e.2),
            "row {}: {:?} should contain {:?}",
            g.0,
            g.2,
            e.2
        );
    }
    // An IBAN shown in a reject is masked.
    let bad_iban = r.iter().find(|x| x.row_no == 4).unwrap();
    assert!(
        bad_iban.value.as_deref().unwrap().contains('*'),
        "{bad_iban:?}"
    );
}

#[tokio::test]
async fn a_missing_required_column_fails_the_upload_naming_it() {
    let app = spawn_app().await;
    let rec = ingest(&app, "nocol.csv", b"Name;Betrag;Reference\nA;1,00;R\n").await;
    assert_eq!(rec.status, "failed");
    let err = rec.error.unwrap();
    assert!(err.contains("missing required column: iban"), "{err}");
    assert!(
        err.contains("The header row has: Name, Betrag, Reference"),
        "{err}"
    );
}

#[tokio::test]
async fn file_level_problems_fail_the_upload_with_a_plain_message() {
    let app = spawn_app_with(|s| {
        s.upload.max_rows = 10;
        s.upload.max_bytes = 100_000;
        s.upload.chunk_rows = 3;
    })
    .await;
    let mut over_rows = String::from("Name;IBAN;Amount\n");
    for i in 0..11 {
        over_rows.push_str(&format!("N{i};DE89370400440532013000;1.00\n"));
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.csv", vec![], "the file is empty"),
        (
            "header-only.csv",
            b"Name;IBAN;Amount\n".to_vec(),
            "no data rows",
        ),
        (
            "over-rows.csv",
            over_rows.into_bytes(),
            "more than 10 data rows",
        ),
        (
            "big.csv",
            vec![b'a'; 100_001],
            "over the limit of 100000 bytes",
        ),
        ("scan.csv", b"%PDF-1.7 ...".to_vec(), "a PDF document"),
        (
            "quote.csv",
            format!(
                "Name;IBAN;Amount\n\"Unclosed;DE89370400440532013000;1.00\n{}",
                "A;B;1.00\n".repeat(60)
            )
            .into_bytes(),
            "never closed",
        ),
    ];
    for (name, bytes, want) in cases {
        let rec = ingest(&app, name, &bytes).await;
        assert_eq!(rec.status, "failed", "{name}: {rec:?}");
        let err = rec.error.clone().unwrap();
        assert!(err.contains(want), "{name}: {err}");
    }
    // None of them was retried: one run each.
    let runs = app
        .scalar("SELECT count(*) FROM job_runs WHERE job_type = 'upload' AND status <> 'succeeded'")
        .await;
    assert_eq!(runs, 0);
}

#[tokio::test]
async fn xlsx_dates_long_numbers_and_amounts_read_as_excel_shows_them() {
    use rust_xlsxwriter::{ExcelDateTime, Format, Formula, Workbook};
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sheet.xlsx");
    let mut wb = Workbook::new();
    let date = Format::new().set_num_format("dd.mm.yyyy");
    let ws = wb.add_worksheet();
    ws.set_name("Notes").unwrap();
    ws.write_string(0, 0, "not this sheet").unwrap();
    let ws = wb.add_worksheet();
    ws.set_name("Debtors").unwrap();
    for (c, h) in [
        "Kundennummer",
        "Name",
        "IBAN",
        "Betrag",
        "Mandate ID",
        "Mandate Date",
    ]
    .iter()
    .enumerate()
    {
        ws.write_string(0, c as u16, *h).unwrap();
    }
    ws.write_number(1, 0, 123_456_789_012_345.0).unwrap();
    ws.write_string(1, 1, "Jörg Müller").unwrap();
    ws.write_string(1, 2, "DE89370400440532013000").unwrap();
    ws.write_number(1, 3, 19.99).unwrap();
    ws.write_number(1, 4, 98_765_432_109_876.0).unwrap();
    ws.write_datetime_with_format(1, 5, ExcelDateTime::from_ymd(2024, 3, 15).unwrap(), &date)
        .unwrap();
    ws.write_number(2, 0, 42.0).unwrap();
    ws.write_string(2, 1, "Zoë").unwrap();
    ws.write_string(2, 2, "NL91ABNA0417164300").unwrap();
    // 10 * 1.19 = 11.899999999999999 in binary; Excel shows 11.9.
    ws.write_formula(2, 3, Formula::new("=10*1.19").set_result("11.9"))
        .unwrap();
    ws.write_string(2, 5, "01.02.2023").unwrap();
    wb.save(&path).unwrap();
    let id = uploads::submit(&app.ctx, &path, None, Some("Debtors"), false)
        .await
        .unwrap();
    let rec = wait_final(&app, id).await;
    assert_accounted(&app, &rec).await;
    assert_eq!(rec.status, "completed", "{rec:?}");
    assert_eq!(rec.format.as_deref(), Some("xlsx"));
    assert_eq!(rec.rows_imported, 2);
    let mut c = app.db.connect().await;
    type Stored = (
        String,
        String,
        i64,
        Option<String>,
        Option<chrono::NaiveDate>,
    );
    let rows: Vec<Stored> = sqlx::query_as(
        "SELECT reference, name, amount_minor, mandate_id, mandate_date FROM debtors WHERE upload_id = $1 ORDER BY row_no",
    )
    .bind(id)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(rows[0].0, "123456789012345");
    assert_eq!(rows[0].2, 1999);
    assert_eq!(rows[0].3.as_deref(), Some("98765432109876"));
    assert_eq!(rows[0].4, chrono::NaiveDate::from_ymd_opt(2024, 3, 15));
    assert_eq!(rows[1].0, "42");
    assert_eq!(rows[1].2, 1190);
    assert_eq!(rows[1].4, chrono::NaiveDate::from_ymd_opt(2023, 2, 1));
}

#[tokio::test]
async fn generated_files_keep_the_row_invariant_and_match_the_generator() {
    let app = spawn_app_with(|s| s.upload.chunk_rows = 500).await;
    let dir = tempfile::tempdir().unwrap();
    let mut variants = vec![
        gen_args(&dir, 3000, GenFormat::Csv, 11),
        gen_args(&dir, 2000, GenFormat::Xlsx, 12),
    ];
    let mut latin = gen_args(&dir, 1500, GenFormat::Csv, 13);
    latin.encoding = GenEncoding::Windows1252;
    latin.delimiter = ',';
    latin.crlf = true;
    variants.push(latin);
    for args in variants {
        let (bytes, summary) = generate(args.clone());
        let rec = ingest(
            &app,
            args.out.file_name().unwrap().to_str().unwrap(),
            &bytes,
        )
        .await;
        assert_eq!(rec.status, "completed", "{rec:?}");
        assert_eq!(
            (
                rec.rows_seen as u64,
                rec.rows_imported as u64,
                rec.rows_duplicate as u64,
                rec.rows_rejected as u64
            ),
            (
                summary.rows,
                summary.unique,
                summary.duplicates,
                summary.malformed
            ),
            "{args:?}"
        );
        // Names with accents survive whatever the encoding.
        let mut c = app.db.connect().await;
        let accented: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM debtors WHERE upload_id = $1 AND (name LIKE '%ü%' OR name LIKE '%é%' OR name LIKE '%ø%')",
        )
        .bind(rec.id)
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert!(accented > 0);
        let mojibake: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM debtors WHERE upload_id = $1 AND name LIKE '%Ã%'",
        )
        .bind(rec.id)
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert_eq!(mojibake, 0);
    }
}

#[tokio::test]
async fn a_chunk_run_again_after_it_committed_changes_nothing() {
    let app = spawn_app_with(|s| s.upload.chunk_rows = 50).await;
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _) = generate(gen_args(&dir, 200, GenFormat::Csv, 31));
    let rec = ingest(&app, "again.csv", &bytes).await;
    // What a crash between commit and acknowledge looks like: the same chunk delivered again,
    // and the upload job too (their staged files are gone by now).
    // (Internal jobs: finworker's own enqueue, as a redelivery would be.)
    for n in 0..4 {
        app.ctx
            .enqueue(
                &finworker::jobs::UploadChunk {
                    upload_id: rec.id,
                    chunk_no: n,
                },
                Default::default(),
            )
            .await
            .unwrap();
    }
    let again = app
        .enqueue(
            "upload",
            serde_json::json!({ "object_key": rec.object_key, "upload_id": rec.id }),
        )
        .await;
    app.finished_runs(&again, Duration::from_secs(30)).await;
    eventually(Duration::from_secs(30), "the repeated chunks to run", || async {
        (app.scalar("SELECT count(*) FROM job_runs WHERE job_type = 'upload_chunk' AND status = 'succeeded'").await >= 8)
            .then_some(())
    })
    .await;
    let after = uploads::get(&app.ctx.db, rec.id).await.unwrap().unwrap();
    assert_eq!(
        (
            after.rows_imported,
            after.rows_duplicate,
            after.rows_rejected,
            after.chunks_done
        ),
        (
            rec.rows_imported,
            rec.rows_duplicate,
            rec.rows_rejected,
            rec.chunks_done
        )
    );
    assert_accounted(&app, &after).await;
}

#[tokio::test]
async fn staged_chunks_are_removed_when_the_upload_completes() {
    let app = spawn_app_with(|s| s.upload.chunk_rows = 10).await;
    let rec = ingest(&app, "s.csv", dialect(";", false, true).as_bytes()).await;
    assert_eq!(rec.status, "completed");
    // Staging is removed just after the completing commit: poll, don't race it.
    let prefix = uploads::staging_prefix(rec.id);
    eventually(
        Duration::from_secs(10),
        "the staging to be removed",
        || async {
            app.ctx
                .storage
                .list(&prefix)
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    // The original file stays.
    assert!(app.ctx.storage.size(&rec.object_key).await.unwrap() > 0);
}

#[tokio::test]
async fn a_zip_bomb_spreadsheet_fails_without_unpacking_it() {
    let app = spawn_app_with(|s| s.upload.max_decompressed_bytes = 8 * 1024 * 1024).await;
    // An XLSX-shaped archive whose sheet unpacks to 256 MiB of spaces (about 250 KiB packed).
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(true);
        z.start_file("[Content_Types].xml", opts).unwrap();
        z.write_all(b"<Types/>").unwrap();
        z.start_file("xl/workbook.xml", opts).unwrap();
        z.write_all(b"<workbook/>").unwrap();
        z.start_file("xl/worksheets/sheet1.xml", opts).unwrap();
        let block = vec![b' '; 1 << 20];
        for _ in 0..256 {
            z.write_all(&block).unwrap();
        }
        z.finish().unwrap();
    }
    let packed = buf.into_inner();
    assert!(packed.len() < 2 * 1024 * 1024, "{}", packed.len());
    let rec = ingest(&app, "bomb.xlsx", &packed).await;
    assert_eq!(rec.status, "failed");
    assert!(
        rec.error
            .as_deref()
            .unwrap()
            .contains("unpacks to more than 8388608 bytes"),
        "{rec:?}"
    );
}

#[tokio::test]
async fn a_spreadsheet_part_that_unpacks_beyond_its_declared_size_is_refused() {
    use std::io::Read;
    let app = spawn_app().await;
    // A real workbook, then its sheet replaced by the same XML with 64 MiB of blanks before the
    // root element, while the archive declares the original size (a zip bomb that lies).
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    for (c, h) in ["Name", "IBAN", "Amount"].iter().enumerate() {
        ws.write_string(0, c as u16, *h).unwrap();
    }
    ws.write_string(1, 0, "Anna").unwrap();
    ws.write_string(1, 1, "DE89370400440532013000").unwrap();
    ws.write_number(1, 2, 12.5).unwrap();
    let honest = wb.save_to_buffer().unwrap();
    let mut src = zip::ZipArchive::new(std::io::Cursor::new(honest)).unwrap();
    let sheet = "xl/worksheets/sheet1.xml";
    let mut out = std::io::Cursor::new(Vec::new());
    let declared;
    {
        let mut z = zip::ZipWriter::new(&mut out);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        let mut sheet_len = 0;
        for i in 0..src.len() {
            let mut e = src.by_index(i).unwrap();
            let name = e.name().unwrap().to_string();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            z.start_file(name.as_str(), opts).unwrap();
            if name == sheet {
                sheet_len = body.len() as u32;
                let root = body.windows(10).position(|w| w == b"<worksheet").unwrap();
                z.write_all(&body[..root]).unwrap();
                let blanks = vec![b' '; 1 << 20];
                for _ in 0..64 {
                    z.write_all(&blanks).unwrap();
                }
                z.write_all(&body[root..]).unwrap();
            } else {
                z.write_all(&body).unwrap();
            }
        }
        z.finish().unwrap();
        declared = sheet_len;
    }
    let mut bytes = out.into_inner();
    // Declare the original size in the local header (size at 22, name length at 26, name at
    // 30) and the central directory (24, 28, 46) of the sheet's entry.
    let patch =
        |bytes: &mut Vec<u8>, sig: &[u8; 4], size_at: usize, len_at: usize, name_at: usize| {
            let mut patched = 0;
            let mut i = 0;
            while let Some(p) = bytes[i..].windows(4).position(|w| w == sig) {
                let at = i + p;
                // The signature may also occur inside compressed data: match the name too.
                let name_len = bytes
                    .get(at + len_at..at + len_at + 2)
                    .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
                let name = bytes.get(at + name_at..at + name_at + name_len);
                if name == Some(sheet.as_bytes()) {
                    bytes[at + size_at..at + size_at + 4].copy_from_slice(&declared.to_le_bytes());
                    patched += 1;
                }
                i = at + 4;
            }
            assert_eq!(patched, 1);
        };
    patch(&mut bytes, b"PK\x03\x04", 22, 26, 30);
    patch(&mut bytes, b"PK\x01\x02", 24, 28, 46);
    let rec = ingest(&app, "lying.xlsx", &bytes).await;
    assert_eq!(rec.status, "failed");
    assert!(
        rec.error
            .as_deref()
            .unwrap()
            .contains("unpacks to more than the size it declares"),
        "{rec:?}"
    );
}

#[tokio::test]
async fn upload_progress_is_served_over_http_with_a_token() {
    let app = spawn_app().await;
    let rec = ingest(
        &app,
        "p.csv",
        b"Name;IBAN;Amount\nA;DE89370400440532013000;1.00\nB;;2.00\n",
    )
    .await;
    let url = app.url(&format!("/api/uploads/{}?rejects=10", rec.id));
    assert_eq!(app.http.get(&url).send().await.unwrap().status(), 401);
    let v = app
        .get_json(&format!("/api/uploads/{}?rejects=10", rec.id))
        .await;
    assert_eq!(v["status"], "completed");
    assert_eq!(v["rows_seen"], 2);
    assert_eq!(v["rows_imported"], 1);
    assert_eq!(v["rows_rejected"], 1);
    assert_eq!(v["progress"]["chunks_done"], 1);
    assert_eq!(v["progress"]["percent"], 100.0);
    assert_eq!(v["rejects"][0]["row_no"], 3);
    assert_eq!(v["rejects"][0]["column_name"], "IBAN");
    let missing = app
        .http
        .get(app.url(&format!("/api/uploads/{}", Uuid::new_v4())))
        .bearer_auth(crate::helpers::app::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let bad = app
        .http
        .get(app.url("/api/uploads/not-a-uuid"))
        .bearer_auth(crate::helpers::app::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn the_upload_command_stores_the_file_waits_and_prints_the_totals() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let args = gen_args(&dir, 700, GenFormat::Csv, 41);
    let (_, summary) = generate(args.clone());
    // The CLI blocks while it waits; the app's workers share this test's runtime thread.
    let (settings, path) = (app.settings.clone(), args.out.to_str().unwrap().to_string());
    let out = tokio::task::spawn_blocking(move || {
        crate::helpers::process::cli_ok(&settings, &["upload", &path])
    })
    .await
    .unwrap();
    assert!(out.contains("status     completed"), "{out}");
    assert!(
        out.contains(&format!(
            "rows       700 seen: {} imported, {} duplicates, {} rejected",
            summary.unique, summary.duplicates, summary.malformed
        )),
        "{out}"
    );
    let id: Uuid = out
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("upload")
        .trim()
        .parse()
        .unwrap();
    let show =
        crate::helpers::process::cli_ok(&app.settings, &["uploads", "show", &id.to_string()]);
    assert!(show.contains("rejected rows (first"), "{show}");
    assert!(show.contains("chunks     1/1"), "{show}");
}

#[tokio::test]
async fn a_worker_killed_mid_import_loses_and_doubles_no_row() {
    use finworker::startup::Roles;

    use crate::helpers::{app::spawn_app_roles, process::Daemon};
    // Workers are child processes; the test app only reads. Big chunks widen the window.
    let app = spawn_app_roles(
        Roles {
            workers: false,
            ..Roles::default()
        },
        |s| s.upload.chunk_rows = 25_000,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let args = gen_args(&dir, 150_000, GenFormat::Csv, 51);
    let (_, summary) = generate(args.clone());
    let id = uploads::submit(&app.ctx, &args.out, None, None, false)
        .await
        .unwrap();
    let queues = ["run", "--no-http", "--queues", "upload,upload_chunk"];
    let mut first = Daemon::start(&app.settings, &queues);

    // Kill it while a chunk transaction is running, if we can see one; else after a chunk.
    let db_name = app.db.name.clone();
    let caught_mid_chunk = eventually(Duration::from_secs(60), "a chunk import to start", || async {
        let mut c = app.db.connect().await;
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state <> 'idle' \
             AND (query LIKE 'COPY chunk_rows%' OR query LIKE 'INSERT INTO debtors%' OR query LIKE 'INSERT INTO upload_duplicates%')",
        )
        .bind(&db_name)
        .fetch_one(&mut c)
        .await
        .unwrap();
        if active > 0 {
            return Some(true);
        }
        let rec = uploads::get(&app.ctx.db, id).await.unwrap()?;
        (rec.chunks_done >= 1).then_some(false)
    })
    .await;
    first.sigkill();
    let before = uploads::get(&app.ctx.db, id).await.unwrap().unwrap();
    assert!(
        !before.is_final(),
        "killed too late to test anything: {before:?}"
    );

    let _second = Daemon::start(&app.settings, &queues);
    let rec = wait_final(&app, id).await;
    assert_eq!(rec.status, "completed", "{rec:?}");
    assert_accounted(&app, &rec).await;
    assert_eq!(
        (
            rec.rows_imported as u64,
            rec.rows_duplicate as u64,
            rec.rows_rejected as u64
        ),
        (summary.unique, summary.duplicates, summary.malformed)
    );
    if caught_mid_chunk {
        let interrupted = app
            .scalar("SELECT count(*) FROM job_runs WHERE job_type = 'upload_chunk' AND status = 'interrupted'")
            .await;
        assert!(interrupted >= 1, "the killed chunk attempt is recorded");
    }
}

#[tokio::test]
async fn binary_garbage_is_refused_at_once_and_a_stray_nul_rejects_only_its_row() {
    let app = spawn_app().await;
    // Random bytes: hardly a NUL among them, but no text either.
    let garbage: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761).rotate_left(7) >> 3) as u8)
        .collect();
    let t0 = std::time::Instant::now();
    let id = submit(&app, "export.csv", &garbage).await;
    let rec = wait_final(&app, id).await;
    assert_eq!(rec.status, "failed");
    let error = rec.error.clone().unwrap();
    assert!(
        error.starts_with("the file is not a readable CSV/XLSX/XLS/ODS file"),
        "{error}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "refused at once");
    // The audit row is written in a batch after the upload's record: wait for it, then make
    // sure no second attempt follows.
    let runs = || async {
        app.scalar("SELECT count(*) FROM job_runs WHERE job_type = 'upload'")
            .await
    };
    crate::helpers::eventually(
        Duration::from_secs(10),
        "the upload's job_runs row",
        || async { (runs().await >= 1).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs().await, 1, "not retried");

    // A good file with one NUL in one value: that row is rejected, naming line and column.
    let csv = b"Name;IBAN;Amount\nAnna;DE89370400440532013000;1.00\nBe\0rta;DE89370400440532013000;2.00\nCarl;DE89370400440532013000;3.00\n";
    let rec = ingest(&app, "nul.csv", csv).await;
    assert_eq!(rec.status, "completed");
    assert_eq!(
        (rec.rows_imported + rec.rows_duplicate, rec.rows_rejected),
        (2, 1)
    );
    let r = rejects(&app, rec.id).await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].row_no, 3);
    assert_eq!(r[0].column_name.as_deref(), Some("Name"));
    assert!(r[0].reason.contains("NUL character"), "{}", r[0].reason);
}

#[tokio::test]
async fn a_long_identifier_typed_into_a_number_cell_is_refused_not_rounded() {
    use rust_xlsxwriter::Workbook;
    let app = spawn_app().await;
    let mut wb = Workbook::new();
    let ws = wb.add_worksheet();
    for (c, h) in ["Name", "IBAN", "Amount", "Reference"].iter().enumerate() {
        ws.write_string(0, c as u16, *h).unwrap();
    }
    ws.write_string(1, 0, "Anna").unwrap();
    ws.write_string(1, 1, "DE89370400440532013000").unwrap();
    ws.write_number(1, 2, 12.5).unwrap();
    ws.write_number(1, 3, 1_234_567_890_123_456_789.0).unwrap(); // 19 digits, as typed
    ws.write_string(2, 0, "Berta").unwrap();
    ws.write_string(2, 1, "DE89370400440532013000").unwrap();
    ws.write_number(2, 2, 3.0).unwrap();
    ws.write_number(2, 3, 123_456_789_012_345.0).unwrap(); // 15 digits: kept exactly
    let rec = ingest(&app, "long-ref.xlsx", &wb.save_to_buffer().unwrap()).await;
    assert_eq!((rec.rows_imported, rec.rows_rejected), (1, 1));
    let r = rejects(&app, rec.id).await;
    assert_eq!(r[0].row_no, 2);
    assert_eq!(r[0].column_name.as_deref(), Some("Reference"));
    assert!(
        r[0].reason.contains("format the column as text")
            && r[0].reason.contains("15 significant digits"),
        "{}",
        r[0].reason
    );
    let refs: Vec<(String,)> = sqlx::query_as("SELECT reference FROM debtors WHERE upload_id = $1")
        .bind(rec.id)
        .fetch_all(&mut app.db.connect().await)
        .await
        .unwrap();
    assert_eq!(refs, vec![("123456789012345".to_string(),)]);
}

#[tokio::test]
async fn a_huge_unquoted_value_is_named_by_line_and_column_not_blamed_on_a_quote() {
    let app = spawn_app().await;
    let mut csv = b"Name;IBAN;Amount\nAnna;DE89370400440532013000;1.00\n".to_vec();
    csv.push(b'B');
    csv.extend(std::iter::repeat_n(b'x', 20 << 20));
    csv.extend_from_slice(b";DE89370400440532013000;2.00\n");
    let id = submit(&app, "huge-field.csv", &csv).await;
    let rec = wait_final(&app, id).await;
    assert_eq!(rec.status, "failed");
    let error = rec.error.unwrap();
    assert!(
        error.starts_with("line 3, column 1 (\"Name\"): a value over 1 MiB long"),
        "{error}"
    );
    assert!(!error.contains("quote"), "{error}");
}

#[tokio::test]
async fn long_values_are_rejected_while_splitting_and_chunks_are_capped_by_bytes() {
    let app = spawn_app_with(|s| {
        s.upload.chunk_rows = 1000;
        s.upload.chunk_max_bytes = 100_000;
    })
    .await;
    let mut csv = String::from("Name;IBAN;Amount;Reference\n");
    for i in 0..600 {
        // 900-byte names: accepted, but 100 KB of chunk holds only about a hundred.
        let name = format!("N{i:05}{}", "n".repeat(894));
        csv.push_str(&format!("{name};DE89370400440532013000;1.00;R{i}\n"));
    }
    csv.push_str(&format!(
        "{};DE89370400440532013000;1.00;LONG\n",
        "y".repeat(600_000)
    ));
    let rec = ingest(&app, "long-values.csv", csv.as_bytes()).await;
    assert_eq!(rec.status, "completed");
    assert_eq!((rec.rows_imported, rec.rows_rejected), (600, 1));
    assert!(
        rec.chunks_total.unwrap() >= 6,
        "chunks closed by size: {:?}",
        rec.chunks_total
    );
    let r = rejects(&app, rec.id).await;
    assert_eq!(r[0].row_no, 602);
    assert_eq!(r[0].column_name.as_deref(), Some("Name"));
    assert!(
        r[0].reason.contains("600000 bytes long; at most 1000"),
        "{}",
        r[0].reason
    );
    assert!(r[0].value.as_ref().unwrap().len() <= 64);
}

#[tokio::test]
async fn a_worker_importing_a_file_of_very_long_values_stays_within_200_mb() {
    let app = crate::helpers::spawn_api_only().await;
    let mut daemon = crate::helpers::process::Daemon::start(
        &app.settings,
        &["run", "--no-http", "--queues", "upload,upload_chunk"],
    );
    // 120 MB: 240 rows with a 500 KB name each, between good rows.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        writeln!(f, "Name;IBAN;Amount;Reference").unwrap();
        let long = "w".repeat(500_000);
        for i in 0..240 {
            writeln!(f, "{long};DE89370400440532013000;1.00;W{i}").unwrap();
            writeln!(f, "Good {i};DE89370400440532013000;1.00;G{i}").unwrap();
        }
    }
    let id = finworker::uploads::submit(&app.ctx, &path, None, None, false)
        .await
        .unwrap();
    let rec = wait_final(&app, id).await;
    assert_eq!(rec.status, "completed", "{:?}", rec.error);
    assert_eq!((rec.rows_imported, rec.rows_rejected), (240, 240));
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    eprintln!("worker peak RSS: {} MB", peak_kb / 1024);
    assert!(
        peak_kb < 200 * 1024,
        "worker peak RSS {} MB for a 120 MB file of 500 KB values",
        peak_kb / 1024
    );
    daemon.sigterm();
    daemon.wait_timeout(Duration::from_secs(20));
}

#[tokio::test]
async fn a_missing_object_names_the_absolute_storage_folder_it_looked_in() {
    let app = spawn_app().await;
    let id = app
        .enqueue(
            "upload",
            serde_json::json!({"object_key": "uploads/nowhere/missing.csv"}),
        )
        .await;
    let id: uuid::Uuid = id.parse().unwrap();
    let rec = wait_final(&app, id).await;
    let error = rec.error.unwrap();
    let root = std::fs::canonicalize(&app.settings.storage.local_root).unwrap();
    assert!(
        error.contains("there is no file at \"uploads/nowhere/missing.csv\"")
            && error.contains(&format!("local:{}", root.display())),
        "{error}"
    );
}
