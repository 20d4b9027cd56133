//! The Redis side of the queue: key layout and the Lua scripts that move jobs between states.
//! docs/queue.md describes every key and why each guarantee holds.
//!
//! Every state change is one Lua script (atomic in Redis), timed by the Redis server's clock
//! (no client clock skew), and batched: one round trip fetches or settles many jobs.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use redis::{AsyncCommands, Script, Value};
use uuid::Uuid;

pub use super::conn::RedisConn;

use crate::config::RedisSettings;

/// Jobs per push script call: large enough to amortise the round trip, small enough to keep
/// each script well under a millisecond so Redis stays responsive for fetches.
const PUSH_CHUNK: usize = 500;
/// Settle entries per script call, for the same reason.
const SETTLE_CHUNK: usize = 1000;

/// Errors of the Redis queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// Redis could not be reached or refused a command.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A script answered something this code does not understand.
    #[error("unexpected answer from redis: {0}")]
    Protocol(String),
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Job id (UUID v7 unless the caller chose one, e.g. a cron tick's).
    pub id: Uuid,
    /// Job type, which is also its queue.
    pub job_type: String,
    /// JSON payload text.
    pub payload: String,
    /// Run no earlier than this from now.
    pub delay: Duration,
    /// Producer's idempotency key, unique per job type within the retention window.
    pub idempotency_key: Option<String>,
    /// Overrides the queue's max attempts for this job.
    pub max_attempts: Option<u32>,
    /// Attempts already made (a re-queued dead job keeps numbering its attempts, so its
    /// earlier `job_runs` rows stay).
    pub prior_attempts: u32,
    /// Re-drive: when the idempotency key's job no longer exists in Redis (it finished, or
    /// Redis lost it), push this one under the key instead of calling it a duplicate. Used
    /// by the sweeper, which re-drives from Postgres state that says the work is not done.
    pub redrive: bool,
}

impl NewJob {
    /// A job to run now, with a fresh UUID v7 and no key or overrides.
    pub fn new(job_type: &str, payload: impl Into<String>) -> Self {
        Self {
            id: Uuid::now_v7(),
            job_type: job_type.to_string(),
            payload: payload.into(),
            delay: Duration::ZERO,
            idempotency_key: None,
            max_attempts: None,
            prior_attempts: 0,
            redrive: false,
        }
    }
}

/// What a push did for one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The job's id: the new one, or the first job's for a duplicate.
    pub id: Uuid,
    /// True when the idempotency key (or the id) was already known: nothing new was queued.
    pub duplicate: bool,
    /// The key was first used with a different payload (nothing new was queued).
    pub conflict: bool,
}

/// A job taken by a worker.
#[derive(Debug, Clone)]
pub struct FetchedJob {
    /// Job id as stored (normally a UUID).
    pub id: String,
    /// Job type; empty when the job's data was missing in Redis.
    pub job_type: String,
    /// Payload text.
    pub payload: String,
    /// This execution's attempt number (1 = first).
    pub attempt: u32,
    /// Failed attempts so far.
    pub failures: u32,
    /// Times a worker died while holding it.
    pub orphans: u32,
    /// Per-job max attempts, if the producer set one.
    pub max_attempts: Option<u32>,
    /// When it was enqueued (unix ms, Redis clock).
    pub enqueued_at_ms: i64,
    /// Times it was snoozed (rescheduled without spending an attempt).
    pub snoozes: u32,
    /// Why the stored job cannot run (a field a foreign writer got wrong): it is
    /// dead-lettered alone with this reason.
    pub defect: Option<String>,
}

/// Result of a fetch.
#[derive(Debug)]
pub enum Fetch {
    /// Zero or more jobs.
    Jobs(Vec<FetchedJob>),
    /// The worker's lease lapsed; it must heartbeat before fetching.
    Unregistered,
}

