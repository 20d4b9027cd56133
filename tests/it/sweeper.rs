//! Postgres is the record, Redis only the transport: a pipeline whose jobs Redis forgot is
//! finished by the sweeper, exactly.

use std::time::Duration;

use finworker::{sandbox::Knobs, testdata::GenFormat, uploads};

use crate::{
    helpers::{eventually, spawn_app_with},
    uploads::{assert_accounted, gen_args, generate, submit},
    verification::sandbox,
};

#[tokio::test]
async fn a_100k_row_pipeline_survives_its_redis_namespace_being_flushed_twice() {
    let sb = sandbox(Knobs::default()).await;
    let app = spawn_app_with(|s| {
        s.vop.enabled = true;
        s.vop.base_url = format!("http://{}", sb.addr);
        s.vop.rate_limit = 50_000;
        s.vop.in_flight = 64;
        s.upload.chunk_rows = 5_000;
        s.sweeper.enabled = true;
        s.sweeper.interval = Duration::from_secs(1);
        s.sweeper.stale_after = Duration::from_secs(3);
        // The report (an XLSX of 88k rows, slow in a debug build) is not what this tests.
        s.reports.after_vop = false;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = gen_args(&dir, 100_000, GenFormat::Csv, 41);
    args.invalid = 1.0;
    let (bytes, summary) = generate(args);
    let id = submit(&app, "big.csv", &bytes).await;

    // First loss: while chunks are being imported.
    eventually(
        Duration::from_secs(120),
        "the import to be under way",
        || async {
            let r = uploads::get(&app.ctx.db, id).await.unwrap()?;
            (r.chunks_done >= 2).then_some(())
        },
    )
    .await;
    app.ctx.queue.delete_namespace().await.unwrap(); // FLUSHALL, for this test's keys only
    // Second loss: while debtors are being verified.
    eventually(
        Duration::from_secs(240),
        "verification to be under way",
        || async {
            // A pipeline that ended early would only time out here: say why at once.
            let r = uploads::get(&app.ctx.db, id).await.unwrap();
            if let Some(r) = r.filter(|r| r.status == "failed") {
                panic!("the upload failed: {:?} ({r:?})", r.error);
            }
            let n = app
                .scalar(&format!(
                    "SELECT count(*) FROM vop_results WHERE upload_id = '{id}'"
                ))
                .await;
            (n >= 10_000).then_some(())
        },
    )
    .await;
    app.ctx.queue.delete_namespace().await.unwrap();

    let rec = eventually(
        Duration::from_secs(300),
        "the pipeline to finish",
        || async {
            uploads::get(&app.ctx.db, id)
                .await
                .unwrap()
                .filter(|r| r.verified_at.is_some())
        },
    )
    .await;
    assert_eq!(rec.status, "completed");
    assert_accounted(&app, &rec).await;
    assert_eq!(rec.rows_seen, summary.rows as i64);
    assert_eq!(rec.rows_imported as u64, summary.unique);
    assert_eq!(rec.rows_duplicate as u64, summary.duplicates);
    assert_eq!(rec.rows_rejected as u64, summary.malformed);
    assert_eq!(rec.rows_valid + rec.rows_invalid, rec.rows_imported);
    // Every debtor checked once, every valid one verified once.
    let checks = app
        .scalar(&format!(
            "SELECT count(*) FROM debtors WHERE upload_id = '{id}' AND valid IS NOT NULL"
        ))
        .await;
    assert_eq!(checks, rec.rows_imported);
    let results = app
        .scalar(&format!(
            "SELECT count(*) FROM vop_results WHERE upload_id = '{id}'"
        ))
        .await;
    assert_eq!(results, rec.rows_valid, "one result per valid debtor");
    let redriven = app
        .scalar("SELECT count(*) FROM job_runs WHERE job_type = 'sweeper' AND status = 'succeeded'")
        .await;
    assert!(redriven >= 1, "the sweeper ran");
}
