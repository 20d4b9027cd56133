//! Retry policy: exponential backoff with jitter, per queue, counted by failed attempts.
//! (apalis-redis hard-codes 25 attempts with linear backoff and ignores max_attempts; the
//! runtime decides here instead.)

use std::time::Duration;

use rand::Rng;

use crate::config::QueueSettings;

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Try again after this delay.
    Retry(Duration),
    /// Attempts are spent: dead-letter.
    GiveUp,
}

/// `failures` counts failed attempts including the one that just failed (1 after the first).
pub fn decide(q: &QueueSettings, max_attempts: u32, failures: u32) -> Decision {
    if failures >= max_attempts {
        return Decision::GiveUp;
    }
    Decision::Retry(backoff(q, failures))
}

/// base × 2^(failures−1), capped at backoff_max, plus up to 25 % jitter (so a burst of
/// failures does not retry in lockstep).
pub fn backoff(q: &QueueSettings, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let raw = q
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(q.backoff_max);
    let jitter = rand::rng().random_range(0.0..=0.25);
    raw + raw.mul_f64(jitter)
}

/// Delay before the next try of a job snoozed by an infrastructure outage: 1 s doubling per
/// snooze up to 30 s, plus jitter, so an outage of any length costs no attempt and the work
/// resumes within about 30 s of the recovery.
pub fn outage_delay(snoozes: u32) -> Duration {
    let raw = Duration::from_secs(1)
        .saturating_mul(1u32 << snoozes.min(5))
        .min(Duration::from_secs(30));
    raw + raw.mul_f64(rand::rng().random_range(0.0..=0.25))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> QueueSettings {
        QueueSettings {
            concurrency: 1,
            max_attempts: 5,
            timeout: Duration::from_secs(1),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
        }
    }

    #[test]
    fn delays_double_with_bounded_jitter_and_stop_at_the_cap() {
        for (failures, base) in [(1, 2), (2, 4), (3, 8), (4, 16), (6, 60), (20, 60)] {
            let d = backoff(&q(), failures);
            let base = Duration::from_secs(base);
            assert!(d >= base && d <= base.mul_f64(1.25), "{failures}: {d:?}");
        }
    }

    #[test]
    fn the_last_allowed_attempt_gives_up() {
        assert!(matches!(decide(&q(), 3, 2), Decision::Retry(_)));
        assert_eq!(decide(&q(), 3, 3), Decision::GiveUp);
        assert_eq!(decide(&q(), 1, 1), Decision::GiveUp);
    }
}
