//! The worker runtime of one process: per queue a fetcher (Redis → channel) feeding an
//! apalis `Worker`, plus shared loops for settling outcomes, heartbeats, orphan recovery,
//! `running` audit rows and cron.
//!
//! Life of a job in this process:
//! fetch (Lua, batch) → held map → apalis worker → [`execute`] (timeout, panic catch,
//! retry decision) → completion channel → settler: Postgres first (job_runs, dead_jobs),
//! then Redis (one Lua call per batch). Because Postgres is written before Redis forgets
//! the job, a crash in between reruns the job rather than losing its record.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use apalis_core::{task::Task, worker::builder::WorkerBuilder};
use chrono::{DateTime, TimeZone, Utc};
use futures::future::BoxFuture;
use tokio::{
    sync::{Semaphore, mpsc},
    task::AbortHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::{
    audit::{self, Conflict, RunRecord, RunStatus},
    backend::ChannelBackend,
    cron,
    dead_letter::{self, DeadJob},
    engine::{Fetch, FetchedJob, Orphan, Settle},
    job::{JobContext, JobError},
    retry::{self, Decision},
};
use crate::{config::QueueSettings, context::AppContext, metrics::Metrics};

/// A unique name for this worker process: host, pid and a random part, so a restarted
/// process never collides with the lease of its previous life (apalis-redis B9).
pub fn worker_name() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &rand[..8])
}

#[derive(Debug)]
struct HeldJob {
    queue: String,
    job_type: String,
    attempt: u32,
    started: Option<DateTime<Utc>>,
    running_written: bool,
    abort: Option<AbortHandle>,
}

#[derive(Debug)]
enum Outcome {
    Succeeded,
    Retry { delay: Duration, error: String },
    Dead { error: String },
}

#[derive(Debug)]
struct Completion {
    job: FetchedJob,
    queue: String,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    outcome: Outcome,
}

struct Shared {
    ctx: AppContext,
    worker: String,
    held: Mutex<HashMap<String, HeldJob>>,
    completions: mpsc::Sender<Completion>,
    /// Cancelled when draining starts; handed to jobs.
    draining: CancellationToken,
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeldJob>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs workers for `queues` until `shutdown` is cancelled, then drains: stops fetching,
/// lets running jobs finish within `worker.drain_timeout`, releases what did not start,
/// hands back what is still running at the deadline, and returns.
pub async fn run(
    ctx: AppContext,
    queues: Vec<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = ctx.settings.clone();
    let worker = worker_name();
    let lease = settings.worker.lease();
    // Register before the first fetch: fetch refuses workers without a live lease.
    ctx.queue
        .heartbeat(&worker, lease)
        .await
        .context("registering the worker in redis")?;
    info!(worker = %worker, queues = ?queues, "worker process started");

    let (completions, completion_rx) = mpsc::channel(8192);
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        worker: worker.clone(),
        held: Mutex::new(HashMap::new()),
        completions,
        draining: shutdown.child_token(),
    });

    let loops_stop = CancellationToken::new();
    let settler_stop = CancellationToken::new();
    let give_up = CancellationToken::new();
    let settler = tokio::spawn(settler(
        shared.clone(),
        completion_rx,
        settler_stop.clone(),
        give_up.clone(),
    ));
    let housekeeping = tokio::spawn(housekeeping(shared.clone(), loops_stop.clone()));
    let cron = tokio::spawn(cron::run(ctx.clone(), loops_stop.clone()));

    let mut workers = tokio::task::JoinSet::new();
    for queue in &queues {
        let qs = settings.queue(queue);
        let (tx, rx) = mpsc::channel(qs.concurrency);
        let sem = Arc::new(Semaphore::new(qs.concurrency));
        tokio::spawn(fetcher(
            shared.clone(),
            queue.clone(),
            sem.clone(),
            tx,
            shutdown.clone(),
        ));
        let service = JobService {
            shared: shared.clone(),
            queue: queue.clone(),
            qs,
            sem,
        };
        let w = WorkerBuilder::new(format!("{worker}/{queue}"))
            .backend(ChannelBackend::new(rx, shutdown.clone()))
            .build(service);
        let queue = queue.clone();
        workers.spawn(async move {
            if let Err(e) = w.run().await {
                error!(queue = %queue, error = %e, "apalis worker ended with an error");
            }
        });
    }

    shutdown.cancelled().await;
    let running = shared
        .held()
        .values()
        .filter(|h| h.started.is_some())
        .count();
    info!(running, drain_timeout = ?settings.worker.drain_timeout, "draining: no new jobs are taken");
    let drain = async { while workers.join_next().await.is_some() {} };
    if tokio::time::timeout(settings.worker.drain_timeout, drain)
        .await
        .is_err()
    {
        // Stop the workers first, so no outcome of a cut job reaches the settler: a job cut
        // here is interrupted (handed back below), not failed, and keeps its attempts.
        workers.abort_all();
        while workers.join_next().await.is_some() {}
        let mut cut = 0;
        for h in shared.held().values() {
            if let Some(a) = &h.abort {
                a.abort();
                cut += 1;
            }
        }
        warn!(
            cut,
            "drain deadline passed: stopped the jobs still running; they are handed back and run again"
        );
    }
    // Settle every outcome that reached the settler; give up on Postgres/Redis retries after a
    // short grace, leaving those jobs for recovery (they run again: at-least-once).
    settler_stop.cancel();
    let grace = Duration::from_secs(10);
    if tokio::time::timeout(grace, settler).await.is_err() {
        give_up.cancel();
    }
    release_and_hand_back(&shared).await;
    loops_stop.cancel();
    let _ = housekeeping.await;
    let _ = cron.await;
    info!(worker = %worker, "worker process stopped");
    Ok(())
}

