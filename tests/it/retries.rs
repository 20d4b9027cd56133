use std::time::Duration;

use serde_json::json;

use crate::helpers::{process, spawn_app};

#[tokio::test]
async fn a_job_failing_twice_succeeds_on_the_third_attempt_after_growing_delays() {
    let app = spawn_app().await;

    let id = app
        .enqueue("test_job", json!({"label": "flaky", "fail_times": 2}))
        .await;

    let runs = app.finished_runs(&id, Duration::from_secs(15)).await;
    let statuses: Vec<&str> = runs.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["failed", "failed", "succeeded"]);
    assert_eq!(
        runs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let gap1 = runs[1].started_at - runs[0].started_at;
    let gap2 = runs[2].started_at - runs[1].started_at;
    // backoff_base 200 ms: ~200-250 ms, then ~400-500 ms.
    assert!(gap1.num_milliseconds() >= 200, "{gap1}");
    assert!(gap2.num_milliseconds() >= 400, "{gap2}");
    assert!(gap2 > gap1, "delays grow: {gap1} then {gap2}");
    assert!(
        runs[0]
            .error
            .as_deref()
            .unwrap()
            .contains("fails attempt 1")
    );
    assert!(app.dead_error(&id).await.is_none());
}

#[tokio::test]
async fn an_always_failing_job_is_dead_lettered_after_exactly_max_attempts_and_retry_runs_it_again()
{
    let app = spawn_app().await;
    // max_attempts for test_job is 3 in the test settings; it fails its first 4 attempts.
    let id = app
        .enqueue("test_job", json!({"label": "stubborn", "fail_times": 4}))
        .await;

    let runs = app.finished_runs(&id, Duration::from_secs(15)).await;

    assert_eq!(
        runs.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(),
        ["failed", "failed", "dead"]
    );
    let (attempts, error) = app.dead_error(&id).await.expect("in dead_jobs");
    assert_eq!(attempts, 3);
    assert!(error.contains("gave up after 3 failed attempts"), "{error}");
    assert!(error.contains("fails attempt 3"), "{error}");

    let listed = process::command(&app.settings, &["jobs", "failed", "--queue", "test_job"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&id));

    process::cli_ok(&app.settings, &["jobs", "retry", &id]);

    // Attempt 4 fails (fail_times 4), attempt 5 succeeds; the earlier runs are kept.
    let runs = crate::helpers::eventually(
        Duration::from_secs(15),
        "the retried job to succeed",
        || async {
            let runs = app.runs(&id).await;
            (runs.last().map(|r| r.status.as_str()) == Some("succeeded")).then_some(runs)
        },
    )
    .await;
    assert_eq!(
        runs.iter()
            .map(|r| (r.attempt, r.status.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, "failed"),
            (2, "failed"),
            (3, "dead"),
            (4, "failed"),
            (5, "succeeded")
        ]
    );
    assert!(
        app.dead_error(&id).await.is_none(),
        "retry takes it out of the dead-letter store"
    );
}

#[tokio::test]
async fn a_permanent_error_is_dead_lettered_after_one_attempt() {
    let app = spawn_app().await;

    let id = app
        .enqueue("test_job", json!({"label": "refused", "permanent": true}))
        .await;

    let runs = app.finished_runs(&id, Duration::from_secs(10)).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, "dead");
    let (attempts, error) = app.dead_error(&id).await.unwrap();
    assert_eq!(attempts, 1);
    assert!(error.contains("refuses permanently"), "{error}");
}

#[tokio::test]
async fn a_panicking_job_counts_as_a_failed_attempt_and_the_worker_carries_on() {
    let app = spawn_app().await;

    let bad = app
        .enqueue("test_job", json!({"label": "boom", "panic": true}))
        .await;
    let good = app.enqueue("noop", json!({})).await;

    let runs = app.finished_runs(&bad, Duration::from_secs(15)).await;
    assert_eq!(runs.len(), 3);
    assert!(
        runs[0]
            .error
            .as_deref()
            .unwrap()
            .contains("panicked: test_job boom panics")
    );
    assert_eq!(
        app.finished_runs(&good, Duration::from_secs(5)).await[0].status,
        "succeeded"
    );
}

#[tokio::test]
async fn an_attempt_over_its_timeout_is_stopped_and_retried() {
    let app = crate::helpers::spawn_app_with(|s| {
        let q = s.queues.get_mut("test_job").unwrap();
        q.timeout = Some(Duration::from_millis(300));
        q.max_attempts = Some(2);
    })
    .await;

    let id = app
        .enqueue("test_job", json!({"label": "slow", "sleep_ms": 5000}))
        .await;

    let runs = app.finished_runs(&id, Duration::from_secs(10)).await;
    assert_eq!(
        runs.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(),
        ["failed", "dead"]
    );
    assert!(
        runs[0]
            .error
            .as_deref()
            .unwrap()
            .contains("timed out after 300ms")
    );
}

#[tokio::test]
async fn purge_deletes_dead_jobs_only_with_yes() {
    let app = spawn_app().await;
    let id = app
        .enqueue("test_job", json!({"label": "refused", "permanent": true}))
        .await;
    app.finished_runs(&id, Duration::from_secs(10)).await;

    let refused = process::command(&app.settings, &["jobs", "purge", "--failed"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(app.dead_error(&id).await.is_some());

    let done = process::command(&app.settings, &["jobs", "purge", "--failed", "--yes"])
        .output()
        .unwrap();
    assert!(done.status.success());
    assert!(app.dead_error(&id).await.is_none());
}

#[tokio::test]
async fn retry_all_requeues_every_dead_job_of_a_queue() {
    let app = spawn_app().await;
    let a = app
        .enqueue("test_job", json!({"label": "a", "permanent": true}))
        .await;
    let b = app
        .enqueue("test_job", json!({"label": "b", "permanent": true}))
        .await;
    app.finished_runs(&a, Duration::from_secs(10)).await;
    app.finished_runs(&b, Duration::from_secs(10)).await;

    let out = process::cli_ok(
        &app.settings,
        &["jobs", "retry", "--all", "--queue", "test_job"],
    );
    assert!(out.contains("2 job(s) re-queued"));
    for id in [&a, &b] {
        // Each runs again (attempt 2) and, refusing again, is dead-lettered again.
        let runs =
            crate::helpers::eventually(Duration::from_secs(10), "the second attempt", || async {
                let runs = app.runs(id).await;
                (runs.len() == 2 && runs[1].status == "dead").then_some(runs)
            })
            .await;
        assert_eq!(runs[1].attempt, 2);
    }
}
