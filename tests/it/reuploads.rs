//! Re-uploads: duplicates only within one upload; a row repeating an earlier upload's debtor
//! is imported, validated and linked to it with what changed; the same file twice is refused
//! unless allowed. Header aliases, the full-name split and the raw row kept for audit.

use std::io::Write;

use finworker::uploads::{self, UploadRecord};
use sqlx::Row;
use uuid::Uuid;

use crate::{
    helpers::{app::TestApp, spawn_app},
    uploads::{assert_accounted, wait_final},
};

async fn upload(app: &TestApp, name: &str, text: &str, allow_same_file: bool) -> UploadRecord {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let id = uploads::submit(&app.ctx, &path, None, None, allow_same_file)
        .await
        .unwrap();
    let rec = wait_final(app, id).await;
    assert_accounted(app, &rec).await;
    rec
}

/// (row_no, reference, amount_minor, previous upload of the linked debtor, changes).
async fn links(app: &TestApp, id: Uuid) -> Vec<(i32, String, i64, Option<Uuid>, Vec<String>)> {
    let mut c = app.db.connect().await;
    sqlx::query(
        "SELECT d.row_no, d.reference, d.amount_minor, p.upload_id, coalesce(d.changes, '{}') \
         FROM debtors d LEFT JOIN debtors p ON p.id = d.previous_debtor_id \
         WHERE d.upload_id = $1 ORDER BY d.row_no",
    )
    .bind(id)
    .fetch_all(&mut c)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

const MARCH: &str = "\
external_ref,first_name,last_name,iban,bic,amount_cents,mandate_id,mandate_date
C-1,Anna,Schmidt,DE89370400440532013000,COBADEFFXXX,1999,M-1,2024-01-15
C-2,Jörg,Weber,DE02120300000000202051,BYLADEM1001,2500,M-2,2024-02-01
C-3,Lea,Braun,DE02500105170137075030,INGDDEFFXXX,990,M-3,2024-02-11
";

#[tokio::test]
async fn a_re_upload_with_a_changed_amount_is_imported_linked_and_the_change_reported() {
    let app = spawn_app().await;
    let march = upload(&app, "march.csv", MARCH, false).await;
    assert_eq!(
        (march.rows_imported, march.rows_new, march.rows_duplicate),
        (3, 3, 0)
    );
    // April: C-2 owes more, C-3 signed a new mandate, C-4 is new.
    let april = upload(
        &app,
        "april.csv",
        "\
external_ref,first_name,last_name,iban,bic,amount_cents,mandate_id,mandate_date
C-1,Anna,Schmidt,DE89370400440532013000,COBADEFFXXX,1999,M-1,2024-01-15
C-2,Jörg,Weber,DE02120300000000202051,BYLADEM1001,3100,M-2,2024-02-01
C-3,Lea,Braun,DE02500105170137075030,INGDDEFFXXX,990,M-3b,2024-04-02
C-4,Tom,Klein,DE75512108001245126199,SOGEDEFFXXX,1200,M-4,2024-04-03
",
        false,
    )
    .await;
    assert_eq!(april.status, "completed", "{:?}", april.error);
    // Nothing dropped: every row is a debtor of April, validated.
    assert_eq!(
        (april.rows_imported, april.rows_duplicate, april.rows_valid),
        (4, 0, 4)
    );
    assert_eq!(
        (april.rows_new, april.rows_unchanged, april.rows_changed),
        (1, 1, 2)
    );
    let l = links(&app, april.id).await;
    assert_eq!(l[0].1, "C-1");
    assert_eq!(l[0].3, Some(march.id));
    assert!(l[0].4.is_empty(), "{:?}", l[0]);
    assert_eq!(
        (l[1].2, l[1].3, l[1].4.clone()),
        (3100, Some(march.id), vec!["amount".to_string()])
    );
    assert_eq!(l[2].4, vec!["mandate".to_string()]);
    assert_eq!((l[3].3, l[3].4.len()), (None, 0), "C-4 is new");
    // March keeps its own debtors and amounts.
    let m = links(&app, march.id).await;
    assert_eq!(m[1].2, 2500);
    // The record says so to finance staff.
    let text = uploads::describe(&april, chrono::Utc::now());
    assert!(
        text.contains("1 new, 1 repeated from earlier uploads unchanged, 2 repeated with changes"),
        "{text}"
    );
}

#[tokio::test]
async fn next_cycles_export_of_the_same_debtors_is_imported_as_repeated_unchanged() {
    let app = spawn_app().await;
    let march = upload(&app, "march.csv", MARCH, false).await;
    // The same debtors exported again: different bytes (an export date column, another
    // column order, spaced IBANs), same debtors.
    let next = upload(
        &app,
        "june.csv",
        "\
exported_at;iban;external_ref;amount_cents;first_name;last_name;bic;mandate_id;mandate_date
2024-06-01;DE89 3704 0044 0532 0130 00;C-1;1999;Anna;Schmidt;COBADEFFXXX;M-1;2024-01-15
2024-06-01;DE02 1203 0000 0000 2020 51;C-2;2500;Jörg;Weber;BYLADEM1001;M-2;2024-02-01
2024-06-01;DE02 5001 0517 0137 0750 30;C-3;990;Lea;Braun;INGDDEFFXXX;M-3;2024-02-11
",
        false,
    )
    .await;
    assert_eq!(next.status, "completed", "{:?}", next.error);
    assert_eq!(
        (
            next.rows_imported,
            next.rows_duplicate,
            next.rows_new,
            next.rows_unchanged,
            next.rows_changed
        ),
        (3, 0, 0, 3, 0)
    );
    assert!(
        links(&app, next.id)
            .await
            .iter()
            .all(|l| l.3 == Some(march.id) && l.4.is_empty())
    );
}

#[tokio::test]
async fn the_same_file_twice_is_refused_naming_the_first_upload_then_accepted_when_allowed() {
    let app = spawn_app().await;
    let first = upload(&app, "march.csv", MARCH, false).await;
    assert_eq!(first.status, "completed");
    let again = upload(&app, "march-again.csv", MARCH, false).await;
    assert_eq!(again.status, "failed");
    let err = again.error.clone().unwrap();
    assert!(
        err.starts_with(&format!(
            "this file has exactly the same content as upload {} (\"march.csv\", uploaded ",
            first.id
        )),
        "{err}"
    );
    assert!(err.contains("--allow-same-file"), "{err}");
    assert_eq!(again.rows_imported, 0);
    // Allowed on purpose: imported, every debtor linked to March unchanged.
    let allowed = upload(&app, "march-again.csv", MARCH, true).await;
    assert_eq!(allowed.status, "completed", "{:?}", allowed.error);
    assert_eq!((allowed.rows_imported, allowed.rows_unchanged), (3, 3));
    // A failed upload gives its content back: after a failure the same file can come again.
    let mut c = app.db.connect().await;
    let claims: i64 =
        sqlx::query_scalar("SELECT count(*) FROM uploads WHERE content_claim IS NOT NULL")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(claims, 1, "only the first upload stands for the content");
}

#[tokio::test]
async fn within_one_file_a_repeat_is_a_duplicate_of_its_first_row_and_a_bad_first_row_swallows_nothing()
 {
    let app = spawn_app().await;
    let rec = upload(
        &app,
        "dups.csv",
        "\
external_ref,name,iban,amount
C-1,Anna Schmidt,DE89370400440532013000,12.00
C-1,Anna Schmidt,DE89 3704 0044 0532 0130 00,12.00
C-2,Jörg Weber,DE02120300000000202051,not money
C-2,Jörg Weber,DE02120300000000202051,25.00
C-2,Jörg Weber,DE02120300000000202051,26.00
",
        false,
    )
    .await;
    // Row 3 repeats row 2; row 4 is rejected, so row 5 is C-2's first importable row and
    // row 6 repeats it.
    assert_eq!(
        (rec.rows_imported, rec.rows_duplicate, rec.rows_rejected),
        (2, 2, 1)
    );
    let mut c = app.db.connect().await;
    let dups: Vec<(i32, i32)> = sqlx::query_as(
        "SELECT row_no, first_row FROM upload_duplicates WHERE upload_id = $1 ORDER BY row_no",
    )
    .bind(rec.id)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(dups, vec![(3, 2), (6, 5)]);
    // The full name was split into given and family names.
    let names: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT first_name, last_name FROM debtors WHERE upload_id = $1 ORDER BY row_no",
    )
    .bind(rec.id)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        names[0],
        (Some("Anna".to_string()), Some("Schmidt".to_string()))
    );
}

