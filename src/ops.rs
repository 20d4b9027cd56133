//! What ops see and do, in one place for the three front ends that offer it: the CLI, the
//! HTTP ops API and the dashboard. Each function returns plain serialisable values; the
//! front ends only print, encode or render them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    billing::run::{self, RunRow},
    context::AppContext,
    db::DbError,
    queue::{dead_letter, engine::NewJob, pause},
};

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// The thing named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Not allowed in its current state (a completed run cannot be paused).
    #[error("{0}")]
    Refused(String),
    /// Postgres, Redis or a job failed underneath.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<DbError> for OpsError {
    fn from(e: DbError) -> Self {
        Self::Internal(e.into())
    }
}

impl From<crate::queue::engine::QueueError> for OpsError {
    fn from(e: crate::queue::engine::QueueError) -> Self {
        Self::Internal(e.into())
    }
}

impl From<crate::billing::BillingError> for OpsError {
    fn from(e: crate::billing::BillingError) -> Self {
        use crate::billing::BillingError as B;
        match e {
            B::NoRun(id) => Self::NotFound(format!("no billing run {id}")),
            B::Refused(m) => Self::Refused(m),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<pause::PauseError> for OpsError {
    fn from(e: pause::PauseError) -> Self {
        match e {
            pause::PauseError::UnknownQueue(_) => Self::NotFound(e.to_string()),
            other => Self::Internal(other.into()),
        }
    }
}

/// One queue as ops see it.
#[derive(Debug, Clone, Serialize)]
pub struct QueueView {
    /// Queue (job type).
    pub name: String,
    /// Ready to run now.
    pub waiting: u64,
    /// Delayed or waiting for a retry.
    pub scheduled: u64,
    /// Held by workers now.
    pub running: u64,
    /// Dead-lettered (in `dead_jobs`).
    pub failed: i64,
    /// Executions finished in the last minute (any outcome).
    pub finished_last_minute: i64,
    /// Executions finished in the last hour (any outcome).
    pub finished_last_hour: i64,
    /// Executions that failed (to be retried, or dead) in the last hour.
    pub failures_last_hour: i64,
    /// Age of the oldest job that could run now.
    pub oldest_waiting_seconds: Option<f64>,
    /// Set while the queue is paused.
    pub paused: Option<pause::Paused>,
}

/// Every queue with its depth, throughput and pause, plus the live worker processes.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// Per queue, in registration order.
    pub queues: Vec<QueueView>,
    /// Live worker processes (name, lease expiry in Unix ms).
    pub workers: Vec<String>,
}

/// The queues now.
pub async fn queues(app: &AppContext) -> Result<Overview, OpsError> {
    let paused = pause::list(app).await?;
    let mut tx = app.db.begin().await?;
    let dead = dead_letter::counts(&mut tx).await?;
    // started_at bounds the scan through its index; finished_at decides.
    let recent: Vec<(String, i64, i64, i64)> = tx
        .fetch_all(sqlx::query_as(
            "SELECT job_type, \
                    count(*) FILTER (WHERE finished_at > now() - interval '1 minute'), \
                    count(*), \
                    count(*) FILTER (WHERE status IN ('failed', 'dead')) \
             FROM job_runs WHERE started_at > now() - interval '2 hours' \
               AND finished_at > now() - interval '1 hour' GROUP BY job_type",
        ))
        .await?;
    tx.commit().await?;
    let mut queues = Vec::new();
    for name in app.registry.names() {
        let s = app.queue.stats(name).await?;
        let (m, h, f) = recent
            .iter()
            .find(|r| r.0 == name)
            .map_or((0, 0, 0), |r| (r.1, r.2, r.3));
        queues.push(QueueView {
            name: name.to_string(),
            waiting: s.waiting + s.due,
            scheduled: s.scheduled.saturating_sub(s.due),
            running: s.in_flight,
            failed: dead.iter().find(|(q, _)| q == name).map_or(0, |(_, n)| *n),
            finished_last_minute: m,
            finished_last_hour: h,
            failures_last_hour: f,
            oldest_waiting_seconds: s.oldest_waiting_ms.map(|ms| ms as f64 / 1000.0),
            paused: paused.iter().find(|p| p.queue == name).cloned(),
        });
    }
    let workers = app
        .queue
        .workers()
        .await?
        .into_iter()
        .map(|(w, _)| w)
        .collect();
    Ok(Overview { queues, workers })
}

/// Executions finished per minute over the last `minutes`, per queue (oldest minute first):
/// the throughput chart.
pub async fn throughput(
    app: &AppContext,
    minutes: i32,
) -> Result<Vec<(String, Vec<i64>)>, OpsError> {
    let minutes = minutes.clamp(1, 24 * 60);
    let mut tx = app.db.begin().await?;
    let rows: Vec<(String, i32, i64)> = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT job_type, \
                        (extract(epoch FROM date_trunc('minute', now()) - date_trunc('minute', finished_at)) / 60)::int AS ago, \
                        count(*) \
                 FROM job_runs WHERE started_at > now() - make_interval(mins => $1 + 60) \
                   AND finished_at >= date_trunc('minute', now()) - make_interval(mins => $1 - 1) \
                 GROUP BY 1, 2",
            )
            .bind(minutes),
        )
        .await?;
    tx.commit().await?;
    let n = minutes as usize;
    Ok(app
        .registry
        .names()
        .into_iter()
        .map(|name| {
            let mut series = vec![0; n];
            for (_, ago, c) in rows.iter().filter(|r| r.0 == name) {
                if let Ok(ago) = usize::try_from(*ago)
                    && ago < n
                {
                    series[n - 1 - ago] = *c;
                }
            }
            (name.to_string(), series)
        })
        .collect())
}

