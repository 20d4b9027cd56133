//! One typed configuration: embedded `config/default.toml` → `config/$FINWORKER_ENV.toml` →
//! `FINWORKER__SECTION__KEY` environment variables → [`Settings::validate`].
//!
//! Unknown keys fail at start (`deny_unknown_fields`), naming the key. Secrets are
//! [`SecretString`]s, accepted from the environment only, and print as `[redacted]`.

use std::{collections::BTreeMap, path::Path};

use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

mod sections;
mod validate;

pub use sections::*;

/// Job types that resume where they stopped when a deploy cuts them short (a split skips
/// the chunks it already staged; a billing selection its committed chunks; a billing batch
/// leaves its debtors queued and its unanswered debits to reconcile), so a timeout above the
/// drain deadline costs nothing.
pub const RESUMABLE_QUEUES: &[&str] = &["upload", "billing", "billing_batch"];

/// The defaults, compiled in so the binary runs with no file beside it.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "FINWORKER__";

/// Keys that may only come from the environment.
pub const SECRET_KEYS: &[&str] = &[
    "redis.password",
    "database.password",
    "http.api_token",
    "http.ops_token",
    "http.metrics_token",
    "storage.s3.secret_access_key",
    "vop.api_key",
    "reports.link_secret",
    "privacy.iban_key",
];

/// Is `key` (dotted, lower case) a secret? The fixed [`SECRET_KEYS`] plus every gateway
/// account's password (`gateway.accounts.<name>.password`).
pub fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
        || key
            .strip_prefix("gateway.accounts.")
            .and_then(|rest| rest.strip_suffix(".password"))
            .is_some_and(|name| !name.is_empty() && !name.contains('.'))
}

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
    /// Payment gateways and their merchant accounts.
    pub gateway: GatewaySettings,
    /// Billing runs and their rules.
    pub billing: BillingSettings,
    /// The webhook receiver.
    pub webhooks: WebhookSettings,
    /// Transaction lifecycle: what chargebacks' reason codes do.
    pub lifecycle: LifecycleSettings,
    /// What the retention job prunes.
    pub retention: RetentionSettings,
}

pub(crate) fn redact<S: serde::Serializer>(
    v: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
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
        let account_passwords: Vec<String> = files
            .find_value("gateway.accounts")
            .ok()
            .and_then(|v| v.into_dict())
            .map(|d| {
                d.keys()
                    .map(|name| format!("gateway.accounts.{name}.password"))
                    .collect()
            })
            .unwrap_or_default();
        for key in SECRET_KEYS
            .iter()
            .copied()
            .chain(account_passwords.iter().map(String::as_str))
        {
            if files.contains(key) {
                return Err(ConfigError::Invalid {
                    key: key.into(),
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
            let value: figment::value::Value = if is_secret_key(&key) {
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
    use std::time::Duration;

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
