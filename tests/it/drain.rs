use std::time::Duration;

use serde_json::json;

use crate::helpers::{eventually, process::Daemon, spawn_api_only};

#[tokio::test]
async fn sigterm_lets_the_single_running_job_finish_and_exits_0() {
    let app = spawn_api_only().await;
    let mut daemon = Daemon::start(&app.settings, &["run", "--no-http", "--queues", "test_job"]);
    let id = app
        .enqueue("test_job", json!({"label": "only-one", "sleep_ms": 2000}))
        .await;
    eventually(Duration::from_secs(15), "the job to start", || async {
        (app.runs(&id).await.first().map(|r| r.status.clone()) == Some("running".into()))
            .then_some(())
    })
    .await;

    daemon.sigterm();
    let status = daemon.wait_timeout(Duration::from_secs(15));

    assert!(
        status.success(),
        "exit {status:?}; log:\n{}",
        daemon.log_text()
    );
    let runs = app.runs(&id).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].status, "succeeded", "{runs:?}");
    assert!(
        app.ctx.queue.job(&id).await.unwrap().is_none(),
        "acknowledged before exit"
    );
    assert!(
        app.ctx.queue.workers().await.unwrap().is_empty(),
        "deregistered"
    );
}

#[tokio::test]
async fn sigterm_releases_waiting_jobs_and_hands_back_those_past_the_drain_deadline() {
    let app = spawn_api_only().await;
    let mut settings = app.settings.clone();
    settings.worker.drain_timeout = Duration::from_millis(500);
    settings.queues.get_mut("test_job").unwrap().concurrency = Some(1);
    let mut daemon = Daemon::start(&settings, &["run", "--no-http", "--queues", "test_job"]);
    let long = app
        .enqueue("test_job", json!({"label": "long", "sleep_ms": 5000}))
        .await;
    let waiting = app.enqueue("test_job", json!({"label": "waiting"})).await;
    eventually(Duration::from_secs(15), "the long job to start", || async {
        (!app.runs(&long).await.is_empty()).then_some(())
    })
    .await;

    daemon.sigterm();
    let status = daemon.wait_timeout(Duration::from_secs(15));

    assert!(status.success(), "{}", daemon.log_text());
    let runs = app.runs(&long).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, "interrupted", "{runs:?}");
    assert!(app.runs(&waiting).await.is_empty(), "never started");
    let st = app.ctx.queue.stats("test_job").await.unwrap();
    assert_eq!(
        (st.waiting, st.in_flight),
        (2, 0),
        "both back in the queue, nothing stranded"
    );

    // A new process picks both up at once (no wait for a lease to lapse).
    let _next = Daemon::start(&app.settings, &["run", "--no-http", "--queues", "test_job"]);
    for id in [&long, &waiting] {
        assert_eq!(
            app.finished_runs(id, Duration::from_secs(20))
                .await
                .last()
                .unwrap()
                .status,
            "succeeded"
        );
    }
}
