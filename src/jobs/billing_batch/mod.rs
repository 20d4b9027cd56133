//! `billing_batch` (ProcessBillingChunkJob): works one billing run with the others of its run,
//! in any number of processes. Each loop claims debtors (`FOR UPDATE SKIP LOCKED`, every rule
//! re-checked, attempts committed), sends them through the account's breaker and shared rate
//! limit, and records outcomes as they come.
//!
//! - The account's breaker open: unsent debits are released, the run is `paused` (reason
//!   logged at error level), the job snoozes until the breaker lets a probe through, then the
//!   run resumes by itself. No attempt is spent.
//! - Paused by an operator or cancelled: the job ends (`billing resume` starts new ones).
//! - After its slice (half to a whole `billing.slice`, staggered across the run's jobs so
//!   they never hand over at once) it stops claiming, sends what it has claimed, lets its
//!   calls finish and snoozes (a continuation without spending an attempt). A drain does the
//!   same but releases the debits not yet sent.
//! - No debtor left: it reconciles the run's unresolved debits and completes the run; while
//!   some wait for their reconcile, it snoozes until the next is due.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
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
        work(&ctx, self.run_id, self.slot).await
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

/// Outcomes waiting for their write, at most, before sending stops until some are written.
const MAX_UNWRITTEN: usize = 4096;

/// When this execution stops claiming: the next point, at least half a slice away, of a grid
/// of half-slices offset by the job's slot. A run's batch jobs thus hand over to their
/// continuations one after another, never all at once (which left the rate limit idle for
/// the moment of the hand-over); an execution works between half a slice and a slice.
fn slice_end(slice: Duration, slot: u32, jobs: u32) -> Instant {
    let period = u64::try_from(slice.as_millis() / 2)
        .unwrap_or(u64::MAX)
        .max(1);
    let jobs = u64::from(jobs.max(1));
    let phase = period * (u64::from(slot) % jobs) / jobs;
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(0);
    let to_next = period - (now + period - phase) % period;
    Instant::now() + Duration::from_millis(to_next + period)
}

async fn sleep_until_opt(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t.into()).await;
    }
}

fn retry(e: impl Into<anyhow::Error>) -> JobError {
    JobError::Retryable(e.into())
}

