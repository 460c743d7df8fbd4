//! The queue handle, and the host's side of a queue consumer.

use std::{future::Future, sync::Arc};

use sockhost_plugin_api::{
    Job, PResult, PluginError, QueueBox, QueueHandler, QueueHandler_TO,
    abi::{FfiFuture, FfiFutureExt as _, RArc, RStr, RVec, TD_Opaque},
};

use super::{DriverError, call::Named};

/// The queue, as the host uses it.
#[derive(Debug)]
pub struct Queue(pub(super) Named<QueueBox>);

impl Queue {
    /// The driver name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Store a job.
    pub async fn push(&self, queue: &str, payload: Vec<u8>) -> Result<(), DriverError> {
        self.0.call(self.0.inner.push(RStr::from_str(queue), RVec::from(payload))).await
    }

    /// Deliver the jobs of `queue` to `work`, on this (the host's) runtime, until shutdown.
    /// `work` answering an error fails the attempt, and the queue retries the job later.
    pub async fn consume<F>(&self, queue: &str, work: F) -> Result<(), DriverError>
    where
        F: Fn(QueuedJob) -> JobFuture + Send + Sync + 'static,
    {
        let handler =
            HostQueueHandler { runtime: tokio::runtime::Handle::current(), work: Arc::new(work) };
        let handler = QueueHandler_TO::from_ptr(RArc::new(handler), TD_Opaque);
        self.0.call(self.0.inner.consume(RStr::from_str(queue), handler)).await
    }

    /// Jobs waiting or being retried.
    pub async fn pending(&self, queue: &str) -> Result<u64, DriverError> {
        self.0.call(self.0.inner.pending(RStr::from_str(queue))).await
    }

    /// Whether the backend answers.
    pub async fn health(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.health()).await
    }

    /// Release the backend.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.shutdown()).await
    }
}

/// A job as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    /// Stable across attempts.
    pub id: String,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// What was pushed.
    pub payload: Vec<u8>,
}

/// Why a job's attempt failed, which decides what the queue does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// This attempt failed; a later one may succeed (the queue retries with backoff until its
    /// maximum of attempts, then keeps the job as a dead letter).
    Retry(String),
    /// No attempt can succeed: the queue keeps the job as a dead letter now.
    GiveUp(String),
}

/// The work a consumer does for one job.
pub type JobFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;

type Work = Arc<dyn Fn(QueuedJob) -> JobFuture + Send + Sync>;

/// The host's side of a queue consumer. The queue calls it on a plugin thread, where the host's
/// runtime is not entered: the work is spawned onto the host's runtime (captured when the
/// consumer was set up) and the plugin awaits only its outcome.
#[derive(Clone)]
struct HostQueueHandler {
    runtime: tokio::runtime::Handle,
    work: Work,
}

impl QueueHandler for HostQueueHandler {
    fn handle(&self, job: Job) -> FfiFuture<PResult<()>> {
        let job =
            QueuedJob { id: job.id.into(), attempt: job.attempt, payload: job.payload.into_vec() };
        let task = self.runtime.spawn((self.work)(job));
        async move {
            let outcome = match task.await {
                Ok(Ok(())) => Ok(()),
                // The queue's convention: REJECTED sets the job aside now, anything else retries.
                Ok(Err(JobError::Retry(why))) => Err(PluginError::unavailable(why)),
                Ok(Err(JobError::GiveUp(why))) => Err(PluginError::rejected(why)),
                Err(e) => Err(PluginError::internal(format!("the job's task failed: {e}"))),
            };
            PResult::from(outcome)
        }
        .into_ffi()
    }
}
