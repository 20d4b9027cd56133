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
    let shown = body.to_string();
    assert!(
        !shown.contains(&chaos.addr.to_string()) && !shown.contains("127.0.0.1"),
        "readyz names the dependency, never its host or driver error: {shown}"
    );
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

    let text = app.metrics_text().await;

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

#[tokio::test]
async fn metrics_need_their_own_token_and_a_scrape_flood_reads_the_gauges_once() {
    use crate::helpers::app::{METRICS_TOKEN, TOKEN};
    let app = crate::helpers::spawn_app_with(|s| {
        s.http.metrics_refresh = Duration::from_secs(30);
    })
    .await;
    let get = |token: Option<&'static str>| {
        let mut r = app.http.get(app.url("/metrics"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(get(None).await.unwrap().status(), 401);
    assert_eq!(
        get(Some(TOKEN)).await.unwrap().status(),
        401,
        "the producers' token is not enough"
    );

    // 300 concurrent scrapes, while a job runs: the gauges are read once, the job completes.
    let id = app
        .enqueue("test_job", json!({"label": "busy", "sleep_ms": 300}))
        .await;
    let scrapes: Vec<_> = (0..300).map(|_| get(Some(METRICS_TOKEN))).collect();
    let answers = futures::future::join_all(scrapes).await;
    assert!(answers.iter().all(|r| r.as_ref().unwrap().status() == 200));
    assert_eq!(
        app.finished_runs(&id, Duration::from_secs(10)).await[0].status,
        "succeeded"
    );
    let text = get(Some(METRICS_TOKEN))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("finworker_metrics_gauge_refreshes_total 1\n"),
        "{}",
        text.lines()
            .filter(|l| l.contains("refreshes"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Without a metrics token configured, /metrics is off.
    let off = crate::helpers::spawn_app_with(|s| s.http.metrics_token = None).await;
    let r = off
        .http
        .get(off.url("/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn every_request_gets_one_access_log_line_without_its_query_and_excess_requests_wait() {
    let app = crate::helpers::spawn_api_only().await;
    let mut daemon = crate::helpers::process::Daemon::start_in(
        &app.settings,
        &["run", "--queues", "noop"],
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        &[("FINWORKER__HTTP__MAX_CONCURRENT_REQUESTS", "2")],
    );
    let addr: String = eventually(Duration::from_secs(15), "the daemon to listen", || async {
        daemon.log_text().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == "http listening" || v["message"] == "http listening")
                .then(|| v.to_string())
        })
    })
    .await;
    let port: String = addr
        .split("127.0.0.1:")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let secret = "deadbeefsignaturethatmustnotbelogged";
    let r = http
        .get(format!(
            "{base}/reports/{}/download?expires=1&signature={secret}",
            uuid::Uuid::nil()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // 20 at once against a limit of 2: they queue, none is refused.
    let many: Vec<_> = (0..20)
        .map(|_| http.get(format!("{base}/healthz")).send())
        .collect();
    for r in futures::future::join_all(many).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let line = eventually(Duration::from_secs(10), "the access-log line", || async {
        daemon
            .log_text()
            .lines()
            .find(|l| l.contains("finworker::access") && l.contains("/download"))
            .map(str::to_string)
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let f = if v["fields"].is_object() {
        &v["fields"]
    } else {
        &v
    };
    assert_eq!(f["method"], "GET", "{line}");
    assert_eq!(
        f["path"],
        format!("/reports/{}/download", uuid::Uuid::nil()),
        "{line}"
    );
    assert_eq!(f["status"], 403, "{line}");
    assert!(f["duration_ms"].as_f64().is_some(), "{line}");
    let healthz = daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("finworker::access") && l.contains("/healthz"))
        .count();
    assert_eq!(healthz, 20);
    assert!(
        !daemon.log_text().contains(secret),
        "the query never reaches the log"
    );
    daemon.sigterm();
    daemon.wait_timeout(Duration::from_secs(20));
}
