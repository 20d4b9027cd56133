//! Prometheus metrics. One registry per application instance (not a process global), so
//! several apps in one test process keep their counts apart.

use std::sync::Mutex;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of per-job-type series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// Job type (= queue).
    pub job_type: String,
}

/// Labels of queue depth series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DepthLabels {
    /// Queue name.
    pub queue: String,
    /// waiting | scheduled | in_flight.
    pub state: String,
}

/// Labels of provider request series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Provider module.
    pub provider: String,
    /// ok | refused | server_error | timeout | transport | rate_limited | rejected_by_breaker.
    pub outcome: String,
}

/// Labels of a count by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What happened.
    pub outcome: String,
}

/// Labels of VOP/BAV result series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// `vop` or `bav`.
    pub check: String,
    /// The result (match, close_match, no_match, valid, closed…).
    pub result: String,
}

/// Labels of billing series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DebitLabels {
    /// Gateway account.
    pub account: String,
    /// The gateway's first answer: approved, declined, pending_async, error, unknown…
    pub outcome: String,
}

/// Labels of retention series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrunedLabels {
    /// job_runs | reports | staged_objects | deliveries_deleted | deliveries_stripped.
    pub what: String,
}

/// Labels of breaker series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerLabels {
    /// Provider module.
    pub provider: String,
    /// Account at the provider (`default` when it has one).
    pub account: String,
}

/// Labels of breaker transitions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// Provider module.
    pub provider: String,
    /// Account at the provider.
    pub account: String,
    /// open | half_open | closed.
    pub to: String,
}

/// Labels of webhook delivery series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `emp`.
    pub provider: String,
    /// accepted | repeat | rejected | malformed | unavailable.
    pub verdict: String,
}

/// Labels of transaction event series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// send | webhook | reconcile | ledger_sync | chargeback_sweep | ops.
    pub source: String,
    /// The status moved to (or `refused` for an impossible change, stored not applied).
    pub to: String,
}

/// Labels of chargeback series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChargebackLabels {
    /// Gateway account.
    pub account: String,
    /// blacklisted | deactivated | retry (the reason-code policy's decision).
    pub effect: String,
}

/// VOP request outcomes known at start (errors add their own).
const VOP_OUTCOMES: &[&str] = &["ok", "rejected_by_breaker"];

/// Labels of per-account series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabels {
    /// Gateway account.
    pub account: String,
}

/// Labels of attempt-status series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// Attempt status.
    pub status: String,
}

/// Labels of sync-difference series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// Gateway account.
    pub account: String,
    /// corrected | repaired | refused | missing_locally | missing_remotely | recorded |
    /// backfilled | unmatched.
    pub kind: String,
}

/// Labels of per-queue series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// Queue name.
    pub queue: String,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

