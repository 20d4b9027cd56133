//! One module per job type: payload, handler, tests. Registering a new job is one line in
//! [`registry`].

pub mod bic_blacklist;
pub mod billing;
pub mod billing_batch;
pub mod billing_recurring;
pub mod chargeback_sweep;
pub mod emp_refresh;
pub mod emp_webhook;
pub mod finance_report;
mod noop;
pub mod reconciliation;
pub mod retention;
pub mod sweeper;
mod test_job;
pub mod upload;
pub mod upload_chunk;
pub mod validation;
pub mod validation_chunk;
pub mod vop;
pub mod vop_report;

pub use bic_blacklist::BicBlacklist;
pub use billing::Billing;
pub use billing_batch::BillingBatch;
pub use billing_recurring::BillingRecurring;
pub use chargeback_sweep::ChargebackSweep;
pub use emp_refresh::EmpRefresh;
pub use emp_webhook::EmpWebhook;
pub use finance_report::FinanceReport;
pub use noop::Noop;
pub use reconciliation::Reconciliation;
pub use retention::Retention;
pub use sweeper::Sweeper;
pub use test_job::TestJob;
pub use upload::Upload;
pub use upload_chunk::UploadChunk;
pub use validation::Validation;
pub use validation_chunk::ValidationChunk;
pub use vop::Vop;
pub use vop_report::VopReport;

use crate::queue::registry::Registry;

/// Every job type this binary runs.
pub fn registry() -> Registry {
    Registry::new()
        .add::<BicBlacklist>()
        .add::<Billing>()
        .add::<BillingBatch>()
        .add::<BillingRecurring>()
        .add::<ChargebackSweep>()
        .add::<EmpRefresh>()
        .add::<FinanceReport>()
        .add::<EmpWebhook>()
        .add::<Noop>()
        .add::<Reconciliation>()
        .add::<Retention>()
        .add::<Sweeper>()
        .add::<TestJob>()
        .add::<Upload>()
        .add::<UploadChunk>()
        .add::<Validation>()
        .add::<ValidationChunk>()
        .add::<Vop>()
        .add::<VopReport>()
}
