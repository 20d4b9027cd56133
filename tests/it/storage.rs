//! The S3 storage backend against a real S3-protocol server on loopback (moto, started by
//! scripts/setup.sh --with-s3), not a mock of the client.

use std::time::Duration;

use finworker::{
    config::StorageBackend,
    testdata::{DebtorArgs, GenEncoding, GenFormat},
    uploads,
};
use secrecy::SecretString;

use crate::helpers::spawn_app_with;

fn endpoint() -> String {
    let port = std::env::var("FINWORKER_TEST_S3_PORT").unwrap_or_else(|_| "9100".into());
    format!("http://127.0.0.1:{port}")
}

/// A bucket of its own, emptied and removed on drop.
struct Bucket(String);

impl Bucket {
    async fn create() -> Self {
        let name = format!("fwt-{}", uuid::Uuid::new_v4().simple());
        let r = reqwest::Client::new()
            .put(format!("{}/{name}", endpoint()))
            .send()
            .await
            .expect("the S3 test server answers (scripts/setup.sh --with-s3)");
        assert!(r.status().is_success(), "creating bucket: {}", r.status());
        Bucket(name)
    }
}

impl Drop for Bucket {
    fn drop(&mut self) {
        // Empties and removes the bucket (moto accepts unsigned requests); Drop cannot await.
        let name = self.0.clone();
        crate::helpers::block_on_own_thread(move || async move {
            let c = reqwest::Client::new();
            let base = endpoint();
            if let Ok(r) = c.get(format!("{base}/{name}?list-type=2")).send().await {
                let body = r.text().await.unwrap_or_default();
                for part in body.split("<Key>").skip(1) {
                    if let Some(key) = part.split("</Key>").next() {
                        let _ = c.delete(format!("{base}/{name}/{key}")).send().await;
                    }
                }
            }
            let _ = c.delete(format!("{base}/{name}")).send().await;
        });
    }
}

#[tokio::test]
async fn an_upload_from_the_s3_backend_imports_and_cleans_its_staging() {
    let bucket = Bucket::create().await;
    let name = bucket.0.clone();
    let app = spawn_app_with(move |s| {
        s.storage.backend = StorageBackend::S3;
        s.storage.s3.bucket = name;
        s.storage.s3.endpoint = endpoint();
        s.storage.s3.allow_http = true;
        s.storage.s3.region = "us-east-1".into();
        s.storage.s3.access_key_id = "test".into();
        s.storage.s3.secret_access_key = Some(SecretString::from("test"));
        s.upload.chunk_rows = 400;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let args = DebtorArgs {
        rows: 2000,
        format: GenFormat::Csv,
        seed: 61,
        out: dir.path().join("s3.csv"),
        delimiter: ';',
        encoding: GenEncoding::Utf8,
        bom: true,
        crlf: false,
        duplicates: 10.0,
        malformed: 2.0,
        invalid: 0.0,
        no_short_rows: false,
    };
    let summary = finworker::testdata::debtors(&args).unwrap();
    let id = uploads::submit(&app.ctx, &args.out, None, None, false)
        .await
        .unwrap();
    let rec =
        crate::helpers::eventually(Duration::from_secs(60), "the S3 upload to end", || async {
            uploads::get(&app.ctx.db, id)
                .await
                .unwrap()
                .filter(|r| r.is_final())
        })
        .await;
    crate::uploads::assert_accounted(&app, &rec).await;
    assert_eq!(rec.status, "completed", "{rec:?}");
    assert_eq!(rec.chunks_total, Some(5));
    assert_eq!(
        (
            rec.rows_imported as u64,
            rec.rows_duplicate as u64,
            rec.rows_rejected as u64
        ),
        (summary.unique, summary.duplicates, summary.malformed)
    );
    // The file is in the bucket, the staged chunks are gone from it.
    let listed = app.ctx.storage.list("uploads").await.unwrap();
    assert_eq!(listed, vec![rec.object_key.clone()]);
    // Staging is removed just after the completing commit: poll, don't race it.
    crate::helpers::eventually(
        Duration::from_secs(10),
        "the staging to be removed",
        || async {
            app.ctx
                .storage
                .list("staging")
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        app.ctx.storage.size(&rec.object_key).await.unwrap(),
        std::fs::metadata(&args.out).unwrap().len()
    );
}
