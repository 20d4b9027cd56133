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
