//! Transaction lifecycle after a debit was sent: webhook deliveries processed into the attempt
//! state machine (`billing::state`), chargebacks and retrieval requests stored and surfaced.

pub mod webhook;
