//! `billing_batch` (ProcessBillingChunkJob): works one billing run with the others of its run,
//! in any number of processes. Each loop claims debtors (`FOR UPDATE SKIP LOCKED`, every rule
//! re-checked, attempts committed), sends them through the account's breaker and shared rate
//! limit, and records outcomes as they come.
//!
//! - The account's breaker open: unsent debits are released, the run is `paused` (reason
//!   logged at error level), the job snoozes until the breaker lets a probe through, then the
//!   run resumes by itself. No attempt is spent.
//! - Paused by an operator or cancelled: the job ends (`billing resume` starts new ones).
//! - After `billing.slice`, or when the process drains, it stops claiming, lets its calls
//!   finish, and snoozes (a continuation without spending an attempt).
//! - No debtor left: it reconciles the run's unresolved debits and completes the run; while
//!   some wait for their reconcile, it snoozes until the next is due.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    billing::{
        BillingError,
        accounts::{self, Account},
        debit::{self, Claimed, Sent},
        run,
    },
    context::AppContext,
    queue::{
        engine::NewJob,
        job::{Job, JobContext, JobError},
    },
};

/// Payload of `billing_batch`: one of a run's workers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BillingBatch {
    /// The run.
    pub run_id: Uuid,
    /// Which of the run's `billing.batch_jobs` this is.
    pub slot: u32,
    /// The fan-out this job belongs to (each resume or re-drive is a new one).
    pub generation: u32,
}

impl Job for BillingBatch {
    const NAME: &'static str = "billing_batch";

    fn example() -> Self {
        BillingBatch {
            run_id: Uuid::from_u128(0x0196f1c2_7d1e_7c3a_9f00_5b2a7e0e4a12),
            slot: 0,
            generation: 1,
        }
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        work(&ctx, self.run_id).await
    }
}

/// Enqueues a new generation of the run's batch jobs.
pub async fn fan_out(app: &AppContext, run_id: Uuid) -> anyhow::Result<u32> {
    let mut tx = app.db.begin().await?;
    let (generation,): (i32,) = tx
        .fetch_one(
            sqlx::query_as(
                "UPDATE billing_runs SET batches = batches + 1, updated_at = now() WHERE id = $1 RETURNING batches",
            )
            .bind(run_id),
        )
        .await?;
    tx.commit().await?;
    let generation = u32::try_from(generation).unwrap_or(0);
    let jobs: Vec<NewJob> = (0..app.settings.billing.batch_jobs)
        .map(|slot| {
            let b = BillingBatch {
                run_id,
                slot,
                generation,
            };
            Ok(NewJob {
                idempotency_key: Some(format!("billing_batch:{run_id}:{generation}:{slot}")),
                ..NewJob::new(BillingBatch::NAME, serde_json::to_string(&b)?)
            })
        })
        .collect::<anyhow::Result<_>>()?;
    app.queue
        .push(&jobs, app.settings.worker.idempotency_ttl)
        .await?;
    Ok(generation)
}

fn retry(e: impl Into<anyhow::Error>) -> JobError {
    JobError::Retryable(e.into())
}

