//! The worker runtime of one process: per queue a fetcher (Redis → channel) feeding an
//! apalis `Worker`, plus shared loops for settling outcomes, orphan recovery, `running`
//! audit rows and cron, and the lease keeper on a thread of its own.
//!
//! Life of a job in this process:
//! fetch (Lua, batch) → held map → apalis worker → `execute` (timeout, panic catch,
//! retry decision) → completion channel → settler: Postgres first (job_runs, dead_jobs),
//! then Redis (one Lua call per batch). Because Postgres is written before Redis forgets
//! the job, a crash in between reruns the job rather than losing its record.
//!
//! Leases and fencing: the lease keeper renews this process's lease from its own OS thread,
//! runtime and Redis connection, so neither busy jobs nor a stalled Postgres can starve it.
//! When it finds the lease gone (a peer took the jobs over), it aborts every held job at once
//! and registers a new name. A job that still reaches a commit is refused by its fencing
//! token (`fence.rs`), and its late settle changes nothing in Redis.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

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
    engine::{Engine, Fetch, FetchedJob, Lease, Orphan, Settle},
    fence::{self, Fence},
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
    /// The name (lease) it was fetched under.
    worker: Arc<str>,
    started: Option<DateTime<Utc>>,
    running_written: bool,
    abort: Option<AbortHandle>,
    /// Its lease was lost: aborted, and nothing of it is recorded or settled.
    lost: bool,
}

#[derive(Debug)]
enum Outcome {
    Succeeded,
    Retry {
        delay: Duration,
        error: String,
    },
    Snooze {
        delay: Duration,
        reason: String,
    },
    Dead {
        error: String,
    },
    /// Refused by fencing, or aborted because the lease was lost: the job belongs to
    /// someone else now.
    Stale {
        error: String,
    },
}

#[derive(Debug)]
struct Completion {
    job: FetchedJob,
    queue: String,
    worker: Arc<str>,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    outcome: Outcome,
}

struct Shared {
    ctx: AppContext,
    /// The current lease name; replaced when the lease is lost.
    worker: Mutex<Arc<str>>,
    held: Mutex<HashMap<String, HeldJob>>,
    completions: mpsc::Sender<Completion>,
    /// Cancelled when draining starts; handed to jobs.
    draining: CancellationToken,
    /// Wakes the lease keeper early (a fetch was refused for want of a lease).
    check_lease: Notify,
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeldJob>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn worker(&self) -> Arc<str> {
        self.worker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        .heartbeat(&worker, lease, true)
        .await
        .context("registering the worker in redis")?;
    info!(worker = %worker, queues = ?queues, "worker process started");
    // The lease keeper's own connection: pipelined pushes on the shared one cannot delay it.
    let keeper_queue = Engine::connect(&settings.redis)
        .await
        .context("connecting the lease keeper to redis")?;
    // Paused queues: Redis's copy is rebuilt from Postgres's record before the first fetch
    // (a pause survives a restart of Redis too).
    match super::pause::sync(&ctx).await {
        Ok(p) if !p.is_empty() => {
            warn!(paused = ?p, "these queues are paused: no process fetches them until `finworker queues resume`")
        }
        Ok(_) => {}
        Err(e) => {
            warn!(error = %e, "paused queues could not be read at start; the sweeper tries again")
        }
    }

    let (completions, completion_rx) = mpsc::channel(8192);
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        worker: Mutex::new(Arc::from(worker.as_str())),
        held: Mutex::new(HashMap::new()),
        completions,
        draining: shutdown.child_token(),
        check_lease: Notify::new(),
    });
    let keeper_stop = CancellationToken::new();
    let keeper = spawn_lease_keeper(shared.clone(), keeper_queue, keeper_stop.clone())?;

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
    // Stop renewing before handing back: the hand-back deregisters the name.
    keeper_stop.cancel();
    let _ = tokio::task::spawn_blocking(move || keeper.join()).await;
    release_and_hand_back(&shared).await;
    loops_stop.cancel();
    let _ = housekeeping.await;
    let _ = cron.await;
    info!(worker = %shared.worker(), "worker process stopped");
    Ok(())
}

