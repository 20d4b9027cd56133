//! A provider account's rate limit, held across every worker process.
//!
//! Providers count requests from all our processes together, so a per-process limiter
//! (governor alone) would let N processes send N times the limit. Each request therefore
//! takes a send time from Redis (`limiter.lua`: a GCRA without burst on Redis's clock):
//! consecutive slots are exactly `1/rate` apart whichever process takes them, so the
//! combined rate cannot exceed the limit (slots are paced at 98% of it, so arrival jitter
//! stays under it too). governor sits in front, per process, so one
//! process never queues more than the whole limit's worth of slot requests at Redis.

use std::{
    num::NonZeroU32,
    sync::Arc,
    time::{Duration, Instant},
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use redis::Script;

use crate::queue::engine::RedisConn;

use super::GuardKey;
use crate::queue::engine::Engine;

/// How far behind its slot a caller may still send (see [`SharedLimiter::acquire`]).
pub const LATE: Duration = Duration::from_millis(25);

/// A rate limit shared through Redis. Cheap to clone.
#[derive(Clone)]
pub struct SharedLimiter {
    conn: RedisConn,
    key: String,
    spacing_us: u64,
    local: Arc<DefaultDirectRateLimiter>,
    script: Arc<Script>,
    /// Where the time spent waiting is counted (`finworker_rate_limit_wait_seconds_total`).
    waits: Option<(Arc<crate::metrics::Metrics>, crate::metrics::BreakerLabels)>,
    labels: crate::metrics::BreakerLabels,
}

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("key", &self.key)
            .field("spacing_us", &self.spacing_us)
            .finish()
    }
}

impl SharedLimiter {
    /// `rate` requests per second to one provider account, in the queue's Redis namespace.
    pub fn new(queue: &Engine, key: &GuardKey, rate: u32) -> Self {
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        Self {
            conn: queue.connection(),
            key: format!(
                "{}:ratelimit:{}:{}",
                queue.prefix(),
                key.provider,
                key.account
            ),
            // Paced at 98% of the limit: network jitter bunches some requests on arrival, and
            // the provider counts arrivals.
            spacing_us: 1_000_000 * 50 / (u64::from(rate.get()) * 49),
            local: Arc::new(RateLimiter::direct(Quota::per_second(rate))),
            script: Arc::new(Script::new(include_str!("limiter.lua"))),
            waits: None,
            labels: crate::metrics::BreakerLabels {
                provider: key.provider.to_string(),
                account: key.account.clone(),
            },
        }
    }

    /// Counts the time callers wait in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.waits = Some((metrics, self.labels.clone()));
        self
    }

    /// Waits until this process may send one request.
    ///
    /// A caller that wakes well after its slot (a stalled process, a busy runtime) takes a new
    /// one instead of sending late: late callers would otherwise all send at once when the
    /// stall ends, and the provider counts that burst. A slot is kept when it is at most
    /// [`LATE`] behind, which bounds any 1-second window at the limit plus `LATE × rate`.
    pub async fn acquire(&self) -> Result<(), redis::RedisError> {
        let entered = Instant::now();
        let r = self.acquire_slot().await;
        if let Some((m, labels)) = &self.waits {
            m.rate_limit_wait
                .get_or_create(labels)
                .inc_by(entered.elapsed().as_secs_f64());
        }
        r
    }

    async fn acquire_slot(&self) -> Result<(), redis::RedisError> {
        self.local.until_ready().await;
        loop {
            let mut conn = self.conn.clone();
            let asked = Instant::now();
            let wait_us: i64 = self
                .script
                .key(&self.key)
                .arg(self.spacing_us)
                .invoke_async(&mut conn)
                .await?;
            if wait_us > 10_000_000 {
                // More callers queued than the limit serves in ten seconds: worth knowing.
                tracing::warn!(key = %self.key, wait_ms = wait_us / 1000, "rate limit: the next free slot is far ahead");
            }
            // Redis picked the slot somewhere between asking and the answer: wait for the
            // latest reading (never early) and count lateness from the earliest (a slow answer
            // is lateness too).
            let wait = Duration::from_micros(wait_us.unsigned_abs());
            tokio::time::sleep_until((Instant::now() + wait).into()).await;
            let late = (asked + wait).elapsed();
            if late <= LATE {
                return Ok(());
            }
            tracing::debug!(key = %self.key, late_ms = late.as_millis(), "rate limit: woke after the slot; taking a new one");
        }
    }
}