/// Pauses a queue (recorded in Postgres, then told to Redis); false when it already was.
pub async fn pause_queue(
    app: &AppContext,
    queue: &str,
    by: &str,
    reason: Option<&str>,
) -> Result<bool, OpsError> {
    Ok(pause::pause(app, queue, by, reason).await?)
}

/// Resumes a queue; false when it was not paused.
pub async fn resume_queue(app: &AppContext, queue: &str) -> Result<bool, OpsError> {
    Ok(pause::resume(app, queue).await?)
}

/// One execution of a job (a `job_runs` row).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRun {
    /// Job id.
    pub job_id: String,
    /// Attempt, from 1.
    pub attempt: i32,
    /// Job type.
    pub job_type: String,
    /// Worker process.
    pub worker: String,
    /// running | succeeded | failed | dead | interrupted | stale | snoozed.
    pub status: String,
    /// Error of a failed attempt.
    pub error: Option<String>,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End.
    pub finished_at: Option<DateTime<Utc>>,
    /// Duration.
    pub duration_ms: Option<i64>,
}

const RUN_COLUMNS: &str =
    "job_id, attempt, job_type, worker, status, error, started_at, finished_at, duration_ms";

/// The latest executions, newest first; only failures when `failures` is set.
pub async fn recent_jobs(
    app: &AppContext,
    queue: Option<&str>,
    failures: bool,
    limit: i64,
) -> Result<Vec<JobRun>, OpsError> {
    let mut tx = app.db.begin().await?;
    let rows = tx
        .fetch_all(
            sqlx::query_as(&format!(
                "SELECT {RUN_COLUMNS} FROM job_runs WHERE ($1::text IS NULL OR job_type = $1) \
                 AND (NOT $2 OR status IN ('failed', 'dead', 'interrupted')) \
                 ORDER BY started_at DESC LIMIT $3"
            ))
            .bind(queue)
            .bind(failures)
            .bind(limit.clamp(1, 1000)),
        )
        .await?;
    tx.commit().await?;
    Ok(rows)
}

/// A job: what Redis holds of it, its executions and its dead-letter entry.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// Redis's hash of the job while it is waiting, scheduled or running.
    pub in_redis: Option<std::collections::BTreeMap<String, String>>,
    /// Executions, first attempt first.
    pub runs: Vec<JobRun>,
    /// Set when the job failed for good.
    pub dead: Option<dead_letter::DeadJob>,
}

/// A job by id.
pub async fn job(app: &AppContext, id: &str) -> Result<JobView, OpsError> {
    let in_redis = app.queue.job(id).await?;
    let mut tx = app.db.begin().await?;
    let runs: Vec<JobRun> = tx
        .fetch_all(
            sqlx::query_as(&format!(
                "SELECT {RUN_COLUMNS} FROM job_runs WHERE job_id = $1 ORDER BY attempt"
            ))
            .bind(id),
        )
        .await?;
    let dead: Option<dead_letter::DeadJob> = tx
        .fetch_optional(
            sqlx::query_as(
                "SELECT job_id, job_type, payload, attempts, last_error, enqueued_at, failed_at \
                 FROM dead_jobs WHERE job_id = $1",
            )
            .bind(id),
        )
        .await?;
    tx.commit().await?;
    if in_redis.is_none() && runs.is_empty() && dead.is_none() {
        return Err(OpsError::NotFound(format!(
            "no job {id} in redis, job_runs or dead_jobs"
        )));
    }
    Ok(JobView {
        id: id.to_string(),
        in_redis,
        runs,
        dead,
    })
}

