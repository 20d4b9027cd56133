use std::time::Duration;

use finworker::startup::Roles;
use serde_json::json;

use crate::helpers::{
    app::{start, test_settings},
    chaos::Chaos,
    db::TestDb,
    eventually,
};

#[tokio::test]
async fn readyz_answers_503_naming_redis_while_it_is_unreachable_and_the_worker_recovers() {
    let db = TestDb::create().await;
    let prefix = format!("fwt:{}", uuid::Uuid::new_v4().simple());
    let mut settings = test_settings(&db, &prefix);
    let chaos = Chaos::start("127.0.0.1:6379".parse().unwrap()).await;
    settings.redis.url = format!("redis://{}", chaos.addr);
    settings.redis.response_timeout = Duration::from_secs(1);
    settings.redis.connection_timeout = Duration::from_secs(1);
    let app = start(db, settings, Roles::default()).await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    chaos.break_networking();
    let body: serde_json::Value = eventually(Duration::from_secs(10), "readyz to fail", || async {
        let r = app.http.get(app.url("/readyz")).send().await.unwrap();
        if r.status() == 503 {
            Some(r.json().await.unwrap())
        } else {
            None
        }
    })
    .await;
    assert!(
        body["checks"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("unreachable"),
        "{body}"
    );
    assert_eq!(body["checks"]["postgres"], "ok");
    let refused = app
        .post_job("noop", &json!({}), Some("during-outage"))
        .await;
    assert_eq!(refused.status(), 503, "producers are told to retry");
    assert!(refused.headers().contains_key("retry-after"));
    // A job enqueued straight into Redis (not through the broken proxy) during the outage.
    let direct = {
        let mut s = app.settings.clone();
        s.redis.url = "redis://127.0.0.1:6379".into();
        finworker::startup::build_context(s).await.unwrap()
    };
    let pushed = direct
        .enqueue_json(
            "noop",
            &serde_json::to_vec(&json!({})).unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        app.runs(&pushed.id.to_string()).await.is_empty(),
        "nothing runs while redis is cut off"
    );

    chaos.restore();

    let runs = app
        .finished_runs(&pushed.id.to_string(), Duration::from_secs(30))
        .await;
    assert_eq!(runs[0].status, "succeeded");
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn metrics_export_job_counts_durations_and_queue_depths() {
    let app = crate::helpers::spawn_app().await;
    let id = app.enqueue("noop", json!({})).await;
    app.finished_runs(&id, Duration::from_secs(10)).await;
    let dead = app
        .enqueue("test_job", json!({"label": "x", "permanent": true}))
        .await;
    app.finished_runs(&dead, Duration::from_secs(10)).await;

    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    for needle in [
        "finworker_jobs_started_total{job_type=\"noop\"} 1",
        "finworker_jobs_succeeded_total{job_type=\"noop\"} 1",
        "finworker_jobs_dead_total{job_type=\"test_job\"} 1",
        "finworker_job_duration_seconds_count{job_type=\"noop\"} 1",
        "finworker_queue_depth{queue=\"noop\",state=\"waiting\"} 0",
        "finworker_dead_letter_size{queue=\"test_job\"} 1",
        "finworker_jobs_in_flight{job_type=\"noop\"} 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}
