//! Periodic jobs. Every worker process runs the schedule; each tick is pushed with the
//! idempotency key `cron:<name>:<tick unix seconds>`, so the first process to push a tick
//! wins and the others are told it is a duplicate: one job per tick, however many
//! processes run. A tick during which no process runs is not replayed.

use std::{str::FromStr, time::Duration};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{config::CronEntry, context::AppContext, queue::engine::NewJob};

/// Runs every `[[cron]]` entry until `stop` is cancelled.
pub async fn run(ctx: AppContext, stop: CancellationToken) {
    let entries = ctx.settings.cron.clone();
    let mut tasks: Vec<_> = entries
        .into_iter()
        .map(|e| tokio::spawn(run_entry(ctx.clone(), e, stop.clone())))
        .collect();
    if ctx.settings.sweeper.enabled && ctx.registry.get("sweeper").is_some() {
        tasks.push(tokio::spawn(run_every(
            ctx.clone(),
            "sweeper",
            ctx.settings.sweeper.interval,
            stop.clone(),
        )));
    }
    if ctx.settings.billing.recurring
        && !ctx.settings.gateway.accounts.is_empty()
        && ctx.registry.get("billing_recurring").is_some()
    {
        tasks.push(tokio::spawn(run_every(
            ctx.clone(),
            "billing_recurring",
            ctx.settings.billing.recurring_interval,
            stop.clone(),
        )));
    }
    // The lifecycle's schedules (reconciliation, ledger sync, sweeps, BIC rule): only where
    // there is a gateway account to work on.
    if !ctx.settings.gateway.accounts.is_empty() {
        let jobs = [
            "reconciliation",
            "emp_refresh",
            "chargeback_sweep",
            "bic_blacklist",
        ];
        for ((_, schedule), job_type) in ctx.settings.lifecycle.schedules().into_iter().zip(jobs) {
            if schedule.is_empty() || ctx.registry.get(job_type).is_none() {
                continue;
            }
            let Ok(schedule) = cron::Schedule::from_str(schedule) else {
                continue; // validated at start-up
            };
            tasks.push(tokio::spawn(run_schedule(
                ctx.clone(),
                job_type.to_string(),
                schedule,
                job_type.to_string(),
                "{}".to_string(),
                stop.clone(),
            )));
        }
    }
    let retention = &ctx.settings.retention.schedule;
    if !retention.is_empty()
        && ctx.registry.get("retention").is_some()
        && let Ok(schedule) = cron::Schedule::from_str(retention)
    {
        tasks.push(tokio::spawn(run_schedule(
            ctx.clone(),
            "retention".to_string(),
            schedule,
            "retention".to_string(),
            "{}".to_string(),
            stop.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// A built-in periodic job: a tick every `every` (aligned on the epoch, so every process
/// computes the same ticks), pushed under `cron:<job_type>:<tick>` like a cron entry's.
async fn run_every(
    ctx: AppContext,
    job_type: &'static str,
    every: Duration,
    stop: CancellationToken,
) {
    let step = every.as_millis().max(1) as i64;
    loop {
        let now = Utc::now().timestamp_millis();
        let next = (now / step + 1) * step;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis((next - now) as u64)) => {}
        }
        push_tick(&ctx, job_type, job_type, "{}".to_string(), next / 1000).await;
    }
}

async fn push_tick(ctx: &AppContext, name: &str, job_type: &str, payload: String, tick: i64) {
    let new = NewJob {
        idempotency_key: Some(format!("cron:{name}:{tick}")),
        ..NewJob::new(job_type, payload)
    };
    match ctx
        .queue
        .push(&[new], ctx.settings.worker.idempotency_ttl)
        .await
    {
        Ok(p) if p.first().is_some_and(|p| !p.duplicate) => {
            info!(cron = %name, tick, job_id = %p[0].id, "cron tick enqueued");
        }
        Ok(_) => debug!(cron = %name, tick, "cron tick already enqueued by another process"),
        Err(e) => {
            ctx.metrics.runtime_errors.inc();
            warn!(cron = %name, tick, error = %e, "cron tick not enqueued");
        }
    }
}

async fn run_entry(ctx: AppContext, entry: CronEntry, stop: CancellationToken) {
    let Ok(schedule) = cron::Schedule::from_str(&entry.schedule) else {
        return; // validated at start-up
    };
    let Some(job) = ctx.registry.get(&entry.job_type) else {
        return; // validated at start-up
    };
    let payload = match job.validate(entry.payload.to_string().as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            warn!(cron = %entry.name, error = %e, "cron payload invalid; entry disabled");
            return;
        }
    };
    run_schedule(ctx, entry.name, schedule, entry.job_type, payload, stop).await;
}

/// Pushes `job_type` at every time of `schedule`, under `cron:<name>:<tick>`.
async fn run_schedule(
    ctx: AppContext,
    name: String,
    schedule: cron::Schedule,
    job_type: String,
    payload: String,
    stop: CancellationToken,
) {
    loop {
        let Some(next) = schedule.upcoming(Utc).next() else {
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let tick = next.timestamp();
        push_tick(&ctx, &name, &job_type, payload.clone(), tick).await;
    }
}
