//! The circuit breaker in front of a provider account: failsafe's state machine with a
//! success-rate-over-window policy and exponential open periods.
//!
//! - Counts transport errors, timeouts, 5xx and 429 as failures; answers (any VOP result)
//!   and 4xx refusals as successes: a refusal says our request was wrong, not that the
//!   provider is down.
//! - Half-open lets one probe through at a time; its outcome closes or re-opens.
//! - Shared by every process ([`Breaker::shared`]): a process whose breaker opens publishes
//!   it in Redis, and every process asks Redis (at most every 200 ms) before a call, so all
//!   see it open together. When the open period ends, one process wins the probe (`SET NX`);
//!   its success closes the breaker for all, its failure opens it again for twice as long.
//!   Redis unreachable: each process falls back to its own breaker.
//! - Transitions are logged and exported (`finworker_breaker_state`,
//!   `finworker_breaker_transitions`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use failsafe::{
    Config, StateMachine, backoff,
    failure_policy::{self, SuccessRateOverTimeWindow},
};

use super::{BreakerPolicy, GuardKey};
use crate::metrics::{BreakerLabels, Metrics, TransitionLabels};

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

#[derive(Debug)]
struct Shared {
    key: GuardKey,
    state: AtomicU8,
    opened_at: std::sync::Mutex<Option<Instant>>,
    open_for: Duration,
    open_max: Duration,
    /// Opens since the breaker last closed: the open period doubles with each.
    opens: std::sync::atomic::AtomicU32,
    probing: AtomicBool,
    metrics: Arc<Metrics>,
    remote: Option<Remote>,
}

/// The Redis side of a shared breaker.
#[derive(Debug)]
struct Remote {
    conn: crate::queue::engine::RedisConn,
    /// `<prefix>:breaker:<provider>:<account>`; `:open`, `:trial`, `:probe`, `:opens` below it.
    key: String,
    /// What Redis said last, and when it was asked.
    seen: std::sync::Mutex<(Instant, RemoteState)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum RemoteState {
    Closed,
    /// Open for this much longer (from when it was seen).
    Open(Duration),
    /// The open period ended; a probe decides.
    Trial,
}

const REMOTE_POLL: Duration = Duration::from_millis(200);

impl Shared {
    /// Publishes an open breaker (this process's opened, or a shared probe failed): the open
    /// period doubles with each consecutive open, across processes.
    fn publish_open(self: &Arc<Self>) {
        let Some(r) = &self.remote else { return };
        let (mut conn, key) = (r.conn.clone(), r.key.clone());
        let (base, max) = (self.open_for, self.open_max);
        if let Ok(mut seen) = r.seen.lock() {
            *seen = (Instant::now(), RemoteState::Open(base));
        }
        tokio::spawn(async move {
            let n: u32 = redis::cmd("INCR")
                .arg(format!("{key}:opens"))
                .query_async(&mut conn)
                .await
                .unwrap_or(1);
            let period = (base * 2u32.saturating_pow(n.clamp(1, 20) - 1)).min(max);
            let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
            let _: Result<(), _> = redis::pipe()
                .cmd("SET")
                .arg(format!("{key}:open"))
                .arg(1)
                .arg("PX")
                .arg(ms)
                .ignore()
                .cmd("SET")
                .arg(format!("{key}:trial"))
                .arg(1)
                .arg("PX")
                .arg(ms + 60_000)
                .ignore()
                .cmd("PEXPIRE")
                .arg(format!("{key}:opens"))
                .arg(ms + 3_600_000)
                .ignore()
                .cmd("DEL")
                .arg(format!("{key}:probe"))
                .ignore()
                .query_async(&mut conn)
                .await;
        });
    }

