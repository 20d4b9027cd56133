#![allow(clippy::unwrap_used)] // test helpers: a failed set-up should panic loudly

//! The one integration-test binary. Every test builds the real application against a fresh
//! database (reached through the real PgBouncer) and its own Redis namespace.

mod helpers;

mod billing;
mod billing_crash;
mod cli;
mod cluster;
mod crash;
mod dashboard;
mod demo;
mod deployment;
mod drain;
mod enqueue;
mod hardening;
mod hostile;
mod lifecycle;
mod migrations;
mod observability;
mod operations;
mod ops_api;
mod pgbouncer;
mod readiness;
mod retries;
mod reuploads;
mod runtime;
mod storage;
mod sweeper;
mod uploads;
mod verification;
mod webhooks;
