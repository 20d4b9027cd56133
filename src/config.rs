//! One typed configuration: embedded `config/default.toml` → `config/$FINWORKER_ENV.toml` →
//! `FINWORKER__SECTION__KEY` environment variables → [`Settings::validate`].
//!
//! Unknown keys fail at start (`deny_unknown_fields`), naming the key. Secrets are
//! [`SecretString`]s, accepted from the environment only, and print as `[redacted]`.

use std::{collections::BTreeMap, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Job types that resume where they stopped when a deploy cuts them short (a split skips
/// the chunks it already staged), so a timeout above the drain deadline costs nothing.
pub const RESUMABLE_QUEUES: &[&str] = &["upload"];

/// The defaults, compiled in so the binary runs with no file beside it.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "FINWORKER__";

/// Keys that may only come from the environment.
pub const SECRET_KEYS: &[&str] = &[
    "redis.password",
    "database.password",
    "http.api_token",
    "storage.s3.secret_access_key",
    "vop.api_key",
    "reports.link_secret",
    "privacy.iban_key",
];

/// Errors while loading or checking configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A layer could not be read or a value has the wrong shape (names the key).
    #[error("configuration: {0}")]
    Load(Box<figment::Error>),
    /// A value is well-formed but not acceptable.
    #[error("configuration key `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `worker.drain_timeout`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        Self::Load(Box::new(e))
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Logging.
    pub log: LogSettings,
    /// Redis (the queue).
    pub redis: RedisSettings,
    /// Postgres (through PgBouncer at run time).
    pub database: DatabaseSettings,
    /// The HTTP receiver.
    pub http: HttpSettings,
    /// Worker runtime behaviour shared by all queues.
    pub worker: WorkerSettings,
    /// Defaults for every queue.
    pub queue_defaults: QueueSettings,
    /// Per-queue overrides, keyed by job type.
    #[serde(default)]
    pub queues: BTreeMap<String, QueueOverrides>,
    /// Periodic jobs.
    #[serde(default)]
    pub cron: Vec<CronEntry>,
    /// Object storage (uploaded files, staged chunks, reports).
    pub storage: StorageSettings,
    /// Upload ingestion.
    pub upload: UploadSettings,
    /// Structural SEPA checks.
    pub validation: ValidationSettings,
    /// Verification of Payee / Bank Account Verification.
    pub vop: VopSettings,
    /// Reports and their download links.
    pub reports: ReportSettings,
    /// The sweeper: re-drives pipelines whose jobs Redis lost.
    pub sweeper: SweeperSettings,
    /// Personal data.
    pub privacy: PrivacySettings,
}

/// Personal data.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySettings {
    /// HMAC key of IBAN lookups (environment only). Needed by workers that import debtors;
    /// changing it makes stored lookup keys unusable (see docs/uploads.md).
    #[serde(default, serialize_with = "redact")]
    pub iban_key: Option<SecretString>,
}

/// The sweeper (Postgres is the record, Redis only the transport).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SweeperSettings {
    /// Run it (a built-in periodic job, once per tick across processes).
    pub enabled: bool,
    /// Time between ticks.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A pipeline whose record has not moved for this long is looked at (longer than any
    /// stage's quiet time: a breaker-deferred verification waits up to vop.breaker_open_max).
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// Uploads looked at per tick.
    pub batch: i64,
}

/// Structural checks of debtors.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSettings {
    /// Highest amount collected, minor units.
    pub max_amount_minor: i64,
    /// Currencies collected.
    pub currencies: Vec<String>,
    /// A debtor without mandate reference and signature date is invalid.
    pub require_mandate: bool,
}