    /// A shared probe succeeded: closed for every process.
    fn publish_closed(self: &Arc<Self>) {
        let Some(r) = &self.remote else { return };
        let (mut conn, key) = (r.conn.clone(), r.key.clone());
        if let Ok(mut seen) = r.seen.lock() {
            *seen = (Instant::now(), RemoteState::Closed);
        }
        tokio::spawn(async move {
            let _: Result<(), _> = redis::cmd("DEL")
                .arg(format!("{key}:trial"))
                .arg(format!("{key}:probe"))
                .arg(format!("{key}:opens"))
                .query_async(&mut conn)
                .await;
        });
    }
}

/// Logs and exports transitions.
#[derive(Debug, Clone)]
struct Instrument(Arc<Shared>);

impl Instrument {
    fn transit(&self, to: u8, label: &str) {
        let s = &self.0;
        s.state.store(to, Ordering::SeqCst);
        s.metrics
            .breaker_state
            .get_or_create(&BreakerLabels {
                provider: s.key.provider.to_string(),
                account: s.key.account.clone(),
            })
            .set(i64::from(to));
        s.metrics
            .breaker_transitions
            .get_or_create(&TransitionLabels {
                provider: s.key.provider.to_string(),
                account: s.key.account.clone(),
                to: label.to_string(),
            })
            .inc();
    }
}

impl failsafe::Instrument for Instrument {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        *self.0.opened_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.0.opens.fetch_add(1, Ordering::SeqCst);
        self.transit(OPEN, "open");
        self.0.publish_open();
        tracing::warn!(
            provider = self.0.key.provider,
            account = %self.0.key.account,
            "circuit breaker opened: the provider's failure rate is over the limit; calls are put off"
        );
    }

    fn on_half_open(&self) {
        self.transit(HALF_OPEN, "half_open");
        tracing::info!(
            provider = self.0.key.provider,
            account = %self.0.key.account,
            "circuit breaker half-open: sending a probe"
        );
    }

    fn on_closed(&self) {
        self.0.opens.store(0, Ordering::SeqCst);
        self.transit(CLOSED, "closed");
        tracing::info!(
            provider = self.0.key.provider,
            account = %self.0.key.account,
            "circuit breaker closed: the provider answers again"
        );
    }
}

type Machine = StateMachine<SuccessRateOverTimeWindow<backoff::Exponential>, Instrument>;

/// The breaker of one provider account. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Breaker {
    machine: Machine,
    shared: Arc<Shared>,
}

/// Permission for one call; report how it went.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    /// This call is the probe of a shared breaker's trial.
    shared_probe: bool,
    done: bool,
}

impl Permit<'_> {
    /// The provider answered.
    pub fn success(mut self) {
        self.breaker.machine.on_success();
        if self.shared_probe {
            self.breaker.shared.publish_closed();
            tracing::info!(
                provider = self.breaker.shared.key.provider,
                account = %self.breaker.shared.key.account,
                "shared circuit breaker closed: the probe succeeded"
            );
        }
        self.finish();
    }

    /// The provider failed (transport, timeout, 5xx, 429).
    pub fn failure(mut self) {
        self.breaker.machine.on_error();
        if self.shared_probe {
            self.breaker.shared.publish_open();
        }
        self.finish();
    }

    /// No call was made after all.
    pub fn abandon(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.done = true;
        if self.shared_probe
            && let Some(r) = &self.breaker.shared.remote
        {
            let (mut conn, key) = (r.conn.clone(), format!("{}:probe", r.key));
            tokio::spawn(async move {
                let _: Result<(), _> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
            });
        }
        if self.probe {
            self.breaker.shared.probing.store(false, Ordering::SeqCst);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done {
            // A cancelled call (job timeout, shutdown) tells nothing about the provider.
            self.finish();
        }
    }
}

impl Breaker {
    /// A closed breaker of this process only.
    pub fn new(key: GuardKey, policy: &BreakerPolicy, metrics: Arc<Metrics>) -> Self {
        Self::build(key, policy, metrics, None)
    }