async fn work(ctx: &JobContext, run_id: Uuid) -> Result<(), JobError> {
    let app = &ctx.app;
    let s = &app.settings;
    let Some(r) = run::get(&app.db, run_id).await.map_err(retry)? else {
        return Err(JobError::permanent(format!("no billing run {run_id}")));
    };
    let Some(account) = app.accounts.get(&r.account) else {
        return Err(JobError::snooze(
            Duration::from_secs(60),
            format!(
                "gateway account `{}` is not configured in this process",
                r.account
            ),
        ));
    };
    let started = Instant::now();
    let window = s.gateway.request_timeout;
    let mut queue: VecDeque<debit::Claim> = VecDeque::new();
    let mut flying: tokio::task::JoinSet<(i64, Sent)> = tokio::task::JoinSet::new();
    // Outcomes are written by their own tasks (two at a time) while sending goes on: a loop
    // that waited for each write would leave the rate limit's slots unused meanwhile.
    let mut recording: tokio::task::JoinSet<Result<(), BillingError>> = tokio::task::JoinSet::new();
    let mut exhausted = false;
    let mut halted: Option<String> = None;
    let mut breaker_open = false;
    let mut touched = Instant::now();
    // A run paused by the breaker is only ever left by a snooze: resume it (once) when this
    // execution finds the breaker letting calls through.
    if accounts::breaker_wait(&account).await.is_none() {
        resume_after_breaker(app, run_id).await?;
    }
    loop {
        if touched.elapsed() > Duration::from_secs(2) {
            // The sweeper re-drives runs whose record stands still: this one is alive.
            touch(app, run_id).await?;
            touched = Instant::now();
        }
        let stopping = ctx.shutdown.is_cancelled() || started.elapsed() > s.billing.slice;
        if !stopping && !breaker_open && halted.is_none() && !exhausted {
            if accounts::breaker_wait(&account).await.is_some() {
                breaker_open = true;
            } else {
                if queue.len() < s.billing.in_flight {
                    match debit::claim(app, &ctx.fence, run_id)
                        .await
                        .map_err(crate::jobs::billing::to_job_error)?
                    {
                        Claimed::Debits(c) => queue.extend(c),
                        Claimed::Empty => exhausted = true,
                        Claimed::Halted(st) => halted = Some(st),
                    }
                }
            }
        }
        let give_up = stopping || breaker_open || halted.is_some();
        while flying.len() < s.billing.in_flight {
            let Some(c) = queue.pop_front() else { break };
            if give_up {
                flying.spawn(async move {
                    (c.attempt_id, Sent::NotSent("stopped before sending".into()))
                });
            } else {
                let account: Arc<Account> = account.clone();
                flying.spawn(async move {
                    let sent = debit::send(&account, &c, window).await;
                    (c.attempt_id, sent)
                });
            }
        }
        if flying.is_empty() {
            if queue.is_empty() && (give_up || exhausted) {
                break;
            }
            continue;
        }
        // Outcomes are written as they arrive, several per transaction when several arrived.
        let mut done = Vec::new();
        if let Some(r) = flying.join_next().await {
            done.push(r.map_err(retry)?);
        }
        let gather_until = Instant::now() + Duration::from_millis(10);
        while done.len() < 64 {
            match flying.try_join_next() {
                Some(r) => done.push(r.map_err(retry)?),
                None if !flying.is_empty() && Instant::now() < gather_until && queue.is_empty() => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                None => break,
            }
        }
        for (id, sent) in &done {
            if let Sent::NotSent(reason) = sent {
                tracing::debug!(attempt_id = id, %reason, "debit not sent; released");
                if reason.contains("circuit breaker") {
                    breaker_open = true;
                }
            }
        }
        while let Some(r) = recording.try_join_next() {
            r.map_err(retry)?
                .map_err(crate::jobs::billing::to_job_error)?;
        }
        while recording.len() >= 2 {
            if let Some(r) = recording.join_next().await {
                r.map_err(retry)?
                    .map_err(crate::jobs::billing::to_job_error)?;
            }
        }
        let (app2, fence2) = (app.clone(), ctx.fence.clone());
        recording.spawn(async move { debit::record(&app2, &fence2, &done).await.map(|_| ()) });
    }
    while let Some(r) = recording.join_next().await {
        r.map_err(retry)?
            .map_err(crate::jobs::billing::to_job_error)?;
    }
    if breaker_open {
        let wait = accounts::breaker_wait(&account)
            .await
            .unwrap_or(Duration::from_millis(500));
        pause_for_breaker(app, run_id, &r.account).await?;
        return Err(JobError::snooze(
            wait,
            format!("gateway account `{}` circuit breaker is open", r.account),
        ));
    }
    if let Some(st) = halted {
        if st == "paused" {
            let by: Option<(Option<String>,)> = app
                .db
                .begin()
                .await
                .map_err(retry)?
                .fetch_optional(
                    sqlx::query_as("SELECT paused_by FROM billing_runs WHERE id = $1").bind(run_id),
                )
                .await
                .map_err(retry)?;
            if matches!(by, Some((Some(ref b),)) if b == "breaker") {
                return Err(JobError::snooze(
                    Duration::from_millis(500),
                    "run paused by the breaker",
                ));
            }
        }
        tracing::info!(run_id = %run_id, status = %st, "billing batch ends: the run is not running");
        return Ok(());
    }
    if !exhausted {
        // Slice over or draining: continue in the same job later, no attempt spent.
        return Err(JobError::snooze(Duration::ZERO, "billing batch continues"));
    }
    // Nothing left to claim: settle what is unresolved, then complete.
    debit::reconcile_due(app, &ctx.fence, Some(run_id), 200)
        .await
        .map_err(crate::jobs::billing::to_job_error)?;
    if run::complete_if_done(app, &ctx.fence, run_id)
        .await
        .map_err(crate::jobs::billing::to_job_error)?
    {
        return Ok(());
    }
    let wait = next_due(app, run_id).await?;
    Err(JobError::snooze(
        wait,
        "waiting to reconcile the run's unresolved debits",
    ))
}

