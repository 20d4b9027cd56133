//! Billing: mass SEPA direct debits through a payment gateway, at most one per debtor and
//! cycle.
//!
//! - [`accounts`]: the merchant accounts, each with its client, shared rate limit and breaker.
//! - [`models`]: billing models and profile exclusivity.
//! - [`rules`]: the exclusion rules, evaluated at selection and again in each claim.
//! - [`run`]: runs and their items (every debtor kept, excluded ones with their reason).
//! - [`debit`]: claim → send → record, and reconcile of unresolved debits.
//! - [`state`]: the attempt state machine and its side effects.
//! - [`void`]: voiding a debit, through the gateway only, after re-checking it there.
//!
//! The jobs `billing` (start a run) and `billing_batch` (work one) drive these; see
//! `docs/billing.md`.

pub mod accounts;
pub mod blacklist;
pub mod debit;
pub mod models;
pub mod rules;
pub mod run;
pub mod state;
pub mod void;

use uuid::Uuid;

use crate::{db::DbError, queue::fence::FenceError};

/// Why a billing operation stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BillingError {
    /// The request is wrong (unknown account, upload not ready…): retrying cannot help.
    #[error("{0}")]
    Refused(String),
    /// No such run.
    #[error("no billing run {0}")]
    NoRun(Uuid),
    /// The attempt lost its lease.
    #[error(transparent)]
    Fence(#[from] FenceError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for BillingError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(DbError::from(e))
    }
}
