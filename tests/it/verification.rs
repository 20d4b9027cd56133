//! Validation → VOP/BAV → report, end to end against the sandbox provider over real HTTP.

use std::{collections::BTreeMap, io::Cursor, net::SocketAddr, time::Duration};

use finworker::{
    config::Settings,
    jobs::{self, vop_report::upload_report_id},
    reports::{self, Format},
    sandbox::{Knobs, Sandbox},
    testdata::iban_with_check,
    uploads::{self, UploadRecord},
};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    helpers::{
        app::{LINK_SECRET, TestApp},
        eventually, spawn_app_with,
    },
    uploads::{ingest, submit},
};

/// The sandbox on a random loopback port, stopped on drop.
pub struct SandboxServer {
    pub addr: SocketAddr,
    pub sandbox: Sandbox,
    stop: CancellationToken,
}

impl Drop for SandboxServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn sandbox(knobs: Knobs) -> SandboxServer {
    let stop = CancellationToken::new();
    let (addr, sandbox, _h) = finworker::sandbox::serve("127.0.0.1:0", knobs, stop.clone())
        .await
        .unwrap();
    SandboxServer {
        addr,
        sandbox,
        stop,
    }
}

/// Turns verification on against `sb`, with quick breaker timings.
fn verifying(s: &mut Settings, sb: &SandboxServer) {
    s.vop.enabled = true;
    s.vop.base_url = format!("http://{}", sb.addr);
    s.vop.rate_limit = 500;
    s.vop.in_flight = 8;
    s.vop.request_attempts = 2;
    s.vop.breaker_window = Duration::from_secs(1);
    s.vop.breaker_min_requests = 5;
    s.vop.breaker_open_for = Duration::from_secs(1);
    s.vop.breaker_open_max = Duration::from_secs(2);
    s.upload.chunk_rows = 4;
}

/// A German IBAN whose last digits steer the sandbox: `vop` (last two) and `bav` (two
/// before), see docs/sandbox.md.
fn iban(serial: u32, bav: u32, vop: u32) -> String {
    iban_with_check("DE", &format!("3704004400{serial:04}{bav:02}{vop:02}"))
}

struct Row<'a> {
    reference: String,
    name: &'a str,
    iban: String,
    bic: &'a str,
    amount: &'a str,
    mandate: &'a str,
    date: &'a str,
    email: &'a str,
}

fn row<'a>(reference: &str, name: &'a str, iban: String) -> Row<'a> {
    Row {
        reference: reference.to_string(),
        name,
        iban,
        bic: "COBADEFFXXX",
        amount: "12,34",
        mandate: "MNDT-1",
        date: "2024-01-15",
        email: "",
    }
}

