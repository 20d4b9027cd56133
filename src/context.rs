//! The application context, built once in `startup` and shared by workers and HTTP.
//! Nothing reads the environment or opens a connection after it is built.

use std::{sync::Arc, time::Duration};

use crate::{
    config::Settings,
    db::Db,
    metrics::Metrics,
    queue::{
        engine::{Engine, NewJob, Pushed, QueueError},
        job::Job,
        registry::{PayloadError, Registry},
    },
    storage::Storage,
};

/// Shared handles. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppContext {
    /// Effective configuration.
    pub settings: Arc<Settings>,
    /// Postgres, through PgBouncer.
    pub db: Db,
    /// The Redis queue.
    pub queue: Engine,
    /// Prometheus series.
    pub metrics: Arc<Metrics>,
    /// Known job types.
    pub registry: Arc<Registry>,
    /// Object storage.
    pub storage: Storage,
    /// The VOP/BAV provider behind its rate limit and breaker.
    pub vop: crate::vop::Verifier,
    /// Gateway accounts, each behind its shared rate limit and breaker.
    pub accounts: crate::billing::accounts::Accounts,
    /// Keyed IBAN hashing (`privacy.iban_key`); `None` when the key is not configured.
    pub iban: Option<crate::iban::IbanHasher>,
    /// This process's copy of the linking filter (loaded when an import first needs it).
    pub key_filter: Arc<crate::uploads::key_filter::KeyFilter>,
}

/// Options of one enqueue.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Producer's idempotency key.
    pub idempotency_key: Option<String>,
    /// Run no earlier than this from now.
    pub delay: Duration,
    /// Overrides the queue's max attempts.
    pub max_attempts: Option<u32>,
}

/// Why an enqueue was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// No such job type.
    #[error("unknown job type `{0}`")]
    UnknownJobType(String),
    /// A test job type while `worker.allow_test_jobs` is off.
    #[error("job type `{0}` is test-only and worker.allow_test_jobs is off")]
    TestJobsDisabled(String),
    /// An internal job type (a chunk, a continuation): finworker enqueues it itself.
    #[error(
        "job type `{0}` is internal: producers enqueue only the types listed in jobs/README.md"
    )]
    Internal(String),
    /// The idempotency key was first used for a different payload.
    #[error("idempotency key already used for job {first} with a different payload")]
    KeyReused {
        /// The job enqueued under the key first.
        first: uuid::Uuid,
    },
    /// The payload does not match the job type.
    #[error("invalid payload at `{}`: {}", .0.field, .0.message)]
    Payload(PayloadError),
    /// An idempotency key that is empty or too long.
    #[error("idempotency key must be 1 to 200 printable characters")]
    BadIdempotencyKey,
    /// Back-pressure: the queue is over `worker.max_queue_depth`.
    #[error("queue `{queue}` holds {depth} waiting jobs (limit {limit}); retry later")]
    QueueFull {
        /// Queue.
        queue: String,
        /// Current depth.
        depth: u64,
        /// Configured limit.
        limit: u64,
    },
    /// Redis failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl AppContext {
    /// A producer's enqueue (HTTP API, `finworker enqueue`): only producer-facing job types,
    /// the payload validated against the type, and the idempotency key in the producers'
    /// own namespace (a producer can never pre-claim an internal key). A key reused for
    /// another payload is refused, naming the first job.
    pub async fn enqueue_json(
        &self,
        job_type: &str,
        body: &[u8],
        opts: EnqueueOptions,
    ) -> Result<Pushed, EnqueueError> {
        let entry = self
            .registry
            .get(job_type)
            .ok_or_else(|| EnqueueError::UnknownJobType(job_type.to_string()))?;
        if entry.test_only && !self.settings.worker.allow_test_jobs {
            return Err(EnqueueError::TestJobsDisabled(job_type.to_string()));
        }
        if !entry.producer && !entry.test_only {
            return Err(EnqueueError::Internal(job_type.to_string()));
        }
        let payload = entry.validate(body).map_err(EnqueueError::Payload)?;
        if let Some(k) = &opts.idempotency_key
            && (k.is_empty() || k.len() > 200 || k.chars().any(char::is_control))
        {
            return Err(EnqueueError::BadIdempotencyKey);
        }
        let opts = EnqueueOptions {
            idempotency_key: opts
                .idempotency_key
                .map(|k| format!("{PRODUCER_KEY_PREFIX}{k}")),
            ..opts
        };
        let pushed = self.push_checked(job_type, payload, opts).await?;
        if pushed.conflict {
            return Err(EnqueueError::KeyReused { first: pushed.id });
        }
        Ok(pushed)
    }

    /// Enqueues a typed job from inside finworker (a stage starting the next one, the
    /// sweeper): any job type, keys in the internal namespace.
    pub async fn enqueue<J: Job>(
        &self,
        job: &J,
        opts: EnqueueOptions,
    ) -> Result<Pushed, EnqueueError> {
        let payload = serde_json::to_string(job).map_err(|e| {
            EnqueueError::Payload(PayloadError {
                field: ".".into(),
                message: e.to_string(),
            })
        })?;
        self.push_checked(J::NAME, payload, opts).await
    }

    async fn push_checked(
        &self,
        job_type: &str,
        payload: String,
        opts: EnqueueOptions,
    ) -> Result<Pushed, EnqueueError> {
        let stats = self.queue.stats(job_type).await?;
        let limit = self.settings.worker.max_queue_depth;
        if stats.waiting + stats.scheduled >= limit {
            return Err(EnqueueError::QueueFull {
                queue: job_type.to_string(),
                depth: stats.waiting + stats.scheduled,
                limit,
            });
        }
        let job = NewJob {
            delay: opts.delay,
            idempotency_key: opts.idempotency_key,
            max_attempts: opts.max_attempts,
            ..NewJob::new(job_type, payload)
        };
        let mut pushed = self
            .queue
            .push(
                std::slice::from_ref(&job),
                self.settings.worker.idempotency_ttl,
            )
            .await?;
        pushed.pop().ok_or_else(|| {
            EnqueueError::Queue(QueueError::Protocol("push returned nothing".into()))
        })
    }
}

/// Producers' idempotency keys are stored under this prefix; finworker's own keys never
/// start with it, so the two namespaces cannot collide.
pub const PRODUCER_KEY_PREFIX: &str = "p:";