/// All series the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Attempts started.
    pub started: Family<JobLabels, Counter>,
    /// Attempts that succeeded.
    pub succeeded: Family<JobLabels, Counter>,
    /// Attempts that failed (retried or dead).
    pub failed: Family<JobLabels, Counter>,
    /// Failed attempts scheduled for another try.
    pub retried: Family<JobLabels, Counter>,
    /// Jobs moved to the dead-letter store.
    pub dead: Family<JobLabels, Counter>,
    /// Jobs taken back from dead workers.
    pub orphans_recovered: Family<JobLabels, Counter>,
    /// Attempts rescheduled without spending an attempt (deferrals, outages).
    pub snoozed: Family<JobLabels, Counter>,
    /// Attempts that finished after their lease was taken over (nothing kept).
    pub stale: Family<JobLabels, Counter>,
    /// Times this process found its lease lost and stopped its jobs.
    pub leases_lost: Counter,
    /// Pipelines the sweeper re-drove, by stage.
    pub sweeper_redrives: Family<QueueLabels, Counter>,
    /// Rows and objects removed by the retention job.
    pub pruned: Family<PrunedLabels, Counter>,
    /// Upload rows settled, by outcome (imported, duplicate, rejected).
    pub upload_rows: Family<OutcomeLabels, Counter>,
    /// Debtors validated, by outcome (valid, invalid).
    pub validated: Family<OutcomeLabels, Counter>,
    /// Keys of imported rows looked up among earlier debtors, or skipped by the linking filter.
    pub link_keys: Family<OutcomeLabels, Counter>,
    /// VOP/BAV results, by check and result.
    pub vop_results: Family<CheckLabels, Counter>,
    /// Debits sent, by account and the gateway's first answer.
    pub debits: Family<DebitLabels, Counter>,
    /// Their amounts in minor units.
    pub debit_amount: Family<DebitLabels, Counter>,
    /// Seconds callers waited for a provider account's shared rate limit.
    pub rate_limit_wait: Family<BreakerLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// Times the scrape-time gauges were read from Redis and Postgres.
    pub gauge_refreshes: Counter,
    /// When the scrape-time gauges were last read (see `http.metrics_refresh`).
    pub gauges_refreshed: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Attempt duration.
    pub duration: Family<JobLabels, Histogram, fn() -> Histogram>,
    /// Attempts running now in this process.
    pub in_flight: Family<JobLabels, Gauge>,
    /// Queue depth by state (all processes; read from Redis at scrape time).
    pub queue_depth: Family<DepthLabels, Gauge>,
    /// Age of the oldest job that could run now, seconds.
    pub oldest_waiting_seconds: Family<QueueLabels, Gauge>,
    /// Dead-letter store size per queue (Postgres, at scrape time).
    pub dead_letter_size: Family<QueueLabels, Gauge>,
    /// Errors talking to Redis or Postgres from the runtime loops.
    pub runtime_errors: Counter,
    /// Provider requests by outcome.
    pub provider_requests: Family<ProviderLabels, Counter>,
    /// VOP/BAV answers reused from the cache instead of a provider call.
    pub vop_cache_hits: Counter,
    /// Breaker state per provider: 0 closed, 1 half-open, 2 open.
    pub breaker_state: Family<BreakerLabels, Gauge>,
    /// Breaker transitions per provider and target state.
    pub breaker_transitions: Family<TransitionLabels, Counter>,
    /// Billing runs paused because their account's breaker opened.
    pub billing_pauses: Counter,
    /// Webhook deliveries received, by verdict.
    pub webhook_deliveries: Family<DeliveryLabels, Counter>,
    /// Attempt status changes recorded, by source and new status.
    pub transaction_events: Family<EventLabels, Counter>,
    /// Chargebacks recorded, by account and what their reason code did.
    pub chargebacks: Family<ChargebackLabels, Counter>,
    /// Open attempts older than their hard age (flagged for ops), by status.
    pub attempts_past_hard_age: Family<StatusLabels, Gauge>,
    /// Open attempts by status (pending, pending_async, submitted, unknown).
    pub open_attempts: Family<StatusLabels, Gauge>,
    /// Age of the oldest open attempt, by status (reconciliation lag).
    pub oldest_open_attempt_seconds: Family<StatusLabels, Gauge>,
    /// Chargeback rate per account over the guard's window (0–1).
    pub chargeback_rate: Family<AccountLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// 1 while an account is held by the chargeback-rate guard.
    pub account_held: Family<AccountLabels, Gauge>,
    /// Differences found by ledger syncs and sweeps, by account and kind.
    pub sync_differences: Family<SyncLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the series whose labels are known at start (every job type, gateway account,
    /// open status, delivery verdict…) at zero, so they are exported before their first event:
    /// dashboards show them, and `increase()`/`rate()` in alert rules see the first event too.
    pub fn init_series<'a>(
        &self,
        job_types: impl IntoIterator<Item = &'a str>,
        accounts: impl IntoIterator<Item = String>,
        vop_provider: &str,
    ) {
        for jt in job_types {
            let l = JobLabels {
                job_type: jt.to_string(),
            };
            for f in [
                &self.started,
                &self.succeeded,
                &self.failed,
                &self.retried,
                &self.dead,
                &self.orphans_recovered,
                &self.snoozed,
                &self.stale,
            ] {
                let _ = f.get_or_create(&l);
            }
            let _ = self.in_flight.get_or_create(&l);
            let _ = self.duration.get_or_create(&l);
        }
        for account in accounts {
            let a = AccountLabels {
                account: account.clone(),
            };
            let _ = self.account_held.get_or_create(&a);
            let _ = self.chargeback_rate.get_or_create(&a);
            for effect in ["blacklisted", "deactivated", "retry"] {
                let _ = self.chargebacks.get_or_create(&ChargebackLabels {
                    account: account.clone(),
                    effect: effect.into(),
                });
            }
            for outcome in ["approved", "declined", "pending_async", "error", "unknown"] {
                let l = DebitLabels {
                    account: account.clone(),
                    outcome: outcome.into(),
                };
                let _ = self.debits.get_or_create(&l);
                let _ = self.debit_amount.get_or_create(&l);
            }
            let _ = self.rate_limit_wait.get_or_create(&BreakerLabels {
                provider: "genesis".into(),
                account: account.clone(),
            });
            for kind in [
                "corrected",
                "repaired",
                "refused",
                "missing_locally",
                "missing_remotely",
                "recorded",
                "backfilled",
                "unmatched",
            ] {
                let _ = self.sync_differences.get_or_create(&SyncLabels {
                    account: account.clone(),
                    kind: kind.into(),
                });
            }
        }
        for status in ["submitted", "unknown", "pending", "pending_async"] {
            let l = StatusLabels {
                status: status.into(),
            };
            let _ = self.open_attempts.get_or_create(&l);
            let _ = self.attempts_past_hard_age.get_or_create(&l);
            let _ = self.oldest_open_attempt_seconds.get_or_create(&l);
        }
        for verdict in ["accepted", "repeat", "rejected", "malformed", "unavailable"] {
            let _ = self.webhook_deliveries.get_or_create(&DeliveryLabels {
                provider: "emp".into(),
                verdict: verdict.into(),
            });
        }
        for source in [
            "send",
            "webhook",
            "reconcile",
            "ledger_sync",
            "chargeback_sweep",
        ] {
            for to in [
                "approved",
                "declined",
                "error",
                "pending_async",
                "chargebacked",
                "refused",
            ] {
                let _ = self.transaction_events.get_or_create(&EventLabels {
                    source: source.into(),
                    to: to.into(),
                });
            }
        }
        for (check, results) in [
            (
                "vop",
                &["match", "close_match", "no_match", "not_possible", "error"][..],
            ),
            (
                "bav",
                &[
                    "valid",
                    "closed",
                    "no_direct_debit",
                    "not_possible",
                    "error",
                ][..],
            ),
        ] {
            for r in results {
                let _ = self.vop_results.get_or_create(&CheckLabels {
                    check: check.into(),
                    result: (*r).into(),
                });
            }
        }
        // The sweeper's re-drives, by stage (the upload pipeline's, and billing runs).
        for stage in [
            "split",
            "import",
            "validation",
            "verification",
            "report",
            "billing",
        ] {
            let _ = self.sweeper_redrives.get_or_create(&QueueLabels {
                queue: stage.into(),
            });
        }
        for what in [
            "job_runs",
            "reports",
            "staged_objects",
            "deliveries_deleted",
            "deliveries_stripped",
        ] {
            let _ = self
                .pruned
                .get_or_create(&PrunedLabels { what: what.into() });
        }
        for outcome in ["imported", "duplicate", "rejected"] {
            let _ = self.upload_rows.get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            });
        }
        for outcome in ["valid", "invalid"] {
            let _ = self.validated.get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            });
        }
        for outcome in ["probed", "skipped"] {
            let _ = self.link_keys.get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            });
        }
        let _ = self.rate_limit_wait.get_or_create(&BreakerLabels {
            provider: vop_provider.to_string(),
            account: "default".into(),
        });
        for outcome in VOP_OUTCOMES {
            let _ = self.provider_requests.get_or_create(&ProviderLabels {
                provider: vop_provider.to_string(),
                outcome: (*outcome).into(),
            });
        }
    }

    /// Creates and registers every series.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("finworker");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            started: Family::default(),
            succeeded: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            dead: Family::default(),
            orphans_recovered: Family::default(),
            snoozed: Family::default(),
            stale: Family::default(),
            leases_lost: Counter::default(),
            sweeper_redrives: Family::default(),
            pruned: Family::default(),
            upload_rows: Family::default(),
            validated: Family::default(),
            link_keys: Family::default(),
            vop_results: Family::default(),
            debits: Family::default(),
            debit_amount: Family::default(),
            rate_limit_wait: Family::default(),
            gauge_refreshes: Counter::default(),
            gauges_refreshed: tokio::sync::Mutex::new(None),
            duration: Family::new_with_constructor(duration_histogram),
            in_flight: Family::default(),
            queue_depth: Family::default(),
            oldest_waiting_seconds: Family::default(),
            dead_letter_size: Family::default(),
            runtime_errors: Counter::default(),
            provider_requests: Family::default(),
            vop_cache_hits: Counter::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            billing_pauses: Counter::default(),
            webhook_deliveries: Family::default(),
            transaction_events: Family::default(),
            chargebacks: Family::default(),
            attempts_past_hard_age: Family::default(),
            open_attempts: Family::default(),
            oldest_open_attempt_seconds: Family::default(),
            chargeback_rate: Family::default(),
            account_held: Family::default(),
            sync_differences: Family::default(),
        };
        r.register(
            "attempts_past_hard_age",
            "Open attempts (submitted/unknown, pending/pending_async) older than lifecycle.*_hard_age: flagged for a person, never guessed",
            m.attempts_past_hard_age.clone(),
        );
        r.register(
            "open_attempts",
            "Attempts whose outcome is not known yet, by status (as of the last reconciliation)",
            m.open_attempts.clone(),
        );
        r.register(
            "oldest_open_attempt_seconds",
            "Age of the oldest attempt in each open status (as of the last reconciliation)",
            m.oldest_open_attempt_seconds.clone(),
        );
        r.register(
            "chargeback_rate",
            "Chargebacks / debits per account over lifecycle.chargeback_guard.window_days",
            m.chargeback_rate.clone(),
        );
        r.register(
            "account_held",
            "1 while the chargeback-rate guard holds the account's billing runs",
            m.account_held.clone(),
        );
        r.register(
            "sync_differences",
            "Differences found by ledger syncs and chargeback/retrieval sweeps, by account and kind",
            m.sync_differences.clone(),
        );
        r.register(
            "webhook_deliveries",
            "Webhook deliveries received, by provider and verdict (accepted, repeat, rejected, malformed, unavailable = not stored, answered 503)",
            m.webhook_deliveries.clone(),
        );
        r.register(
            "transaction_events",
            "Attempt status changes recorded, by source and new status (refused = impossible, stored not applied)",
            m.transaction_events.clone(),
        );
        r.register(
            "chargebacks",
            "Chargebacks recorded, by account and what the reason-code policy did (blacklisted, deactivated, retry)",
            m.chargebacks.clone(),
        );
        r.register(
            "upload_rows",
            "Upload rows settled, by outcome (imported, duplicate, rejected): every row is one of them",
            m.upload_rows.clone(),
        );
        r.register(
            "debtors_validated",
            "Debtors validated, by outcome (valid, invalid)",
            m.validated.clone(),
        );
        r.register(
            "upload_link_keys",
            "IBAN keys of imported rows looked up among earlier debtors (probed), or left out by the linking filter (skipped)",
            m.link_keys.clone(),
        );
        r.register(
            "vop_results",
            "VOP name checks and BAV account checks, by check and result",
            m.vop_results.clone(),
        );
        r.register(
            "billing_debits",
            "Debits sent, by gateway account and the gateway's first answer (later changes: finworker_transaction_events_total)",
            m.debits.clone(),
        );
        r.register(
            "billing_debit_amount_minor",
            "Amounts of the debits sent, in minor units, by gateway account and first answer",
            m.debit_amount.clone(),
        );
        r.register(
            "rate_limit_wait_seconds",
            "Seconds spent waiting for a provider account's shared rate limit",
            m.rate_limit_wait.clone(),
        );
        r.register(
            "retention_pruned",
            "Rows and objects removed by the retention job, by what (job_runs, reports, staged_objects, deliveries_deleted, deliveries_stripped)",
            m.pruned.clone(),
        );
        r.register(
            "billing_run_pauses",
            "Billing runs paused because their gateway account's circuit breaker opened",
            m.billing_pauses.clone(),
        );
        r.register("jobs_started", "Job attempts started", m.started.clone());
        r.register(
            "jobs_succeeded",
            "Job attempts that succeeded",
            m.succeeded.clone(),
        );
        r.register("jobs_failed", "Job attempts that failed", m.failed.clone());
        r.register(
            "jobs_snoozed",
            "Job attempts rescheduled without spending an attempt",
            m.snoozed.clone(),
        );
        r.register(
            "jobs_stale",
            "Job attempts that finished after their lease was taken over",
            m.stale.clone(),
        );
        r.register(
            "leases_lost",
            "Times this process found its lease lost and stopped its jobs",
            m.leases_lost.clone(),
        );
        r.register(
            "metrics_gauge_refreshes",
            "Times /metrics read queue depths and dead-letter sizes (at most one per http.metrics_refresh)",
            m.gauge_refreshes.clone(),
        );
        r.register(
            "sweeper_redrives",
            "Pipeline stages the sweeper re-drove from Postgres",
            m.sweeper_redrives.clone(),
        );
        r.register(
            "jobs_retried",
            "Failed attempts scheduled for a retry",
            m.retried.clone(),
        );
        r.register(
            "jobs_dead",
            "Jobs moved to the dead-letter store",
            m.dead.clone(),
        );
        r.register(
            "jobs_orphans_recovered",
            "Jobs taken back from worker processes that died",
            m.orphans_recovered.clone(),
        );
        r.register(
            "job_duration_seconds",
            "Duration of job attempts",
            m.duration.clone(),
        );
        r.register(
            "jobs_in_flight",
            "Attempts running in this process",
            m.in_flight.clone(),
        );
        r.register(
            "queue_depth",
            "Jobs per queue and state",
            m.queue_depth.clone(),
        );
        r.register(
            "queue_oldest_waiting_seconds",
            "Age of the oldest job that could run now",
            m.oldest_waiting_seconds.clone(),
        );
        r.register(
            "dead_letter_size",
            "Jobs in the dead-letter store",
            m.dead_letter_size.clone(),
        );
        r.register(
            "runtime_errors",
            "Errors talking to Redis or Postgres in the worker loops",
            m.runtime_errors.clone(),
        );
        r.register(
            "provider_requests",
            "Requests to verification providers by outcome",
            m.provider_requests.clone(),
        );
        r.register(
            "vop_cache_hits",
            "VOP/BAV answers reused from the cache",
            m.vop_cache_hits.clone(),
        );
        r.register(
            "breaker_state",
            "Circuit breaker state per provider (0 closed, 1 half-open, 2 open)",
            m.breaker_state.clone(),
        );
        r.register(
            "breaker_transitions",
            "Circuit breaker state changes",
            m.breaker_transitions.clone(),
        );
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = r;
        m
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if encode(&mut out, &r).is_err() {
            out.clear();
        }
        out
    }

    /// Counts validated debtors.
    pub fn count_validated(&self, valid: impl TryInto<u64>, invalid: impl TryInto<u64>) {
        for (outcome, n) in [
            ("valid", valid.try_into().unwrap_or(0)),
            ("invalid", invalid.try_into().unwrap_or(0)),
        ] {
            self.validated
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.into(),
                })
                .inc_by(n);
        }
    }

    /// Counts a debit sent and its amount by the gateway's first answer.
    pub fn count_debit(&self, account: &str, outcome: &str, amount_minor: i64) {
        let labels = DebitLabels {
            account: account.into(),
            outcome: outcome.into(),
        };
        self.debits.get_or_create(&labels).inc();
        self.debit_amount
            .get_or_create(&labels)
            .inc_by(u64::try_from(amount_minor).unwrap_or(0));
    }

    /// Counts what a retention pass removed.
    pub fn record_retention(&self, p: &crate::retention::Pruned) {
        for (what, n) in [
            ("job_runs", p.job_runs),
            ("reports", p.reports),
            ("staged_objects", p.staged_objects),
            ("deliveries_deleted", p.deliveries_deleted),
            ("deliveries_stripped", p.deliveries_stripped),
        ] {
            self.pruned
                .get_or_create(&PrunedLabels { what: what.into() })
                .inc_by(n);
        }
    }

    /// Labels for a job type.
    pub fn job(job_type: &str) -> JobLabels {
        JobLabels {
            job_type: job_type.to_string(),
        }
    }
}
