//! Job types known to this binary, type-erased so the runtime, the HTTP API and the CLI can
//! handle any of them by name.

use std::collections::BTreeMap;

use futures::{FutureExt, future::BoxFuture};

use super::job::{Job, JobContext, JobError};

/// Why a payload was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct PayloadError {
    /// JSON path of the offending field (`.` for the whole document).
    pub field: String,
    /// What is wrong, for a human.
    pub message: String,
}

type RunFn = fn(JobContext, String) -> BoxFuture<'static, Result<(), JobError>>;
type FailFn = fn(JobContext, String, String) -> BoxFuture<'static, anyhow::Result<()>>;

/// One registered job type.
#[derive(Clone)]
pub struct Entry {
    /// Job type name (= queue).
    pub name: &'static str,
    /// Only enqueueable with `worker.allow_test_jobs`.
    pub test_only: bool,
    /// Producers may enqueue it (HTTP, `finworker enqueue`); otherwise internal.
    pub producer: bool,
    schema: fn() -> schemars::Schema,
    example: fn() -> serde_json::Value,
    validate: fn(&[u8]) -> Result<String, PayloadError>,
    run: RunFn,
    fail: FailFn,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("name", &self.name).finish()
    }
}

impl Entry {
    /// JSON Schema of the payload.
    pub fn schema(&self) -> schemars::Schema {
        (self.schema)()
    }
    /// Example payload.
    pub fn example(&self) -> serde_json::Value {
        (self.example)()
    }
    /// Checks a payload and returns it re-serialised (canonical form).
    pub fn validate(&self, body: &[u8]) -> Result<String, PayloadError> {
        (self.validate)(body)
    }
    /// Decodes the payload and runs one attempt. A payload that does not decode is a
    /// permanent error: it goes to the dead-letter store, it never stops a worker.
    pub fn run(
        &self,
        ctx: JobContext,
        payload: String,
    ) -> BoxFuture<'static, Result<(), JobError>> {
        (self.run)(ctx, payload)
    }
    /// Runs the job type's failure hook (records left in a final state). A payload that
    /// does not decode has nothing to put right.
    pub fn on_failure(
        &self,
        ctx: JobContext,
        payload: String,
        error: String,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        (self.fail)(ctx, payload, error)
    }
}

fn validate<J: Job>(body: &[u8]) -> Result<String, PayloadError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let job: J = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        PayloadError {
            field: path,
            message: e.inner().to_string(),
        }
    })?;
    serde_json::to_string(&job).map_err(|e| PayloadError {
        field: ".".into(),
        message: e.to_string(),
    })
}

fn run<J: Job>(ctx: JobContext, payload: String) -> BoxFuture<'static, Result<(), JobError>> {
    async move {
        let job: J = serde_json::from_str(&payload).map_err(|e| {
            JobError::Permanent(format!("payload does not decode as {}: {e}", J::NAME))
        })?;
        job.run(ctx).await
    }
    .boxed()
}

fn fail<J: Job>(
    ctx: JobContext,
    payload: String,
    error: String,
) -> BoxFuture<'static, anyhow::Result<()>> {
    async move {
        match serde_json::from_str::<J>(&payload) {
            Ok(job) => job.on_failure(ctx, error).await,
            Err(_) => Ok(()),
        }
    }
    .boxed()
}

/// All job types of this binary.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    entries: BTreeMap<&'static str, Entry>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers job type `J`.
    pub fn add<J: Job>(mut self) -> Self {
        let entry = Entry {
            name: J::NAME,
            test_only: J::TEST_ONLY,
            producer: J::PRODUCER,
            schema: || schemars::schema_for!(J),
            example: || serde_json::to_value(J::example()).unwrap_or_default(),
            validate: validate::<J>,
            run: run::<J>,
            fail: fail::<J>,
        };
        assert!(
            self.entries.insert(J::NAME, entry).is_none(),
            "job type {} registered twice",
            J::NAME
        );
        self
    }

    /// Looks a job type up.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// All job types, sorted by name.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Job type names.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.keys().copied().collect()
    }
}