/// Marks the run as alive for the sweeper (`billing_run_progress`, not the run's row: claims
/// share-lock that one, and a frequent write to it would make every claim queue behind it).
async fn touch(app: &AppContext, run_id: Uuid) -> Result<(), JobError> {
    let mut tx = app.db.begin().await.map_err(retry)?;
    tx.execute(
        sqlx::query(
            "INSERT INTO billing_run_progress (run_id, at) VALUES ($1, now()) \
             ON CONFLICT (run_id) DO UPDATE SET at = now() \
             WHERE billing_run_progress.at < now() - interval '1 second'",
        )
        .bind(run_id),
    )
    .await
    .map_err(retry)?;
    tx.commit().await.map_err(retry)
}

async fn next_due(app: &AppContext, run_id: Uuid) -> Result<Duration, JobError> {
    let mut tx = app.db.begin().await.map_err(retry)?;
    let (secs,): (Option<f64>,) = tx
        .fetch_one(
            sqlx::query_as(
                "SELECT extract(epoch FROM min(next_reconcile_at) - now())::float8 FROM billing_attempts \
                 WHERE run_id = $1 AND status IN ('submitted', 'unknown')",
            )
            .bind(run_id),
        )
        .await
        .map_err(retry)?;
    tx.commit().await.map_err(retry)?;
    // A run waiting for its reconciles is alive.
    touch(app, run_id).await?;
    Ok(Duration::from_secs_f64(
        secs.unwrap_or(1.0).clamp(0.2, 30.0),
    ))
}

async fn pause_for_breaker(app: &AppContext, run_id: Uuid, account: &str) -> Result<(), JobError> {
    let mut tx = app.db.begin().await.map_err(retry)?;
    let n = tx
        .execute(
            sqlx::query(
                "UPDATE billing_runs SET status = 'paused', paused_by = 'breaker', \
                 pause_reason = 'the gateway account''s circuit breaker is open', updated_at = now() \
                 WHERE id = $1 AND status = 'running'",
            )
            .bind(run_id),
        )
        .await
        .map_err(retry)?;
    tx.commit().await.map_err(retry)?;
    if n > 0 {
        app.metrics.billing_pauses.inc();
        tracing::error!(run_id = %run_id, account, "billing run paused: the gateway account's circuit breaker is open; it resumes by itself when the gateway answers again");
    }
    Ok(())
}

async fn resume_after_breaker(app: &AppContext, run_id: Uuid) -> Result<(), JobError> {
    let mut tx = app.db.begin().await.map_err(retry)?;
    let n = tx
        .execute(
            sqlx::query(
                "UPDATE billing_runs SET status = 'running', paused_by = NULL, pause_reason = NULL, updated_at = now() \
                 WHERE id = $1 AND status = 'paused' AND paused_by = 'breaker'",
            )
            .bind(run_id),
        )
        .await
        .map_err(retry)?;
    tx.commit().await.map_err(retry)?;
    if n > 0 {
        tracing::info!(run_id = %run_id, "billing run resumed: the gateway account's breaker lets calls through again");
    }
    Ok(())
}
