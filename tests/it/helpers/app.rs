//! `spawn_app`: the real application (workers + HTTP on port 0) against a fresh database
//! through PgBouncer and a fresh Redis namespace.

use std::{net::SocketAddr, path::Path, time::Duration};

use finworker::{
    config::{QueueOverrides, Settings},
    context::AppContext,
    startup::{App, Roles},
};
use secrecy::SecretString;
use sqlx::Row;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::db::{PASSWORD, TestDb};

pub const TOKEN: &str = "test-token-0123456789";
pub const OPS_TOKEN: &str = "test-ops-token-0123456789";
pub const METRICS_TOKEN: &str = "test-metrics-token-0123456789";
pub const LINK_SECRET: &str = "test-link-secret-0123456789-abcdefghij";
pub const IBAN_KEY: &str = "test-iban-key-0123456789-abcdefghijklmn";

/// Settings for one test: its database, its Redis prefix, fast timings.
pub fn test_settings(db: &TestDb, prefix: &str) -> Settings {
    let env = vec![(
        "FINWORKER__DATABASE__PASSWORD".to_string(),
        PASSWORD.to_string(),
    )];
    let mut s =
        Settings::load_from(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config"), &env).unwrap();
    s.database.url = db.pooled_url();
    s.database.direct_url = db.direct_url();
    s.database.max_connections = 8;
    s.redis.prefix = prefix.to_string();
    s.storage.local_root = db.storage_root();
    // Spreadsheets are read by `finworker sheet-reader`; the test binary is not finworker.
    s.upload.reader_binary = env!("CARGO_BIN_EXE_finworker").into();
    s.http.bind = "127.0.0.1:0".into();
    s.http.api_token = Some(SecretString::from(TOKEN));
    s.http.metrics_token = Some(SecretString::from(METRICS_TOKEN));
    s.http.ops_token = Some(SecretString::from(OPS_TOKEN));
    s.worker.allow_test_jobs = true;
    // The built-in sweeper tick adds `sweeper` jobs every interval: tests that count jobs
    // would count them too. Tests of the sweeper turn it on.
    s.sweeper.enabled = false;
    // Likewise the lifecycle's schedules (reconciliation, ledger sync, sweeps, BIC rule).
    s.lifecycle.reconcile_schedule.clear();
    s.lifecycle.ledger_sync_schedule.clear();
    s.lifecycle.sweep_schedule.clear();
    s.lifecycle.bic_blacklist_schedule.clear();
    s.retention.schedule.clear();
    s.worker.poll_interval = Duration::from_millis(50);
    s.worker.heartbeat_interval = Duration::from_millis(500);
    s.worker.missed_heartbeats = 3;
    s.worker.drain_timeout = Duration::from_secs(10);
    s.worker.audit_running_after = Duration::from_millis(200);
    // Verification needs a provider: tests that want it start a sandbox and turn it on.
    s.vop.enabled = false;
    s.vop.request_timeout = Duration::from_secs(2);
    s.vop.retry_backoff = Duration::from_millis(50);
    s.reports.link_secret = Some(SecretString::from(LINK_SECRET));
    s.privacy.iban_key = Some(SecretString::from(IBAN_KEY));
    s.queues.insert(
        "test_job".into(),
        QueueOverrides {
            max_attempts: Some(3),
            backoff_base: Some(Duration::from_millis(200)),
            backoff_max: Some(Duration::from_secs(5)),
            ..Default::default()
        },
    );
    s
}

pub struct TestApp {
    pub ctx: AppContext,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub db: TestDb,
    pub settings: Settings,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_roles(Roles::default(), adjust).await
}

/// The HTTP API without workers: for tests whose workers are child processes.
pub async fn spawn_api_only() -> TestApp {
    spawn_app_roles(
        Roles {
            workers: false,
            ..Roles::default()
        },
        |_| {},
    )
    .await
}

pub async fn spawn_app_roles(roles: Roles, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let db = TestDb::create().await;
    let prefix = format!("fwt:{}", uuid::Uuid::new_v4().simple());
    let mut settings = test_settings(&db, &prefix);
    adjust(&mut settings);
    start(db, settings, roles).await
}

/// Builds and starts the app with these settings and roles.
pub async fn start(db: TestDb, settings: Settings, roles: Roles) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        finworker::telemetry::init(&settings.log);
    }
    let app = App::build(settings.clone(), roles)
        .await
        .expect("app builds");
    let ctx = app.ctx.clone();
    let addr = app
        .http_addr()
        .unwrap_or_else(|| "127.0.0.1:9".parse().unwrap());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run(shutdown.clone()));
    TestApp {
        ctx,
        addr,
        http: reqwest::Client::new(),
        db,
        settings,
        shutdown,
        handle: Some(handle),
    }
}