/// The outcome to record for one held job.
#[derive(Debug, Clone)]
pub enum Settle {
    /// Finished: remove.
    Done,
    /// Dead-lettered (already in Postgres): remove.
    Dead,
    /// Failed: run again after the delay.
    Retry {
        /// Backoff delay.
        delay: Duration,
        /// The error, kept on the job for `jobs show`.
        error: String,
    },
    /// Run again after the delay without counting a failure.
    Snooze {
        /// Delay.
        delay: Duration,
        /// Why, kept on the job for `jobs show`.
        reason: String,
    },
    /// Taken but never started: back to the front of its queue.
    Release,
}

/// A job recovered from a dead worker.
#[derive(Debug, Clone)]
pub struct Orphan {
    /// The dead worker's name.
    pub worker: String,
    /// Job id.
    pub id: String,
    /// Queue.
    pub queue: String,
    /// The attempt that was interrupted.
    pub attempt: u32,
    /// Job type.
    pub job_type: String,
    /// When the interrupted attempt started (unix ms, Redis clock).
    pub started_at_ms: i64,
}

/// Depth of one queue.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueueStats {
    /// Ready to run now.
    pub waiting: u64,
    /// Delayed or waiting for a retry.
    pub scheduled: u64,
    /// Held by workers.
    pub in_flight: u64,
    /// Scheduled jobs whose time has come (promoted at the next fetch).
    pub due: u64,
    /// Age of the oldest job that could run now.
    pub oldest_waiting_ms: Option<u64>,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Renewed.
    Alive,
    /// The name is no longer registered: a peer took its jobs over (or Redis lost them).
    Lost,
}

struct Scripts {
    push: Script,
    fetch: Script,
    settle: Script,
    heartbeat: Script,
    reap: Script,
    recover: Script,
    stats: Script,
}

