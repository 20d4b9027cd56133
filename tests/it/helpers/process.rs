//! The real binary as a child process, for crash, drain and multi-process tests.

use std::{
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use finworker::config::Settings;

use super::db::PASSWORD;

/// Environment variables that make the binary use `s` (its test database and namespace).
pub fn env_for(s: &Settings) -> Vec<(String, String)> {
    let d = |d: Duration| format!("{}ms", d.as_millis());
    let mut env = vec![
        ("FINWORKER__DATABASE__URL", s.database.url.clone()),
        (
            "FINWORKER__DATABASE__DIRECT_URL",
            s.database.direct_url.clone(),
        ),
        ("FINWORKER__DATABASE__PASSWORD", PASSWORD.to_string()),
        ("FINWORKER__REDIS__PREFIX", s.redis.prefix.clone()),
        ("FINWORKER__REDIS__URL", s.redis.url.clone()),
        ("FINWORKER__REDIS__CLUSTER", s.redis.cluster.to_string()),
        (
            "FINWORKER__STORAGE__LOCAL_ROOT",
            s.storage.local_root.display().to_string(),
        ),
        (
            "FINWORKER__UPLOAD__CHUNK_ROWS",
            s.upload.chunk_rows.to_string(),
        ),
        ("FINWORKER__UPLOAD__MAX_ROWS", s.upload.max_rows.to_string()),
        ("FINWORKER__HTTP__BIND", "127.0.0.1:0".to_string()),
        ("FINWORKER__HTTP__API_TOKEN", super::app::TOKEN.to_string()),
        ("FINWORKER__WORKER__ALLOW_TEST_JOBS", "true".to_string()),
        (
            "FINWORKER__WORKER__POLL_INTERVAL",
            d(s.worker.poll_interval),
        ),
        (
            "FINWORKER__WORKER__HEARTBEAT_INTERVAL",
            d(s.worker.heartbeat_interval),
        ),
        (
            "FINWORKER__WORKER__MISSED_HEARTBEATS",
            s.worker.missed_heartbeats.to_string(),
        ),
        (
            "FINWORKER__WORKER__DRAIN_TIMEOUT",
            d(s.worker.drain_timeout),
        ),
        (
            "FINWORKER__WORKER__AUDIT_RUNNING_AFTER",
            d(s.worker.audit_running_after),
        ),
        (
            "FINWORKER__QUEUES__TEST_JOB__CONCURRENCY",
            s.queue("test_job").concurrency.to_string(),
        ),
        (
            "FINWORKER__QUEUES__TEST_JOB__MAX_ATTEMPTS",
            s.queue("test_job").max_attempts.to_string(),
        ),
        (
            "FINWORKER__QUEUES__TEST_JOB__BACKOFF_BASE",
            d(s.queue("test_job").backoff_base),
        ),
        ("FINWORKER__LOG__FORMAT", "json".to_string()),
        ("FINWORKER__SWEEPER__ENABLED", s.sweeper.enabled.to_string()),
        ("FINWORKER__VOP__ENABLED", s.vop.enabled.to_string()),
        ("FINWORKER__VOP__BASE_URL", s.vop.base_url.clone()),
        ("FINWORKER__VOP__RATE_LIMIT", s.vop.rate_limit.to_string()),
        ("FINWORKER__VOP__IN_FLIGHT", s.vop.in_flight.to_string()),
        ("FINWORKER__VOP__REQUEST_TIMEOUT", d(s.vop.request_timeout)),
        ("FINWORKER__VOP__RETRY_BACKOFF", d(s.vop.retry_backoff)),
        (
            "FINWORKER__REPORTS__LINK_SECRET",
            super::app::LINK_SECRET.to_string(),
        ),
        (
            "FINWORKER__PRIVACY__IBAN_KEY",
            super::app::IBAN_KEY.to_string(),
        ),
    ];
    env.push((
        "RUST_LOG",
        std::env::var("DAEMON_LOG").unwrap_or_else(|_| "info".to_string()),
    ));
    let mut env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let mut add = |k: &str, v: String| env.push((format!("FINWORKER__{k}"), v));
    add("SWEEPER__INTERVAL", d(s.sweeper.interval));
    add("SWEEPER__STALE_AFTER", d(s.sweeper.stale_after));
    let l = &s.lifecycle;
    add(
        "LIFECYCLE__RECONCILE_SCHEDULE",
        l.reconcile_schedule.clone(),
    );
    add(
        "LIFECYCLE__LEDGER_SYNC_SCHEDULE",
        l.ledger_sync_schedule.clone(),
    );
    add("LIFECYCLE__SWEEP_SCHEDULE", l.sweep_schedule.clone());
    add(
        "LIFECYCLE__BIC_BLACKLIST_SCHEDULE",
        l.bic_blacklist_schedule.clone(),
    );
    let g = &s.gateway;
    add("GATEWAY__REQUEST_TIMEOUT", d(g.request_timeout));
    add("GATEWAY__CONNECT_TIMEOUT", d(g.connect_timeout));
    add("GATEWAY__RESEND_AFTER", d(g.resend_after));
    add("GATEWAY__RECONCILE_INTERVAL", d(g.reconcile_interval));
    add(
        "GATEWAY__RECONCILE_MAX_INTERVAL",
        d(g.reconcile_max_interval),
    );
    for (name, a) in &g.accounts {
        let k = |f: &str| format!("GATEWAY__ACCOUNTS__{}__{f}", name.to_uppercase());
        add(&k("ENDPOINT"), a.endpoint.clone());
        add(&k("TERMINAL_TOKEN"), a.terminal_token.clone());
        add(&k("USERNAME"), a.username.clone());
        if let Some(p) = &a.password {
            add(
                &k("PASSWORD"),
                secrecy::ExposeSecret::expose_secret(p).to_string(),
            );
        }
        add(&k("RATE_LIMIT"), a.rate_limit.to_string());
        add(
            &k("BREAKER_MIN_REQUESTS"),
            a.breaker_min_requests.to_string(),
        );
        add(&k("BREAKER_WINDOW"), d(a.breaker_window));
        add(&k("BREAKER_OPEN_FOR"), d(a.breaker_open_for));
        add(&k("BREAKER_OPEN_MAX"), d(a.breaker_open_max));
    }
    let b = &s.billing;
    add("BILLING__CLAIM_SIZE", b.claim_size.to_string());
    add("BILLING__IN_FLIGHT", b.in_flight.to_string());
    add("BILLING__BATCH_JOBS", b.batch_jobs.to_string());
    add("BILLING__SLICE", d(b.slice));
    add("BILLING__RECURRING", b.recurring.to_string());
    add("BILLING__RECURRING_INTERVAL", d(b.recurring_interval));
    env
}

pub fn command(s: &Settings, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_finworker"));
    c.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("FINWORKER_ENV")
        .envs(env_for(s));
    c
}

/// A running daemon; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub log: std::path::PathBuf,
}

