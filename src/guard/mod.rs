//! Guards in front of an external provider's account, shared by every caller of it: a rate
//! limit held across all worker processes (through Redis) and a circuit breaker. Keyed by
//! (provider, account), configured by plain policy structs: this module knows no provider and
//! no configuration section (VOP/BAV builds its policies from `[vop]`; billing will build one
//! per gateway account).

pub mod breaker;
pub mod limiter;

use std::time::Duration;

/// Which provider account a guard stands in front of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GuardKey {
    /// Provider module (`epc`, `genesis`…).
    pub provider: &'static str,
    /// The account at that provider (`default` when a provider has one).
    pub account: String,
}

impl GuardKey {
    /// The provider's only account.
    pub fn single(provider: &'static str) -> Self {
        Self {
            provider,
            account: "default".into(),
        }
    }
}

/// When the breaker opens and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    /// Below this share of successful calls over `window` (with at least `min_requests`
    /// calls), the breaker opens.
    pub min_success_rate: f64,
    /// Calls needed in a window before it is judged.
    pub min_requests: u32,
    /// The window.
    pub window: Duration,
    /// First open period; doubles with each failed probe.
    pub open_for: Duration,
    /// Longest open period.
    pub open_max: Duration,
}
