//! Migrations keep the meaning of data stored by earlier versions: each test applies the
//! migrations before one, stores rows the way the earlier version did, applies the rest, and
//! reads the rows back the way the current version does.

use std::path::Path;

use sqlx::{Executor, migrate::Migrator};
use uuid::Uuid;

use crate::helpers::db::TestDb;

async fn migrator(before: Option<i64>) -> Migrator {
    let mut m = Migrator::new(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations"
    )))
    .await
    .unwrap();
    if let Some(v) = before {
        let kept: Vec<_> = m
            .migrations
            .iter()
            .filter(|x| x.version < v)
            .cloned()
            .collect();
        assert!(kept.len() < m.migrations.len(), "no migration {v}");
        m.migrations = kept.into();
    }
    m
}

#[tokio::test]
async fn raw_rows_and_findings_stored_row_by_row_read_back_the_same_after_the_raw_by_chunk_migration()
 {
    let db = TestDb::create_unmigrated().await;
    let mut c = db.connect().await;
    migrator(Some(20261202000001))
        .await
        .run(&mut c)
        .await
        .unwrap();

    // As the previous version stored them: raw cells on each row, every finding in `issues`.
    let (done, busy) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, status) in [(done, "completed"), (busy, "importing")] {
        sqlx::query(
            "INSERT INTO uploads (id, object_key, file_name, status, chunk_rows, rows_seen, \
             rows_imported, rows_duplicate, rows_rejected, chunks_total, chunks_done, content_claim) \
             VALUES ($1, 'k', 'f.csv', $2, 5000, 3, 1, 1, 1, 1, 1, \
             CASE WHEN $2 = 'importing' THEN '\\x01'::bytea END)",
        )
        .bind(id)
        .bind(status)
        .execute(&mut c)
        .await
        .unwrap();
    }
    let transliterated = r#"{"code": "NAME_TRANSLITERATED", "field": "name", "severity": "warning",
        "message": "name 'Jörg Weiß' has characters outside the SEPA set; it will be sent as 'Jorg Weiss'",
        "suggestion": "Jorg Weiss"}"#;
    let checksum = r#"{"code": "IBAN_CHECKSUM", "field": "iban", "severity": "error",
        "message": "IBAN DE89****3000: the check digits do not match (mod 97), a typo is likely",
        "suggestion": null}"#;
    for (upload, row_no, issues) in [
        (done, 2, format!("[{transliterated}, {checksum}]")),
        (done, 5, format!("[{transliterated}]")),
        (busy, 2, format!("[{checksum}]")),
    ] {
        sqlx::query(
            "INSERT INTO debtors (upload_id, row_no, reference, name, iban, amount_minor, currency, \
             valid, sepa_name, issues, raw) \
             VALUES ($1, $2, 'R', 'Jörg Weiß', 'DE89370400440532013000', 100, 'EUR', false, \
             'Jorg Weiss', $3::jsonb, $4)",
        )
        .bind(upload)
        .bind(row_no)
        .bind(issues)
        .bind(format!(r#"["R", "Jörg Weiß", "row {row_no}"]"#))
        .execute(&mut c)
        .await
        .unwrap();
    }
    c.execute(
        format!(
            "INSERT INTO upload_duplicates (upload_id, row_no, first_row, raw) VALUES ('{done}', 3, 2, '[\"dup\"]'); \
             INSERT INTO upload_rejects (upload_id, row_no, reason, raw) VALUES ('{done}', 4, 'bad', '[\"rej\", \"\"]')"
        )
        .as_str(),
    )
    .await
    .unwrap();

    migrator(None).await.run(&mut c).await.unwrap();

    // Every raw row, whatever became of it, reads back by upload and row.
    let raw: Vec<(i32, serde_json::Value)> = sqlx::query_as(
        "SELECT row_no, cells FROM upload_raw_rows WHERE upload_id = $1 ORDER BY row_no",
    )
    .bind(done)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        raw,
        vec![
            (2, serde_json::json!(["R", "Jörg Weiß", "row 2"])),
            (3, serde_json::json!(["dup"])),
            (4, serde_json::json!(["rej", ""])),
            (5, serde_json::json!(["R", "Jörg Weiß", "row 5"])),
        ]
    );
    // The findings read the same: the transliteration now comes from sepa_name, worded alike.
    let findings: Vec<(i32, String, String, Option<String>)> = sqlx::query_as(
        "SELECT row_no, code, message, suggestion FROM debtor_findings WHERE upload_id = $1 \
         ORDER BY row_no, code",
    )
    .bind(done)
    .fetch_all(&mut c)
    .await
    .unwrap();
    let words = |code: &str| {
        let v: serde_json::Value = serde_json::from_str(if code == "IBAN_CHECKSUM" {
            checksum
        } else {
            transliterated
        })
        .unwrap();
        (
            v["code"].as_str().unwrap().to_string(),
            v["message"].as_str().unwrap().to_string(),
            v["suggestion"].as_str().map(str::to_string),
        )
    };
    let expect: Vec<_> = [
        (2, "IBAN_CHECKSUM"),
        (2, "NAME_TRANSLITERATED"),
        (5, "NAME_TRANSLITERATED"),
    ]
    .into_iter()
    .map(|(row, code)| {
        let (code, msg, sugg) = words(code);
        (row, code, msg, sugg)
    })
    .collect();
    assert_eq!(findings, expect);
    let stored: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT issues FROM debtors WHERE upload_id = $1 AND row_no = 5")
            .bind(done)
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(
        stored, None,
        "nothing but the transliteration: no stored findings"
    );

    // The upload in progress was staged in the old chunk format: it starts again from its
    // file, with nothing of its partial import left and its content claim released.
    let (status, imported, claim): (String, i64, Option<Vec<u8>>) =
        sqlx::query_as("SELECT status, rows_imported, content_claim FROM uploads WHERE id = $1")
            .bind(busy)
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!((status.as_str(), imported, claim), ("pending", 0, None));
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM debtors WHERE upload_id = $1) \
         + (SELECT count(*) FROM upload_raw WHERE upload_id = $1)",
    )
    .bind(busy)
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(left, 0);
    // The completed upload is untouched.
    let status: String = sqlx::query_scalar("SELECT status FROM uploads WHERE id = $1")
        .bind(done)
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(status, "completed");
}