/// Handle on the Redis queue. Cheap to clone: commands from clones are multiplexed (and
/// pipelined) over one connection that reconnects by itself.
#[derive(Clone)]
pub struct Engine {
    conn: RedisConn,
    prefix: String,
    /// A key of the namespace every script is invoked with: in a cluster it routes the call
    /// to the node owning the namespace's slot (the scripts build their keys from the prefix).
    anchor: String,
    scripts: std::sync::Arc<Scripts>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Engine {
    /// Connects (waits for Redis up to `connection_timeout`).
    pub async fn connect(settings: &RedisSettings) -> Result<Self, QueueError> {
        let conn = super::conn::connect(settings).await?;
        let prefix = super::conn::effective_prefix(settings);
        Ok(Self {
            conn,
            anchor: format!("{prefix}:anchor"),
            prefix,
            scripts: std::sync::Arc::new(Scripts {
                push: Script::new(include_str!("lua/push.lua")),
                fetch: Script::new(include_str!("lua/fetch.lua")),
                settle: Script::new(include_str!("lua/settle.lua")),
                heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
                reap: Script::new(include_str!("lua/reap.lua")),
                recover: Script::new(include_str!("lua/recover.lua")),
                stats: Script::new(include_str!("lua/stats.lua")),
            }),
        })
    }

    /// The key prefix (namespace).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut c = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Enqueues jobs; atomic per chunk of `PUSH_CHUNK` jobs, chunks pipelined.
    pub async fn push(
        &self,
        jobs: &[NewJob],
        idempotency_ttl: Duration,
    ) -> Result<Vec<Pushed>, QueueError> {
        let ttl = idempotency_ttl.as_millis().max(1).to_string();
        let mut out = Vec::with_capacity(jobs.len());
        // Several chunks in flight at once: the multiplexed connection pipelines them.
        let mut pending = futures::stream::FuturesOrdered::new();
        for chunk in jobs.chunks(PUSH_CHUNK) {
            let mut inv = self.scripts.push.prepare_invoke();
            inv.key(&self.anchor).arg(&self.prefix).arg(&ttl);
            for j in chunk {
                inv.arg(j.id.to_string())
                    .arg(&j.job_type)
                    .arg(&j.payload)
                    .arg(j.delay.as_millis() as u64)
                    .arg(j.idempotency_key.as_deref().unwrap_or(""))
                    .arg(j.max_attempts.map(|m| m.to_string()).unwrap_or_default())
                    .arg(j.prior_attempts)
                    .arg(payload_hash(&j.payload))
                    .arg(if j.redrive { "1" } else { "0" });
            }
            let mut c = self.conn.clone();
            pending.push_back(async move { inv.invoke_async::<Vec<Value>>(&mut c).await });
            if pending.len() >= 8 {
                use futures::StreamExt;
                if let Some(r) = pending.next().await {
                    parse_pushed(r?, &mut out)?;
                }
            }
        }
        use futures::StreamExt;
        while let Some(r) = pending.next().await {
            parse_pushed(r?, &mut out)?;
        }
        Ok(out)
    }

    /// Takes up to `n` jobs of `queue` for `worker`.
    pub async fn fetch(&self, queue: &str, worker: &str, n: usize) -> Result<Fetch, QueueError> {
        let mut c = self.conn.clone();
        let v: Vec<Value> = self
            .scripts
            .fetch
            .prepare_invoke()
            .key(&self.anchor)
            .arg(&self.prefix)
            .arg(queue)
            .arg(worker)
            .arg(n)
            .invoke_async(&mut c)
            .await?;
        let mut it = v.into_iter();
        match it.next().map(as_string).transpose()?.as_deref() {
            Some("ok") => {}
            Some("unregistered") => return Ok(Fetch::Unregistered),
            other => return Err(QueueError::Protocol(format!("fetch status {other:?}"))),
        }
        let mut jobs = Vec::new();
        loop {
            let tuple: Vec<Value> = it.by_ref().take(9).collect();
            match <[Value; 9]>::try_from(tuple) {
                Ok(t) => jobs.push(parse_fetched(t)),
                Err(rest) if rest.is_empty() => break,
                Err(_) => return Err(QueueError::Protocol("fetch tuple".into())),
            }
        }
        Ok(Fetch::Jobs(jobs))
    }

    /// Records outcomes of jobs `worker` holds.
    pub async fn settle(
        &self,
        worker: &str,
        entries: &[(String, String, Settle)],
    ) -> Result<(), QueueError> {
        for chunk in entries.chunks(SETTLE_CHUNK) {
            let mut inv = self.scripts.settle.prepare_invoke();
            inv.key(&self.anchor);
            inv.arg(&self.prefix).arg(worker);
            for (id, queue, s) in chunk {
                let (op, delay, err) = match s {
                    Settle::Done => ("ok", 0u64, ""),
                    Settle::Dead => ("dead", 0, ""),
                    Settle::Retry { delay, error } => {
                        ("retry", delay.as_millis() as u64, error.as_str())
                    }
                    Settle::Snooze { delay, reason } => {
                        ("snooze", delay.as_millis() as u64, reason.as_str())
                    }
                    Settle::Release => ("release", 0, ""),
                };
                inv.arg(op).arg(id).arg(queue).arg(delay).arg(err);
            }
            let mut c = self.conn.clone();
            let _: i64 = inv.invoke_async(&mut c).await?;
        }
        Ok(())
    }

    /// Renews `worker`'s lease (`register`: the first beat of a new name). Answers
    /// [`Lease::Lost`] when the name is gone: its jobs were taken over.
    pub async fn heartbeat(
        &self,
        worker: &str,
        lease: Duration,
        register: bool,
    ) -> Result<Lease, QueueError> {
        let mut c = self.conn.clone();
        let v: Vec<Value> = self
            .scripts
            .heartbeat
            .prepare_invoke()
            .key(&self.anchor)
            .arg(&self.prefix)
            .arg(worker)
            .arg(lease.as_millis() as u64)
            .arg(if register { "1" } else { "0" })
            .invoke_async(&mut c)
            .await?;
        match v.into_iter().next().map(as_string).transpose()?.as_deref() {
            Some("ok") => Ok(Lease::Alive),
            Some("lost") => Ok(Lease::Lost),
            other => Err(QueueError::Protocol(format!("heartbeat status {other:?}"))),
        }
    }

    /// Takes back the jobs of expired workers (`None`), or of one worker now, and parks them
    /// until their cut attempts are revoked in Postgres; then [`Engine::recover`] them.
    /// `except`: a name never reaped by this call (the caller's own).
    pub async fn reap(
        &self,
        only: Option<&str>,
        except: Option<&str>,
    ) -> Result<Vec<Orphan>, QueueError> {
        let mut c = self.conn.clone();
        let v: Vec<Value> = self
            .scripts
            .reap
            .prepare_invoke()
            .key(&self.anchor)
            .arg(&self.prefix)
            .arg(only.unwrap_or(""))
            .arg(except.unwrap_or(""))
            .invoke_async(&mut c)
            .await?;
        v.chunks(6)
            .map(|f| {
                let [w, id, q, attempt, ty, started] = f else {
                    return Err(QueueError::Protocol("reap tuple".into()));
                };
                Ok(Orphan {
                    worker: as_string(w.clone())?,
                    id: as_string(id.clone())?,
                    queue: as_string(q.clone())?,
                    attempt: as_int(attempt)? as u32,
                    job_type: as_string(ty.clone())?,
                    started_at_ms: as_int(started)?,
                })
            })
            .collect()
    }

    /// Queues parked jobs again (their cut attempts are revoked). Returns how many.
    pub async fn recover(&self, ids: &[String]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut c = self.conn.clone();
        let mut inv = self.scripts.recover.prepare_invoke();
        inv.key(&self.anchor).arg(&self.prefix);
        for id in ids {
            inv.arg(id);
        }
        Ok(inv.invoke_async(&mut c).await?)
    }

    /// Jobs parked by a recovery longer ago than `older_than` (its recoverer died before
    /// finishing): they are re-driven by whoever finds them.
    pub async fn parked(&self, older_than: Duration) -> Result<Vec<Orphan>, QueueError> {
        let mut c = self.conn.clone();
        let now = now_ms();
        let all: BTreeMap<String, String> =
            c.hgetall(format!("{}:recovering", self.prefix)).await?;
        Ok(all
            .into_iter()
            .filter_map(|(id, v)| {
                let f: Vec<&str> = v.split('\t').collect();
                let [queue, attempt, worker, started, job_type, since] = f[..] else {
                    return None;
                };
                let since: i64 = since.parse().ok()?;
                (now - since >= older_than.as_millis() as i64).then(|| Orphan {
                    worker: worker.to_string(),
                    id,
                    queue: queue.to_string(),
                    attempt: attempt.parse().unwrap_or(0),
                    job_type: job_type.to_string(),
                    started_at_ms: started.parse().unwrap_or(since),
                })
            })
            .collect())
    }

    /// What makes this Redis unfit to be the transport of money jobs: no append-only file
    /// (a restart forgets every queued job) or an eviction policy other than `noeviction`
    /// (jobs are deleted under memory pressure). Read with INFO, which managed Redis allows.
    pub async fn durability_warnings(&self) -> Result<Vec<String>, QueueError> {
        let mut c = self.conn.clone();
        let persistence: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut c)
            .await?;
        let memory: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await?;
        let field = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}:")))
                .map(|v| v.trim().to_string())
        };
        let mut out = Vec::new();
        if field(&persistence, "aof_enabled").as_deref() != Some("1") {
            out.push(
                "redis has no append-only file (appendonly no): a restart loses every queued job; \
                 the sweeper re-drives the pipelines from postgres, but set `appendonly yes`"
                    .to_string(),
            );
        }
        match field(&memory, "maxmemory_policy").as_deref() {
            Some("noeviction") => {}
            other => out.push(format!(
                "redis maxmemory-policy is {}, not noeviction: under memory pressure redis deletes \
                 queued jobs; set `maxmemory-policy noeviction`",
                other.unwrap_or("unknown")
            )),
        }
        Ok(out)
    }

    /// Depth of one queue.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let mut c = self.conn.clone();
        let v: Vec<i64> = self
            .scripts
            .stats
            .prepare_invoke()
            .key(&self.anchor)
            .arg(&self.prefix)
            .arg(queue)
            .invoke_async(&mut c)
            .await?;
        let [waiting, scheduled, in_flight, due, age] = v[..] else {
            return Err(QueueError::Protocol("stats".into()));
        };
        Ok(QueueStats {
            waiting: waiting as u64,
            scheduled: scheduled as u64,
            in_flight: in_flight as u64,
            due: due as u64,
            oldest_waiting_ms: (age >= 0).then_some(age as u64),
        })
    }

    /// Ids `worker` holds according to Redis.
    pub async fn held_by(&self, worker: &str) -> Result<Vec<String>, QueueError> {
        let mut c = self.conn.clone();
        Ok(c.hkeys(format!("{}:wip:{worker}", self.prefix)).await?)
    }

    /// Queues paused in Redis (the copy every fetch checks).
    pub async fn paused(&self) -> Result<BTreeSet<String>, QueueError> {
        let mut c = self.conn.clone();
        Ok(c.smembers(format!("{}:paused", self.prefix)).await?)
    }

    /// Makes Redis's set of paused queues exactly `queues` (one transaction).
    pub async fn set_paused(&self, queues: &BTreeSet<String>) -> Result<(), QueueError> {
        let mut c = self.conn.clone();
        let key = format!("{}:paused", self.prefix);
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key);
        if !queues.is_empty() {
            pipe.sadd(&key, queues.iter().collect::<Vec<_>>());
        }
        pipe.query_async::<()>(&mut c).await?;
        Ok(())
    }

    /// Queues that ever received a job.
    pub async fn known_queues(&self) -> Result<Vec<String>, QueueError> {
        let mut c = self.conn.clone();
        let mut v: Vec<String> = c.smembers(format!("{}:queues", self.prefix)).await?;
        v.sort();
        Ok(v)
    }

    /// The stored fields of a job still in Redis (waiting, scheduled or running).
    pub async fn job(&self, id: &str) -> Result<Option<BTreeMap<String, String>>, QueueError> {
        let mut c = self.conn.clone();
        let m: BTreeMap<String, String> = c.hgetall(format!("{}:job:{id}", self.prefix)).await?;
        Ok((!m.is_empty()).then_some(m))
    }

    /// Worker processes with a live lease, and when each lease ends (unix ms).
    pub async fn workers(&self) -> Result<Vec<(String, i64)>, QueueError> {
        let mut c = self.conn.clone();
        let v: Vec<(String, i64)> = c
            .zrangebyscore_withscores(format!("{}:workers", self.prefix), now_ms(), "+inf")
            .await?;
        Ok(v)
    }

    /// Deletes every key of this namespace (tests and benchmarks; never the daemon).
    pub async fn delete_namespace(&self) -> Result<u64, QueueError> {
        let mut c = self.conn.clone();
        let pattern = format!("{}:*", self.prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            // In a cluster, on the node that owns the namespace's slot.
            let (next, keys): (u64, Vec<String>) = c.query_at(&self.anchor, &scan).await?;
            if !keys.is_empty() {
                deleted += c.unlink::<_, u64>(keys).await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// A raw connection, for tests that write Redis the way a foreign producer would.
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }
}

/// One fetched job, judged alone: a field a foreign writer got wrong makes this job
/// defective (dead-lettered with the reason), never the batch. Takes the values by value:
/// the payload is moved, not copied (this is the hot path of every job).
fn parse_fetched(f: [Value; 9]) -> FetchedJob {
    let [
        id,
        ty,
        payload,
        attempt,
        failures,
        orphans,
        maxa,
        enq,
        snoozes,
    ] = f;
    let mut defects: Vec<String> = Vec::new();
    let mut text = |v: Value, what: &str| match v {
        Value::BulkString(b) => String::from_utf8(b).unwrap_or_else(|e| {
            defects.push(format!("{what} is not UTF-8 text"));
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        }),
        Value::Int(i) => i.to_string(),
        Value::SimpleString(s) => s,
        Value::Nil => String::new(),
        other => {
            defects.push(format!("{what} has an unexpected type ({other:?})"));
            String::new()
        }
    };
    let id = text(id, "the job id");
    let job_type = text(ty, "type");
    let payload = text(payload, "payload");
    let maxa = text(maxa, "max_attempts");
    let mut int = |v: Value, name: &str| -> u64 {
        let parsed = match &v {
            Value::Int(i) => u64::try_from(*i).ok(),
            Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()),
            _ => None,
        };
        parsed.unwrap_or_else(|| {
            let shown = match &v {
                Value::BulkString(b) => String::from_utf8_lossy(b).chars().take(40).collect(),
                other => format!("{other:?}"),
            };
            let hint = if name == "enqueued_at" {
                " (integer unix milliseconds, e.g. PHP (int) round(microtime(true) * 1000))"
            } else {
                " (a non-negative integer)"
            };
            defects.push(format!(
                "field `{name}` must be an integer{hint}, got `{shown}`"
            ));
            0
        })
    };
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let attempt = clamp(int(attempt, "attempt"));
    let failures = clamp(int(failures, "failures"));
    let orphans = clamp(int(orphans, "orphans"));
    let enqueued_at_ms = i64::try_from(int(enq, "enqueued_at")).unwrap_or(i64::MAX);
    let snoozes = clamp(int(snoozes, "snoozes"));
    let max_attempts = if maxa.is_empty() {
        None
    } else {
        match maxa.parse::<u32>() {
            Ok(m) if m >= 1 => Some(m),
            _ => {
                defects.push(format!(
                    "field `max_attempts` must be an integer of at least 1, got `{maxa}`"
                ));
                None
            }
        }
    };
    FetchedJob {
        id,
        job_type,
        payload,
        attempt,
        failures,
        orphans,
        max_attempts,
        enqueued_at_ms,
        snoozes,
        defect: (!defects.is_empty()).then(|| defects.join("; ")),
    }
}