/// At exit: jobs taken but never started go back to the front of their queue as if never
/// taken; jobs cut at the drain deadline are handed back as interrupted.
async fn release_and_hand_back(shared: &Arc<Shared>) {
    let unstarted: Vec<(String, String, Settle)> = shared
        .held()
        .iter()
        .filter(|(_, h)| h.started.is_none())
        .map(|(id, h)| (id.clone(), h.queue.clone(), Settle::Release))
        .collect();
    if !unstarted.is_empty() {
        match shared.ctx.queue.settle(&shared.worker, &unstarted).await {
            Ok(()) => info!(
                released = unstarted.len(),
                "released jobs that had not started"
            ),
            Err(e) => {
                warn!(error = %e, "could not release unstarted jobs; recovery will requeue them")
            }
        }
    }
    match shared.ctx.queue.reap(Some(&shared.worker)).await {
        Ok(orphans) => {
            if !orphans.is_empty() {
                warn!(
                    count = orphans.len(),
                    "handed back jobs that were still running"
                );
            }
            record_orphans(
                &shared.ctx,
                &orphans,
                "the worker process stopped at its drain deadline during this attempt",
            )
            .await;
        }
        Err(e) => {
            warn!(error = %e, "could not deregister; the lease will lapse and peers recover the jobs")
        }
    }
}

