//! The sections of [`super::Settings`]: what can be configured, with defaults in
//! `config/default.toml`.

use std::{collections::BTreeMap, time::Duration};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::redact;

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
    /// URL without credentials; with `cluster`, seed nodes separated by commas.
    pub url: String,
    /// Redis Cluster: `url` lists seed nodes; every key of the namespace carries it as a hash
    /// tag (one slot), so the queue's Lua scripts run unchanged.
    #[serde(default)]
    pub cluster: bool,
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
    /// Bearer token of the ops API (`/api/ops/…`) and the dashboard (environment only):
    /// separate from the producers' token, which cannot pause, retry or cancel anything.
    #[serde(default, serialize_with = "redact")]
    pub ops_token: Option<SecretString>,
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

/// Payment gateways: shared call settings and the merchant accounts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// A debit call's answer is waited for this long; after it the debit is `unknown`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// TCP connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A debit the gateway has no record of is sent again (same transaction_id) only once its
    /// last send's deadline is this far in the past: a request still travelling is never doubled.
    #[serde(with = "humantime_serde")]
    pub resend_after: Duration,
    /// First reconcile of a `pending`/`pending_async` debit after its answer (doubles per try,
    /// up to `reconcile_max_interval`).
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Longest wait between two reconciles of one debit.
    #[serde(with = "humantime_serde")]
    pub reconcile_max_interval: Duration,
    /// `notification_url` sent with each debit; empty: none.
    pub notification_url: String,
    /// Dynamic descriptor merchant name (≤ 25 characters); empty: none.
    pub descriptor_name: String,
    /// Dynamic descriptor city (≤ 13 characters); empty: none.
    pub descriptor_city: String,
    /// Text shown to the debtor; `{reference}` is replaced by the debtor's reference.
    pub usage: String,
    /// Merchant accounts by name (lower case letters, digits, `_`).
    #[serde(default)]
    pub accounts: BTreeMap<String, GatewayAccountSettings>,
}

/// One merchant account at a gateway. The password comes from the environment only:
/// `FINWORKER__GATEWAY__ACCOUNTS__<NAME>__PASSWORD`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayAccountSettings {
    /// Gateway module (`genesis`).
    #[serde(default = "default_gateway")]
    pub gateway: String,
    /// Base URL, e.g. `https://staging.gate.emerchantpay.net`.
    pub endpoint: String,
    /// Terminal token (last path segment of every call).
    pub terminal_token: String,
    /// API username.
    pub username: String,
    /// API password (environment only).
    #[serde(default, serialize_with = "redact")]
    pub password: Option<SecretString>,
    /// Currency the account collects.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Requests per second, all worker processes together.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// Breaker: opens below this success rate over the window...
    #[serde(default = "default_success_rate")]
    pub breaker_min_success_rate: f64,
    /// ... with at least this many calls in it...
    #[serde(default = "default_min_requests")]
    pub breaker_min_requests: u32,
    /// ... over this window.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub breaker_window: Duration,
    /// First open period (doubles on each failed probe).
    #[serde(default = "default_open_for", with = "humantime_serde")]
    pub breaker_open_for: Duration,
    /// Longest open period.
    #[serde(default = "default_open_max", with = "humantime_serde")]
    pub breaker_open_max: Duration,
    /// Most the account may debit in one calendar month (UTC), minor units; unset: no cap.
    #[serde(default)]
    pub monthly_cap_minor: Option<i64>,
    /// A disabled account starts no debit.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_gateway() -> String {
    "genesis".into()
}
fn default_currency() -> String {
    "EUR".into()
}
fn default_rate_limit() -> u32 {
    50
}
fn default_success_rate() -> f64 {
    0.5
}
fn default_min_requests() -> u32 {
    20
}
fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_open_for() -> Duration {
    Duration::from_secs(10)
}
fn default_open_max() -> Duration {
    Duration::from_secs(300)
}
fn default_true() -> bool {
    true
}

/// The webhook receiver (`POST /api/webhooks/<provider>/<account>`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// A delivery body over this is answered 413 and stored cut at this size.
    pub max_body_bytes: usize,
    /// Deliveries stored per commit, at most (group commit: a commit per delivery would cap
    /// the receiver at Postgres's commit rate).
    pub group_max: usize,
    /// Group commits in flight at once.
    pub writers: usize,
    /// A delivery not stored within this long is answered 503 (the gateway sends it again).
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
    /// Times an accepted delivery's processing is tried before it is left `failed` (replay
    /// it after a fix).
    pub max_attempts: i32,
}

