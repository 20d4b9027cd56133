use std::time::Duration;

use serde_json::json;

use crate::helpers::{eventually, process::Daemon, spawn_api_only};

#[tokio::test]
async fn jobs_of_a_sigkilled_worker_run_again_on_the_next_one_and_none_is_lost() {
    // The test app only enqueues; the workers are real child processes.
    let app = spawn_api_only().await;
    let mut first = Daemon::start(&app.settings, &["run", "--no-http", "--queues", "test_job"]);
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            app.enqueue(
                "test_job",
                json!({"label": format!("long-{i}"), "sleep_ms": 2500}),
            )
            .await,
        );
    }

    // Wait until the child process is running some of them (its `running` rows appear).
    eventually(
        Duration::from_secs(15),
        "the child to start jobs",
        || async {
            let n = app
                .scalar("SELECT count(*) FROM job_runs WHERE status = 'running'")
                .await;
            (n >= 1).then_some(n)
        },
    )
    .await;
    first.sigkill();
    let second = Daemon::start(&app.settings, &["run", "--no-http", "--queues", "test_job"]);

    for id in &ids {
        let runs = app.finished_runs(id, Duration::from_secs(40)).await;
        assert_eq!(runs.last().unwrap().status, "succeeded", "{id}: {runs:?}");
        assert_eq!(
            runs.iter().filter(|r| r.status == "succeeded").count(),
            1,
            "{id}: {runs:?}"
        );
    }
    let interrupted = app
        .scalar("SELECT count(*) FROM job_runs WHERE status = 'interrupted'")
        .await;
    assert!(interrupted >= 1, "the killed attempts are recorded");
    let mut c = app.db.connect().await;
    let rows: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT job_id, attempt, error FROM job_runs WHERE status = 'interrupted' ORDER BY job_id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    for (id, attempt, error) in rows {
        assert!(ids.contains(&id));
        assert!(error.contains("stopped heartbeating"), "{error}");
        let runs = app.runs(&id).await;
        let killed = runs.iter().find(|r| r.attempt == attempt).unwrap();
        let rerun = runs
            .iter()
            .find(|r| r.attempt > attempt && r.status == "succeeded")
            .expect("rerun");
        assert_ne!(
            killed.worker, rerun.worker,
            "the rerun happened in the new process"
        );
    }
    drop(second);
}
