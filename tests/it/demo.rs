//! The demo (`scripts/demo.sh` runs `finworker demo`), small, end to end: it must keep working
//! as features land, and its summary must say what happened.

use crate::helpers::{db::drop_database, process::command, spawn_api_only};

#[tokio::test]
async fn a_small_demo_runs_the_whole_pipeline_and_its_summary_says_what_happened() {
    let app = spawn_api_only().await;
    // Its own database, as the demo makes one; named like the tests' so a leftover is swept.
    let name = format!(
        "fw_t_{}_demo{}",
        chrono::Utc::now().timestamp(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let settings = app.settings.clone();
    let db = name.clone();
    let metrics_file = tempfile::NamedTempFile::new().unwrap();
    let metrics_path = metrics_file.path().display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        command(
            &settings,
            &[
                "demo",
                "--jobs",
                "300",
                "--debtors",
                "400",
                "--exit",
                "--bind",
                "127.0.0.1:0",
                "--database",
                &db,
                "--metrics-out",
                &metrics_path,
            ],
        )
        .env("FINWORKER__LOG__LEVEL", "warn")
        .output()
        .unwrap()
    })
    .await
    .unwrap();
    drop_database(&name).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let summary = stdout
        .split("\nsummary (")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    let line = |stage: &str| {
        summary
            .lines()
            .find(|l| l.trim_start().starts_with(stage))
            .unwrap_or_else(|| panic!("no {stage} line in the summary:\n{summary}"))
            .to_string()
    };
    assert!(line("jobs").contains("dead-lettered"), "{summary}");
    let upload = line("upload");
    assert!(
        upload.contains("400 rows") || upload.contains(" rows:"),
        "{upload}"
    );
    assert!(line("validation").contains("valid"), "{summary}");
    assert!(line("VOP/BAV").len() > 20, "{summary}");
    assert!(line("VOP report").contains("signed link"), "{summary}");
    let billing = line("billing");
    assert!(
        billing.contains("approved") && billing.contains("debits on the gateway's ledger"),
        "{billing}"
    );
    assert!(line("webhooks").contains("notifications"), "{summary}");
    assert!(
        line("returns").contains("1 chargeback applied"),
        "{summary}"
    );
    assert!(
        line("reconcile").contains("0 attempts still open"),
        "{summary}"
    );
    let sync = line("ledger sync");
    assert!(
        sync.contains(" 0 differences"),
        "the ledger agrees with the gateway: {sync}"
    );
    assert!(stdout.contains("daemon drained and stopped"), "{stdout}");

    // Every stage is visible in /metrics: the series ops graph moved during the demo.
    let metrics = std::fs::read_to_string(metrics_file.path()).unwrap();
    let total = |series: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for series in [
        "finworker_jobs_succeeded_total",
        "finworker_jobs_dead_total",
        "finworker_upload_rows_total{outcome=\"imported\"}",
        "finworker_upload_rows_total{outcome=\"duplicate\"}",
        "finworker_upload_rows_total{outcome=\"rejected\"}",
        "finworker_debtors_validated_total{outcome=\"valid\"}",
        "finworker_debtors_validated_total{outcome=\"invalid\"}",
        "finworker_vop_results_total{check=\"vop\"",
        "finworker_vop_results_total{check=\"bav\"",
        "finworker_provider_requests_total",
        "finworker_billing_debits_total{account=\"demo\",outcome=\"approved\"}",
        "finworker_billing_debit_amount_minor_total{account=\"demo\",outcome=\"approved\"}",
        "finworker_rate_limit_wait_seconds_total",
        "finworker_webhook_deliveries_total{provider=\"emp\",verdict=\"accepted\"}",
        "finworker_transaction_events_total{source=\"webhook\"",
        "finworker_chargebacks_total{account=\"demo\"",
    ] {
        assert!(total(series) > 0.0, "{series} did not move:\n{metrics}");
    }
    for present in [
        "finworker_breaker_state{",
        "finworker_open_attempts{",
        "finworker_retention_pruned_total",
        "finworker_sweeper_redrives_total",
    ] {
        assert!(metrics.contains(present), "{present} missing");
    }
}