/// VOP/BAV provider access.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VopSettings {
    /// Verify valid debtors after validation; off = validation ends the pipeline.
    pub enabled: bool,
    /// Provider module (`epc`: the EPC-VOP-shaped HTTP API the sandbox speaks).
    pub provider: String,
    /// Provider base URL.
    pub base_url: String,
    /// Provider API key (environment only).
    #[serde(default, serialize_with = "redact")]
    pub api_key: Option<SecretString>,
    /// Requests per second to the provider, shared by every worker process.
    pub rate_limit: u32,
    /// Per-request deadline.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Attempts per request on transport errors, timeouts, 5xx and 429.
    pub request_attempts: u32,
    /// First delay between attempts (doubles).
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Requests in flight per `vop` job.
    pub in_flight: usize,
    /// A `vop` job works this long, then continues in a fresh job.
    #[serde(with = "humantime_serde")]
    pub slice: Duration,
    /// Breaker opens when the success rate falls below this (0..1).
    pub breaker_min_success_rate: f64,
    /// ... with at least this many requests in the window.
    pub breaker_min_requests: u32,
    /// ... over this window.
    #[serde(with = "humantime_serde")]
    pub breaker_window: Duration,
    /// First open period (doubles on each failed probe, up to breaker_open_max).
    #[serde(with = "humantime_serde")]
    pub breaker_open_for: Duration,
    /// Longest open period.
    #[serde(with = "humantime_serde")]
    pub breaker_open_max: Duration,
    /// How long a stored answer is reused for the same IBAN and name.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Times a chunk is put off (breaker open, provider down) before its remaining debtors
    /// are recorded as errors.
    pub max_deferrals: u32,
}

/// Reports.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSettings {
    /// HMAC key of download links (environment only).
    #[serde(default, serialize_with = "redact")]
    pub link_secret: Option<SecretString>,
    /// How long a download link works.
    #[serde(with = "humantime_serde")]
    pub link_ttl: Duration,
    /// Base URL finance staff reach the HTTP receiver at (for printed links).
    pub public_url: String,
    /// Make a VOP report (XLSX) when an upload's verification ends.
    pub after_vop: bool,
}

/// Object storage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// `local` or `s3`.
    pub backend: StorageBackend,
    /// Folder of the local backend.
    pub local_root: std::path::PathBuf,
    /// The S3 backend.
    pub s3: S3Settings,
}

/// Which object store.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// A local folder.
    Local,
    /// The S3 protocol.
    S3,
}

/// S3-protocol storage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Bucket.
    pub bucket: String,
    /// Region.
    pub region: String,
    /// Endpoint URL; empty for AWS.
    pub endpoint: String,
    /// Allow plain http.
    pub allow_http: bool,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (environment only).
    #[serde(default, serialize_with = "redact")]
    pub secret_access_key: Option<SecretString>,
}

/// Upload ingestion.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UploadSettings {
    /// Data rows per chunk job.
    pub chunk_rows: u32,
    /// Largest accepted file.
    pub max_bytes: u64,
    /// Most data rows accepted.
    pub max_rows: u64,
    /// Largest total unpacked size of a zip-based spreadsheet.
    pub max_decompressed_bytes: u64,
    /// Longest accepted cell in bytes.
    pub max_field_bytes: usize,
    /// A staged chunk is closed at this many bytes even short of `chunk_rows`.
    pub chunk_max_bytes: usize,
    /// Currency when the file gives none.
    pub default_currency: String,
    /// Spool folder for spreadsheets; empty = system temp.
    pub spool_dir: String,
    /// Address-space limit of the child process that reads a spreadsheet, bytes.
    pub reader_memory: u64,
    /// Time (wall clock and CPU) a spreadsheet reader may take.
    #[serde(with = "humantime_serde")]
    pub reader_timeout: Duration,
    /// Binary run as the spreadsheet reader; empty = this executable (tests point it at
    /// the built `finworker`).
    pub reader_binary: String,
    /// Header aliases per field.
    pub columns: BTreeMap<crate::uploads::Field, Vec<String>>,
}

/// Log output.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `auto`, `json` or `pretty`.
    pub format: LogFormat,
    /// EnvFilter directive.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    Auto,
    /// JSON lines.
    Json,
    /// Human-readable.
    Pretty,
}

/// Redis connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// URL without credentials.
    pub url: String,
    /// AUTH password (environment only).
    #[serde(default, serialize_with = "redact")]
    pub password: Option<SecretString>,
    /// Key namespace.
    pub prefix: String,
    /// Per-command response timeout.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// TCP connect timeout.
    #[serde(with = "humantime_serde")]
    pub connection_timeout: Duration,
}

/// Postgres connections.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Runtime URL (through PgBouncer).
    pub url: String,
    /// Direct URL (migrations).
    pub direct_url: String,
    /// Password for both URLs (environment only).
    #[serde(default, serialize_with = "redact")]
    pub password: Option<SecretString>,
    /// Pool size through PgBouncer.
    pub max_connections: u32,
    /// Wait for a pooled connection.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

