//! The job runtime: finworker's Redis queue engine driven through apalis workers.
//! Knows nothing about billing or uploads; job modules plug in through [`job::Job`].

pub mod audit;
pub mod backend;
pub mod conn;
pub mod cron;
pub mod dead_letter;
pub mod engine;
pub mod fence;
pub mod job;
pub mod pause;
pub mod registry;
pub mod retry;
pub mod runtime;
