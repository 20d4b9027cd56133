use std::time::Duration;

use serde_json::json;

use crate::helpers::{process, spawn_app};

#[tokio::test]
async fn a_job_enqueued_over_http_runs_and_is_recorded_in_job_runs() {
    let app = spawn_app().await;

    let r = app.post_job("noop", &json!({"note": "hi"}), None).await;

    assert_eq!(r.status(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["duplicate"], false);
    assert_eq!(v["job_type"], "noop");
    let id = v["job_id"].as_str().unwrap();
    let runs = app.finished_runs(id, Duration::from_secs(10)).await;
    let mut app = app;
    app.stop().await; // a clean in-process stop after the work is done
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, "succeeded");
    assert_eq!(runs[0].attempt, 1);
    assert!(
        app.ctx.queue.job(id).await.unwrap().is_none(),
        "a finished job leaves redis"
    );
}

#[tokio::test]
async fn a_bad_payload_is_refused_with_400_naming_the_field() {
    let app = spawn_app().await;

    let r = app
        .post_job("test_job", &json!({"label": "x", "sleep_ms": "slow"}), None)
        .await;

    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_request");
    assert_eq!(v["error"]["field"], "sleep_ms");
    let r = app
        .http
        .post(app.url("/api/jobs/noop"))
        .bearer_auth(crate::helpers::app::TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(app.ctx.queue.stats("test_job").await.unwrap().waiting, 0);
}

#[tokio::test]
async fn a_wrong_or_missing_token_gets_401_and_enqueues_nothing() {
    let app = spawn_app().await;

    let wrong = app
        .http
        .post(app.url("/api/jobs/noop"))
        .bearer_auth("nope")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let missing = app
        .http
        .post(app.url("/api/jobs/noop"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();

    assert_eq!(wrong.status(), 401);
    assert_eq!(missing.status(), 401);
    let v: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    let s = app.ctx.queue.stats("noop").await.unwrap();
    assert_eq!(s.waiting + s.scheduled + s.in_flight, 0);
}

#[tokio::test]
async fn unknown_job_types_get_404_and_oversized_bodies_413() {
    let app = spawn_app().await;

    let unknown = app.post_job("billing_v9", &json!({}), None).await;
    let big = app
        .http
        .post(app.url("/api/jobs/noop"))
        .bearer_auth(crate::helpers::app::TOKEN)
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    let route = app.http.get(app.url("/nowhere")).send().await.unwrap();

    assert_eq!(unknown.status(), 404);
    assert_eq!(big.status(), 413);
    assert_eq!(route.status(), 404);
    let v: serde_json::Value = route.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
}

#[tokio::test]
async fn the_same_idempotency_key_twice_makes_one_job_and_says_so() {
    let app = spawn_app().await;

    let first = app.post_job("noop", &json!({}), Some("order-42")).await;
    let second = app.post_job("noop", &json!({}), Some("order-42")).await;

    assert_eq!(first.status(), 202);
    assert_eq!(second.status(), 200);
    let a: serde_json::Value = first.json().await.unwrap();
    let b: serde_json::Value = second.json().await.unwrap();
    assert_eq!(a["job_id"], b["job_id"]);
    assert_eq!(b["duplicate"], true);
    let id = a["job_id"].as_str().unwrap();
    app.finished_runs(id, Duration::from_secs(10)).await;
    // Still a duplicate after the first job finished (within the retention window).
    let third = app.post_job("noop", &json!({}), Some("order-42")).await;
    assert_eq!(third.status(), 200);
    assert_eq!(app.scalar("SELECT count(*) FROM job_runs").await, 1);
}

#[tokio::test]
async fn test_jobs_are_refused_unless_the_config_allows_them() {
    let app = crate::helpers::spawn_app_with(|s| s.worker.allow_test_jobs = false).await;

    let r = app.post_job("test_job", &json!({"label": "x"}), None).await;

    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn a_job_enqueued_with_the_cli_runs() {
    let app = spawn_app().await;

    let id = process::cli_ok(
        &app.settings,
        &["enqueue", "test_job", r#"{"label": "from-cli"}"#],
    )
    .trim()
    .to_string();
    let runs = app.finished_runs(&id, Duration::from_secs(10)).await;
    assert_eq!(runs.last().unwrap().status, "succeeded");

    let bad = process::command(&app.settings, &["enqueue", "test_job", r#"{"label": 1}"#])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("label"));
}