impl Daemon {
    pub fn start(s: &Settings, args: &[&str]) -> Self {
        Self::start_in(s, args, Path::new(env!("CARGO_MANIFEST_DIR")), &[])
    }

    pub fn start_in(s: &Settings, args: &[&str], dir: &Path, extra_env: &[(&str, &str)]) -> Self {
        let log =
            std::env::temp_dir().join(format!("fw-daemon-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).unwrap();
        let mut c = command(s, args);
        c.current_dir(dir).stdout(Stdio::null()).stderr(file);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        let child = c.spawn().expect("start finworker");
        Self { child, log }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&self) {
        kill(self.pid(), Signal::SIGTERM).unwrap();
    }

    pub fn wait_timeout(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {limit:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// [`cli_ok`] off the test's runtime (a sandbox the command calls may run on that runtime).
pub async fn cli_async(s: &Settings, args: &[&str]) -> String {
    let settings = s.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli_ok(&settings, &args)
    })
    .await
    .unwrap()
}

/// A CLI command run to completion off the test's runtime, succeeding or not:
/// (succeeded, stdout, stderr).
pub async fn cli_result_async(s: &Settings, args: &[&str]) -> (bool, String, String) {
    let settings = s.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = command(&settings, &args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// Runs a CLI command to completion, asserts it succeeded (showing stderr if not), returns stdout.
pub fn cli_ok(s: &Settings, args: &[&str]) -> String {
    let out = command(s, args).output().unwrap();
    assert!(
        out.status.success(),
        "finworker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
