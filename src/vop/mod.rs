//! Verification of Payee (name check) and Bank Account Verification (account check).
//!
//! - [`Provider`]: one interface per provider module; [`epc`] speaks the EPC-VOP-shaped
//!   API of `docs/sandbox.md`. A second provider is a new module plus one match arm in
//!   [`Verifier::from_settings`].
//! - [`Verifier`] wraps a provider with what protects it and us: the shared rate limit
//!   ([`crate::guard::limiter`]), the circuit breaker ([`crate::guard::breaker`]), timeouts and retries on transport
//!   errors, 5xx and 429 only.
//! - The answer cache lives in Postgres (`vop_cache`), read and written by the `vop` job in
//!   batches.

pub mod epc;

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::{
    config::VopSettings,
    guard::{BreakerPolicy, GuardKey, breaker::Breaker, limiter::SharedLimiter},
    metrics::Metrics,
    queue::engine::Engine,
};

/// Name-check outcome (EPC categories).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VopResult {
    /// MTCH.
    Match,
    /// CMTC: the bank returns the holder's name.
    CloseMatch,
    /// NMTC.
    NoMatch,
    /// NOAP: no check was made (not a negative result).
    NotPossible,
    /// The provider refused our request (4xx); see the error.
    Error,
}

impl VopResult {
    /// From its stored name (anything unknown reads as `Error`).
    pub fn from_stored(s: &str) -> Self {
        [
            Self::Match,
            Self::CloseMatch,
            Self::NoMatch,
            Self::NotPossible,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
        .unwrap_or(Self::Error)
    }

    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            VopResult::Match => "match",
            VopResult::CloseMatch => "close_match",
            VopResult::NoMatch => "no_match",
            VopResult::NotPossible => "not_possible",
            VopResult::Error => "error",
        }
    }
}

/// Account-check outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BavResult {
    /// The account exists and takes direct debits.
    Valid,
    /// The account is closed.
    Closed,
    /// The account exists but refuses direct debits.
    NoDirectDebit,
    /// No check was made.
    NotPossible,
    /// The provider refused our request (4xx).
    Error,
}

impl BavResult {
    /// From its stored name (anything unknown reads as `Error`).
    pub fn from_stored(s: &str) -> Self {
        [
            Self::Valid,
            Self::Closed,
            Self::NoDirectDebit,
            Self::NotPossible,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
        .unwrap_or(Self::Error)
    }

    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            BavResult::Valid => "valid",
            BavResult::Closed => "closed",
            BavResult::NoDirectDebit => "no_direct_debit",
            BavResult::NotPossible => "not_possible",
            BavResult::Error => "error",
        }
    }
}

/// What we ask about one account.
#[derive(Debug, Clone)]
pub struct Request {
    /// IBAN, normalised.
    pub iban: String,
    /// Account holder name as the debtor file gave it.
    pub name: String,
    /// BIC, when known.
    pub bic: Option<String>,
}

/// A name-check answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayeeAnswer {
    /// Outcome.
    pub result: VopResult,
    /// The holder's name as the bank has it (close match).
    pub suggested_name: Option<String>,
    /// The provider's id of this check (audit evidence).
    pub reference: Option<String>,
}

/// An account-check answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountAnswer {
    /// Outcome.
    pub result: BavResult,
    /// The provider's id of this check.
    pub reference: Option<String>,
}

/// Why one provider request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Connection refused, reset, bad response body…
    #[error("transport: {0}")]
    Transport(String),
    /// No answer within `vop.request_timeout`.
    #[error("timed out")]
    Timeout,
    /// 5xx.
    #[error("provider error {status}: {body}")]
    Server {
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// 429.
    #[error("rate limited by the provider")]
    RateLimited,
    /// Another 4xx: our request is wrong; retrying cannot help.
    #[error("refused {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
}

impl ProviderError {
    /// Worth another attempt.
    pub fn transient(&self) -> bool {
        !matches!(self, ProviderError::Refused { .. })
    }

    /// Label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProviderError::Transport(_) => "transport",
            ProviderError::Timeout => "timeout",
            ProviderError::Server { .. } => "server_error",
            ProviderError::RateLimited => "rate_limited",
            ProviderError::Refused { .. } => "refused",
        }
    }
}

/// One verification provider.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Module name (metrics, cache key, stored results).
    fn name(&self) -> &'static str;
    /// VOP: does the name match the account holder?
    fn verify_payee<'a>(
        &'a self,
        req: &'a Request,
    ) -> BoxFuture<'a, Result<PayeeAnswer, ProviderError>>;
    /// BAV: does the account exist and take direct debits?
    fn verify_account<'a>(
        &'a self,
        req: &'a Request,
    ) -> BoxFuture<'a, Result<AccountAnswer, ProviderError>>;
}

/// Why a check could not be made now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CheckError {
    /// The provider refused the request (4xx): record it, do not retry.
    #[error("{0}")]
    Refused(String),
    /// The breaker is open (or the shared limiter is unreachable): stop calling, try later.
    #[error("provider unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: String,
        /// When to try again.
        retry_in: Duration,
    },
    /// Every attempt of this request failed transiently: leave it for a later job.
    #[error("{0}")]
    Failed(String),
}

