//! The apalis side: a [`Backend`] fed by the runtime's fetcher over a channel.
//!
//! apalis drives execution (its `Worker`, lifecycle and shutdown tracking); finworker's own
//! Redis engine does delivery, leases, retries and acks, which apalis-redis 1.0 gets wrong
//! (docs/queue.md lists each hole).

use std::task::{Context, Poll};

use apalis_core::{
    backend::{Backend, BackendConfig, finalize::Ephemeral},
    task::{Task, task_id::RandomId},
    worker::context::WorkerContext,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::layer::util::Identity;

use super::engine::FetchedJob;

/// Error type of the channel backend (it cannot fail; the fetcher handles Redis errors).
#[derive(Debug, thiserror::Error)]
#[error("channel backend closed")]
pub struct ChannelClosed;

/// Yields jobs the fetcher took from Redis; ends when the fetcher stops (shutdown).
#[derive(Debug)]
pub struct ChannelBackend {
    rx: mpsc::Receiver<FetchedJob>,
    stop: CancellationToken,
}

impl ChannelBackend {
    /// Wraps the receiving end of the fetcher's channel.
    /// Once `stop` is cancelled no further job is handed out (the fetcher closing the
    /// channel wakes the worker); what is left in the channel never started.
    pub fn new(rx: mpsc::Receiver<FetchedJob>, stop: CancellationToken) -> Self {
        Self { rx, stop }
    }
}

impl Backend for ChannelBackend {
    type Task = Task<FetchedJob>;
    type Error = ChannelClosed;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        if self.stop.is_cancelled() {
            // Marks the apalis worker as stopping: it waits for the running jobs, then ends.
            let _ = worker.stop();
            self.rx.close();
            return Poll::Ready(None);
        }
        self.rx
            .poll_recv(cx)
            .map(|job| job.map(|j| Ok(Task::new(j))))
    }

    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        // Jobs still in the channel were taken but never started: the runtime releases them
        // (it tracks every held job), so there is nothing to flush here.
        self.rx.close();
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for ChannelBackend {
    type Args = FetchedJob;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}