/// The lease keeper: renews the lease every `heartbeat_interval` from a thread with its own
/// runtime and Redis connection, and nothing else — no Postgres, no job work — so a busy
/// executor or a stalled database cannot make the lease lapse. When the lease is found
/// lost, every held job is aborted before it can commit more, and a new name registers.
fn spawn_lease_keeper(
    s: Arc<Shared>,
    queue: Engine,
    stop: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the lease keeper's runtime")?;
    let handle = std::thread::Builder::new()
        .name("lease-keeper".into())
        .spawn(move || {
            rt.block_on(async move {
                let w = &s.ctx.settings.worker;
                let lease = w.lease();
                let mut beat = tokio::time::interval(w.heartbeat_interval);
                beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = beat.tick() => {}
                        _ = s.check_lease.notified() => {}
                    }
                    let name = s.worker();
                    // Bounded: a hung call must not hold up the next beat.
                    let res = tokio::time::timeout(
                        w.heartbeat_interval,
                        queue.heartbeat(&name, lease, false),
                    )
                    .await;
                    match res {
                        Ok(Ok(Lease::Alive)) => {}
                        Ok(Ok(Lease::Lost)) => lease_lost(&s, &queue, &name, lease).await,
                        Ok(Err(e)) => {
                            s.ctx.metrics.runtime_errors.inc();
                            warn!(error = %e, "heartbeat failed");
                        }
                        Err(_) => {
                            s.ctx.metrics.runtime_errors.inc();
                            warn!("heartbeat timed out");
                        }
                    }
                }
            });
        })
        .context("starting the lease keeper")?;
    Ok(handle)
}

/// The lease is gone: a peer recovered (and revoked) our jobs, or Redis lost its data.
/// Abort every held job now, so none runs on without an owner, then register a new name.
async fn lease_lost(s: &Arc<Shared>, queue: &Engine, old: &str, lease: Duration) {
    let mut aborted = 0;
    {
        let mut held = s.held();
        for h in held.values_mut() {
            if &*h.worker == old && !h.lost {
                h.lost = true;
                if let Some(a) = &h.abort {
                    a.abort();
                }
                aborted += 1;
            }
        }
    }
    s.ctx.metrics.leases_lost.inc();
    let new = worker_name();
    error!(
        old_worker = %old, new_worker = %new, aborted,
        "lease lost (this process froze or could not reach redis long enough, or redis lost its data): \
         its jobs were taken over; stopped them and registering again"
    );
    match queue.heartbeat(&new, lease, true).await {
        Ok(_) => *s.worker.lock().unwrap_or_else(|p| p.into_inner()) = Arc::from(new.as_str()),
        Err(e) => warn!(error = %e, "registering again failed; retrying at the next beat"),
    }
}