#[tokio::test]
async fn every_reference_and_amount_alias_is_recognised_and_the_raw_row_is_kept() {
    let app = spawn_app().await;
    for (i, header) in [
        "external_ref",
        "external_reference",
        "customer_ref",
        "ref",
        "reference_id",
        "Reference",
    ]
    .into_iter()
    .enumerate()
    {
        let amount = if i % 2 == 0 {
            "amount_cents"
        } else {
            "amount_minor"
        };
        let text = format!(
            "{header};name;iban;{amount};note\nREF-{i};Anna Schmidt;DE89370400440532013000;{};\"a; b\"\n",
            1000 + i
        );
        let rec = upload(&app, &format!("alias-{i}.csv"), &text, false).await;
        assert_eq!(rec.status, "completed", "{header}: {:?}", rec.error);
        let mut c = app.db.connect().await;
        let row = sqlx::query(
            "SELECT d.reference, d.amount_minor, r.cells FROM debtors d \
             JOIN upload_raw_rows r ON r.upload_id = d.upload_id AND r.row_no = d.row_no \
             WHERE d.upload_id = $1",
        )
        .bind(rec.id)
        .fetch_one(&mut c)
        .await
        .unwrap();
        assert_eq!(row.get::<String, _>(0), format!("REF-{i}"), "{header}");
        assert_eq!(row.get::<i64, _>(1), 1000 + i as i64, "{amount}");
        assert_eq!(
            row.get::<serde_json::Value, _>(2),
            serde_json::json!([
                format!("REF-{i}"),
                "Anna Schmidt",
                "DE89370400440532013000",
                format!("{}", 1000 + i),
                "a; b"
            ]),
            "the raw row holds every cell, unmapped ones too"
        );
        let headers: serde_json::Value =
            sqlx::query_scalar("SELECT headers FROM uploads WHERE id = $1")
                .bind(rec.id)
                .fetch_one(&mut c)
                .await
                .unwrap();
        assert_eq!(headers[0], header);
        // Each file is a new reference for the same IBAN: linked by IBAN only when the
        // earlier debtor had no reference, so these are all new.
        assert_eq!(rec.rows_new, 1, "{header}");
    }
}