/// Takes jobs from Redis for one queue, never more than there are free slots, so every job
/// taken starts at once (no hidden prefetch that a crash would strand).
async fn fetcher(
    s: Arc<Shared>,
    queue: String,
    sem: Arc<Semaphore>,
    tx: mpsc::Sender<FetchedJob>,
    stop: CancellationToken,
) {
    let settings = &s.ctx.settings.worker;
    let mut backoff = Duration::from_millis(100);
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            p = sem.acquire() => p,
        };
        let Ok(first) = first else { break };
        first.forget();
        let mut n = 1;
        while n < settings.fetch_batch {
            match sem.try_acquire() {
                Ok(p) => {
                    p.forget();
                    n += 1;
                }
                Err(_) => break,
            }
        }
        let idle = match s.ctx.queue.fetch(&queue, &s.worker, n).await {
            Ok(Fetch::Jobs(jobs)) => {
                backoff = Duration::from_millis(100);
                let got = jobs.len();
                sem.add_permits(n - got);
                {
                    let mut held = s.held();
                    for j in &jobs {
                        held.insert(
                            j.id.clone(),
                            HeldJob {
                                queue: queue.clone(),
                                job_type: j.job_type.clone(),
                                attempt: j.attempt,
                                started: None,
                                running_written: false,
                                abort: None,
                            },
                        );
                    }
                }
                for j in jobs {
                    if tx.send(j).await.is_err() {
                        // The apalis worker is gone; the held map releases the rest at exit.
                        break;
                    }
                }
                got == 0
            }
            Ok(Fetch::Unregistered) => {
                sem.add_permits(n);
                warn!(queue = %queue, "lease lapsed (missed heartbeats?); renewing before fetching again");
                if let Err(e) = s.ctx.queue.heartbeat(&s.worker, settings.lease()).await {
                    warn!(error = %e, "heartbeat failed");
                }
                true
            }
            Err(e) => {
                sem.add_permits(n);
                s.ctx.metrics.runtime_errors.inc();
                warn!(queue = %queue, error = %e, retry_in = ?backoff, "fetch failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {},
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                false
            }
        };
        if idle {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(settings.poll_interval) => {},
            }
        }
    }
    debug!(queue = %queue, "fetcher stopped");
}

/// The tower service apalis calls for each job.
#[derive(Clone)]
struct JobService {
    shared: Arc<Shared>,
    queue: String,
    qs: QueueSettings,
    sem: Arc<Semaphore>,
}

impl tower::Service<Task<FetchedJob>> for JobService {
    type Response = ();
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<(), Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<FetchedJob>) -> Self::Future {
        let (s, queue, qs, sem) = (
            self.shared.clone(),
            self.queue.clone(),
            self.qs.clone(),
            self.sem.clone(),
        );
        Box::pin(async move {
            execute(s, queue, qs, task.args).await;
            sem.add_permits(1);
            Ok(())
        })
    }
}

/// Runs one attempt and hands its outcome to the settler.
async fn execute(s: Arc<Shared>, queue: String, qs: QueueSettings, job: FetchedJob) {
    let job_type = if job.job_type.is_empty() {
        queue.clone()
    } else {
        job.job_type.clone()
    };
    let span = info_span!("job", job_type = %job_type, job_id = %job.id, attempt = job.attempt, queue = %queue);
    async {
        let started_at = Utc::now();
        let t0 = Instant::now();
        let labels = Metrics::job(&job_type);
        let m = &s.ctx.metrics;
        m.started.get_or_create(&labels).inc();
        m.in_flight.get_or_create(&labels).inc();

        debug!("job started");
        let result = attempt(&s, &qs, &job).await;

        let elapsed = t0.elapsed();
        m.in_flight.get_or_create(&labels).dec();
        m.duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        let max_attempts = job.max_attempts.unwrap_or(qs.max_attempts);
        let outcome = match result {
            Ok(()) => Outcome::Succeeded,
            Err(JobError::Permanent(msg)) => Outcome::Dead { error: msg },
            Err(JobError::Retryable(e)) => {
                let msg = format!("{e:#}");
                match retry::decide(&qs, max_attempts, job.failures + 1) {
                    Decision::Retry(delay) => Outcome::Retry { delay, error: msg },
                    Decision::GiveUp => Outcome::Dead {
                        error: format!("gave up after {max_attempts} failed attempts; last error: {msg}"),
                    },
                }
            }
        };
        let duration_ms = elapsed.as_millis() as u64;
        match &outcome {
            Outcome::Succeeded => {
                m.succeeded.get_or_create(&labels).inc();
                info!(started_at = %started_at, duration_ms, outcome = "succeeded", "job finished");
            }
            Outcome::Retry { delay, error } => {
                m.failed.get_or_create(&labels).inc();
                m.retried.get_or_create(&labels).inc();
                warn!(started_at = %started_at, duration_ms, outcome = "retry", retry_in_ms = delay.as_millis() as u64, error = %error, "job failed; will retry");
            }
            Outcome::Dead { error } => {
                m.failed.get_or_create(&labels).inc();
                m.dead.get_or_create(&labels).inc();
                error!(started_at = %started_at, duration_ms, outcome = "dead", error = %error, "job failed; moved to the dead-letter store");
            }
        }
        let c = Completion {
            job,
            queue,
            started_at,
            finished_at: Utc::now(),
            outcome,
        };
        if s.completions.send(c).await.is_err() {
            error!("settler gone; the outcome is not recorded and the job will run again");
        }
    }
    .instrument(span)
    .await
}

