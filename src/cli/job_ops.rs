//! `finworker jobs …` and `finworker queues`: the job queue seen and handled by ops.

use std::time::Duration;

use anyhow::bail;
use chrono::Utc;

use super::JobsCommand;
use crate::{context::AppContext, ops};

pub(super) async fn jobs_command(ctx: &AppContext, cmd: JobsCommand) -> anyhow::Result<()> {
    use crate::queue::dead_letter;
    match cmd {
        JobsCommand::Show { id } => {
            let j = ops::job(ctx, &id).await?;
            println!("job {id}");
            match &j.in_redis {
                Some(fields) => {
                    println!("  in redis (waiting, scheduled or running):");
                    for (k, v) in fields {
                        println!("    {k}: {v}");
                    }
                }
                None => println!("  not in redis (finished, dead, or never enqueued here)"),
            }
            if let Some(d) = &j.dead {
                println!("  DEAD since {}: {}", d.failed_at, d.last_error);
                println!("    payload: {}", d.payload);
            }
            println!("  runs:");
            for r in &j.runs {
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
                let queue = ops::retry_job(ctx, &id).await?;
                println!("{id} re-queued on {queue}");
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
    let o = ops::queues(ctx).await?;
    println!(
        "{:<16} {:>8} {:>9} {:>7} {:>7} {:>8} {:>8} {:>14}",
        "queue",
        "waiting",
        "scheduled",
        "running",
        "failed",
        "done/1m",
        "done/1h",
        "oldest_waiting"
    );
    for q in &o.queues {
        let oldest = q.oldest_waiting_seconds.map_or("-".to_string(), |s| {
            humantime::format_duration(Duration::from_secs(s as u64)).to_string()
        });
        let p = q.paused.as_ref().map_or(String::new(), |p| {
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
            "{:<16} {:>8} {:>9} {:>7} {:>7} {:>8} {:>8} {:>14}{p}",
            q.name,
            q.waiting,
            q.scheduled,
            q.running,
            q.failed,
            q.finished_last_minute,
            q.finished_last_hour,
            oldest
        );
    }
    println!("{} live worker process(es)", o.workers.len());
    for w in &o.workers {
        println!("  {w}");
    }
    Ok(())
}
