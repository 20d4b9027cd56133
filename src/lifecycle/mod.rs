//! Transaction lifecycle after a debit was sent: webhook deliveries processed into the attempt
//! state machine (`billing::state`), chargebacks and retrieval requests stored and surfaced,
//! reconciliation of open attempts, ledger sync and return sweeps by date, the BIC
//! auto-blacklist and the per-account chargeback-rate guard.

pub mod bic;
pub mod guard;
pub mod ledger;
pub mod reconcile;
pub mod returns;
pub mod sweeps;
pub mod webhook;
