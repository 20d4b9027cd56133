//! finworker: the background-job daemon for SEPA direct-debit collection.

pub mod bench;
pub mod cli;
pub mod config;
pub mod context;
pub mod db;
pub mod demo;
pub mod guard;
pub mod http;
pub mod iban;
pub mod jobs;
pub mod metrics;
pub mod money;
pub mod pgcopy;
pub mod pipeline;
pub mod queue;
pub mod reports;
pub mod sandbox;
pub mod schema;
pub mod shutdown;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod testdata;
pub mod uploads;
pub mod validation;
pub mod vop;
