//! `finworker jobs …` and `finworker queues`: the job queue seen and handled by ops.

use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::Utc;

use super::JobsCommand;
use crate::context::AppContext;

pub(super) async fn jobs_command(ctx: &AppContext, cmd: JobsCommand) -> anyhow::Result<()> {
    use crate::queue::{dead_letter, engine::NewJob};
    match cmd {
        JobsCommand::Show { id } => {
            let redis = ctx.queue.job(&id).await?;
            let mut tx = ctx.db.begin().await?;
            let runs: Vec<RunRow> = tx
                .fetch_all(
                    sqlx::query_as(
                        "SELECT attempt, job_type, worker, status, error, started_at, finished_at, duration_ms \
                         FROM job_runs WHERE job_id = $1 ORDER BY attempt",
                    )
                    .bind(&id),
                )
                .await?;
            let dead: Option<dead_letter::DeadJob> = tx
                .fetch_optional(
                    sqlx::query_as(
                        "SELECT job_id, job_type, payload, attempts, last_error, enqueued_at, failed_at \
                         FROM dead_jobs WHERE job_id = $1",
                    )
                    .bind(&id),
                )
                .await?;
            tx.commit().await?;
            if redis.is_none() && runs.is_empty() && dead.is_none() {
                bail!("no job {id} in redis, job_runs or dead_jobs");
            }
            println!("job {id}");
            match &redis {
                Some(fields) => {
                    println!("  in redis (waiting, scheduled or running):");
                    for (k, v) in fields {
                        println!("    {k}: {v}");
                    }
                }
                None => println!("  not in redis (finished, dead, or never enqueued here)"),
            }
            if let Some(d) = &dead {
                println!("  DEAD since {}: {}", d.failed_at, d.last_error);
                println!("    payload: {}", d.payload);
            }
            println!("  runs:");
            for r in &runs {
                println!(
                    "    #{} {:<11} {} worker={} started={} duration={}{}",
                    r.attempt,
                    r.status,
                    r.job_type,
                    r.worker,
                    r.started_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    r.duration_ms.map_or("-".into(), |d| format!("{d}ms")),
                    r.error
                        .as_deref()
                        .map_or(String::new(), |e| format!(" error={e}")),
                );
            }
            Ok(())
        }
        JobsCommand::Failed { queue, limit } => {
            let mut tx = ctx.db.begin().await?;
            let dead = dead_letter::list(&mut tx, queue.as_deref(), limit).await?;
            tx.commit().await?;
            if dead.is_empty() {
                println!("no dead jobs");
            }
            for d in dead {
                println!(
                    "{}  {:<14} attempts={} failed_at={}  {}",
                    d.job_id,
                    d.job_type,
                    d.attempts,
                    d.failed_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    d.last_error
                );
            }
            Ok(())
        }
        JobsCommand::Retry { id, all, queue } => {
            let ids: Vec<String> = if all {
                let mut tx = ctx.db.begin().await?;
                let d = dead_letter::list(&mut tx, queue.as_deref(), i64::MAX).await?;
                tx.commit().await?;
                d.into_iter().map(|d| d.job_id).collect()
            } else {
                id.into_iter().collect()
            };
            let mut retried = 0;
            for id in ids {
                // Take it out of dead_jobs and push it in one transaction: if the push fails,
                // the row stays; the push itself ignores an id that is already queued.
                let mut tx = ctx.db.begin().await?;
                let Some(d) = dead_letter::take(&mut tx, &id).await? else {
                    bail!("no dead job {id}");
                };
                let job = NewJob {
                    id: d
                        .job_id
                        .parse()
                        .with_context(|| format!("job id {} is not a uuid", d.job_id))?,
                    job_type: d.job_type.clone(),
                    payload: d.payload.clone(),
                    delay: Duration::ZERO,
                    idempotency_key: None,
                    max_attempts: None,
                    prior_attempts: d.attempts.max(0) as u32,
                    redrive: false,
                };
                ctx.queue
                    .push(&[job], ctx.settings.worker.idempotency_ttl)
                    .await?;
                tx.commit().await?;
                println!("{id} re-queued on {}", d.job_type);
                retried += 1;
            }
            println!("{retried} job(s) re-queued");
            Ok(())
        }
        JobsCommand::Purge {
            failed: _,
            older_than,
            queue,
            yes,
        } => {
            if !yes {
                bail!("purge deletes dead jobs for good; add --yes to confirm");
            }
            let before = older_than
                .map(|d| chrono::Duration::from_std(d).map(|d| Utc::now() - d))
                .transpose()?;
            let mut tx = ctx.db.begin().await?;
            let n = dead_letter::purge(&mut tx, queue.as_deref(), before).await?;
            tx.commit().await?;
            println!("{n} dead job(s) purged");
            Ok(())
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct RunRow {
    attempt: i32,
    job_type: String,
    worker: String,
    status: String,
    error: Option<String>,
    started_at: chrono::DateTime<Utc>,
    #[allow(dead_code)]
    finished_at: Option<chrono::DateTime<Utc>>,
    duration_ms: Option<i64>,
}

pub(super) async fn queues_command(
    ctx: &AppContext,
    action: Option<super::QueuesCommand>,
) -> anyhow::Result<()> {
    use crate::queue::pause;
    match action {
        Some(super::QueuesCommand::Pause { queue, reason }) => {
            if pause::pause(ctx, &queue, "cli", reason.as_deref()).await? {
                println!("queue {queue} paused");
            } else {
                println!("queue {queue} was already paused");
            }
            return Ok(());
        }
        Some(super::QueuesCommand::Resume { queue }) => {
            if pause::resume(ctx, &queue).await? {
                println!("queue {queue} resumed");
            } else {
                println!("queue {queue} was not paused");
            }
            return Ok(());
        }
        None => {}
    }
    let paused = pause::list(ctx).await?;
    let mut tx = ctx.db.begin().await?;
    let dead = crate::queue::dead_letter::counts(&mut tx).await?;
    tx.commit().await?;
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>16}",
        "queue", "waiting", "scheduled", "in_flight", "failed", "oldest_waiting"
    );
    for name in ctx.registry.names() {
        let s = ctx.queue.stats(name).await?;
        let failed = dead.iter().find(|(q, _)| q == name).map_or(0, |(_, n)| *n);
        let oldest = s.oldest_waiting_ms.map_or("-".to_string(), |ms| {
            humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
        });
        let p = paused
            .iter()
            .find(|p| p.queue == name)
            .map_or(String::new(), |p| {
                format!(
                    "  PAUSED since {} by {}{}",
                    p.paused_at.format("%Y-%m-%d %H:%M"),
                    p.paused_by,
                    p.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )
            });
        println!(
            "{:<16} {:>10} {:>10} {:>10} {:>10} {:>16}{p}",
            name, s.waiting, s.scheduled, s.in_flight, failed, oldest
        );
    }
    let workers = ctx.queue.workers().await?;
    println!("{} live worker process(es)", workers.len());
    for (w, _) in workers {
        println!("  {w}");
    }
    Ok(())
}