#[tokio::test]
async fn a_file_without_references_links_by_iban_alone() {
    let app = spawn_app().await;
    let text = "name,iban,amount\nAnna Schmidt,DE89370400440532013000,12.00\n";
    let first = upload(&app, "a.csv", text, false).await;
    let second = upload(
        &app,
        "b.csv",
        "name,iban,amount\nAnna Schmidt,DE89370400440532013000,14.00\n",
        false,
    )
    .await;
    assert_eq!(
        (
            second.rows_imported,
            second.rows_changed,
            second.rows_duplicate
        ),
        (1, 1, 0)
    );
    let l = links(&app, second.id).await;
    assert_eq!(
        (l[0].3, l[0].4.clone()),
        (Some(first.id), vec!["amount".to_string()])
    );
}

/// `finworker_upload_link_keys_total{outcome=…}` as the worker counted it so far.
fn link_keys(app: &TestApp, outcome: &str) -> u64 {
    let series = format!("finworker_upload_link_keys_total{{outcome=\"{outcome}\"}}");
    app.counter(&series)
        .unwrap_or_else(|| panic!("no {series} series"))
}

/// Uploads `text` and says how many of its keys were looked up and how many skipped.
async fn upload_counting_lookups(
    app: &TestApp,
    name: &str,
    text: &str,
) -> (UploadRecord, (u64, u64)) {
    let (probed, skipped) = (link_keys(app, "probed"), link_keys(app, "skipped"));
    let rec = upload(app, name, text, false).await;
    let delta = (
        link_keys(app, "probed") - probed,
        link_keys(app, "skipped") - skipped,
    );
    (rec, delta)
}

async fn key_filtered(app: &TestApp, id: Uuid) -> bool {
    let mut c = app.db.connect().await;
    sqlx::query_scalar("SELECT key_filtered FROM uploads WHERE id = $1")
        .bind(id)
        .fetch_one(&mut c)
        .await
        .unwrap()
}

async fn wait_filtered(app: &TestApp, id: Uuid) {
    crate::helpers::eventually(
        std::time::Duration::from_secs(20),
        "the upload's keys in the linking filter",
        || async { key_filtered(app, id).await.then_some(()) },
    )
    .await;
}

fn debtor_rows(prefix: &str, range: std::ops::Range<u32>, bban_base: u64) -> String {
    range
        .map(|n| {
            let iban = finworker::testdata::iban_with_check(
                "DE",
                &format!("{:018}", bban_base + u64::from(n)),
            );
            format!("{prefix}-{n},Debtor {n},{iban},1000\n")
        })
        .collect()
}