/// A short digest of a payload, kept with its idempotency key (a repeated key with another
/// payload is a producer bug, answered 422 rather than silently dropped).
fn payload_hash(payload: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(payload.as_bytes())[..12])
}

fn parse_pushed(v: Vec<Value>, out: &mut Vec<Pushed>) -> Result<(), QueueError> {
    for pair in v.chunks(2) {
        let [id, dup] = pair else {
            return Err(QueueError::Protocol("push tuple".into()));
        };
        let id = as_string(id.clone())?;
        let flag = as_int(dup)?;
        out.push(Pushed {
            id: id
                .parse()
                .map_err(|_| QueueError::Protocol(format!("job id {id} is not a uuid")))?,
            duplicate: flag >= 1,
            conflict: flag == 2,
        });
    }
    Ok(())
}

fn as_string(v: Value) -> Result<String, QueueError> {
    match v {
        Value::BulkString(b) => {
            String::from_utf8(b).map_err(|e| QueueError::Protocol(e.to_string()))
        }
        Value::SimpleString(s) => Ok(s),
        Value::Int(i) => Ok(i.to_string()),
        Value::Okay => Ok("OK".into()),
        other => Err(QueueError::Protocol(format!(
            "expected a string, got {other:?}"
        ))),
    }
}

fn as_int(v: &Value) -> Result<i64, QueueError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| QueueError::Protocol("expected an integer".into())),
        other => Err(QueueError::Protocol(format!(
            "expected an integer, got {other:?}"
        ))),
    }
}
