//! The sandbox provider: a simulator of the external APIs finworker calls, with
//! deterministic answers, latency, error and outage injection, a provider-side rate limit,
//! and a log of every call it received (so tests and benchmarks count calls).
//!
//! One axum router; each simulated API is a module adding its routes ([`vop`] today; the
//! Genesis gateway simulator of the billing work is one more module). Knobs and the call
//! log are under `/_sandbox/`. Behaviour is documented in `docs/sandbox.md`.

pub mod genesis;
pub mod notify;
pub mod vop;

use std::{
    net::SocketAddr,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Runtime knobs (`PUT /_sandbox/config` changes them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Knobs {
    /// Added to every answer, milliseconds.
    pub latency_ms: u64,
    /// Fraction (0..1) of calls answered with an injected failure, spread evenly and
    /// deterministically (call n fails when ⌊(n+1)·rate⌋ > ⌊n·rate⌋).
    pub error_rate: f64,
    /// How injected failures look: `"503"` (an error answer) or `"timeout"` (no answer for
    /// 30 s).
    pub error_mode: String,
    /// While set and in the future (Unix ms), every call gets 503: an outage window.
    pub outage_until_ms: Option<u64>,
    /// Requests per second the provider accepts from everyone together; more get 429.
    /// 0 = unlimited.
    pub rate_limit: u32,
    /// Bearer key the API requires; none = open.
    pub api_key: Option<String>,
    /// Genesis: a repeated transaction_id is `"refuse"`d (error 450) or — the worst case a
    /// client must survive — `"accept"`ed as a second debit.
    pub genesis_duplicates: String,
    /// Genesis: the Basic-auth password required; none = any credentials.
    pub genesis_password: Option<String>,
    /// Genesis: a `pending_async` debit settles this many milliseconds after it was taken.
    pub genesis_async_ms: u64,
    /// Genesis: how long an "accepted then timeout" debit keeps the caller waiting.
    pub genesis_hang_ms: u64,
    /// Multiplies the notification retry schedule (`notify::RETRY_SCHEDULE`); tests shorten it.
    pub notify_retry_scale: f64,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            error_rate: 0.0,
            error_mode: "503".into(),
            outage_until_ms: None,
            rate_limit: 0,
            api_key: None,
            genesis_duplicates: "refuse".into(),
            genesis_password: None,
            genesis_async_ms: 2000,
            genesis_hang_ms: 60_000,
            notify_retry_scale: 1.0,
        }
    }
}

/// One received call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    /// When the call arrived, milliseconds since the sandbox started.
    pub at_ms: u64,
    /// Request path.
    pub path: String,
    /// Status answered.
    pub status: u16,
    /// IBAN asked about (masked).
    pub iban: Option<String>,
    /// The caller's User-Agent (finworker sends its process id).
    pub client: Option<String>,
}

/// `GET /_sandbox/calls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallLog {
    /// Every call, in arrival order.
    pub calls: Vec<Call>,
}