/// Dead-lettered jobs, newest first.
pub async fn failed_jobs(
    app: &AppContext,
    queue: Option<&str>,
    limit: i64,
) -> Result<Vec<dead_letter::DeadJob>, OpsError> {
    let mut tx = app.db.begin().await?;
    let d = dead_letter::list(&mut tx, queue, limit).await?;
    tx.commit().await?;
    Ok(d)
}

/// Puts a dead job back on its queue, keeping its id and counting its earlier attempts.
/// The row leaves `dead_jobs` in the transaction that pushes it: if the push fails, it stays.
pub async fn retry_job(app: &AppContext, id: &str) -> Result<String, OpsError> {
    let mut tx = app.db.begin().await?;
    let Some(d) = dead_letter::take(&mut tx, id).await? else {
        return Err(OpsError::NotFound(format!("no dead job {id}")));
    };
    let job = NewJob {
        id: d
            .job_id
            .parse()
            .map_err(|_| OpsError::Refused(format!("job id {} is not a uuid", d.job_id)))?,
        job_type: d.job_type.clone(),
        payload: d.payload.clone(),
        delay: Duration::ZERO,
        idempotency_key: None,
        max_attempts: None,
        prior_attempts: d.attempts.max(0) as u32,
        redrive: false,
    };
    app.queue
        .push(&[job], app.settings.worker.idempotency_ttl)
        .await?;
    tx.commit().await?;
    tracing::info!(job_id = %id, job_type = %d.job_type, "dead job re-queued");
    Ok(d.job_type)
}

/// A billing run with its totals.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    /// The run.
    #[serde(flatten)]
    pub run: RunRow,
    /// Counts and amounts by outcome and exclusion reason, now.
    pub now: serde_json::Value,
}

/// Recent billing runs, newest first.
pub async fn runs(app: &AppContext, limit: i64) -> Result<Vec<RunRow>, OpsError> {
    Ok(run::list(&app.db, limit.clamp(1, 1000)).await?)
}

/// One billing run with its live totals.
pub async fn run_show(app: &AppContext, id: Uuid) -> Result<RunView, OpsError> {
    let r = run::get(&app.db, id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no billing run {id}")))?;
    Ok(RunView {
        now: run_totals(app, id).await?,
        run: r,
    })
}

/// A run's counts and amounts by outcome and exclusion reason, counted now.
pub async fn run_totals(app: &AppContext, id: Uuid) -> Result<serde_json::Value, OpsError> {
    let mut tx = app.db.begin().await?;
    let now = run::totals(&mut tx, id).await?;
    tx.commit().await?;
    Ok(now)
}

/// Releases a gateway account held by the chargeback-rate guard (and the runs it paused);
/// false when it was not held.
pub async fn release_account(app: &AppContext, name: &str) -> Result<bool, OpsError> {
    if app.accounts.get(name).is_none() {
        return Err(OpsError::NotFound(format!("no gateway account `{name}`")));
    }
    Ok(crate::lifecycle::guard::release(app, name).await?)
}

/// Operator control of a run: `pause` (debits in flight finish), `resume` (its jobs are
/// enqueued again), `cancel` (final).
pub async fn run_control(app: &AppContext, id: Uuid, action: &str) -> Result<RunRow, OpsError> {
    let r = run::control(&app.db, id, action).await?;
    if action == "resume" {
        if r.status == "running" {
            crate::jobs::billing_batch::fan_out(app, id).await?;
        } else {
            crate::jobs::billing::restart_selection(app, &r).await?;
        }
    }
    tracing::info!(run_id = %id, action, status = %r.status, "billing run controlled by an operator");
    Ok(r)
}

/// Recent uploads with their progress, newest first.
pub async fn uploads(
    app: &AppContext,
    limit: i64,
) -> Result<Vec<crate::uploads::UploadView>, OpsError> {
    let now = Utc::now();
    Ok(crate::uploads::list(&app.db, limit.clamp(1, 1000))
        .await?
        .into_iter()
        .map(|u| u.view(now))
        .collect())
}

/// One upload with its progress.
pub async fn upload(app: &AppContext, id: Uuid) -> Result<crate::uploads::UploadView, OpsError> {
    crate::uploads::get(&app.db, id)
        .await?
        .map(|u| u.view(Utc::now()))
        .ok_or_else(|| OpsError::NotFound(format!("no upload {id}")))
}

/// One report with a fresh link once it is ready.
pub async fn report(app: &AppContext, id: Uuid) -> Result<ReportView, OpsError> {
    let r = crate::reports::get(&app.db, id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("no report {id}")))?;
    Ok(report_view(app, r))
}

