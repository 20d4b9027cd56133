//! Crash points, for the crash tests only: with `FINWORKER_CRASH_AT=<point>:<n>` in its
//! environment, the process SIGKILLs itself the n-th time it reaches `<point>`, so a test can
//! kill the daemon at an exact step of a debit. Armed only when `worker.allow_test_jobs` is on
//! (never in production); otherwise every point is a no-op.
//!
//! Points in billing: `claim_before_commit`, `claim_after_commit` (attempts committed, nothing
//! sent), `send_started` (a debit's request is on its way), `answer_received` (the gateway
//! answered, nothing recorded), `outcome_recorded` (recorded, job not settled).

use std::sync::{
    OnceLock,
    atomic::{AtomicU32, Ordering},
};

static ARMED: OnceLock<Option<(String, u32)>> = OnceLock::new();
static HITS: AtomicU32 = AtomicU32::new(0);

/// The environment variable read by [`arm`].
pub const ENV: &str = "FINWORKER_CRASH_AT";

/// Reads [`ENV`] once, when test jobs are allowed.
pub fn arm(allow_test_jobs: bool) {
    let parsed = allow_test_jobs
        .then(|| std::env::var(ENV).ok())
        .flatten()
        .and_then(|v| {
            let (p, n) = v.rsplit_once(':')?;
            Some((p.to_string(), n.parse().ok()?))
        });
    if let Some((p, n)) = &parsed {
        tracing::warn!(point = %p, n, "crash point armed: this process will SIGKILL itself (test only)");
    }
    let _ = ARMED.set(parsed);
}

/// A crash point.
pub fn point(name: &str) {
    if let Some(Some((p, n))) = ARMED.get()
        && p == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        tracing::warn!(point = name, "crash point reached: SIGKILL");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
