//! Operations: what ops do to the queues by hand.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;

use crate::helpers::{app::TestApp, process::Daemon, spawn_api_only};

async fn cli(app: &TestApp, args: &[&str]) -> String {
    crate::helpers::process::cli_async(&app.settings, args).await
}

#[tokio::test]
async fn a_paused_queue_is_fetched_by_no_process_and_stays_paused_across_a_restart_of_workers_and_redis()
 {
    let app = spawn_api_only().await;
    let mut w = Daemon::start(&app.settings, &["run", "--no-http"]);
    let out = cli(&app, &["queues", "pause", "noop", "--reason", "deploy"]).await;
    assert!(out.contains("queue noop paused"), "{out}");
    let paused_job = app.enqueue("noop", json!({"note": "held"})).await;
    // Another queue is unaffected.
    let other = app
        .enqueue("test_job", json!({"label": "other", "sleep_ms": 0}))
        .await;
    app.finished_runs(&other, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        app.runs(&paused_job).await.is_empty(),
        "a paused queue's job ran"
    );
    let listed = cli(&app, &["queues"]).await;
    let line = listed.lines().find(|l| l.starts_with("noop")).unwrap();
    assert!(
        line.contains("PAUSED") && line.contains("by cli: deploy"),
        "{listed}"
    );
    assert!(
        line.split_whitespace().nth(1) == Some("1"),
        "one waiting: {line}"
    );

    // Restart the workers, and let Redis forget its copy of the pause: Postgres has the record.
    w.sigterm();
    assert!(w.wait_timeout(Duration::from_secs(20)).success());
    let mut r = app.ctx.queue.connection();
    let _: () = r
        .del(format!("{}:paused", app.ctx.queue.prefix()))
        .await
        .unwrap();
    let _w2 = Daemon::start(&app.settings, &["run", "--no-http"]);
    let restarted = app
        .enqueue("test_job", json!({"label": "after", "sleep_ms": 0}))
        .await;
    app.finished_runs(&restarted, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        app.runs(&paused_job).await.is_empty(),
        "the pause did not survive the restart"
    );

    let out = cli(&app, &["queues", "resume", "noop"]).await;
    assert!(out.contains("queue noop resumed"), "{out}");
    let runs = app
        .finished_runs(&paused_job, Duration::from_secs(20))
        .await;
    assert_eq!(runs.last().unwrap().status, "succeeded");
    let refused = tokio::time::timeout(Duration::from_secs(30), async {
        let settings = app.settings.clone();
        tokio::task::spawn_blocking(move || {
            crate::helpers::process::command(&settings, &["queues", "pause", "nosuchqueue"])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    })
    .await
    .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no queue `nosuchqueue`"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

async fn exec(c: &mut sqlx::PgConnection, sql: impl AsRef<str>) {
    sqlx::query(sql.as_ref()).execute(c).await.unwrap();
}

#[tokio::test]
async fn retention_prunes_what_is_old_keeps_what_is_referred_to_or_recent_and_repeats_harmlessly() {
    let app = spawn_api_only().await;
    let mut c = app.db.connect().await;
    // job_runs: one old, one recent.
    exec(&mut c, "INSERT INTO job_runs (job_id, attempt, job_type, worker, status, started_at, finished_at) VALUES \
          ('old-run', 1, 'noop', 'w', 'succeeded', now() - interval '40 days', now() - interval '40 days'), \
          ('new-run', 1, 'noop', 'w', 'succeeded', now(), now())").await;
    // Reports: an old one with its file, a recent one.
    let (old_report, new_report) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for (id, age) in [(old_report, "100 days"), (new_report, "1 day")] {
        let key = format!("reports/{id}.csv");
        app.ctx
            .storage
            .put(&key, bytes::Bytes::from_static(b"a;b\n"))
            .await
            .unwrap();
        exec(&mut c, format!(
            "INSERT INTO reports (id, kind, format, status, object_key, file_name, rows, created_at, finished_at) \
             VALUES ('{id}', 'vop', 'csv', 'ready', '{key}', 'r.csv', 1, now() - interval '{age}', now() - interval '{age}')"
        )).await;
    }
    // Uploads over long ago with staged chunks a crash left behind; one still importing.
    let (old_upload, live_upload) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for (id, status) in [(old_upload, "completed"), (live_upload, "importing")] {
        exec(&mut c, format!(
            "INSERT INTO uploads (id, object_key, file_name, chunk_rows, status, finished_at, updated_at) \
             VALUES ('{id}', 'uploads/{id}.csv', 'f.csv', 100, '{status}', now() - interval '10 days', now() - interval '10 days')"
        )).await;
        for n in 0..3 {
            app.ctx
                .storage
                .put(
                    &finworker::uploads::staged_key(id, n),
                    bytes::Bytes::from_static(b"x"),
                )
                .await
                .unwrap();
        }
    }
    // Webhook deliveries: old processed (goes), old referred to by a chargeback (kept,
    // stripped), old still queued (kept whole), recent (kept whole).
    let mut ids = Vec::new();
    for (state, age) in [
        ("processed", "100 days"),
        ("processed", "100 days"),
        ("queued", "100 days"),
        ("processed", "1 day"),
    ] {
        let id: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO webhook_deliveries (provider, account, received_at, headers, body, body_bytes, verdict, state) \
             VALUES ('emp', 'main', now() - interval '{age}', '{{\"content-type\": \"x\"}}', 'unique_id=1', 11, 'accepted', '{state}') RETURNING id"
        ))
        .fetch_one(&mut c)
        .await
        .unwrap();
        ids.push(id);
    }
    exec(&mut c, format!(
        "INSERT INTO chargebacks (account, original_unique_id, source, delivery_id, raw) VALUES ('main', 'u-1', 'webhook', {}, '{{}}')",
        ids[1]
    )).await;

    // The job, as the schedule would run it.
    let job = app.enqueue("retention", json!({})).await;
    let mut w = Daemon::start(&app.settings, &["run", "--no-http"]);
    let runs = app.finished_runs(&job, Duration::from_secs(30)).await;
    assert_eq!(runs.last().unwrap().status, "succeeded");

    assert_eq!(
        app.scalar("SELECT count(*) FROM job_runs WHERE job_id = 'old-run'")
            .await,
        0
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM job_runs WHERE job_id = 'new-run'")
            .await,
        1
    );
    assert_eq!(
        app.scalar(&format!("SELECT count(*) FROM reports WHERE id = '{old_report}' AND status = 'expired' AND object_key IS NULL")).await,
        1
    );
    let files = app.ctx.storage.list("reports").await.unwrap();
    assert!(
        !files.iter().any(|f| f.contains(&old_report.to_string())),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.contains(&new_report.to_string())),
        "{files:?}"
    );
    let link = finworker::reports::signed_link(&app.settings.reports, old_report, None)
        .unwrap()
        .0;
    let r = crate::lifecycle::get_report(&app, &link).await;
    assert_eq!(r.status(), 410, "an expired report's link says it is gone");
    assert!(r.text().await.unwrap().contains("retention"));
    assert!(
        app.ctx
            .storage
            .list(&finworker::uploads::staging_prefix(old_upload))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        app.ctx
            .storage
            .list(&finworker::uploads::staging_prefix(live_upload))
            .await
            .unwrap()
            .len(),
        3
    );
    let d = |i: usize| {
        format!(
            "SELECT count(*) FROM webhook_deliveries WHERE id = {}",
            ids[i]
        )
    };
    assert_eq!(
        app.scalar(&d(0)).await,
        0,
        "old, processed, unreferenced: deleted"
    );
    assert_eq!(
        app.scalar(&format!("SELECT count(*) FROM webhook_deliveries WHERE id = {} AND body = '' AND pruned_at IS NOT NULL", ids[1])).await,
        1,
        "referred to by a chargeback: row kept, body dropped"
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM webhook_deliveries WHERE id = {} AND body <> ''",
            ids[2]
        ))
        .await,
        1,
        "queued: untouched"
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM webhook_deliveries WHERE id = {} AND body <> ''",
            ids[3]
        ))
        .await,
        1,
        "recent: untouched"
    );
    assert_eq!(app.scalar("SELECT count(*) FROM chargebacks").await, 1);
    w.sigterm();
    assert!(w.wait_timeout(Duration::from_secs(20)).success());

    // A second pass by hand finds nothing more to do.
    let out = cli(&app, &["prune"]).await;
    assert!(
        out.contains("pruned: 0 job_runs, 0 report files, 0 staged objects of 0 uploads, 0 webhook deliveries deleted, 0 stripped"),
        "{out}"
    );
}