async fn attempt(s: &Arc<Shared>, qs: &QueueSettings, job: &FetchedJob) -> Result<(), JobError> {
    if job.job_type.is_empty() {
        return Err(JobError::permanent(
            "job data missing in redis (id pushed without its job hash)",
        ));
    }
    let max_orphans = s.ctx.settings.worker.max_orphans;
    if job.orphans >= max_orphans {
        return Err(JobError::permanent(format!(
            "a worker died {} times while running this job; treated as poison and not run again",
            job.orphans
        )));
    }
    let entry = s
        .ctx
        .registry
        .get(&job.job_type)
        .ok_or_else(|| JobError::permanent(format!("unknown job type `{}`", job.job_type)))?;
    if entry.test_only && !s.ctx.settings.worker.allow_test_jobs {
        return Err(JobError::permanent(format!(
            "job type `{}` is test-only and worker.allow_test_jobs is off",
            job.job_type
        )));
    }
    let jctx = JobContext {
        app: s.ctx.clone(),
        job_id: job.id.clone(),
        attempt: job.attempt,
        shutdown: s.draining.clone(),
    };
    let fut = entry.run(jctx, job.payload.clone());
    // Spawned: a panic is caught as a JoinError, the timeout drops (stops) the work, and the
    // drain deadline can abort it.
    let handle = tokio::spawn(tokio::time::timeout(qs.timeout, fut));
    if let Some(h) = s.held().get_mut(&job.id) {
        h.started = Some(Utc::now());
        h.abort = Some(handle.abort_handle());
    }
    match handle.await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(JobError::Retryable(anyhow::anyhow!(
            "timed out after {}",
            humantime::format_duration(qs.timeout)
        ))),
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            Err(JobError::Retryable(anyhow::anyhow!("panicked: {msg}")))
        }
        Err(_) => Err(JobError::Retryable(anyhow::anyhow!(
            "stopped at the drain deadline"
        ))),
    }
}

/// Records outcomes: Postgres (job_runs, dead_jobs) first, then Redis, in batches.
async fn settler(
    s: Arc<Shared>,
    mut rx: mpsc::Receiver<Completion>,
    stop: CancellationToken,
    give_up: CancellationToken,
) {
    let batch = s.ctx.settings.worker.settle_batch;
    let mut buf = Vec::with_capacity(batch);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut buf, batch) => n,
            _ = stop.cancelled() => {
                // Drain what is buffered, then stop.
                while let Ok(c) = rx.try_recv() {
                    buf.push(c);
                }
                if !buf.is_empty() {
                    settle_batch(&s, &buf, &give_up).await;
                }
                return;
            }
        };
        if n == 0 {
            return;
        }
        settle_batch(&s, &buf, &give_up).await;
        buf.clear();
    }
}