    /// A breaker shared by every process through Redis (see the module docs).
    pub fn shared(
        key: GuardKey,
        policy: &BreakerPolicy,
        metrics: Arc<Metrics>,
        queue: &crate::queue::engine::Engine,
    ) -> Self {
        let remote = Remote {
            conn: queue.connection(),
            key: format!(
                "{}:breaker:{}:{}",
                queue.prefix(),
                key.provider,
                key.account
            ),
            seen: std::sync::Mutex::new((Instant::now() - REMOTE_POLL * 2, RemoteState::Closed)),
        };
        Self::build(key, policy, metrics, Some(remote))
    }

    fn build(
        key: GuardKey,
        policy: &BreakerPolicy,
        metrics: Arc<Metrics>,
        remote: Option<Remote>,
    ) -> Self {
        let s = policy;
        let shared = Arc::new(Shared {
            remote,
            key,
            state: AtomicU8::new(CLOSED),
            opened_at: std::sync::Mutex::new(None),
            open_for: s.open_for,
            open_max: s.open_max,
            opens: std::sync::atomic::AtomicU32::new(0),
            probing: AtomicBool::new(false),
            metrics,
        });
        let policy = failure_policy::success_rate_over_time_window(
            s.min_success_rate,
            s.min_requests,
            s.window,
            backoff::exponential(s.open_for, s.open_max),
        );
        let machine = Config::new()
            .failure_policy(policy)
            .instrument(Instrument(shared.clone()))
            .build();
        Self { machine, shared }
    }