#[tokio::test]
async fn the_linking_filter_skips_only_keys_no_earlier_debtor_has_and_every_unfiltered_upload_is_probed()
 {
    let app = spawn_app().await;
    let header = "reference,name,iban,amount\n";
    let march = upload(
        &app,
        "march.csv",
        &format!(
            "{header}{}",
            debtor_rows("R", 0..40, 370_400_440_000_000_000)
        ),
        false,
    )
    .await;
    assert_eq!(march.rows_new, 40);
    // The completing job adds the upload's keys to the filter.
    wait_filtered(&app, march.id).await;

    // April: 20 of March's debtors again, 20 new ones. Only the repeated keys are looked up,
    // and every one of them is linked.
    let april_text = format!(
        "{header}{}{}",
        debtor_rows("R", 0..20, 370_400_440_000_000_000),
        debtor_rows("N", 0..20, 120_300_000_000_000_000)
    );
    let (april, looked_up) = upload_counting_lookups(&app, "april.csv", &april_text).await;
    assert_eq!(
        (april.rows_imported, april.rows_unchanged, april.rows_new),
        (40, 20, 20)
    );
    assert_eq!(
        looked_up,
        (20, 20),
        "the repeated keys looked up, the new ones skipped"
    );
    let l = links(&app, april.id).await;
    assert!(
        l.iter()
            .filter(|r| r.1.starts_with("R-"))
            .all(|r| r.3 == Some(march.id)),
        "{l:?}"
    );
    assert!(
        l.iter()
            .filter(|r| r.1.starts_with("N-"))
            .all(|r| r.3.is_none()),
        "{l:?}"
    );

    // Debtors stored otherwise (restored, bulk-loaded) belong to an upload not in the filter:
    // while it is there, imports look every key up, so a row repeating one is still linked.
    let restored = Uuid::new_v4();
    let iban =
        finworker::testdata::iban_with_check("DE", &format!("{:018}", 500_105_170_000_000_001u64));
    let key = app.ctx.iban.as_ref().unwrap().key(&iban);
    {
        let mut c = app.db.connect().await;
        sqlx::query(
            "INSERT INTO uploads (id, object_key, file_name, status, chunk_rows, finished_at) \
             VALUES ($1, 'restored', 'restored.csv', 'completed', 5000, now() - interval '1 day')",
        )
        .bind(restored)
        .execute(&mut c)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO debtors (upload_id, row_no, reference, name, iban, amount_minor, currency, iban_key, valid) \
             VALUES ($1, 2, 'X-1', 'Restored Debtor', $2, 1000, 'EUR', $3, true)",
        )
        .bind(restored)
        .bind(&iban)
        .bind(key)
        .execute(&mut c)
        .await
        .unwrap();
    }
    let (may, looked_up) = upload_counting_lookups(
        &app,
        "may.csv",
        &format!(
            "{header}X-1,Restored Debtor,{iban},1000\n{}",
            debtor_rows("M", 0..9, 200_500_000_000_000_000)
        ),
    )
    .await;
    assert_eq!(
        looked_up,
        (10, 0),
        "an upload outside the filter makes the import look every key up"
    );
    let l = links(&app, may.id).await;
    assert_eq!((l[0].1.as_str(), l[0].3), ("X-1", Some(restored)), "{l:?}");
    // The sweeper (or `finworker uploads filter-keys`) adds it; then new keys are skipped again.
    wait_filtered(&app, april.id).await;
    wait_filtered(&app, may.id).await;
    let added = finworker::uploads::key_filter::catch_up(&app.ctx.db, 100)
        .await
        .unwrap();
    assert_eq!(added, 1, "the restored upload, the only one left out");
    assert!(key_filtered(&app, restored).await);
    let (june, looked_up) = upload_counting_lookups(
        &app,
        "june.csv",
        &format!(
            "{header}X-1,Restored Debtor,{iban},1000\n{}",
            debtor_rows("J", 0..9, 300_500_000_000_000_000)
        ),
    )
    .await;
    assert_eq!(looked_up, (1, 9), "only the key an earlier debtor has");
    assert_eq!(
        links(&app, june.id).await[0].3,
        Some(may.id),
        "linked to the latest debtor with that key"
    );
    // The invariant itself: every key of every filtered upload is a set bit in the stored
    // filter (bit = the key's top 27 bits; slot = bit / 8192; bit % 8192 LSB-first).
    wait_filtered(&app, june.id).await;
    let missing = app
        .scalar(
            "SELECT count(*) FROM debtors d JOIN uploads u ON u.id = d.upload_id AND u.key_filtered \
             WHERE NOT EXISTS (SELECT 1 FROM debtor_key_filter f \
               WHERE f.slot = ((d.iban_key >> 37) & 134217727) >> 13 \
                 AND get_bit(f.bits, (((d.iban_key >> 37) & 134217727) & 8191)::int) = 1)",
        )
        .await;
    let filtered = app
        .scalar("SELECT count(*) FROM debtors d JOIN uploads u ON u.id = d.upload_id AND u.key_filtered")
        .await;
    assert_eq!(
        (filtered, missing),
        (101, 0),
        "march 40, april 40, restored 1, may 10, june 10"
    );
}
