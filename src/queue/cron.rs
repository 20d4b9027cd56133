//! Periodic jobs. Every worker process runs the schedule; each tick is pushed with the
//! idempotency key `cron:<name>:<tick unix seconds>`, so the first process to push a tick
//! wins and the others are told it is a duplicate: one job per tick, however many
//! processes run. A tick during which no process runs is not replayed.

use std::str::FromStr;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{config::CronEntry, context::AppContext, queue::engine::NewJob};

/// Runs every `[[cron]]` entry until `stop` is cancelled.
pub async fn run(ctx: AppContext, stop: CancellationToken) {
    let entries = ctx.settings.cron.clone();
    let tasks: Vec<_> = entries
        .into_iter()
        .map(|e| tokio::spawn(run_entry(ctx.clone(), e, stop.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
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
        let new = NewJob {
            idempotency_key: Some(format!("cron:{}:{tick}", entry.name)),
            ..NewJob::new(&entry.job_type, payload.clone())
        };
        match ctx
            .queue
            .push(&[new], ctx.settings.worker.idempotency_ttl)
            .await
        {
            Ok(p) if p.first().is_some_and(|p| !p.duplicate) => {
                info!(cron = %entry.name, tick, job_id = %p[0].id, "cron tick enqueued");
            }
            Ok(_) => {
                debug!(cron = %entry.name, tick, "cron tick already enqueued by another process")
            }
            Err(e) => {
                ctx.metrics.runtime_errors.inc();
                warn!(cron = %entry.name, tick, error = %e, "cron tick not enqueued");
            }
        }
    }
}