async fn work(ctx: &JobContext, run_id: Uuid, slot: u32) -> Result<(), JobError> {
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
    let slice_end = slice_end(s.billing.slice, slot, s.billing.batch_jobs);
    let window = s.gateway.request_timeout;
    let in_flight = s.billing.in_flight;
    // The next claim starts while this many debits are still queued: enough to send through a
    // slow claim (on a 100k-debtor run, claims slowed from ~30 ms to 200-350 ms for seconds
    // while autovacuum worked on the grown tables, and a queue refilled at `in_flight` ran dry:
    // the run fell to 92% of the rate limit in some sittings).
    let low_water = in_flight.max(2 * s.billing.claim_size as usize);
    // Three stages overlap so the rate limit's slots never wait for the database: one claim
    // transaction at a time fills `queue` ahead of the senders, up to `in_flight` calls go out,
    // and outcomes are written in groups by their own tasks (two at a time).
    let mut queue: VecDeque<debit::Claim> = VecDeque::new();
    let mut claiming: JoinSet<Result<Claimed, BillingError>> = JoinSet::new();
    let mut flying: JoinSet<(i64, Sent)> = JoinSet::new();
    let mut outcomes: Vec<(i64, Sent)> = Vec::new();
    let mut oldest_outcome: Option<Instant> = None;
    let mut recording: JoinSet<Result<(), BillingError>> = JoinSet::new();
    let mut exhausted = false;
    let mut halted: Option<String> = None;
    let mut breaker_open = false;
    let mut touched = Instant::now();
    let mut looked = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
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
        if halted.is_none() && looked.elapsed() > STATUS_EVERY {
            // An operator's pause or cancel stops the sends within this period, not only at
            // the next claim: the debits claimed ahead (up to `low_water`) are released.
            looked = Instant::now();
            let (st, _) = status(app, run_id).await?;
            if st != "running" {
                halted = Some(st);
            }
        }
        let draining = ctx.shutdown.is_cancelled();
        let stopping = draining || Instant::now() >= slice_end;
        if !stopping
            && !breaker_open
            && halted.is_none()
            && !exhausted
            && claiming.is_empty()
            && queue.len() < low_water
        {
            if accounts::breaker_wait(&account).await.is_some() {
                breaker_open = true;
            } else {
                let (app2, fence2) = (app.clone(), ctx.fence.clone());
                claiming.spawn(async move {
                    let t = Instant::now();
                    let c = debit::claim(&app2, &fence2, run_id).await;
                    tracing::debug!(run_id = %run_id, took_ms = t.elapsed().as_millis(), "billing claim");
                    c
                });
            }
        }
        // At the slice's end the debits already claimed still go out (other jobs may have
        // found nothing left to claim and would wait for them); a drain, a paused or cancelled
        // run and an open breaker release them instead.
        let give_up = draining || breaker_open || halted.is_some();
        if draining || halted.is_some() {
            // Debits still waiting for the rate limit are withdrawn too. Not for an open
            // breaker: the half-open probe may be among them, and without it the breaker
            // never closes (the others are refused by the breaker at once anyway).
            stop.cancel();
        }
        // Outcomes not yet written bound the sends too: a stalled database stops the calls.
        while flying.len() < in_flight && outcomes.len() < MAX_UNWRITTEN {
            let Some(c) = queue.pop_front() else { break };
            if give_up {
                outcomes.push((c.attempt_id, Sent::NotSent("stopped before sending".into())));
                oldest_outcome.get_or_insert_with(Instant::now);
            } else {
                let account: Arc<Account> = account.clone();
                let stop = stop.clone();
                let metrics = app.metrics.clone();
                flying.spawn(async move {
                    let sent = debit::send(&account, &c, window, &stop).await;
                    let outcome = match &sent {
                        debit::Sent::Answer(a) => Some(a.status.as_str()),
                        debit::Sent::Failed(crate::gateway::CallError::Refused(_)) => Some("error"),
                        debit::Sent::Failed(_) => Some("unknown"),
                        debit::Sent::NotSent(_) => None,
                    };
                    if let Some(o) = outcome {
                        metrics.count_debit(&account.name, o, c.debit.amount_minor);
                    }
                    (c.attempt_id, sent)
                });
            }
        }
        // Outcomes are written several per transaction: when 64 wait, when the oldest has
        // waited 10 ms, or when no call is left to wait for.
        let flush_at = oldest_outcome.map(|t| t + Duration::from_millis(10));
        if !outcomes.is_empty()
            && recording.len() < 2
            && (outcomes.len() >= 64
                || flying.is_empty()
                || flush_at.is_some_and(|t| Instant::now() >= t))
        {
            let done = std::mem::take(&mut outcomes);
            oldest_outcome = None;
            let (app2, fence2) = (app.clone(), ctx.fence.clone());
            recording.spawn(async move {
                let t = Instant::now();
                let r = debit::record(&app2, &fence2, &done).await.map(|_| ());
                tracing::debug!(run_id = %run_id, outcomes = done.len(), took_ms = t.elapsed().as_millis(), "billing outcomes written");
                r
            });
        }
        if flying.is_empty()
            && queue.is_empty()
            && claiming.is_empty()
            && outcomes.is_empty()
            && (stopping || give_up || exhausted)
        {
            break;
        }
        tokio::select! {
            Some(r) = flying.join_next(), if !flying.is_empty() => {
                let (id, sent) = r.map_err(retry)?;
                if let Sent::NotSent(reason) = &sent {
                    tracing::debug!(attempt_id = id, %reason, "debit not sent; released");
                    if reason.contains("circuit breaker") {
                        breaker_open = true;
                    }
                }
                outcomes.push((id, sent));
                oldest_outcome.get_or_insert_with(Instant::now);
            }
            Some(r) = claiming.join_next(), if !claiming.is_empty() => {
                match r.map_err(retry)?.map_err(crate::jobs::billing::to_job_error)? {
                    Claimed::Debits(c) => queue.extend(c),
                    Claimed::Empty => exhausted = true,
                    Claimed::Halted(st) => halted = Some(st),
                }
            }
            Some(r) = recording.join_next(), if !recording.is_empty() => {
                r.map_err(retry)?.map_err(crate::jobs::billing::to_job_error)?;
            }
            () = sleep_until_opt(flush_at), if flush_at.is_some() && recording.len() < 2 => {}
            // Re-check the slice, the shutdown and the breaker now and then.
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
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
        // Read again: another batch of the run may have resumed it since (after the breaker
        // let calls through); leaving now would leave a running run with no batch.
        match status(app, run_id).await? {
            (s, _) if s == "running" => {
                return Err(JobError::snooze(
                    Duration::ZERO,
                    "billing run resumed; continuing",
                ));
            }
            (s, Some(by)) if s == "paused" && by == "breaker" => {
                return Err(JobError::snooze(
                    Duration::from_millis(500),
                    "run paused by the breaker",
                ));
            }
            _ => {}
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

/// How often a batch looks at its run's status between claims.
const STATUS_EVERY: Duration = Duration::from_millis(500);

/// The run's status and who paused it.
async fn status(app: &AppContext, run_id: Uuid) -> Result<(String, Option<String>), JobError> {
    let mut tx = app.db.begin().await.map_err(retry)?;
    let row: (String, Option<String>) = tx
        .fetch_one(
            sqlx::query_as("SELECT status, paused_by FROM billing_runs WHERE id = $1").bind(run_id),
        )
        .await
        .map_err(retry)?;
    tx.commit().await.map_err(retry)?;
    Ok(row)
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