#[derive(Debug, Clone)]
pub struct Run {
    pub attempt: i32,
    pub status: String,
    pub error: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub worker: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post_job(
        &self,
        job_type: &str,
        body: &serde_json::Value,
        key: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url(&format!("/api/jobs/{job_type}")))
            .bearer_auth(TOKEN)
            .json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        req.send().await.unwrap()
    }

    /// GET with the bearer token; the JSON answer.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Enqueues through the HTTP API and returns the job id.
    pub async fn enqueue(&self, job_type: &str, body: serde_json::Value) -> String {
        let r = self.post_job(job_type, &body, None).await;
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        let v: serde_json::Value = r.json().await.unwrap();
        v["job_id"].as_str().unwrap().to_string()
    }

    pub async fn runs(&self, job_id: &str) -> Vec<Run> {
        let mut c = self.db.connect().await;
        sqlx::query("SELECT attempt, status, error, started_at, worker FROM job_runs WHERE job_id = $1 ORDER BY attempt")
            .bind(job_id)
            .fetch_all(&mut c)
            .await
            .unwrap()
            .into_iter()
            .map(|r| Run {
                attempt: r.get(0),
                status: r.get(1),
                error: r.get(2),
                started_at: r.get(3),
                worker: r.get(4),
            })
            .collect()
    }

    /// Waits until the job's last run has a final status (succeeded or dead).
    pub async fn finished_runs(&self, job_id: &str, limit: Duration) -> Vec<Run> {
        super::eventually(limit, &format!("job {job_id} to finish"), || async {
            let runs = self.runs(job_id).await;
            runs.last()
                .is_some_and(|r| r.status == "succeeded" || r.status == "dead")
                .then_some(runs)
        })
        .await
    }

    pub async fn dead_error(&self, job_id: &str) -> Option<(i32, String)> {
        let mut c = self.db.connect().await;
        sqlx::query_as("SELECT attempts, last_error FROM dead_jobs WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(&mut c)
            .await
            .unwrap()
    }

    /// A counter's value as this process's workers counted it so far (`series` with its
    /// labels, e.g. `finworker_x_total{outcome="a"}`); `None` when it is not exported.
    pub fn counter(&self, series: &str) -> Option<u64> {
        let prefix = format!("{series} ");
        self.ctx
            .metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
    }

    /// `GET /metrics` with the metrics token: the exposition text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        let mut c = self.db.connect().await;
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    }

    /// Cancels and waits for the app to stop (drain included).
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        delete_namespace_of(self.settings.redis.clone());
    }
}

/// Deletes every Redis key of the namespace these settings name (standalone or cluster).
pub fn delete_namespace_of(redis: finworker::config::RedisSettings) {
    super::block_on_own_thread(move || async move {
        if let Ok(e) = finworker::queue::engine::Engine::connect(&redis).await {
            let _ = e.delete_namespace().await;
        }
    });
}

/// Deletes every Redis key under `prefix`, from a thread of its own (Drop cannot await).
pub fn delete_namespace(prefix: String) {
    super::block_on_own_thread(move || async move {
        let mut s = Settings::load_from(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config"), &[])
            .unwrap();
        s.redis.prefix = prefix;
        if let Ok(e) = finworker::queue::engine::Engine::connect(&s.redis).await {
            let _ = e.delete_namespace().await;
        }
    });
}