fn report_view(app: &AppContext, r: crate::reports::ReportRecord) -> ReportView {
    let download_url = (r.status == "ready")
        .then(|| crate::reports::signed_link(&app.settings.reports, r.id, None))
        .flatten()
        .map(|(url, _)| url);
    ReportView {
        report: r,
        download_url,
    }
}

/// A report with a fresh signed download link once it is ready.
#[derive(Debug, Clone, Serialize)]
pub struct ReportView {
    /// The record.
    #[serde(flatten)]
    pub report: crate::reports::ReportRecord,
    /// Signed, expiring link (when ready and links are configured).
    pub download_url: Option<String>,
}

/// Recent reports, newest first.
pub async fn reports(app: &AppContext, limit: i64) -> Result<Vec<ReportView>, OpsError> {
    let rows = crate::reports::list(&app.db, limit.clamp(1, 1000)).await?;
    Ok(rows.into_iter().map(|r| report_view(app, r)).collect())
}

/// A provider account's guards as every process sees them.
#[derive(Debug, Clone, Serialize)]
pub struct GuardView {
    /// `genesis`, `sandbox_vop`, …
    pub provider: String,
    /// Gateway account name (the provider's name for a single-account provider).
    pub account: String,
    /// What calls it guards: `gateway` or `vop`.
    pub kind: &'static str,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    /// While open: seconds until a probe may go out.
    pub open_for_seconds: Option<f64>,
    /// Requests per second, all processes together.
    pub rate_limit: u32,
    /// Why the chargeback-rate guard holds the account, if it does.
    pub hold_reason: Option<String>,
}

/// Breakers and rate limits of every provider account.
pub async fn guards(app: &AppContext) -> Result<Vec<GuardView>, OpsError> {
    let held = crate::billing::accounts::list(&app.db).await?;
    let mut out = Vec::new();
    let vop = app.vop.breaker();
    let (breaker, open) = vop.shared_view().await;
    out.push(GuardView {
        provider: app.vop.provider_name().to_string(),
        account: app.vop.provider_name().to_string(),
        kind: "vop",
        breaker,
        open_for_seconds: open.map(|d| d.as_secs_f64()),
        rate_limit: app.settings.vop.rate_limit,
        hold_reason: None,
    });
    for name in app.accounts.names() {
        let Some(a) = app.accounts.get(&name) else {
            continue;
        };
        let (breaker, open) = a.breaker.shared_view().await;
        out.push(GuardView {
            provider: a.settings.gateway.clone(),
            account: name.clone(),
            kind: "gateway",
            breaker,
            open_for_seconds: open.map(|d| d.as_secs_f64()),
            rate_limit: a.settings.rate_limit,
            hold_reason: held
                .iter()
                .find(|h| h.name == name)
                .and_then(|h| h.hold_reason.clone()),
        });
    }
    Ok(out)
}

/// Webhook deliveries by verdict and state over the last `hours`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeliveryCount {
    /// accepted | rejected | malformed.
    pub verdict: String,
    /// queued | processed | unmatched | failed | ignored.
    pub state: String,
    /// Deliveries.
    pub count: i64,
}

/// Counts of webhook deliveries received in the last `hours`.
pub async fn delivery_counts(app: &AppContext, hours: i32) -> Result<Vec<DeliveryCount>, OpsError> {
    let mut tx = app.db.begin().await?;
    let rows = tx
        .fetch_all(
            sqlx::query_as(
                "SELECT verdict, state, count(*) AS count FROM webhook_deliveries \
                 WHERE received_at > now() - make_interval(hours => $1) GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .bind(hours.clamp(1, 24 * 90)),
        )
        .await?;
    tx.commit().await?;
    Ok(rows)
}
