//! `noop`: does nothing and succeeds. Used to measure the runtime itself (benchmarks) and
//! as a smoke test of a deployment. Idempotent trivially; never fails.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::queue::job::{Job, JobContext, JobError};

/// Payload of `noop`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Noop {
    /// Free text, echoed in nothing; lets producers tag a smoke test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Job for Noop {
    const NAME: &'static str = "noop";
    const PRODUCER: bool = true;

    fn example() -> Self {
        Self {
            note: Some("deployment smoke test".into()),
        }
    }

    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}