/// A provider behind the rate limit, the breaker and the retry policy. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Verifier {
    provider: Arc<dyn Provider>,
    limiter: SharedLimiter,
    breaker: Breaker,
    settings: Arc<VopSettings>,
    metrics: Arc<Metrics>,
}

impl Verifier {
    /// Builds the configured provider.
    pub fn from_settings(
        settings: &VopSettings,
        queue: &Engine,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let provider: Arc<dyn Provider> = match settings.provider.as_str() {
            "epc" => Arc::new(epc::EpcClient::new(settings)?),
            other => anyhow::bail!("unknown vop.provider `{other}`"),
        };
        Ok(Self::new(provider, settings, queue, metrics))
    }

    /// Wraps a provider in the rate limit, breaker and retry policy.
    fn new(
        provider: Arc<dyn Provider>,
        settings: &VopSettings,
        queue: &Engine,
        metrics: Arc<Metrics>,
    ) -> Self {
        let key = GuardKey::single(provider.name());
        let limiter =
            SharedLimiter::new(queue, &key, settings.rate_limit).with_metrics(metrics.clone());
        let breaker = Breaker::shared(key, &breaker_policy(settings), metrics.clone(), queue);
        Self {
            provider,
            limiter,
            breaker,
            settings: Arc::new(settings.clone()),
            metrics,
        }
    }

    /// Provider module name.
    pub fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    /// The breaker (state for metrics and tests).
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The longest one [`Verifier::check`] can take when every attempt of both requests
    /// times out: attempts × timeout plus the backoffs between them, for each request.
    pub fn worst_case(&self) -> Duration {
        worst_case(&self.settings)
    }

    /// Both checks for one account.
    pub async fn check(&self, req: &Request) -> Result<(PayeeAnswer, AccountAnswer), CheckError> {
        let payee = self.call(|| self.provider.verify_payee(req)).await?;
        let account = self.call(|| self.provider.verify_account(req)).await?;
        Ok((payee, account))
    }

    async fn call<'a, T, F>(&'a self, make: F) -> Result<T, CheckError>
    where
        F: Fn() -> BoxFuture<'a, Result<T, ProviderError>>,
    {
        let name = self.provider.name();
        let mut last = String::new();
        for attempt in 0..self.settings.request_attempts {
            if attempt > 0 {
                tokio::time::sleep(self.settings.retry_backoff * 2u32.saturating_pow(attempt - 1))
                    .await;
            }
            let Some(permit) = self.breaker.permit_shared().await else {
                self.count("rejected_by_breaker");
                return Err(CheckError::Unavailable {
                    reason: format!("{name} circuit breaker is open"),
                    retry_in: self.breaker.retry_in(),
                });
            };
            if let Err(e) = self.limiter.acquire().await {
                // Redis trouble: no call without a slot (the limit must hold).
                permit.abandon();
                return Err(CheckError::Unavailable {
                    reason: format!("rate limiter: {e}"),
                    retry_in: Duration::from_secs(1),
                });
            }
            let outcome = tokio::time::timeout(self.settings.request_timeout, make())
                .await
                .unwrap_or(Err(ProviderError::Timeout));
            match outcome {
                Ok(v) => {
                    permit.success();
                    self.count("ok");
                    return Ok(v);
                }
                Err(e) => {
                    self.count(e.label());
                    if e.transient() {
                        permit.failure();
                        last = e.to_string();
                    } else {
                        // Our request was wrong; the provider is healthy.
                        permit.success();
                        return Err(CheckError::Refused(e.to_string()));
                    }
                }
            }
        }
        Err(CheckError::Failed(format!(
            "{name}: {} attempts failed, last: {last}",
            self.settings.request_attempts
        )))
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .provider_requests
            .get_or_create(&crate::metrics::ProviderLabels {
                provider: self.provider.name().to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }
}

/// See [`Verifier::worst_case`].
/// The breaker policy of `[vop]`.
pub fn breaker_policy(s: &VopSettings) -> BreakerPolicy {
    BreakerPolicy {
        min_success_rate: s.breaker_min_success_rate,
        min_requests: s.breaker_min_requests,
        window: s.breaker_window,
        open_for: s.breaker_open_for,
        open_max: s.breaker_open_max,
    }
}

pub fn worst_case(s: &crate::config::VopSettings) -> Duration {
    let attempts = s.request_attempts.max(1);
    let backoffs: Duration = (1..attempts)
        .map(|a| s.retry_backoff * 2u32.saturating_pow(a - 1))
        .sum();
    (s.request_timeout * attempts + backoffs) * 2
}

/// The cache key of a name: transliterated, lower case, single spaces.
pub fn name_key(name: &str) -> String {
    crate::validation::transliterate(name).to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_keys_ignore_case_accents_and_spacing() {
        assert_eq!(name_key("  Jörg   WEIß "), "jorg weiss");
        assert_eq!(name_key("jorg weiss"), name_key("Jörg Weiß"));
        assert_ne!(name_key("Jörg Weiß"), name_key("Jörg Weise"));
    }

    #[test]
    fn only_4xx_other_than_429_is_final() {
        assert!(ProviderError::Timeout.transient());
        assert!(ProviderError::RateLimited.transient());
        assert!(
            ProviderError::Server {
                status: 503,
                body: String::new()
            }
            .transient()
        );
        assert!(
            !ProviderError::Refused {
                status: 400,
                body: String::new()
            }
            .transient()
        );
    }
}