#[tokio::test]
async fn the_cli_lists_uploads_reports_and_the_guards_of_every_provider_account() {
    let sb = crate::verification::sandbox(crate::billing::sandbox_knobs()).await;
    let app = crate::helpers::spawn_app_with(|s| crate::billing::billing(s, &sb)).await;
    let upload =
        crate::billing::validated_upload(&app, &[("L1".into(), crate::billing::iban(9101), 1200)])
            .await;
    let out = cli(&app, &["uploads", "list"]).await;
    let line = out
        .lines()
        .find(|l| l.starts_with(&upload.to_string()))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("completed") && line.contains("1 imported") && line.contains("1 valid"),
        "{line}"
    );

    let id = uuid::Uuid::now_v7();
    let mut c = app.db.connect().await;
    exec(
        &mut c,
        format!(
            "INSERT INTO reports (id, kind, format, status, object_key, file_name, rows, finished_at) \
             VALUES ('{id}', 'returns', 'csv', 'ready', 'reports/x.csv', 'x.csv', 3, now())"
        ),
    )
    .await;
    let out = cli(&app, &["reports", "list"]).await;
    let line = out
        .lines()
        .find(|l| l.starts_with(&id.to_string()))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("returns") && line.contains("ready") && line.contains("3 rows"),
        "{line}"
    );
    assert!(
        line.contains(&format!("/reports/{id}/download?expires=")),
        "a fresh link: {line}"
    );

    // The same over the ops API.
    for (path, field, value) in [
        (format!("/api/ops/uploads/{upload}"), "status", "completed"),
        (format!("/api/ops/reports/{id}"), "kind", "returns"),
    ] {
        let v: serde_json::Value = app
            .http
            .get(app.url(&path))
            .bearer_auth(crate::helpers::app::OPS_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v[field], value, "{path}: {v}");
    }
    let out = cli(&app, &["guards"]).await;
    let main = out
        .lines()
        .find(|l| l.contains(" main "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        main.starts_with("genesis") && main.contains("closed") && main.contains("500 r/s"),
        "{main}"
    );
}