/// HTTP receiver.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Listen address.
    pub bind: String,
    /// Per-request deadline.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Body size ceiling.
    pub max_body_bytes: usize,
    /// Bearer token for the enqueue API (environment only).
    #[serde(default, serialize_with = "redact")]
    pub api_token: Option<SecretString>,
    /// Bearer token Prometheus sends to `/metrics` (environment only); without it `/metrics`
    /// answers 403: it is never open to whoever reaches the port.
    #[serde(default, serialize_with = "redact")]
    pub metrics_token: Option<SecretString>,
    /// Queue-depth and dead-letter gauges are read at most this often, whatever the scrape
    /// rate: a scrape flood cannot exhaust the connection pool (and through it starve jobs).
    #[serde(with = "humantime_serde")]
    pub metrics_refresh: Duration,
    /// Requests handled at once; more wait their turn.
    pub max_concurrent_requests: usize,
}

/// Worker runtime.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Liveness renewal period.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Missed heartbeats before a process counts as dead.
    pub missed_heartbeats: u32,
    /// Idle poll period.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Jobs per fetch round trip.
    pub fetch_batch: usize,
    /// Drain deadline on SIGTERM.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Crash redeliveries before a job is dead-lettered as poison.
    pub max_orphans: u32,
    /// Write `job_runs`.
    pub audit: bool,
    /// Outcomes per settle round trip.
    pub settle_batch: usize,
    /// Write `running` rows for executions older than this.
    #[serde(with = "humantime_serde")]
    pub audit_running_after: Duration,
    /// Idempotency-key retention.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// Allow `test_job`.
    pub allow_test_jobs: bool,
    /// Back-pressure threshold per queue.
    pub max_queue_depth: u64,
}

impl WorkerSettings {
    /// How long a process may be silent before its jobs are taken back.
    pub fn lease(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats
    }
}

/// Settings of one queue.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Parallel jobs per process.
    pub concurrency: usize,
    /// Attempts before dead-letter.
    pub max_attempts: u32,
    /// Per-attempt deadline.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// First retry delay.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

/// Optional per-queue overrides of [`QueueSettings`].
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueOverrides {
    /// See [`QueueSettings::concurrency`].
    pub concurrency: Option<usize>,
    /// See [`QueueSettings::max_attempts`].
    pub max_attempts: Option<u32>,
    /// See [`QueueSettings::timeout`].
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// See [`QueueSettings::backoff_base`].
    #[serde(default, with = "humantime_serde")]
    pub backoff_base: Option<Duration>,
    /// See [`QueueSettings::backoff_max`].
    #[serde(default, with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
}

/// One periodic job.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CronEntry {
    /// Unique name; part of each tick's idempotency key.
    pub name: String,
    /// Cron expression with seconds, evaluated in UTC.
    pub schedule: String,
    /// Job type to enqueue.
    pub job_type: String,
    /// Payload of each enqueued job.
    #[serde(default = "empty_object")]
    pub payload: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

fn redact<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("[redacted]"),
        None => s.serialize_none(),
    }
}