impl CallLog {
    /// Calls to paths starting with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.calls
            .iter()
            .filter(|c| c.path.starts_with(prefix))
            .count()
    }

    /// Highest number of calls (any path) that arrived within any `window`.
    pub fn peak(&self, window: Duration) -> usize {
        let w = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let t: Vec<u64> = self.calls.iter().map(|c| c.at_ms).collect();
        let (mut best, mut lo) = (0, 0);
        for hi in 0..t.len() {
            while t[hi] - t[lo] >= w {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }
}

tokio::task_local! {
    /// The request being handled: its User-Agent and when it arrived (set for every route
    /// by `tag_client`).
    pub static CLIENT: (Option<String>, Instant);
}

struct Inner {
    started: Instant,
    knobs: Mutex<Knobs>,
    calls: Mutex<Vec<Call>>,
    counter: AtomicU64,
    limiter: Mutex<Option<(u32, Arc<DefaultDirectRateLimiter>)>>,
    genesis: Mutex<genesis::Book>,
    notifications: Mutex<Vec<notify::Sent>>,
}

/// Shared sandbox state. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox(Arc<Inner>);

/// What an API handler should do with a call before answering it.
pub enum Gate {
    /// Answer normally.
    Serve,
    /// Answer this instead.
    Fail(Response),
}

impl Sandbox {
    /// A sandbox with these knobs.
    pub fn new(knobs: Knobs) -> Self {
        Self(Arc::new(Inner {
            started: Instant::now(),
            knobs: Mutex::new(knobs),
            calls: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
            limiter: Mutex::new(None),
            genesis: Mutex::new(genesis::Book::default()),
            notifications: Mutex::new(Vec::new()),
        }))
    }

    /// Current knobs.
    pub fn knobs(&self) -> Knobs {
        self.0
            .knobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the knobs.
    pub fn set_knobs(&self, k: Knobs) {
        *self.0.knobs.lock().unwrap_or_else(|p| p.into_inner()) = k;
    }

    fn log_notification(&self, n: notify::Sent) {
        self.0
            .notifications
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(n);
    }

    /// Every notification delivery attempt so far.
    pub fn notifications(&self) -> Vec<notify::Sent> {
        self.0
            .notifications
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn record(&self, path: &str, status: u16, iban: Option<&str>) {
        // A call counts when it arrives, as a provider's rate limit counts it, not when its
        // (latency-delayed) answer is decided.
        let (client, arrived) = CLIENT
            .try_with(|c| c.clone())
            .unwrap_or_else(|_| (None, Instant::now()));
        let call = Call {
            client,
            at_ms: u64::try_from(
                arrived
                    .saturating_duration_since(self.0.started)
                    .as_millis(),
            )
            .unwrap_or(u64::MAX),
            path: path.to_string(),
            status,
            iban: iban.map(crate::uploads::mask_iban),
        };
        self.0
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }

    fn over_limit(&self, rate: u32) -> bool {
        let Some(nz) = NonZeroU32::new(rate) else {
            return false;
        };
        let limiter = {
            let mut l = self.0.limiter.lock().unwrap_or_else(|p| p.into_inner());
            match &*l {
                Some((r, lim)) if *r == rate => lim.clone(),
                _ => {
                    // Burst of 5% of a second: a client pacing itself at the limit passes;
                    // one sending faster does not.
                    let burst = NonZeroU32::new((rate / 20).max(1)).unwrap_or(NonZeroU32::MIN);
                    let lim = Arc::new(RateLimiter::direct(
                        Quota::per_second(nz).allow_burst(burst),
                    ));
                    *l = Some((rate, lim.clone()));
                    lim
                }
            }
        };
        limiter.check().is_err()
    }

    /// Applies auth, the rate limit, latency, outages and error injection to one call; a
    /// call failed here is recorded with its status (served calls record via [`Self::served`]).
    pub async fn gate(&self, path: &str, auth: Option<&str>, iban: Option<&str>) -> Gate {
        let k = self.knobs();
        let fail = |status: StatusCode, msg: &str| {
            Gate::Fail((status, Json(serde_json::json!({ "error": msg }))).into_response())
        };
        if let Some(key) = &k.api_key
            && auth != Some(format!("Bearer {key}").as_str())
        {
            self.record(path, 401, iban);
            return fail(StatusCode::UNAUTHORIZED, "missing or wrong API key");
        }
        if self.over_limit(k.rate_limit) {
            self.record(path, 429, iban);
            return fail(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
        }
        let n = self.0.counter.fetch_add(1, Ordering::SeqCst);
        if k.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(k.latency_ms)).await;
        }
        let now_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(0);
        if k.outage_until_ms.is_some_and(|u| now_ms < u) {
            self.record(path, 503, iban);
            return fail(StatusCode::SERVICE_UNAVAILABLE, "scheduled outage");
        }
        let r = k.error_rate.clamp(0.0, 1.0);
        let injected = ((n + 1) as f64 * r).floor() > (n as f64 * r).floor();
        if injected {
            if k.error_mode == "timeout" {
                self.record(path, 504, iban);
                tokio::time::sleep(Duration::from_secs(30)).await;
                return fail(StatusCode::GATEWAY_TIMEOUT, "injected timeout");
            }
            self.record(path, 503, iban);
            return fail(StatusCode::SERVICE_UNAVAILABLE, "injected error");
        }
        Gate::Serve
    }

    /// Records a served call.
    pub fn served(&self, path: &str, status: u16, iban: Option<&str>) {
        self.record(path, status, iban);
    }

    /// The call log.
    pub fn calls(&self) -> CallLog {
        CallLog {
            calls: self
                .0
                .calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Forgets every call.
    pub fn clear_calls(&self) {
        self.0
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The whole router: every simulated API plus the control routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/_sandbox/config", get(get_knobs).put(put_knobs))
            .route("/_sandbox/calls", get(get_calls).delete(delete_calls))
            .merge(vop::routes())
            .merge(genesis::routes())
            .layer(axum::middleware::from_fn(tag_client))
            .with_state(self.clone())
    }
}

/// Makes the caller's User-Agent and arrival time available to the call log of whatever
/// route handles it.
async fn tag_client(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let ua = req
        .headers()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    CLIENT.scope((ua, Instant::now()), next.run(req)).await
}

async fn get_knobs(State(s): State<Sandbox>) -> Json<Knobs> {
    Json(s.knobs())
}

async fn put_knobs(State(s): State<Sandbox>, Json(k): Json<Knobs>) -> Json<Knobs> {
    s.set_knobs(k.clone());
    Json(k)
}

async fn get_calls(State(s): State<Sandbox>) -> Json<CallLog> {
    Json(s.calls())
}

async fn delete_calls(State(s): State<Sandbox>) -> StatusCode {
    s.clear_calls();
    StatusCode::NO_CONTENT
}

/// A sandbox served on `bind` (port 0 picks one) until `shutdown`; returns its address.
pub async fn serve(
    bind: &str,
    knobs: Knobs,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, Sandbox, tokio::task::JoinHandle<()>)> {
    let sandbox = Sandbox::new(knobs);
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let app = sandbox.router();
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok((addr, sandbox, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_counts_calls_in_the_busiest_window() {
        let log = CallLog {
            calls: [0, 100, 200, 900, 1000, 1001, 1002]
                .iter()
                .map(|&at_ms| Call {
                    at_ms,
                    path: "/vop".into(),
                    status: 200,
                    iban: None,
                    client: None,
                })
                .collect(),
        };
        assert_eq!(log.peak(Duration::from_secs(1)), 6); // 100..1002 minus 0
        assert_eq!(log.count("/vop"), 7);
    }
}
