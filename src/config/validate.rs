//! Rules between keys: values that deserialise but make no sense fail the start
//! ([`Settings::validate`]); risky combinations are warned about ([`Settings::warnings`]).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{ConfigError, RESUMABLE_QUEUES, Settings, StorageBackend};

impl Settings {
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
        if let Some(n) = secret_len(&self.http.ops_token)
            && n < 16
        {
            return bad(
                "http.ops_token",
                "is shorter than 16 characters: use a long random token",
            );
        }
        if let (Some(ops), Some(api)) = (&self.http.ops_token, &self.http.api_token)
            && ops.expose_secret() == api.expose_secret()
        {
            return bad(
                "http.ops_token",
                "equals http.api_token: API nodes must not hold the token that pauses, retries and cancels",
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
        self.validate_billing()?;
        if let Err((key, message)) = crate::uploads::ColumnAliases::check(&self.upload.columns) {
            return bad(&key, &message);
        }
        for (i, c) in self.cron.iter().enumerate() {
            if let Err(e) = c.schedule.parse::<cron::Schedule>() {
                return bad(&format!("cron[{i}].schedule"), &e.to_string());
            }
        }
        self.validate_retention()?;
        self.validate_lifecycle()
    }

    fn validate_retention(&self) -> Result<(), ConfigError> {
        let r = &self.retention;
        if !r.schedule.is_empty()
            && let Err(e) = r.schedule.parse::<cron::Schedule>()
        {
            return Err(ConfigError::Invalid {
                key: "retention.schedule".into(),
                message: e.to_string(),
            });
        }
        let day = std::time::Duration::from_secs(86_400);
        for (key, age) in [
            ("job_runs", r.job_runs),
            ("reports", r.reports),
            ("staged_files", r.staged_files),
            ("webhook_deliveries", r.webhook_deliveries),
        ] {
            if age < day {
                return Err(ConfigError::Invalid {
                    key: format!("retention.{key}"),
                    message: "must be at least a day: retention removes records ops and finance still read".into(),
                });
            }
        }
        if r.batch == 0 {
            return Err(ConfigError::Invalid {
                key: "retention.batch".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    fn validate_lifecycle(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: format!("lifecycle.{key}"),
                message: message.into(),
            })
        };
        let l = &self.lifecycle;
        for (key, v) in l.schedules() {
            if !v.is_empty()
                && let Err(e) = v.parse::<cron::Schedule>()
            {
                return bad(key, &e.to_string());
            }
        }
        if !(1..=999).contains(&l.sync_page_size) {
            return bad("sync_page_size", "must be 1-999 (the gateway's limit)");
        }
        if l.sync_first_days == 0 || l.sync_first_days > 400 {
            return bad("sync_first_days", "must be 1-400");
        }
        if l.bic_rule.window_days == 0 || l.chargeback_guard.window_days == 0 {
            return bad("bic_rule.window_days", "windows must be at least one day");
        }
        for t in &l.bic_rule.thresholds {
            if !(0.0..1.0).contains(&t.over_rate) || t.min_transactions == 0 {
                return bad(
                    "bic_rule.thresholds",
                    "each needs min_transactions >= 1 and 0 <= over_rate < 1",
                );
            }
        }
        if !(0.0..=1.0).contains(&l.chargeback_guard.hold_at_rate) {
            return bad("chargeback_guard.hold_at_rate", "must be 0-1 (0: off)");
        }
        Ok(())
    }

    fn validate_billing(&self) -> Result<(), ConfigError> {
        let bad = |key: String, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.into(),
            })
        };
        let g = &self.gateway;
        if g.request_timeout.is_zero() || g.connect_timeout.is_zero() {
            return bad("gateway.request_timeout".into(), "must be above zero");
        }
        if g.descriptor_name.chars().count() > 25 {
            return bad(
                "gateway.descriptor_name".into(),
                "is longer than 25 characters",
            );
        }
        if g.descriptor_city.chars().count() > 13 {
            return bad(
                "gateway.descriptor_city".into(),
                "is longer than 13 characters",
            );
        }
        for (name, a) in &g.accounts {
            let key = |k: &str| format!("gateway.accounts.{name}.{k}");
            if name.is_empty()
                || name.len() > 40
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return bad(
                    format!("gateway.accounts.{name}"),
                    "account names are 1-40 lower-case letters, digits or `_`",
                );
            }
            if a.gateway != "genesis" {
                return bad(key("gateway"), "unknown gateway (known: \"genesis\")");
            }
            if !(a.endpoint.starts_with("https://") || a.endpoint.starts_with("http://")) {
                return bad(key("endpoint"), "must be an http(s) URL");
            }
            if a.terminal_token.is_empty() || a.username.is_empty() {
                return bad(
                    key("terminal_token"),
                    "terminal_token and username must be set",
                );
            }
            if a.currency.len() != 3 {
                return bad(key("currency"), "must be a 3-letter ISO 4217 code");
            }
            if a.rate_limit == 0 {
                return bad(key("rate_limit"), "must be at least 1");
            }
            if a.monthly_cap_minor.is_some_and(|c| c <= 0) {
                return bad(key("monthly_cap_minor"), "must be above zero (or unset)");
            }
            if !(0.0..=1.0).contains(&a.breaker_min_success_rate) {
                return bad(key("breaker_min_success_rate"), "must be between 0 and 1");
            }
            if a.breaker_window < Duration::from_secs(1)
                || a.breaker_open_for < Duration::from_secs(1)
            {
                return bad(
                    key("breaker_window"),
                    "breaker_window and breaker_open_for must be at least 1s",
                );
            }
            if a.breaker_open_max < a.breaker_open_for {
                return bad(key("breaker_open_max"), "must be >= breaker_open_for");
            }
        }
        let b = &self.billing;
        if b.claim_size == 0 || b.in_flight == 0 || b.batch_jobs == 0 {
            return bad(
                "billing.claim_size".into(),
                "claim_size, in_flight and batch_jobs must be at least 1",
            );
        }
        if !b.models.contains_key("legacy") {
            return bad(
                "billing.models.legacy".into(),
                "the legacy model must exist",
            );
        }
        for (name, m) in &b.models {
            let key = |k: &str| format!("billing.models.{name}.{k}");
            if name != "legacy" && m.cycle_days.is_none() && m.cycle_months.is_none() {
                return bad(
                    key("cycle_days"),
                    "a recurring model needs cycle_days or cycle_months",
                );
            }
            if let (Some(lo), Some(hi)) = (m.min_minor, m.max_minor)
                && lo > hi
            {
                return bad(key("min_minor"), "must be <= max_minor");
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
}
