//! Fencing tokens: a job attempt whose worker lost its lease must not commit business state.
//!
//! A frozen worker (SIGSTOP, a VM pause, a partition) keeps running its jobs while a peer
//! recovers and reruns them. The lease lives in Redis, but the state that matters lives in
//! Postgres, so the fence lives there too (`job_fences`):
//! - recovery [`revoke`]s the attempts it takes over, in Postgres, *before* the job can be
//!   fetched again (`engine::Engine::reap` parks them until that commit);
//! - a handler that writes business state calls [`Fence::check`] inside its transaction. The
//!   check upserts the token's row, so it holds that row's lock until the transaction ends: a
//!   revocation either commits first (the check fails, nothing commits) or waits for the
//!   handler's commit (which then happened before the rerun could start).

use serde::Serialize;

use crate::db::{DbError, Tx};

/// The token of one attempt: job id plus attempt number (unique per execution: every fetch
/// increments the attempt in Redis).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fence {
    /// Job id.
    pub job_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
}

/// Why a fenced write was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    /// The attempt lost its lease and was taken over (or a later attempt already committed).
    #[error(
        "attempt {attempt} of job {job_id} lost its lease and was taken over; its writes are refused"
    )]
    Stale {
        /// Job id.
        job_id: String,
        /// The refused attempt.
        attempt: u32,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl Fence {
    /// A token.
    pub fn new(job_id: impl Into<String>, attempt: u32) -> Self {
        Self {
            job_id: job_id.into(),
            attempt,
        }
    }

    /// Checks, inside `tx`, that this attempt still owns its job, and locks the token until
    /// `tx` ends. Call it in every transaction that writes business state, before committing.
    pub async fn check(&self, tx: &mut Tx) -> Result<(), FenceError> {
        let attempt = i32::try_from(self.attempt).unwrap_or(i32::MAX);
        let ok: Option<(i32,)> = tx
            .fetch_optional(
                sqlx::query_as(
                    "INSERT INTO job_fences AS f (job_id, committed_attempt) VALUES ($1, $2) \
                     ON CONFLICT (job_id) DO UPDATE SET committed_attempt = EXCLUDED.committed_attempt, \
                     updated_at = now() \
                     WHERE f.revoked_through < EXCLUDED.committed_attempt \
                       AND f.committed_attempt <= EXCLUDED.committed_attempt \
                     RETURNING 1",
                )
                .bind(&self.job_id)
                .bind(attempt),
            )
            .await?;
        match ok {
            Some(_) => Ok(()),
            None => Err(FenceError::Stale {
                job_id: self.job_id.clone(),
                attempt: self.attempt,
            }),
        }
    }
}

/// Revokes attempts up to and including each given one (recovery took those jobs over).
/// Waits for any transaction that holds one of those tokens to end.
pub async fn revoke(tx: &mut Tx, attempts: &[Fence]) -> Result<(), DbError> {
    if attempts.is_empty() {
        return Ok(());
    }
    // The highest attempt per job, sorted by job id, so two recoverers can never lock the
    // same rows in opposite orders.
    let mut highest: std::collections::BTreeMap<&str, i32> = std::collections::BTreeMap::new();
    for f in attempts {
        let a = i32::try_from(f.attempt).unwrap_or(i32::MAX);
        let e = highest.entry(f.job_id.as_str()).or_insert(a);
        *e = (*e).max(a);
    }
    let (ids, nums): (Vec<&str>, Vec<i32>) = highest.into_iter().unzip();
    tx.execute(
        sqlx::query(
            "INSERT INTO job_fences AS f (job_id, revoked_through) \
             SELECT * FROM unnest($1::text[], $2::int4[]) \
             ON CONFLICT (job_id) DO UPDATE SET \
               revoked_through = greatest(f.revoked_through, EXCLUDED.revoked_through), updated_at = now()",
        )
        .bind(ids)
        .bind(nums),
    )
    .await?;
    Ok(())
}