/// At exit: jobs taken but never started go back to the front of their queue as if never
/// taken; jobs cut at the drain deadline are handed back as interrupted.
async fn release_and_hand_back(shared: &Arc<Shared>) {
    let worker = shared.worker();
    let unstarted: Vec<(String, String, Settle)> = shared
        .held()
        .iter()
        .filter(|(_, h)| h.started.is_none() && h.worker == worker)
        .map(|(id, h)| (id.clone(), h.queue.clone(), Settle::Release))
        .collect();
    if !unstarted.is_empty() {
        match shared.ctx.queue.settle(&worker, &unstarted).await {
            Ok(()) => info!(
                released = unstarted.len(),
                "released jobs that had not started"
            ),
            Err(e) => {
                warn!(error = %e, "could not release unstarted jobs; recovery will requeue them")
            }
        }
    }
    match shared.ctx.queue.reap(Some(&worker), None).await {
        Ok(orphans) => {
            if !orphans.is_empty() {
                warn!(
                    count = orphans.len(),
                    "handed back jobs that were still running"
                );
            }
            take_over(
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
        let worker = s.worker();
        let idle = match s.ctx.queue.fetch(&queue, &worker, n).await {
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
                                worker: worker.clone(),
                                started: None,
                                running_written: false,
                                abort: None,
                                lost: false,
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
                // The lease keeper decides whether the lease is merely late or lost.
                sem.add_permits(n);
                debug!(queue = %queue, "fetch refused: lease lapsed; asking the lease keeper");
                s.check_lease.notify_one();
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
        let worker = s
            .held()
            .get(&job.id)
            .map(|h| h.worker.clone())
            .unwrap_or_else(|| s.worker());

        info!(started_at = %started_at, "job started");
        let max_attempts = job.max_attempts.unwrap_or(qs.max_attempts);
        let last_attempt = job.failures + 1 >= max_attempts;
        let result = attempt(&s, &qs, &job, last_attempt).await;
        let lost = s.held().get(&job.id).is_some_and(|h| h.lost);

        let outcome = match result {
            _ if lost => Outcome::Stale {
                error: "stopped: this worker's lease was lost and the job taken over by a peer".into(),
            },
            Ok(()) => Outcome::Succeeded,
            Err(JobError::Stale(e)) => Outcome::Stale {
                error: format!("refused by fencing: {e}"),
            },
            Err(JobError::Snooze { delay, reason }) => Outcome::Snooze { delay, reason },
            Err(JobError::Permanent(msg)) => Outcome::Dead { error: msg },
            Err(JobError::Retryable(e)) if is_outage(&e) => Outcome::Snooze {
                delay: retry::outage_delay(job.snoozes),
                reason: format!("infrastructure unavailable, retried without spending an attempt: {e:#}"),
            },
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
        // A job that fails for good first puts its records into a final state (the job
        // type's failure hook, under this attempt's fence); if that cannot be done now, the
        // job is snoozed and the whole decision is taken again later.
        let outcome = match outcome {
            Outcome::Dead { error } => match run_failure_hook(&s, &job, &error).await {
                Ok(()) => Outcome::Dead { error },
                Err(HookError::Stale(e)) => Outcome::Stale { error: format!("refused by fencing: {e}") },
                Err(HookError::Failed(e)) => Outcome::Snooze {
                    delay: retry::outage_delay(job.snoozes),
                    reason: format!("failed for good ({error}) but its failure hook could not run yet: {e:#}"),
                },
            },
            other => other,
        };

        let elapsed = t0.elapsed();
        m.in_flight.get_or_create(&labels).dec();
        m.duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
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
            Outcome::Snooze { delay, reason } => {
                m.snoozed.get_or_create(&labels).inc();
                info!(started_at = %started_at, duration_ms, outcome = "snoozed", retry_in_ms = delay.as_millis() as u64, reason = %reason, "job snoozed; no attempt spent");
            }
            Outcome::Dead { error } => {
                m.failed.get_or_create(&labels).inc();
                m.dead.get_or_create(&labels).inc();
                error!(started_at = %started_at, duration_ms, outcome = "dead", error = %error, "job failed; moved to the dead-letter store");
            }
            Outcome::Stale { error } => {
                m.stale.get_or_create(&labels).inc();
                warn!(started_at = %started_at, duration_ms, outcome = "stale", error = %error, "job attempt lost its lease; nothing of it is kept");
            }
        }
        let c = Completion {
            job,
            queue,
            worker,
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

/// True when the error chain shows Postgres or Redis unreachable (or refusing connections),
/// not a problem of the job: such failures are snoozed rather than spent as attempts, so an
/// outage longer than the retry budget dead-letters nothing.
pub fn is_outage(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(db) = cause.downcast_ref::<crate::db::DbError>() {
            return db.is_outage();
        }
        if let Some(sq) = cause.downcast_ref::<sqlx::Error>() {
            return crate::db::is_outage(sq);
        }
        if let Some(q) = cause.downcast_ref::<super::engine::QueueError>() {
            return matches!(q, super::engine::QueueError::Redis(r) if redis_outage(r));
        }
        if let Some(r) = cause.downcast_ref::<redis::RedisError>() {
            return redis_outage(r);
        }
        false
    })
}

fn redis_outage(r: &redis::RedisError) -> bool {
    r.is_io_error() || r.is_connection_dropped() || r.is_connection_refusal() || r.is_timeout()
}

enum HookError {
    Stale(super::fence::FenceError),
    Failed(anyhow::Error),
}

async fn run_failure_hook(s: &Arc<Shared>, job: &FetchedJob, error: &str) -> Result<(), HookError> {
    let Some(entry) = s.ctx.registry.get(&job.job_type) else {
        return Ok(());
    };
    if job.defect.is_some() {
        return Ok(());
    }
    let ctx = job_context(s, job, true);
    // The hook only marks records: the job's own timeout (which may be what failed it, and
    // may be short) is no measure for it.
    let timeout = s
        .ctx
        .settings
        .queue(&job.job_type)
        .timeout
        .max(Duration::from_secs(30));
    let hook = entry.on_failure(ctx, job.payload.clone(), error.to_string());
    match tokio::time::timeout(timeout, tokio::spawn(hook)).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => match e.downcast::<super::fence::FenceError>() {
            Ok(f @ super::fence::FenceError::Stale { .. }) => Err(HookError::Stale(f)),
            Ok(other) => Err(HookError::Failed(other.into())),
            Err(e) => Err(HookError::Failed(e)),
        },
        Ok(Err(join)) => Err(HookError::Failed(anyhow::anyhow!(
            "the failure hook panicked: {join}"
        ))),
        Err(_) => Err(HookError::Failed(anyhow::anyhow!(
            "the failure hook timed out"
        ))),
    }
}

fn job_context(s: &Arc<Shared>, job: &FetchedJob, last_attempt: bool) -> JobContext {
    JobContext {
        app: s.ctx.clone(),
        job_id: job.id.clone(),
        attempt: job.attempt,
        last_attempt,
        fence: Fence::new(job.id.clone(), job.attempt),
        shutdown: s.draining.clone(),
    }
}

async fn attempt(
    s: &Arc<Shared>,
    qs: &QueueSettings,
    job: &FetchedJob,
    last_attempt: bool,
) -> Result<(), JobError> {
    if let Some(defect) = &job.defect {
        return Err(JobError::permanent(format!(
            "the job as stored in redis cannot run: {defect} (see jobs/README.md for what each field must hold)"
        )));
    }
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
    if s.held().get(&job.id).is_none_or(|h| h.lost) {
        // Taken under a lease that is gone: the job belongs to whoever recovered it.
        return Err(JobError::Retryable(anyhow::anyhow!(
            "not started: the lease it was taken under was lost"
        )));
    }
    let jctx = job_context(s, job, last_attempt);
    let fut = entry.run(jctx, job.payload.clone());
    // Spawned: a panic is caught as a JoinError, the timeout drops (stops) the work, and the
    // drain deadline or a lost lease can abort it.
    let handle = tokio::spawn(tokio::time::timeout(qs.timeout, fut));
    {
        let mut held = s.held();
        if let Some(h) = held.get_mut(&job.id) {
            h.started = Some(Utc::now());
            h.abort = Some(handle.abort_handle());
            if h.lost {
                handle.abort();
            }
        }
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
    // Attempts aborted because the lease was lost have nothing to record here: recovery
    // writes their `interrupted` row, and the job belongs to its new owner.
    let batch: Vec<&Completion> = {
        let mut held = s.held();
        batch
            .iter()
            .filter(|c| {
                let lost = held
                    .get(&c.job.id)
                    .is_some_and(|h| h.lost && h.attempt == c.job.attempt);
                if lost {
                    held.remove(&c.job.id);
                }
                !lost
            })
            .collect()
    };
    let audit_on = s.ctx.settings.worker.audit;
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
    let needs_db = audit_on || !dead.is_empty();
    if needs_db {
        let db = &s.ctx.db;
        let ok = retry_until(s, give_up, "writing job outcomes to postgres", || async {
            let mut tx = db.begin().await?;
            // A dead-letter entry is business state: only the attempt that still owns the
            // job may write it (a stale one's job is running elsewhere).
            let mut stale_dead: HashSet<&str> = HashSet::new();
            let mut owned_dead: Vec<DeadJob> = Vec::with_capacity(dead.len());
            for d in &dead {
                match Fence::new(d.job_id.clone(), d.attempts.max(0) as u32).check(&mut tx).await {
                    Ok(()) => owned_dead.push(d.clone()),
                    Err(fence::FenceError::Stale { .. }) => {
                        stale_dead.insert(d.job_id.as_str());
                    }
                    Err(fence::FenceError::Db(e)) => return Err(e),
                }
            }
            if audit_on {
                let runs: Vec<RunRecord> = batch
                    .iter()
                    .map(|c| {
                        let (status, error) = match &c.outcome {
                            Outcome::Succeeded => (RunStatus::Succeeded, None),
                            Outcome::Retry { error, .. } => (RunStatus::Failed, Some(error.clone())),
                            Outcome::Snooze { reason, .. } => (RunStatus::Snoozed, Some(reason.clone())),
                            Outcome::Dead { error } if stale_dead.contains(c.job.id.as_str()) => (
                                RunStatus::Stale,
                                Some(format!("failed for good after its lease was taken over (not dead-lettered): {error}")),
                            ),
                            Outcome::Dead { error } => (RunStatus::Dead, Some(error.clone())),
                            Outcome::Stale { error } => (RunStatus::Stale, Some(error.clone())),
                        };
                        RunRecord {
                            job_id: c.job.id.clone(),
                            attempt: c.job.attempt as i32,
                            job_type: job_type_of(c),
                            worker: c.worker.to_string(),
                            status,
                            error,
                            started_at: c.started_at,
                            finished_at: Some(c.finished_at),
                        }
                    })
                    .collect();
                audit::write_runs(&mut tx, &runs, Conflict::Finish).await?;
            }
            dead_letter::insert(&mut tx, &owned_dead).await?;
            tx.commit().await?;
            Ok::<_, crate::db::DbError>(())
        })
        .await;
        if !ok {
            return; // left held: recovery reruns them, which is safe; losing the record is not.
        }
    }
    // Per lease name: a completion of an earlier name settles nothing (compare-and-set).
    let mut by_worker: HashMap<Arc<str>, Vec<(String, String, Settle)>> = HashMap::new();
    for c in &batch {
        let settle = match &c.outcome {
            Outcome::Succeeded => Settle::Done,
            Outcome::Dead { .. } => Settle::Dead,
            Outcome::Retry { delay, error } => Settle::Retry {
                delay: *delay,
                error: error.clone(),
            },
            Outcome::Snooze { delay, reason } => Settle::Snooze {
                delay: *delay,
                reason: reason.clone(),
            },
            // Not ours any more: leave the job to its owner.
            Outcome::Stale { .. } => continue,
        };
        by_worker.entry(c.worker.clone()).or_default().push((
            c.job.id.clone(),
            c.queue.clone(),
            settle,
        ));
    }
    let q = &s.ctx.queue;
    let mut all_ok = true;
    for (worker, entries) in &by_worker {
        all_ok &= retry_until(s, give_up, "settling jobs in redis", || {
            q.settle(worker, entries)
        })
        .await;
    }
    if all_ok {
        let mut held = s.held();
        for c in &batch {
            if held
                .get(&c.job.id)
                .is_some_and(|h| h.attempt == c.job.attempt)
            {
                held.remove(&c.job.id);
            }
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

/// Orphan recovery, `running` audit rows and reconciliation of what Redis says this process
/// holds with what it really holds. (Heartbeats are the lease keeper's, on its own thread.)
async fn housekeeping(s: Arc<Shared>, stop: CancellationToken) {
    let w = &s.ctx.settings.worker;
    let mut beat = tokio::time::interval(w.heartbeat_interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut audit_tick =
        tokio::time::interval((w.audit_running_after / 2).max(Duration::from_millis(100)));
    audit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut suspects: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = beat.tick() => {
                match s.ctx.queue.reap(None, Some(&s.worker())).await {
                    Ok(orphans) if !orphans.is_empty() => {
                        for o in &orphans {
                            s.ctx.metrics.orphans_recovered.get_or_create(&Metrics::job(&o.job_type)).inc();
                        }
                        warn!(count = orphans.len(), "recovering jobs of worker processes that stopped heartbeating");
                        take_over(&s.ctx, &orphans, "the worker process stopped heartbeating (crashed or froze) during this attempt").await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        s.ctx.metrics.runtime_errors.inc();
                        warn!(error = %e, "orphan recovery failed");
                    }
                }
                // Parked by a recoverer that died (or met a Postgres outage) half-way.
                match s.ctx.queue.parked(w.lease()).await {
                    Ok(parked) if !parked.is_empty() => {
                        take_over(&s.ctx, &parked, "the worker process stopped heartbeating (crashed or froze) during this attempt").await;
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "reading parked jobs failed"),
                }
                suspects = reconcile(&s, suspects).await;
            }
            _ = audit_tick.tick(), if w.audit => write_running_rows(&s).await,
        }
    }
}

/// A fetch whose answer was lost (response timeout after the script ran) leaves ids in
/// Redis under our name that we never received. Unknown for a whole lease, they are released.
/// (Not sooner: a fetch's answer is inserted into `held` just after the script ran, and a
/// loaded machine can delay that by more than a heartbeat — releasing such a job would run it
/// twice.)
async fn reconcile(
    s: &Arc<Shared>,
    mut suspects: HashMap<String, Instant>,
) -> HashMap<String, Instant> {
    let worker = s.worker();
    let Ok(ids) = s.ctx.queue.held_by(&worker).await else {
        return suspects;
    };
    let unknown: HashSet<String> = {
        let held = s.held();
        ids.into_iter()
            .filter(|id| !held.contains_key(id))
            .collect()
    };
    suspects.retain(|id, _| unknown.contains(id));
    let now = Instant::now();
    for id in &unknown {
        suspects.entry(id.clone()).or_insert(now);
    }
    let lease = s.ctx.settings.worker.lease();
    let confirmed: Vec<String> = suspects
        .iter()
        .filter(|(_, since)| now.duration_since(**since) >= lease)
        .map(|(id, _)| id.clone())
        .collect();
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
        if let Err(e) = s.ctx.queue.settle(&worker, &entries).await {
            warn!(error = %e, "release failed");
        }
        for id in &confirmed {
            suspects.remove(id);
        }
    }
    suspects
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
            worker: h.worker.to_string(),
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
            // Tried every tick: during a Postgres outage, say so every 10 s, not 10 times a
            // second (the metric counts every failure).
            static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
            let now = Utc::now().timestamp();
            let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
            if now - last >= 10
                && LAST
                    .compare_exchange(
                        last,
                        now,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok()
            {
                warn!(error = %e, "writing running rows failed (repeats are not logged for 10 s)");
            }
        }
    }
}

/// Finishes a recovery: revokes the cut attempts in Postgres (fencing) and writes their
/// `interrupted` rows (a finished row, if any, wins) in one transaction, then makes the jobs
/// runnable again. Until that commit they stay parked, so a rerun can never start while the
/// cut attempt could still commit. On failure they stay parked and are re-driven later.
async fn take_over(ctx: &AppContext, orphans: &[Orphan], why: &str) {
    if orphans.is_empty() {
        return;
    }
    let now = Utc::now();
    let fences: Vec<Fence> = orphans
        .iter()
        .map(|o| Fence::new(o.id.clone(), o.attempt))
        .collect();
    let rows: Vec<RunRecord> = if ctx.settings.worker.audit {
        orphans
            .iter()
            .filter(|o| o.attempt >= 1)
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
            .collect()
    } else {
        Vec::new()
    };
    let res = async {
        let mut tx = ctx.db.begin().await?;
        fence::revoke(&mut tx, &fences).await?;
        audit::write_runs(&mut tx, &rows, Conflict::OverwriteRunning).await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = res {
        ctx.metrics.runtime_errors.inc();
        warn!(error = %e, count = orphans.len(), "revoking recovered attempts failed; they stay parked and are retried");
        return;
    }
    let ids: Vec<String> = orphans.iter().map(|o| o.id.clone()).collect();
    match ctx.queue.recover(&ids).await {
        Ok(n) => debug!(requeued = n, "recovered jobs queued again"),
        Err(e) => {
            ctx.metrics.runtime_errors.inc();
            warn!(error = %e, "queueing recovered jobs failed; they stay parked and are retried");
        }
    }
}
