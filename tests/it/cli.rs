use std::time::Duration;

use finworker::context::EnqueueOptions;
use serde_json::json;

use crate::helpers::{process, spawn_api_only, spawn_app};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn config_check_redacts_secrets_warns_about_risks_and_names_bad_keys() {
    let app = spawn_api_only().await;

    let ok = process::command(&app.settings, &["config", "check"])
        .env("FINWORKER__QUEUES__NOOP__TIMEOUT", "10m")
        .output()
        .unwrap();
    let bad = process::command(&app.settings, &["config", "check"])
        .env("FINWORKER__WORKER__HEARTBEAT_INTERVALL", "1s")
        .output()
        .unwrap();

    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let out = text(&ok.stdout);
    assert!(out.contains("api_token = \"[redacted]\""), "{out}");
    assert!(!out.contains(crate::helpers::app::TOKEN));
    assert!(
        text(&ok.stderr).contains("queues.noop.timeout (10m) is longer than worker.drain_timeout")
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("heartbeat_intervall"),
        "{}",
        text(&bad.stderr)
    );
}

#[tokio::test]
async fn jobs_show_tells_the_whole_story_of_a_job() {
    let app = spawn_app().await;
    let id = app
        .enqueue("test_job", json!({"label": "story", "fail_times": 1}))
        .await;
    app.finished_runs(&id, Duration::from_secs(10)).await;

    let out = process::command(&app.settings, &["jobs", "show", &id])
        .output()
        .unwrap();
    let missing = process::command(&app.settings, &["jobs", "show", "no-such-job"])
        .output()
        .unwrap();

    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("#1 failed"), "{s}");
    assert!(s.contains("fails attempt 1"), "{s}");
    assert!(s.contains("#2 succeeded"), "{s}");
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("no job no-such-job"));
}

#[tokio::test]
async fn queues_reports_depth_per_queue() {
    let app = spawn_api_only().await;
    for _ in 0..3 {
        app.ctx
            .enqueue_json("noop", b"{}", EnqueueOptions::default())
            .await
            .unwrap();
    }
    app.ctx
        .enqueue_json(
            "noop",
            b"{}",
            EnqueueOptions {
                delay: Duration::from_secs(600),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let out = process::command(&app.settings, &["queues"])
        .output()
        .unwrap();

    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let noop: Vec<&str> = s
        .lines()
        .find(|l| l.starts_with("noop "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&noop[1..5], ["3", "1", "0", "0"], "{s}");
    assert_ne!(noop[5], "-", "an oldest-waiting age is shown: {s}");
}

#[tokio::test]
async fn config_check_and_startup_warn_loudly_about_a_redis_that_can_lose_jobs() {
    let app = spawn_api_only().await;
    // A Redis of our own with what production must not have: no AOF, an eviction policy.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "allkeys-lru",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    crate::helpers::eventually(
        std::time::Duration::from_secs(10),
        "redis to start",
        || async { std::net::TcpStream::connect(("127.0.0.1", port)).ok() },
    )
    .await;

    let out = process::command(&app.settings, &["config", "check"])
        .env("FINWORKER__REDIS__URL", &url)
        .output()
        .unwrap();

    let _ = redis.kill();
    let _ = redis.wait();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("no append-only file"), "{err}");
    assert!(err.contains("maxmemory-policy is allkeys-lru"), "{err}");
}

#[tokio::test]
async fn short_or_empty_secrets_are_refused_at_start_naming_the_key() {
    let app = spawn_api_only().await;
    for (var, value, key) in [
        ("FINWORKER__REPORTS__LINK_SECRET", "", "reports.link_secret"),
        (
            "FINWORKER__REPORTS__LINK_SECRET",
            "only-31-bytes-of-signing-key-xx",
            "reports.link_secret",
        ),
        ("FINWORKER__HTTP__API_TOKEN", "change-me", "http.api_token"),
        ("FINWORKER__HTTP__OPS_TOKEN", "short", "http.ops_token"),
        (
            "FINWORKER__HTTP__METRICS_TOKEN",
            "scrape",
            "http.metrics_token",
        ),
        ("FINWORKER__VOP__API_KEY", "", "vop.api_key"),
    ] {
        let out = process::command(&app.settings, &["config", "check"])
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value:?} accepted");
        assert!(text(&out.stderr).contains(key), "{}", text(&out.stderr));
    }
    // 32 bytes is enough.
    let out = process::command(&app.settings, &["config", "check"])
        .env("FINWORKER__REPORTS__LINK_SECRET", "x".repeat(32))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}