    /// A permit when a call may go out now; `None` while open (or while another probe of
    /// the half-open state is in flight).
    pub fn permit(&self) -> Option<Permit<'_>> {
        if !self.machine.is_call_permitted() {
            return None;
        }
        let probe = self.shared.state.load(Ordering::SeqCst) == HALF_OPEN;
        if probe
            && self
                .shared
                .probing
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return None;
        }
        Some(Permit {
            breaker: self,
            probe,
            shared_probe: false,
            done: false,
        })
    }

    /// What Redis says about the shared breaker (asked at most every 200 ms).
    async fn remote_state(&self) -> RemoteState {
        let Some(r) = &self.shared.remote else {
            return RemoteState::Closed;
        };
        let (at, st) = *r.seen.lock().unwrap_or_else(|p| p.into_inner());
        if at.elapsed() < REMOTE_POLL {
            return match st {
                RemoteState::Open(left) => match left.checked_sub(at.elapsed()) {
                    Some(l) if !l.is_zero() => RemoteState::Open(l),
                    _ => RemoteState::Trial,
                },
                other => other,
            };
        }
        let mut conn = r.conn.clone();
        let asked: Result<(i64, i64), _> = redis::pipe()
            .cmd("PTTL")
            .arg(format!("{}:open", r.key))
            .cmd("EXISTS")
            .arg(format!("{}:trial", r.key))
            .query_async(&mut conn)
            .await;
        let st = match asked {
            Ok((ttl, _)) if ttl > 0 => RemoteState::Open(Duration::from_millis(ttl.unsigned_abs())),
            Ok((_, 1)) => RemoteState::Trial,
            Ok(_) => RemoteState::Closed,
            // Redis unreachable: this process's own breaker decides.
            Err(_) => RemoteState::Closed,
        };
        *r.seen.lock().unwrap_or_else(|p| p.into_inner()) = (Instant::now(), st);
        st
    }

    /// A permit when a call may go out now, asking the shared state first: `None` while any
    /// process's breaker holds it open, or while another process probes.
    pub async fn permit_shared(&self) -> Option<Permit<'_>> {
        match self.remote_state().await {
            RemoteState::Closed => self.permit(),
            RemoteState::Open(_) => None,
            RemoteState::Trial => {
                let r = self.shared.remote.as_ref()?;
                let mut conn = r.conn.clone();
                let won: Option<String> = redis::cmd("SET")
                    .arg(format!("{}:probe", r.key))
                    .arg(std::process::id())
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000)
                    .query_async(&mut conn)
                    .await
                    .ok()
                    .flatten();
                won.map(|_| Permit {
                    breaker: self,
                    probe: false,
                    shared_probe: true,
                    done: false,
                })
            }
        }
    }

    /// How long until a call may go out, when none may now (any process's breaker open).
    pub async fn shared_wait(&self) -> Option<Duration> {
        match self.remote_state().await {
            RemoteState::Open(left) => Some(left),
            // Asking failsafe moves an open breaker whose period ended to half-open.
            _ if !self.machine.is_call_permitted() => Some(self.retry_in()),
            _ => None,
        }
    }

    /// The state as every process sees it (`closed`, `half_open` or `open`), and while open
    /// how long until a probe may go out: for dashboards, it changes nothing.
    pub async fn shared_view(&self) -> (&'static str, Option<Duration>) {
        match self.remote_state().await {
            RemoteState::Open(left) => ("open", Some(left)),
            RemoteState::Trial => ("half_open", None),
            RemoteState::Closed => match self.state() {
                "open" => ("open", Some(self.retry_in())),
                s => (s, None),
            },
        }
    }

    /// `closed`, `half_open` or `open`.
    pub fn state(&self) -> &'static str {
        match self.shared.state.load(Ordering::SeqCst) {
            CLOSED => "closed",
            HALF_OPEN => "half_open",
            _ => "open",
        }
    }

    /// How long the current open period lasts: `open_for` doubled per consecutive open,
    /// capped at `open_max` (the policy's exponential backoff).
    pub fn open_period(&self) -> Duration {
        let n = self.shared.opens.load(Ordering::SeqCst).clamp(1, 20);
        (self.shared.open_for * 2u32.pow(n - 1)).min(self.shared.open_max)
    }

    /// Time left until the breaker lets a probe through (at least 200 ms).
    pub fn retry_in(&self) -> Duration {
        let opened = *self
            .shared
            .opened_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match opened {
            Some(t) => self
                .open_period()
                .saturating_sub(t.elapsed())
                .max(Duration::from_millis(200)),
            None => self.shared.open_for,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerPolicy {
        BreakerPolicy {
            min_success_rate: 0.5,
            min_requests: 10,
            window: Duration::from_secs(1),
            open_for: Duration::from_secs(1),
            open_max: Duration::from_secs(2),
        }
    }

    #[test]
    fn opens_on_a_low_success_rate_probes_once_and_closes_on_success() {
        let metrics = Arc::new(Metrics::new());
        let b = Breaker::new(GuardKey::single("test"), &settings(), metrics.clone());
        // The policy judges only after a full window of traffic.
        let start = Instant::now();
        while b.state() == "closed" && start.elapsed() < Duration::from_secs(5) {
            // 60% failures
            for i in 0..10 {
                if let Some(p) = b.permit() {
                    if i % 5 < 3 { p.failure() } else { p.success() }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(b.state(), "open");
        assert!(b.permit().is_none(), "open: no calls");
        assert!(b.retry_in() <= Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(1100));
        let probe = b.permit().expect("half-open lets a probe through");
        assert_eq!(b.state(), "half_open");
        assert!(b.permit().is_none(), "one probe at a time");
        // A failed probe re-opens it for twice as long.
        probe.failure();
        assert_eq!(b.state(), "open");
        assert_eq!(b.open_period(), Duration::from_secs(2));
        assert!(b.retry_in() > Duration::from_millis(1500));
        std::thread::sleep(Duration::from_millis(2100));
        let probe = b.permit().expect("half-open again");
        probe.success();
        assert_eq!(b.state(), "closed");
        let text = metrics.render();
        assert!(
            text.contains("finworker_breaker_transitions_total{provider=\"test\",account=\"default\",to=\"open\"} 2"),
            "{text}"
        );
        assert!(text.contains("finworker_breaker_state{provider=\"test\",account=\"default\"} 0"));
    }

    #[test]
    fn no_match_answers_and_refusals_never_open_it() {
        let b = Breaker::new(
            GuardKey::single("test"),
            &settings(),
            Arc::new(Metrics::new()),
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1500) {
            b.permit().unwrap().success();
        }
        assert_eq!(b.state(), "closed");
    }
}