fn csv(rows: &[Row<'_>]) -> Vec<u8> {
    let mut out = String::from(
        "Customer Number;Name;IBAN;BIC;Amount;Mandate Reference;Mandate Date;E-Mail\n",
    );
    for r in rows {
        let name = r.name.replace('"', "\"\"");
        out.push_str(&format!(
            "{};\"{name}\";{};{};{};{};{};{}\n",
            r.reference, r.iban, r.bic, r.amount, r.mandate, r.date, r.email
        ));
    }
    out.into_bytes()
}

async fn wait_validated(app: &TestApp, id: Uuid) -> UploadRecord {
    eventually(Duration::from_secs(60), "upload validated", || async {
        uploads::get(&app.ctx.db, id)
            .await
            .unwrap()
            .filter(|r| r.validated_at.is_some())
    })
    .await
}

async fn wait_verified(app: &TestApp, id: Uuid) -> UploadRecord {
    eventually(Duration::from_secs(90), "upload verified", || async {
        uploads::get(&app.ctx.db, id)
            .await
            .unwrap()
            .filter(|r| r.verified_at.is_some())
    })
    .await
}

async fn wait_report(app: &TestApp, id: Uuid) -> reports::ReportRecord {
    eventually(Duration::from_secs(60), "report ready", || async {
        reports::get(&app.ctx.db, id)
            .await
            .unwrap()
            .filter(|r| r.status == "ready")
    })
    .await
}

/// reference → (valid, sorted issue codes).
async fn verdicts(app: &TestApp, upload: Uuid) -> BTreeMap<String, (bool, Vec<String>)> {
    let mut c = app.db.connect().await;
    let rows: Vec<(String, bool, Option<String>)> = sqlx::query_as(
        "SELECT d.reference, d.valid, f.code FROM debtors d \
         LEFT JOIN debtor_findings f ON f.debtor_id = d.id \
         WHERE d.upload_id = $1 ORDER BY d.reference, f.code",
    )
    .bind(upload)
    .fetch_all(&mut c)
    .await
    .unwrap();
    let mut out: BTreeMap<String, (bool, Vec<String>)> = BTreeMap::new();
    for (r, valid, code) in rows {
        let e = out.entry(r).or_insert((valid, Vec::new()));
        if let Some(code) = code {
            e.1.push(code);
        }
    }
    out
}

type ResultRow = (
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
);

/// reference → (vop, suggested, bav, vop ref, bav ref, error, from cache).
async fn results(app: &TestApp, upload: Uuid) -> BTreeMap<String, ResultRow> {
    let mut c = app.db.connect().await;
    let rows: Vec<(String, ResultRow)> = sqlx::query_as::<_, (String, String, Option<String>, String, Option<String>, Option<String>, Option<String>, bool, String)>(
        "SELECT d.reference, r.vop_result, r.suggested_name, r.bav_result, r.vop_reference, r.bav_reference, r.error, r.from_cache, d.name \
         FROM vop_results r JOIN debtors d ON d.id = r.debtor_id WHERE r.upload_id = $1",
    )
    .bind(upload)
    .fetch_all(&mut c)
    .await
    .unwrap()
    .into_iter()
    .map(|(r, v, s, b, vr, br, e, fc, name)| (r, (name, v, s, b, vr, br, e, fc)))
    .collect();
    rows.into_iter().collect()
}

#[tokio::test]
async fn validation_records_every_finding_per_debtor_and_counts_the_upload() {
    let app = spawn_app_with(|s| {
        s.upload.chunk_rows = 3;
        s.validation.max_amount_minor = 100_000;
    })
    .await;
    let good = iban(1, 10, 0);
    let mut bad_check = good.clone().into_bytes();
    bad_check[2] = if bad_check[2] == b'0' { b'1' } else { b'0' };
    let rows = vec![
        row("R1", "Anna Schmidt", good.clone()),
        row("R2", "Ben Bauer", String::from_utf8(bad_check).unwrap()),
        Row {
            bic: "BNPAFRPPXXX",
            ..row("R3", "Carl Clay", iban(3, 10, 0))
        },
        Row {
            date: "2099-01-01",
            ..row("R4", "Dora Dix", iban(4, 10, 0))
        },
        row("R5", "Jörg Weiß", iban(5, 10, 0)),
        Row {
            amount: "2000,00",
            ..row("R6", "Eva Ernst", iban(6, 10, 0))
        },
        Row {
            mandate: "",
            date: "",
            ..row("R7", "Fritz Frey", iban(7, 10, 0))
        },
        Row {
            email: "fritz@",
            mandate: "M_1",
            ..row("R8", "Gina Gold", iban(8, 10, 0))
        },
    ];
    let rec = ingest(&app, "checks.csv", &csv(&rows)).await;
    assert_eq!(rec.rows_imported, 8);
    let rec = wait_validated(&app, rec.id).await;
    assert_eq!((rec.rows_valid, rec.rows_invalid), (2, 6), "{rec:?}");
    assert_eq!(rec.chunks_validated, rec.chunks_total.unwrap());
    let v = verdicts(&app, rec.id).await;
    let expect = |valid: bool, codes: &[&str]| {
        (
            valid,
            codes.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(v["R1"], expect(true, &[]));
    assert_eq!(v["R2"], expect(false, &["IBAN_CHECKSUM"]));
    assert_eq!(v["R3"], expect(false, &["BIC_COUNTRY_MISMATCH"]));
    assert_eq!(v["R4"], expect(false, &["MANDATE_DATE_FUTURE"]));
    assert_eq!(v["R5"], expect(true, &["NAME_TRANSLITERATED"]));
    assert_eq!(v["R6"], expect(false, &["AMOUNT_TOO_HIGH"]));
    assert_eq!(
        v["R7"],
        expect(false, &["MANDATE_DATE_MISSING", "MANDATE_MISSING"])
    );
    assert_eq!(
        v["R8"],
        expect(false, &["EMAIL_INVALID", "MANDATE_CHARSET"])
    );
    // The transliterated name is kept for sending; the message names the problem.
    let mut c = app.db.connect().await;
    let (sepa, msg, sugg): (String, String, Option<String>) = sqlx::query_as(
        "SELECT d.sepa_name, f.message, f.suggestion FROM debtors d \
         JOIN debtor_findings f ON f.debtor_id = d.id WHERE d.reference = 'R5'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(sepa, "Jorg Weiss");
    assert_eq!(sugg.as_deref(), Some("Jorg Weiss"));
    // The view words the transliteration (not stored: sepa_name carries it) as the rules do.
    let data = finworker::validation::DebtorData {
        name: "Jörg Weiß".into(),
        ..Default::default()
    };
    let rules = finworker::validation::check(
        &data,
        &finworker::config::ValidationSettings {
            max_amount_minor: 1_000_000,
            currencies: vec!["EUR".into()],
            require_mandate: false,
        },
        chrono::Utc::now().date_naive(),
    );
    let words = rules
        .issues
        .iter()
        .find(|i| i.code == "NAME_TRANSLITERATED")
        .map(|i| i.message.clone());
    assert_eq!(Some(msg), words);
    // The IBAN in the checksum message is masked.
    let m: String = sqlx::query_scalar(
        "SELECT i->>'message' FROM debtors d, jsonb_array_elements(d.issues) i WHERE d.reference = 'R2'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert!(m.contains("****") && !m.contains(&good[4..18]), "{m}");
    // Verification is off in this deployment: the record says nothing was started.
    let rec = uploads::get(&app.ctx.db, rec.id).await.unwrap().unwrap();
    assert!(
        rec.note.unwrap_or_default().contains("vop.enabled is off"),
        "note"
    );
    assert_eq!(rec.chunks_verified, 0);
}

#[tokio::test]
async fn vop_and_bav_outcomes_of_every_kind_reach_the_results_and_the_report() {
    let sb = sandbox(Knobs::default()).await;
    let app = spawn_app_with(|s| verifying(s, &sb)).await;
    let rows = vec![
        row("V1", "Anna Schmidt", iban(1, 10, 0)),
        row("V2", "Berta Maria Braun", iban(2, 10, 75)),
        row("V3", "Carl Clay", iban(3, 10, 90)),
        row("V4", "Dora Dix", iban(4, 10, 99)),
        row("V5", "Emil Ernst", iban(5, 92, 1)),
        row("V6", "Fritz Frey", iban(6, 96, 2)),
        row("V7", "Gina Gold", iban(7, 99, 3)),
        // Valid names that a spreadsheet would run as formulas.
        row("V8", "=HYPERLINK(\"http://evil.example\")", iban(8, 10, 4)),
        row("V9", "@Risk Ltd", iban(9, 10, 5)),
        row("V10", "-Minus Corp", iban(10, 10, 6)),
        // Invalid: never sent to the provider.
        Row {
            mandate: "",
            ..row("X1", "Xaver Invalid", iban(11, 10, 0))
        },
    ];
    let rec = ingest(&app, "vop.csv", &csv(&rows)).await;
    let rec = wait_verified(&app, rec.id).await;
    assert_eq!((rec.rows_valid, rec.rows_invalid), (10, 1));
    let r = results(&app, rec.id).await;
    assert_eq!(r.len(), 10, "only valid debtors are verified");
    assert!(!r.contains_key("X1"));
    let outcome = |k: &str| (r[k].1.as_str(), r[k].2.as_deref(), r[k].3.as_str());
    assert_eq!(outcome("V1"), ("match", None, "valid"));
    assert_eq!(outcome("V2"), ("close_match", Some("B. Braun"), "valid"));
    assert_eq!(outcome("V3"), ("no_match", None, "valid"));
    assert_eq!(outcome("V4"), ("not_possible", None, "valid"));
    assert_eq!(outcome("V5"), ("match", None, "closed"));
    assert_eq!(outcome("V6"), ("match", None, "no_direct_debit"));
    assert_eq!(outcome("V7"), ("match", None, "not_possible"));
    for (k, v) in &r {
        assert!(v.4.as_deref().unwrap().starts_with("vop_"), "{k}");
        assert!(v.5.as_deref().unwrap().starts_with("bav_"), "{k}");
        assert_eq!((v.6.as_deref(), v.7), (None, false), "{k}");
    }
    // Two calls (VOP + BAV) per valid debtor, none for the invalid one.
    let calls = sb.sandbox.calls();
    assert_eq!(calls.count("/vop/"), 10);
    assert_eq!(calls.count("/bav/"), 10);
    assert!(calls.calls.iter().all(|c| c.status == 200));

    // Per-result counts over HTTP.
    let v = app.get_json(&format!("/api/uploads/{}", rec.id)).await;
    assert_eq!(v["verification"]["checked"], 10);
    assert_eq!(v["verification"]["vop"]["match"], 7);
    assert_eq!(v["verification"]["vop"]["close_match"], 1);
    assert_eq!(v["verification"]["bav"]["closed"], 1);
    assert_eq!(v["rows_valid"], 10);
    let report_id = upload_report_id(rec.id, Format::Xlsx);
    let v = eventually(Duration::from_secs(30), "report listed", || async {
        let v = app.get_json(&format!("/api/uploads/{}", rec.id)).await;
        (v["vop_report"]["status"] == "ready").then_some(v)
    })
    .await;
    assert_eq!(v["vop_report"]["id"], report_id.to_string());

    // The XLSX report made after verification, downloaded with a signed link, equals the
    // stored results; formula-like names are neutralised. API nodes learn the link over HTTP.
    let report = wait_report(&app, upload_report_id(rec.id, Format::Xlsx)).await;
    assert_eq!(report.rows, Some(10));
    let api = format!("/api/reports/{}", report.id);
    assert_eq!(
        app.http.get(app.url(&api)).send().await.unwrap().status(),
        401
    );
    let shown = app.get_json(&api).await;
    assert_eq!(shown["status"], "ready");
    assert!(shown.get("object_key").is_none());
    let url = shown["download_url"].as_str().unwrap();
    assert!(url.starts_with(&format!(
        "http://127.0.0.1:8080/reports/{}/download?",
        report.id
    )));
    let path = url.trim_start_matches("http://127.0.0.1:8080");
    let via_api = app.http.get(app.url(path)).send().await.unwrap();
    assert_eq!(via_api.status(), 200);
    let bytes = download(&app, report.id).await;
    assert_eq!(via_api.bytes().await.unwrap().to_vec(), bytes);
    let sheet = xlsx_rows(&bytes, "Results");
    assert_eq!(sheet[0], reports::VOP_COLUMNS.map(str::to_string).to_vec());
    assert_report_matches(&sheet[1..], &r);
    let summary = xlsx_rows(&bytes, "Summary");
    let total = |k: &str| {
        summary
            .iter()
            .find(|l| l[0] == k)
            .map(|l| l[1].clone())
            .unwrap_or_default()
    };
    assert_eq!(total("Verified"), "10");
    assert_eq!(total("VOP match"), "7");
    assert_eq!(total("Invalid (not verified)"), "1");

    // The same as CSV, enqueued like an API node would.
    let id = jobs::vop_report::enqueue(
        &app.ctx,
        jobs::VopReport {
            report_id: None,
            upload_id: Some(rec.id),
            from: None,
            to: None,
            format: Format::Csv,
        },
    )
    .await
    .unwrap();
    wait_report(&app, id).await;
    let text = String::from_utf8(download(&app, id).await).unwrap();
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let lines: Vec<Vec<String>> = rd
        .records()
        .map(|l| l.unwrap().iter().map(str::to_string).collect())
        .collect();
    let header = lines
        .iter()
        .position(|l| l.first().map(String::as_str) == Some("row"))
        .unwrap();
    assert_report_matches(&lines[header + 1..], &r);
    assert!(
        text.contains("'=HYPERLINK")
            && text.contains("'@Risk Ltd")
            && text.contains("'-Minus Corp")
    );
    assert!(!text.contains(&iban(1, 10, 0)), "IBANs are masked");

    // By date range instead of upload: today's checks are these ten.
    let today = chrono::Utc::now().date_naive();
    let id = jobs::vop_report::enqueue(
        &app.ctx,
        jobs::VopReport {
            report_id: None,
            upload_id: None,
            from: Some(today),
            to: Some(today),
            format: Format::Xlsx,
        },
    )
    .await
    .unwrap();
    assert_eq!(wait_report(&app, id).await.rows, Some(10));
    let sheet = xlsx_rows(&download(&app, id).await, "Results");
    assert_report_matches(&sheet[1..], &r);
}

fn assert_report_matches(rows: &[Vec<String>], r: &BTreeMap<String, ResultRow>) {
    assert_eq!(rows.len(), r.len());
    for line in rows {
        let stored = &r[&line[1]];
        let name = reports::neutralise(&stored.0).into_owned();
        assert_eq!(line[2], name);
        assert!(line[3].contains("****"), "masked iban: {}", line[3]);
        assert_eq!(line[5], stored.1);
        assert_eq!(line[6], stored.2.clone().unwrap_or_default());
        assert_eq!(line[7], stored.3);
        assert_eq!(
            line[9],
            format!(
                "{} / {}",
                stored.4.as_deref().unwrap(),
                stored.5.as_deref().unwrap()
            )
        );
    }
    let names: Vec<&str> = rows.iter().map(|l| l[2].as_str()).collect();
    for n in [
        "'=HYPERLINK(\"http://evil.example\")",
        "'@Risk Ltd",
        "'-Minus Corp",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
}

fn xlsx_rows(bytes: &[u8], sheet: &str) -> Vec<Vec<String>> {
    use calamine::Reader;
    let mut wb = calamine::Xlsx::new(Cursor::new(bytes.to_vec())).unwrap();
    let range = wb.worksheet_range(sheet).unwrap();
    range
        .rows()
        .map(|r| r.iter().map(|c| c.to_string()).collect())
        .collect()
}

async fn download(app: &TestApp, id: Uuid) -> Vec<u8> {
    let secret = SecretString::from(LINK_SECRET);
    let expires = chrono::Utc::now().timestamp() + 60;
    let url = reports::link(&format!("http://{}", app.addr), &secret, id, expires);
    let resp = app.http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn download_links_that_expired_or_were_altered_are_refused() {
    let sb = sandbox(Knobs::default()).await;
    let app = spawn_app_with(|s| verifying(s, &sb)).await;
    let rec = ingest(
        &app,
        "one.csv",
        &csv(&[row("L1", "Anna Schmidt", iban(1, 10, 0))]),
    )
    .await;
    let report = wait_report(&app, upload_report_id(rec.id, Format::Xlsx)).await;
    let secret = SecretString::from(LINK_SECRET);
    let base = format!("http://{}", app.addr);
    let now = chrono::Utc::now().timestamp();
    let get = |url: String| {
        let http = app.http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        get(reports::link(&base, &secret, report.id, now + 60)).await,
        200
    );
    // Expired (correctly signed, but in the past).
    assert_eq!(
        get(reports::link(&base, &secret, report.id, now - 1)).await,
        403
    );
    // Tampered: expiry pushed out under the old signature; another report id; another key.
    let good = reports::link(&base, &secret, report.id, now + 60);
    assert_eq!(
        get(good.replace(
            &format!("expires={}", now + 60),
            &format!("expires={}", now + 99_999)
        ))
        .await,
        403
    );
    let other = Uuid::now_v7();
    assert_eq!(
        get(good.replace(&report.id.to_string(), &other.to_string())).await,
        403
    );
    assert_eq!(
        get(reports::link(
            &base,
            &SecretString::from("guess"),
            report.id,
            now + 60
        ))
        .await,
        403
    );
    assert_eq!(
        get(format!("{base}/reports/{}/download", report.id)).await,
        403
    );
    // A correctly signed link to a report that does not exist.
    assert_eq!(
        get(reports::link(&base, &secret, other, now + 60)).await,
        404
    );

    // `finworker reports link` (the real binary) prints a link that works, and one with a
    // one-second lifetime that stops working.
    let settings = app.settings.clone();
    let b = base.clone();
    let printed = move |ttl: &str| {
        let mut c = crate::helpers::process::command(
            &settings,
            &["reports", "link", &report.id.to_string(), "--ttl", ttl],
        );
        c.env("FINWORKER__REPORTS__PUBLIC_URL", &b);
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let url = tokio::task::spawn_blocking(move || (printed("1h"), printed("1s")))
        .await
        .unwrap();
    assert!(
        url.0
            .starts_with(&format!("{base}/reports/{}/download?expires=", report.id))
    );
    assert_eq!(get(url.0).await, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(url.1).await, 403);
}

#[tokio::test]
async fn the_cache_answers_a_repeated_iban_and_name_without_a_second_call() {
    let sb = sandbox(Knobs::default()).await;
    let app = spawn_app_with(|s| verifying(s, &sb)).await;
    let first = ingest(
        &app,
        "a.csv",
        &csv(&[
            row("C1", "Anna Schmidt", iban(1, 10, 0)),
            row("C2", "Berta Braun", iban(2, 10, 75)),
        ]),
    )
    .await;
    wait_verified(&app, first.id).await;
    assert_eq!(sb.sandbox.calls().calls.len(), 4);
    // Same accounts and names (spelt with other case and spacing), new customer numbers:
    // new debtors, known answers.
    let second = ingest(
        &app,
        "b.csv",
        &csv(&[
            row("C1-again", "ANNA  schmidt", iban(1, 10, 0)),
            row("C2-again", "Berta Braun", iban(2, 10, 75)),
            row("C3", "Carl Clay", iban(3, 10, 90)),
            // Same account and name as C3 in the same chunk: answered by C3's call.
            row("C3-twin", "Carl  CLAY", iban(3, 10, 90)),
        ]),
    )
    .await;
    assert_eq!(second.rows_imported, 4);
    wait_verified(&app, second.id).await;
    assert_eq!(sb.sandbox.calls().calls.len(), 6, "only C3 was asked");
    let r = results(&app, second.id).await;
    assert!(r["C1-again"].7 && r["C2-again"].7 && !r["C3"].7 && r["C3-twin"].7);
    assert_eq!(
        (r["C3-twin"].1.as_str(), &r["C3-twin"].4),
        (r["C3"].1.as_str(), &r["C3"].4)
    );
    assert_eq!(r["C2-again"].1, "close_match");
    assert_eq!(r["C2-again"].2.as_deref(), Some("B. Braun"));
    assert!(
        app.ctx
            .metrics
            .render()
            .contains("finworker_vop_cache_hits_total 3")
    );
    // A zero TTL would have asked again: the cache honours it.
    let fresh: i64 = app
        .scalar("SELECT count(*) FROM vop_cache WHERE checked_at > now() - interval '1 hour'")
        .await;
    assert_eq!(fresh, 3);
}

#[tokio::test]
async fn provider_refusals_are_recorded_as_errors_without_retry() {
    let sb = sandbox(Knobs {
        api_key: Some("right-key".into()),
        ..Knobs::default()
    })
    .await;
    let app = spawn_app_with(|s| {
        verifying(s, &sb);
        s.vop.api_key = Some(SecretString::from("wrong-key"));
    })
    .await;
    let rec = ingest(
        &app,
        "r.csv",
        &csv(&[
            row("E1", "Anna Schmidt", iban(1, 10, 0)),
            row("E2", "Berta Braun", iban(2, 10, 0)),
        ]),
    )
    .await;
    let rec = wait_verified(&app, rec.id).await;
    let r = results(&app, rec.id).await;
    for k in ["E1", "E2"] {
        assert_eq!((r[k].1.as_str(), r[k].3.as_str()), ("error", "error"));
        assert!(r[k].6.as_deref().unwrap().contains("401"), "{:?}", r[k].6);
    }
    // One call each: a 4xx is not retried and the BAV call is not attempted.
    let calls = sb.sandbox.calls();
    assert_eq!(calls.calls.len(), 2);
    assert!(calls.calls.iter().all(|c| c.status == 401));
    // Refusals say nothing about the provider's health: the breaker stayed closed.
    assert_eq!(app.ctx.vop.breaker().state(), "closed");
}

#[tokio::test]
async fn the_breaker_opens_under_60_percent_errors_and_jobs_finish_after_the_outage() {
    let sb = sandbox(Knobs {
        error_rate: 0.6,
        latency_ms: 2,
        ..Knobs::default()
    })
    .await;
    let app = spawn_app_with(|s| {
        verifying(s, &sb);
        s.vop.request_attempts = 1;
        s.vop.rate_limit = 200;
    })
    .await;
    let rows: Vec<Row<'_>> = (0..40)
        .map(|i| row(&format!("B{i}"), "Anna Schmidt", iban(i, 10, 0)))
        .collect();
    let id = submit(&app, "breaker.csv", &csv(&rows)).await;
    eventually(Duration::from_secs(30), "breaker to open", || async {
        (app.ctx.vop.breaker().state() == "open").then_some(())
    })
    .await;
    // While open, nothing new goes out: only calls that held a permit before it opened
    // (at most in_flight x queue concurrency) still arrive.
    let at_open = sb.sandbox.calls().calls.len();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let while_open = sb.sandbox.calls().calls.len() - at_open;
    assert!(while_open <= 8 * 4, "{while_open} calls while open");
    // The outage ends.
    sb.sandbox.set_knobs(Knobs {
        latency_ms: 2,
        ..Knobs::default()
    });
    let rec = wait_verified(&app, id).await;
    let r = results(&app, rec.id).await;
    assert_eq!(r.len(), 40);
    assert!(
        r.values()
            .all(|v| v.1 == "match" && v.3 == "valid" && v.6.is_none()),
        "every debtor verified once the provider recovered"
    );
    let metrics = app.ctx.metrics.render();
    for to in ["open", "half_open", "closed"] {
        assert!(
            metrics.contains(&format!(
                "finworker_breaker_transitions_total{{provider=\"epc\",account=\"default\",to=\"{to}\"}}"
            )),
            "{to}: {metrics}"
        );
    }
    assert!(
        metrics.contains("outcome=\"rejected_by_breaker\""),
        "{metrics}"
    );
    // Jobs were put off (continuations), not failed.
    let continued: i64 = app
        .scalar("SELECT count(DISTINCT job_id) FROM job_runs WHERE job_type = 'vop'")
        .await;
    assert!(
        continued > i64::from(rec.chunks_total.unwrap()),
        "{continued}"
    );
    let failed: i64 = app
        .scalar("SELECT count(*) FROM job_runs WHERE job_type = 'vop' AND status <> 'succeeded' AND status <> 'running'")
        .await;
    assert_eq!(failed, 0);
    let log = sb.sandbox.calls();
    assert!(log.calls.iter().any(|c| c.status == 503));
}

#[tokio::test]
async fn the_rate_limit_holds_across_two_worker_processes() {
    const LIMIT: u32 = 100;
    // The provider itself allows 5% above the limit and answers 429 beyond.
    let sb = sandbox(Knobs {
        latency_ms: 5,
        rate_limit: LIMIT + LIMIT / 20,
        ..Knobs::default()
    })
    .await;
    let app = crate::helpers::app::spawn_app_roles(
        finworker::startup::Roles {
            workers: false,
            ..Default::default()
        },
        |s| {
            verifying(s, &sb);
            s.vop.rate_limit = LIMIT;
            s.vop.in_flight = 16;
            s.upload.chunk_rows = 25;
        },
    )
    .await;
    let _a = crate::helpers::process::Daemon::start(&app.settings, &["run", "--no-http"]);
    let _b = crate::helpers::process::Daemon::start(&app.settings, &["run", "--no-http"]);
    let rows: Vec<Row<'_>> = (0..300)
        .map(|i| row(&format!("P{i}"), "Anna Schmidt", iban(i, 10, 0)))
        .collect();
    let id = submit(&app, "rate.csv", &csv(&rows)).await;
    let rec = wait_verified(&app, id).await;
    assert_eq!(results(&app, rec.id).await.len(), 300);
    let log = sb.sandbox.calls();
    let odd: Vec<String> = {
        let mut seen: BTreeMap<(String, Option<String>), usize> = BTreeMap::new();
        for c in &log.calls {
            *seen.entry((c.path.clone(), c.iban.clone())).or_default() += 1;
        }
        seen.into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(k, n)| format!("{k:?} x{n}"))
            .chain(
                log.calls
                    .iter()
                    .filter(|c| c.status != 200)
                    .map(|c| format!("{c:?}")),
            )
            .collect()
    };
    assert_eq!(log.calls.len(), 600, "repeated or refused calls: {odd:?}");
    assert!(
        log.calls.iter().all(|c| c.status == 200),
        "no 429 from the provider"
    );
    let (first, last) = (log.calls[0].at_ms, log.calls[599].at_ms);
    let rate = 599.0 * 1000.0 / (last - first) as f64;
    let peak = log.peak(Duration::from_secs(1));
    assert!(
        rate <= f64::from(LIMIT) * 1.05 && peak <= (LIMIT + LIMIT / 20) as usize,
        "{rate:.1} calls/s overall, {peak} in the busiest second"
    );
    // Both processes sent a real share.
    let mut by_client: BTreeMap<String, usize> = BTreeMap::new();
    for c in &log.calls {
        *by_client
            .entry(c.client.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(by_client.len(), 2, "{by_client:?}");
    assert!(by_client.values().all(|&n| n >= 100), "{by_client:?}");
    // Close to the limit, not far below it.
    assert!(rate >= f64::from(LIMIT) * 0.8, "{rate:.1} calls/s");
}

#[tokio::test]
async fn a_long_outage_ends_the_pipeline_with_errors_after_max_deferrals() {
    let until = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap() + 3_600_000;
    let sb = sandbox(Knobs {
        outage_until_ms: Some(until),
        ..Knobs::default()
    })
    .await;
    let app = spawn_app_with(|s| {
        verifying(s, &sb);
        s.vop.max_deferrals = 1;
    })
    .await;
    let rec = ingest(
        &app,
        "outage.csv",
        &csv(&[row("O1", "Anna Schmidt", iban(1, 10, 0))]),
    )
    .await;
    let rec = wait_verified(&app, rec.id).await;
    let r = results(&app, rec.id).await;
    assert_eq!((r["O1"].1.as_str(), r["O1"].3.as_str()), ("error", "error"));
    assert!(
        r["O1"].6.as_deref().unwrap().contains("put off 2 times"),
        "{:?}",
        r["O1"].6
    );
    // Tried twice (first job and one deferral, 2 attempts each), then gave up without calling.
    let log = sb.sandbox.calls();
    assert_eq!(log.calls.len(), 4, "{:?}", log.calls);
    assert!(log.calls.iter().all(|c| c.status == 503));
    let jobs: i64 = app
        .scalar("SELECT count(DISTINCT job_id) FROM job_runs WHERE job_type = 'vop' AND status = 'succeeded'")
        .await;
    assert_eq!(jobs, 3);
}

#[tokio::test]
async fn a_vop_job_hands_over_to_a_continuation_after_its_time_slice() {
    let sb = sandbox(Knobs {
        latency_ms: 40,
        ..Knobs::default()
    })
    .await;
    let app = spawn_app_with(|s| {
        verifying(s, &sb);
        s.upload.chunk_rows = 20;
        s.vop.in_flight = 1;
        s.vop.slice = Duration::from_millis(300);
    })
    .await;
    let rows: Vec<Row<'_>> = (0..20)
        .map(|i| row(&format!("S{i}"), "Anna Schmidt", iban(i, 10, 0)))
        .collect();
    let rec = ingest(&app, "slice.csv", &csv(&rows)).await;
    let rec = wait_verified(&app, rec.id).await;
    // One chunk, 20 debtors at ~80 ms each: several jobs, each resuming where the last
    // stopped; every debtor checked exactly once.
    assert_eq!(results(&app, rec.id).await.len(), 20);
    assert_eq!(sb.sandbox.calls().calls.len(), 40);
    let jobs: i64 = app
        .scalar("SELECT count(DISTINCT job_id) FROM job_runs WHERE job_type = 'vop' AND status = 'succeeded'")
        .await;
    assert!(jobs >= 3, "{jobs} vop jobs");
}

#[tokio::test]
async fn a_generated_file_validates_to_exactly_the_invalid_rows_it_was_made_with() {
    let app = spawn_app_with(|s| s.upload.chunk_rows = 500).await;
    let dir = tempfile::tempdir().unwrap();
    let args = finworker::testdata::DebtorArgs {
        rows: 3_000,
        format: finworker::testdata::GenFormat::Csv,
        seed: 5,
        out: dir.path().join("gen.csv"),
        delimiter: ';',
        encoding: finworker::testdata::GenEncoding::Utf8,
        bom: false,
        crlf: false,
        duplicates: 10.0,
        malformed: 2.0,
        invalid: 5.0,
        no_short_rows: false,
    };
    let summary = finworker::testdata::debtors(&args).unwrap();
    assert!(summary.invalid > 100, "{summary:?}");
    let rec = ingest(&app, "gen.csv", &std::fs::read(&args.out).unwrap()).await;
    assert_eq!(rec.rows_imported, i64::try_from(summary.unique).unwrap());
    let rec = wait_validated(&app, rec.id).await;
    assert_eq!(
        (rec.rows_valid, rec.rows_invalid),
        (
            i64::try_from(summary.unique - summary.invalid).unwrap(),
            i64::try_from(summary.invalid).unwrap()
        )
    );
    // The three kinds the generator makes, each found.
    let codes: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT i->>'code' FROM debtors d, jsonb_array_elements(d.issues) i \
         WHERE d.upload_id = $1 AND i->>'severity' = 'error' ORDER BY 1",
    )
    .bind(rec.id)
    .fetch_all(&mut app.db.connect().await)
    .await
    .unwrap();
    assert_eq!(
        codes,
        vec![
            "BIC_COUNTRY_MISMATCH",
            "IBAN_CHECKSUM",
            "MANDATE_DATE_FUTURE"
        ]
    );
}

#[tokio::test]
async fn a_slow_but_valid_provider_completes_with_every_answer_kept() {
    // Every call takes 4.9 s: within the request timeout, but two of them exceed any short
    // slice. Nothing may time out, and no paid answer may be asked for twice.
    let sb = sandbox(Knobs {
        latency_ms: 4900,
        ..Knobs::default()
    })
    .await;
    let app = spawn_app_with(|s| {
        verifying(s, &sb);
        s.vop.request_timeout = Duration::from_secs(6);
        s.vop.request_attempts = 1;
        s.vop.in_flight = 8;
        // A slice longer than the attempt can afford: the job must cut it short itself.
        s.vop.slice = Duration::from_secs(20);
        s.upload.chunk_rows = 100;
        // One worst-case check is 2 x 6 s: the attempt's timeout must hold it (checked at
        // start-up), and the job stops launching calls in time.
        s.queues.entry("vop".into()).or_default().timeout = Some(Duration::from_secs(15));
    })
    .await;
    let names = [
        "Anna", "Berta", "Carl", "Dora", "Emil", "Frida", "Gert", "Hanna", "Ida", "Jonas", "Karl",
        "Lena", "Marta", "Nils", "Olga", "Paul",
    ];
    let rows: Vec<Row<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| row(&format!("S{i}"), n, iban(100 + i as u32, 10, 0)))
        .collect();
    let rec = ingest(&app, "slow.csv", &csv(&rows)).await;
    let rec = wait_verified(&app, rec.id).await;

    let r = results(&app, rec.id).await;
    assert_eq!(r.len(), 16);
    assert!(
        r.values().all(|v| v.1 == "match" && v.3 == "valid"),
        "{r:?}"
    );
    let calls = sb.sandbox.calls();
    assert_eq!(calls.count("/vop/"), 16, "each debtor asked once");
    assert_eq!(calls.count("/bav/"), 16);
    let timed_out = app
        .scalar("SELECT count(*) FROM job_runs WHERE job_type = 'vop' AND error LIKE '%timed out%'")
        .await;
    assert_eq!(timed_out, 0, "no vop attempt outlived its timeout");
    assert_eq!(app.scalar("SELECT count(*) FROM dead_jobs").await, 0);
}

#[tokio::test]
async fn a_provider_error_body_with_multibyte_text_is_cut_on_a_character_and_recorded() {
    // A provider answering 400 with 'x' then 150 × 'é': byte 200 falls inside a character.
    use axum::{Router, http::StatusCode, routing::post};
    let body = format!("x{}", "é".repeat(150));
    let app_router = Router::new().fallback(post(move || {
        let body = body.clone();
        async move { (StatusCode::BAD_REQUEST, body) }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app_router).await });
    let app = spawn_app_with(|s| {
        s.vop.enabled = true;
        s.vop.base_url = format!("http://{addr}");
        s.upload.chunk_rows = 4;
    })
    .await;
    let rec = ingest(
        &app,
        "mb.csv",
        &csv(&[row("M1", "Anna Schmidt", iban(1, 10, 0))]),
    )
    .await;
    let rec = wait_verified(&app, rec.id).await;
    let r = results(&app, rec.id).await;
    let error = r["M1"].6.clone().unwrap();
    assert_eq!((r["M1"].1.as_str(), r["M1"].3.as_str()), ("error", "error"));
    assert!(error.contains("400") && error.contains("xéé"), "{error}");
    assert!(error.len() < 400, "the body is cut: {} bytes", error.len());
    let panicked = app
        .scalar("SELECT count(*) FROM job_runs WHERE job_type = 'vop' AND error LIKE '%panicked%'")
        .await;
    assert_eq!(panicked, 0);
}