impl Settings {
    /// Loads the layers from the process environment and the working directory.
    pub fn load() -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(Path::new("config"), &env)
    }

    /// Loads the layers with an explicit config folder and environment (tests use this).
    pub fn load_from(config_dir: &Path, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let env_name = env
            .iter()
            .find(|(k, _)| k == "FINWORKER_ENV")
            .map(|(_, v)| v.clone());
        let mut files = Figment::new().merge(Toml::string(DEFAULTS));
        if let Some(name) = env_name {
            let path = config_dir.join(format!("{name}.toml"));
            if !path.exists() {
                return Err(ConfigError::Invalid {
                    key: "FINWORKER_ENV".into(),
                    message: format!("no file {}", path.display()),
                });
            }
            files = files.merge(Toml::file_exact(path));
        }
        for key in SECRET_KEYS {
            if files.contains(key) {
                return Err(ConfigError::Invalid {
                    key: (*key).into(),
                    message: format!(
                        "is a secret: set it in the environment ({}), not in a file",
                        env_var_name(key)
                    ),
                });
            }
        }
        // Environment layer, built from the given pairs (not the process environment) so
        // tests stay hermetic: FINWORKER__WORKER__DRAIN_TIMEOUT -> worker.drain_timeout.
        let mut fig = files;
        for (k, v) in env {
            let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = rest
                .split("__")
                .collect::<Vec<_>>()
                .join(".")
                .to_lowercase();
            // Secrets stay strings even when they look like numbers.
            let value: figment::value::Value = if SECRET_KEYS.contains(&key.as_str()) {
                v.as_str().into()
            } else {
                v.parse().unwrap_or_else(|_| v.as_str().into())
            };
            fig = fig.merge(Serialized::global(key.as_str(), value));
        }
        let settings: Settings = fig.extract()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The effective settings of one queue.
    pub fn queue(&self, job_type: &str) -> QueueSettings {
        let d = &self.queue_defaults;
        match self.queues.get(job_type) {
            None => d.clone(),
            Some(o) => QueueSettings {
                concurrency: o.concurrency.unwrap_or(d.concurrency),
                max_attempts: o.max_attempts.unwrap_or(d.max_attempts),
                timeout: o.timeout.unwrap_or(d.timeout),
                backoff_base: o.backoff_base.unwrap_or(d.backoff_base),
                backoff_max: o.backoff_max.unwrap_or(d.backoff_max),
            },
        }
    }

    /// Checks values that deserialise but make no sense. Job-type names are checked
    /// against the registry by [`crate::startup`], which knows them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message: message.into(),
            })
        };
        if self.redis.prefix.is_empty() || self.redis.prefix.contains(char::is_whitespace) {
            return bad("redis.prefix", "must be non-empty, without spaces");
        }
        if self.database.max_connections == 0 {
            return bad("database.max_connections", "must be at least 1");
        }
        if self.worker.missed_heartbeats == 0 {
            return bad("worker.missed_heartbeats", "must be at least 1");
        }
        if self.worker.heartbeat_interval < Duration::from_millis(100) {
            return bad("worker.heartbeat_interval", "must be at least 100ms");
        }
        if self.worker.fetch_batch == 0 {
            return bad("worker.fetch_batch", "must be at least 1");
        }
        if self.worker.settle_batch == 0 {
            return bad("worker.settle_batch", "must be at least 1");
        }
        if self.worker.poll_interval.is_zero() {
            return bad("worker.poll_interval", "must be above zero");
        }
        let queues = std::iter::once(("queue_defaults".to_string(), self.queue_defaults.clone()))
            .chain(
                self.queues
                    .keys()
                    .map(|k| (format!("queues.{k}"), self.queue(k))),
            );
        for (key, q) in queues {
            if q.concurrency == 0 {
                return bad(&format!("{key}.concurrency"), "must be at least 1");
            }
            if q.max_attempts == 0 {
                return bad(&format!("{key}.max_attempts"), "must be at least 1");
            }
            if q.timeout.is_zero() {
                return bad(&format!("{key}.timeout"), "must be above zero");
            }
            if q.backoff_max < q.backoff_base {
                return bad(&format!("{key}.backoff_max"), "must be >= backoff_base");
            }
        }
        if self.upload.chunk_rows == 0 {
            return bad("upload.chunk_rows", "must be at least 1");
        }
        if self.upload.default_currency.len() != 3 {
            return bad(
                "upload.default_currency",
                "must be a 3-letter ISO 4217 code",
            );
        }
        if self.storage.backend == StorageBackend::S3 && self.storage.s3.bucket.is_empty() {
            return bad(
                "storage.s3.bucket",
                "must be set when storage.backend = \"s3\"",
            );
        }
        if self.validation.currencies.is_empty()
            || self.validation.currencies.iter().any(|c| c.len() != 3)
        {
            return bad("validation.currencies", "must list 3-letter ISO 4217 codes");
        }
        if self.validation.max_amount_minor <= 0 {
            return bad("validation.max_amount_minor", "must be above zero");
        }
        if self.vop.provider != "epc" {
            return bad("vop.provider", "unknown provider (known: \"epc\")");
        }
        // Secrets: an empty or short one is a mistake that makes tokens guessable and report
        // links forgeable. Signing keys need at least 32 bytes (HMAC-SHA256's block of entropy).
        let secret_len = |s: &Option<SecretString>| s.as_ref().map(|v| v.expose_secret().len());
        if let Some(n) = secret_len(&self.http.api_token)
            && n < 16
        {
            return bad(
                "http.api_token",
                "is shorter than 16 characters: use a long random token",
            );
        }
        if let Some(n) = secret_len(&self.http.metrics_token)
            && n < 16
        {
            return bad(
                "http.metrics_token",
                "is shorter than 16 characters: use a long random token",
            );
        }
        if self.http.max_concurrent_requests == 0 {
            return bad("http.max_concurrent_requests", "must be at least 1");
        }
        if let Some(n) = secret_len(&self.reports.link_secret)
            && n < 32
        {
            return bad(
                "reports.link_secret",
                "is shorter than 32 bytes: report links signed with it could be forged; use 32+ random bytes",
            );
        }
        if let Some(n) = secret_len(&self.privacy.iban_key)
            && n < 32
        {
            return bad(
                "privacy.iban_key",
                "is shorter than 32 bytes: IBAN lookup keys made with it could be reversed by trying IBANs; use 32+ random bytes",
            );
        }
        if secret_len(&self.vop.api_key) == Some(0) {
            return bad(
                "vop.api_key",
                "is empty: leave it unset, or set the provider's key",
            );
        }
        if self.vop.rate_limit == 0 {
            return bad("vop.rate_limit", "must be at least 1");
        }
        if self.vop.in_flight == 0 {
            return bad("vop.in_flight", "must be at least 1");
        }
        if self.vop.request_attempts == 0 {
            return bad("vop.request_attempts", "must be at least 1");
        }
        // A vop attempt must be able to wait out one worst-case check (every request attempt
        // timing out) after its last launch, or a slow provider times out every attempt.
        let worst = crate::vop::worst_case(&self.vop);
        let vop_timeout = self.queue("vop").timeout;
        if vop_timeout < worst + Duration::from_secs(2) {
            return Err(ConfigError::Invalid {
                key: "queues.vop.timeout".into(),
                message: format!(
                    "is {}, but one check can take {} when every request times out \
                     (2 requests x vop.request_attempts x vop.request_timeout + backoff): raise it, \
                     or lower vop.request_timeout / vop.request_attempts",
                    humantime::format_duration(vop_timeout),
                    humantime::format_duration(worst)
                ),
            });
        }
        if !(0.0..=1.0).contains(&self.vop.breaker_min_success_rate) {
            return bad("vop.breaker_min_success_rate", "must be between 0 and 1");
        }
        // failsafe counts the window and its backoff in whole seconds.
        if self.vop.breaker_window < Duration::from_secs(1) {
            return bad("vop.breaker_window", "must be at least 1s");
        }
        if self.vop.breaker_open_for < Duration::from_secs(1) {
            return bad("vop.breaker_open_for", "must be at least 1s");
        }
        if self.vop.breaker_open_max < self.vop.breaker_open_for {
            return bad("vop.breaker_open_max", "must be >= vop.breaker_open_for");
        }
        if let Err((key, message)) = crate::uploads::ColumnAliases::check(&self.upload.columns) {
            return bad(&key, &message);
        }
        for (i, c) in self.cron.iter().enumerate() {
            if let Err(e) = c.schedule.parse::<cron::Schedule>() {
                return bad(&format!("cron[{i}].schedule"), &e.to_string());
            }
        }
        Ok(())
    }

    /// Risky combinations worth a warning at start and in `config check`.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let lease = self.worker.lease();
        let mut names: Vec<&String> = self.queues.keys().collect();
        names.sort();
        let defaults = "queue_defaults".to_string();
        for name in std::iter::once(&defaults).chain(names) {
            let (q, label) = if name == &defaults {
                (self.queue_defaults.clone(), defaults.clone())
            } else {
                (self.queue(name), format!("queues.{name}"))
            };
            if q.timeout > self.worker.drain_timeout && !RESUMABLE_QUEUES.contains(&name.as_str()) {
                w.push(format!(
                    "{label}.timeout ({}) is longer than worker.drain_timeout ({}): a deploy can cut such jobs short; they then run again",
                    humantime::format_duration(q.timeout),
                    humantime::format_duration(self.worker.drain_timeout)
                ));
            }
        }
        if lease > Duration::from_secs(60) {
            w.push(format!(
                "worker.heartbeat_interval x worker.missed_heartbeats = {}: jobs of a crashed process wait that long before running again",
                humantime::format_duration(lease)
            ));
        }
        if self.redis.response_timeout < Duration::from_secs(5) {
            w.push(format!(
                "redis.response_timeout ({}) under 5s turns Redis load spikes into job errors",
                humantime::format_duration(self.redis.response_timeout)
            ));
        }
        if self.worker.drain_timeout >= Duration::from_secs(60) {
            w.push("worker.drain_timeout is at or above docker-compose.worker.yml's stop_grace_period (60s): the container may be killed mid-drain".into());
        }
        if self.worker.allow_test_jobs {
            w.push(
                "worker.allow_test_jobs is on: test_job can be enqueued (never in production)"
                    .into(),
            );
        }
        if !self.worker.audit {
            w.push("worker.audit is off: executions are not recorded in job_runs".into());
        }
        w
    }

    /// The merged configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }

    /// The runtime database password, if any.
    pub fn database_password(&self) -> Option<&str> {
        self.database.password.as_ref().map(|s| s.expose_secret())
    }
}