async fn settle_batch(s: &Arc<Shared>, batch: &[Completion], give_up: &CancellationToken) {
    let audit_on = s.ctx.settings.worker.audit;
    let runs: Vec<RunRecord> = if audit_on {
        batch
            .iter()
            .map(|c| {
                let (status, error) = match &c.outcome {
                    Outcome::Succeeded => (RunStatus::Succeeded, None),
                    Outcome::Retry { error, .. } => (RunStatus::Failed, Some(error.clone())),
                    Outcome::Dead { error } => (RunStatus::Dead, Some(error.clone())),
                };
                RunRecord {
                    job_id: c.job.id.clone(),
                    attempt: c.job.attempt as i32,
                    job_type: job_type_of(c),
                    worker: s.worker.clone(),
                    status,
                    error,
                    started_at: c.started_at,
                    finished_at: Some(c.finished_at),
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let dead: Vec<DeadJob> = batch
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::Dead { error } => Some(DeadJob {
                job_id: c.job.id.clone(),
                job_type: job_type_of(c),
                payload: c.job.payload.clone(),
                attempts: c.job.attempt as i32,
                last_error: error.clone(),
                enqueued_at: Utc.timestamp_millis_opt(c.job.enqueued_at_ms).single(),
                failed_at: c.finished_at,
            }),
            _ => None,
        })
        .collect();
    if !runs.is_empty() || !dead.is_empty() {
        let db = &s.ctx.db;
        let ok = retry_until(s, give_up, "writing job outcomes to postgres", || async {
            let mut tx = db.begin().await?;
            audit::write_runs(&mut tx, &runs, Conflict::Overwrite).await?;
            dead_letter::insert(&mut tx, &dead).await?;
            tx.commit().await?;
            Ok::<_, crate::db::DbError>(())
        })
        .await;
        if !ok {
            return; // left held: recovery reruns them, which is safe; losing the record is not.
        }
    }
    let entries: Vec<(String, String, Settle)> = batch
        .iter()
        .map(|c| {
            let settle = match &c.outcome {
                Outcome::Succeeded => Settle::Done,
                Outcome::Dead { .. } => Settle::Dead,
                Outcome::Retry { delay, error } => Settle::Retry {
                    delay: *delay,
                    error: error.clone(),
                },
            };
            (c.job.id.clone(), c.queue.clone(), settle)
        })
        .collect();
    let q = &s.ctx.queue;
    if retry_until(s, give_up, "settling jobs in redis", || {
        q.settle(&s.worker, &entries)
    })
    .await
    {
        let mut held = s.held();
        for c in batch {
            held.remove(&c.job.id);
        }
    }
}

fn job_type_of(c: &Completion) -> String {
    if c.job.job_type.is_empty() {
        c.queue.clone()
    } else {
        c.job.job_type.clone()
    }
}

/// Retries `f` with backoff until it succeeds (true) or `give_up` is cancelled (false).
async fn retry_until<F, Fut, E>(
    s: &Arc<Shared>,
    give_up: &CancellationToken,
    what: &str,
    f: F,
) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(()) => return true,
            Err(e) => {
                s.ctx.metrics.runtime_errors.inc();
                warn!(error = %e, retry_in = ?delay, "{what} failed");
            }
        }
        tokio::select! {
            _ = give_up.cancelled() => {
                error!("{what}: giving up at shutdown; the jobs concerned will run again");
                return false;
            }
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Heartbeats, orphan recovery, `running` audit rows and reconciliation of what Redis
/// says this process holds with what it really holds.
async fn housekeeping(s: Arc<Shared>, stop: CancellationToken) {
    let w = &s.ctx.settings.worker;
    let mut beat = tokio::time::interval(w.heartbeat_interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut audit_tick =
        tokio::time::interval((w.audit_running_after / 2).max(Duration::from_millis(100)));
    audit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut suspects: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = beat.tick() => {
                if let Err(e) = s.ctx.queue.heartbeat(&s.worker, w.lease()).await {
                    s.ctx.metrics.runtime_errors.inc();
                    warn!(error = %e, "heartbeat failed");
                    continue;
                }
                match s.ctx.queue.reap(None).await {
                    Ok(orphans) if !orphans.is_empty() => {
                        for o in &orphans {
                            s.ctx.metrics.orphans_recovered.get_or_create(&Metrics::job(&o.job_type)).inc();
                        }
                        warn!(count = orphans.len(), "recovered jobs of worker processes that stopped heartbeating");
                        record_orphans(&s.ctx, &orphans, "the worker process stopped heartbeating (crashed or froze) during this attempt").await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        s.ctx.metrics.runtime_errors.inc();
                        warn!(error = %e, "orphan recovery failed");
                    }
                }
                suspects = reconcile(&s, suspects).await;
            }
            _ = audit_tick.tick(), if w.audit => write_running_rows(&s).await,
        }
    }
}

/// A fetch whose answer was lost (response timeout after the script ran) leaves ids in
/// Redis under our name that we never received. Seen twice in a row, they are released.
async fn reconcile(s: &Arc<Shared>, previous: HashSet<String>) -> HashSet<String> {
    let Ok(ids) = s.ctx.queue.held_by(&s.worker).await else {
        return previous;
    };
    let unknown: HashSet<String> = {
        let held = s.held();
        ids.into_iter()
            .filter(|id| !held.contains_key(id))
            .collect()
    };
    let confirmed: Vec<String> = unknown.intersection(&previous).cloned().collect();
    if !confirmed.is_empty() {
        let mut entries = Vec::new();
        for id in &confirmed {
            if let Ok(Some(job)) = s.ctx.queue.job(id).await {
                let queue = job.get("type").cloned().unwrap_or_default();
                entries.push((id.clone(), queue, Settle::Release));
            }
        }
        warn!(
            count = entries.len(),
            "releasing jobs redis lists under this worker but it never received"
        );
        if let Err(e) = s.ctx.queue.settle(&s.worker, &entries).await {
            warn!(error = %e, "release failed");
        }
    }
    unknown
        .into_iter()
        .filter(|id| !confirmed.contains(id))
        .collect()
}

async fn write_running_rows(s: &Arc<Shared>) {
    let threshold =
        chrono::Duration::from_std(s.ctx.settings.worker.audit_running_after).unwrap_or_default();
    let now = Utc::now();
    let rows: Vec<RunRecord> = s
        .held()
        .iter()
        .filter(|(_, h)| !h.running_written && h.started.is_some_and(|t| now - t >= threshold))
        .map(|(id, h)| RunRecord {
            job_id: id.clone(),
            attempt: h.attempt as i32,
            job_type: h.job_type.clone(),
            worker: s.worker.clone(),
            status: RunStatus::Running,
            error: None,
            started_at: h.started.unwrap_or(now),
            finished_at: None,
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let res = async {
        let mut tx = s.ctx.db.begin().await?;
        audit::write_runs(&mut tx, &rows, Conflict::KeepExisting).await?;
        tx.commit().await
    }
    .await;
    match res {
        Ok(()) => {
            let mut held = s.held();
            for r in &rows {
                if let Some(h) = held.get_mut(&r.job_id) {
                    h.running_written = true;
                }
            }
        }
        Err(e) => {
            s.ctx.metrics.runtime_errors.inc();
            warn!(error = %e, "writing running rows failed");
        }
    }
}

/// Writes `interrupted` rows for recovered jobs (a finished row, if any, wins).
async fn record_orphans(ctx: &AppContext, orphans: &[Orphan], why: &str) {
    if orphans.is_empty() || !ctx.settings.worker.audit {
        return;
    }
    let now = Utc::now();
    let rows: Vec<RunRecord> = orphans
        .iter()
        .map(|o| RunRecord {
            job_id: o.id.clone(),
            attempt: o.attempt as i32,
            job_type: o.job_type.clone(),
            worker: o.worker.clone(),
            status: RunStatus::Interrupted,
            error: Some(why.to_string()),
            started_at: Utc
                .timestamp_millis_opt(o.started_at_ms)
                .single()
                .unwrap_or(now),
            finished_at: Some(now),
        })
        .collect();
    let res = async {
        let mut tx = ctx.db.begin().await?;
        audit::write_runs(&mut tx, &rows, Conflict::OverwriteRunning).await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = res {
        ctx.metrics.runtime_errors.inc();
        warn!(error = %e, "writing interrupted rows failed");
    }
}