/// What a chargeback's reason code does, the same on every path (webhook, reconcile, sweeps).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleSettings {
    /// Codes that blacklist the IBAN and deactivate the profile.
    pub blacklist_codes: Vec<String>,
    /// Codes that do neither (the debtor may be billed in a later cycle: insufficient funds).
    pub retry_codes: Vec<String>,
    /// When the `reconciliation` job runs (cron, seconds first, UTC); empty: never by itself.
    pub reconcile_schedule: String,
    /// An attempt still `submitted`/`unknown` this long after it was created is flagged for
    /// a person (metric + error log); it is never guessed.
    #[serde(with = "humantime_serde")]
    pub unknown_hard_age: Duration,
    /// Likewise for `pending`/`pending_async` (SEPA settles within days: keep this above the
    /// scheme's two weeks).
    #[serde(with = "humantime_serde")]
    pub pending_hard_age: Duration,
    /// When `emp_refresh` (ledger sync by date) runs for every account; empty: never.
    pub ledger_sync_schedule: String,
    /// When `chargeback_sweep` (chargebacks and retrieval requests by import date) runs.
    pub sweep_schedule: String,
    /// When `bic_blacklist` (the BIC auto-blacklist) runs.
    pub bic_blacklist_schedule: String,
    /// A scheduled sync covers from its last synced day less this many days (late records
    /// are dated by event, not by the original transaction).
    pub sync_overlap_days: u32,
    /// A scheduled sync with no checkpoint yet covers this many days back.
    pub sync_first_days: u32,
    /// Records asked per page of reconcile by date (1–999).
    pub sync_page_size: u32,
    /// The BIC auto-blacklist rule.
    pub bic_rule: BicRule,
    /// The per-account chargeback-rate guard.
    pub chargeback_guard: ChargebackGuard,
}

impl LifecycleSettings {
    /// The built-in schedules: (setting, cron expression, job type).
    pub fn schedules(&self) -> [(&'static str, &str); 4] {
        [
            ("reconcile_schedule", self.reconcile_schedule.as_str()),
            ("ledger_sync_schedule", self.ledger_sync_schedule.as_str()),
            ("sweep_schedule", self.sweep_schedule.as_str()),
            (
                "bic_blacklist_schedule",
                self.bic_blacklist_schedule.as_str(),
            ),
        ]
    }
}

/// The BIC auto-blacklist: over `window_days`, a BIC with at least `min_transactions`
/// debits of which more than `over_rate` were charged back, by any of `thresholds`, is
/// blacklisted (source `auto`, with its figures).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BicRule {
    /// Days looked back.
    pub window_days: u32,
    /// Chargeback reason codes that do not count (e.g. technical returns).
    pub excluded_codes: Vec<String>,
    /// Any one of them blacklists.
    pub thresholds: Vec<BicThreshold>,
}

/// One threshold of [`BicRule`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BicThreshold {
    /// Debits of the BIC in the window, at least.
    pub min_transactions: u32,
    /// Chargebacks / debits above this (0–1).
    pub over_rate: f64,
}

/// Holds an account (no billing run of it starts or goes on) when its chargeback rate over
/// `window_days` reaches `hold_at_rate` with at least `min_transactions` debits, before the
/// acquirer's own threshold is reached. Ops release it with `finworker accounts release`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChargebackGuard {
    /// Days looked back.
    pub window_days: u32,
    /// Debits in the window before the rate means anything.
    pub min_transactions: u32,
    /// Chargebacks / debits at which the account is held (0–1); 0: off.
    pub hold_at_rate: f64,
}

/// Billing runs and the rules that decide who may be debited.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BillingSettings {
    /// Debtors one claim transaction takes.
    pub claim_size: u32,
    /// Debit calls in flight per `billing_batch` job.
    pub in_flight: usize,
    /// `billing_batch` jobs a run fans out into (any number of processes share them).
    pub batch_jobs: u32,
    /// A batch job hands over to a fresh one after this long (keeps jobs short for deploys).
    #[serde(with = "humantime_serde")]
    pub slice: Duration,
    /// An IBAN with a submitted, pending, unknown or approved debit younger than this is not
    /// debited again.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// A debit may be voided (`finworker billing void`) for this long after it was made.
    #[serde(with = "humantime_serde")]
    pub void_window: Duration,
    /// VOP name-check results that exclude a debtor.
    pub vop_exclude: Vec<String>,
    /// BAV account-check results that exclude a debtor.
    pub bav_exclude: Vec<String>,
    /// Bill due recurring profiles every `recurring_interval` (once across processes).
    pub recurring: bool,
    /// Time between recurring-billing ticks.
    #[serde(with = "humantime_serde")]
    pub recurring_interval: Duration,
    /// Billing models by name. `legacy` bills each debtor line once at its amount; the others
    /// bill their profile's amount every cycle.
    pub models: BTreeMap<String, ModelSettings>,
}

/// One billing model.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// Lowest amount of the model's band, minor units (unset: any).
    #[serde(default)]
    pub min_minor: Option<i64>,
    /// Highest amount of the band, minor units (unset: any).
    #[serde(default)]
    pub max_minor: Option<i64>,
    /// Next bill this many days after a submitted debit.
    #[serde(default)]
    pub cycle_days: Option<u32>,
    /// ... or this many months.
    #[serde(default)]
    pub cycle_months: Option<u32>,
    /// Most a profile of this model is ever charged, minor units (unset: no cap).
    #[serde(default)]
    pub lifetime_cap_minor: Option<i64>,
}

/// What the `retention` job removes, and when (see `crate::retention`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// When it runs (cron, seconds first, UTC); empty: never by itself.
    pub schedule: String,
    /// `job_runs` rows older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub job_runs: Duration,
    /// Report files older than this are deleted (the row stays, `expired`).
    #[serde(with = "humantime_serde")]
    pub reports: Duration,
    /// Staged chunks of uploads over for this long are deleted.
    #[serde(with = "humantime_serde")]
    pub staged_files: Duration,
    /// Webhook deliveries done with for this long are deleted (or, when referred to, stripped
    /// of their raw body).
    #[serde(with = "humantime_serde")]
    pub webhook_deliveries: Duration,
    /// Rows per statement.
    pub batch: u32,
}