/// `database.password` → `FINWORKER__DATABASE__PASSWORD`.
pub fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .as_path(),
            &env,
        )
    }

    #[test]
    fn the_defaults_load_and_validate() {
        let s = load(&[]).unwrap();
        assert_eq!(s.redis.prefix, "fw");
        assert_eq!(s.queue("noop").concurrency, 50);
        assert_eq!(s.queue("other").concurrency, s.queue_defaults.concurrency);
        assert!(s.worker.lease() <= Duration::from_secs(60));
        assert!(
            s.warnings().is_empty(),
            "the defaults are safe: {:?}",
            s.warnings()
        );
    }

    #[test]
    fn environment_variables_override_nested_keys() {
        let s = load(&[
            ("FINWORKER__REDIS__URL", "redis://10.0.0.1:6380"),
            ("FINWORKER__WORKER__DRAIN_TIMEOUT", "7s"),
            ("FINWORKER__QUEUES__NOOP__MAX_ATTEMPTS", "9"),
        ])
        .unwrap();
        assert_eq!(s.redis.url, "redis://10.0.0.1:6380");
        assert_eq!(s.worker.drain_timeout, Duration::from_secs(7));
        assert_eq!(s.queue("noop").max_attempts, 9);
        assert_eq!(s.queue("noop").concurrency, 50);
    }

    #[test]
    fn an_unknown_key_fails_naming_it() {
        let err = load(&[("FINWORKER__WORKER__DRAIN_TIMOUT", "7s")]).unwrap_err();
        assert!(err.to_string().contains("drain_timout"), "{err}");
    }

    #[test]
    fn a_bad_value_fails_naming_the_key() {
        let err = load(&[("FINWORKER__WORKER__DRAIN_TIMEOUT", "soon")]).unwrap_err();
        assert!(err.to_string().contains("drain_timeout"), "{err}");
        let err = load(&[("FINWORKER__QUEUE_DEFAULTS__CONCURRENCY", "0")]).unwrap_err();
        assert!(
            err.to_string().contains("queue_defaults.concurrency"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let s = load(&[("FINWORKER__HTTP__API_TOKEN", "s3cr3t-token-0123456789")]).unwrap();
        let shown = s.to_redacted_toml();
        assert!(!shown.contains("s3cr3t-token"));
        assert!(shown.contains("[redacted]"));
        assert!(!format!("{s:?}").contains("s3cr3t-token"));
    }

    #[test]
    fn a_secret_in_a_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("fwcfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("leaky.toml"), "[http]\napi_token = \"x\"\n").unwrap();
        let env = vec![("FINWORKER_ENV".to_string(), "leaky".to_string())];
        let err = Settings::load_from(&dir, &env).unwrap_err();
        assert!(err.to_string().contains("http.api_token"), "{err}");
        assert!(
            err.to_string().contains("FINWORKER__HTTP__API_TOKEN"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_timeout_longer_than_the_drain_deadline_is_warned_about() {
        let s = load(&[("FINWORKER__QUEUES__NOOP__TIMEOUT", "10m")]).unwrap();
        assert!(
            s.warnings()
                .iter()
                .any(|w| w.contains("queues.noop.timeout")),
            "{:?}",
            s.warnings()
        );
    }
}
