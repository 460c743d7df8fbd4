//! The queue: jobs that outlive the request that made them (webhooks).

use abi_stable::{
    StableAbi, sabi_trait,
    std_types::{RArc, RBox, RStr, RString, RVec},
};
use async_ffi::FfiFuture;

use crate::PResult;

/// One job as a consumer receives it.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct Job {
    /// Unique per pushed job, stable across its attempts.
    pub id: RString,
    /// The queue it was pushed to.
    pub queue: RString,
    /// 1 for the first delivery, then 2, 3, ... for retries.
    pub attempt: u32,
    /// The bytes that were pushed.
    pub payload: RVec<u8>,
}

/// Implemented by the host: processes one job.
///
/// Answering `Ok` acknowledges the job; an error fails this attempt and the queue retries it with
/// backoff until its configured maximum of attempts, then sets it aside (dead letter). An error
/// with the code [`crate::ErrorCode::REJECTED`] means no attempt can succeed (a poison job): the
/// queue sets it aside at once.
#[sabi_trait]
pub trait QueueHandler: Clone + Send + Sync {
    /// Process `job`. The future runs the host's work on the host's runtime.
    #[sabi(last_prefix_field)]
    fn handle(&self, job: Job) -> FfiFuture<PResult<()>>;
}

/// A handler as plugins receive it.
pub type QueueHandlerBox = QueueHandler_TO<'static, RArc<()>>;

/// Named queues of jobs, delivered at least once to the consumers of the queue.
#[sabi_trait]
pub trait Queue: Send + Sync {
    /// Append a job to `queue`; resolves once the job is stored.
    fn push(&self, queue: RStr<'_>, payload: RVec<u8>) -> FfiFuture<PResult<()>>;

    /// Start delivering jobs of `queue` to `handler`, in the background, until shutdown.
    fn consume(&self, queue: RStr<'_>, handler: QueueHandlerBox) -> FfiFuture<PResult<()>>;

    /// How many jobs of `queue` wait or are being retried (not counting dead letters).
    fn pending(&self, queue: RStr<'_>) -> FfiFuture<PResult<u64>>;

    /// Whether the backend answers now.
    fn health(&self) -> FfiFuture<PResult<()>>;

    /// Stop consuming and release the backend; later calls answer `UNAVAILABLE`. Idempotent.
    #[sabi(last_prefix_field)]
    fn shutdown(&self) -> FfiFuture<PResult<()>>;
}

/// A queue as the host owns it.
pub type QueueBox = Queue_TO<'static, RBox<()>>;
