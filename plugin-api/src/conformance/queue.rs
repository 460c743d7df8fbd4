//! The queue suite. Expand it with [`queue_suite!`](crate::queue_suite).
//!
//! The target's configuration should make retries quick (a base delay of milliseconds), since
//! one case waits for a retry.

use std::collections::BTreeSet;

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, RStr, RVec},
};
use async_ffi::{FfiFuture, FutureExt as _};
use tokio::sync::mpsc;

use super::{PATIENCE, Target, eventually, holds, ok};
use crate::{ErrorCode, Job, PResult, PluginError, QueueHandler, QueueHandler_TO, QueueHandlerBox};

fn s(text: &str) -> RStr<'_> {
    RStr::from_str(text)
}

/// Records every job it is handed; fails the first attempt of jobs whose payload starts with
/// `fail-once`, and every attempt of jobs whose payload starts with `fail-always` (retryable
/// failures); rejects jobs whose payload starts with `poison` (no attempt can succeed).
#[derive(Clone)]
struct Recorder(mpsc::UnboundedSender<Job>);

impl QueueHandler for Recorder {
    fn handle(&self, job: Job) -> FfiFuture<PResult<()>> {
        let fail = (job.payload.starts_with(b"fail-once") && job.attempt == 1)
            || job.payload.starts_with(b"fail-always");
        let poison = job.payload.starts_with(b"poison");
        let _ = self.0.send(job);
        let answer = if poison {
            Err(PluginError::rejected("the job can never succeed"))
        } else if fail {
            Err(PluginError::unavailable("the handler failed on purpose"))
        } else {
            Ok(())
        };
        std::future::ready(PResult::from(answer)).into_ffi()
    }
}

fn recorder() -> (QueueHandlerBox, mpsc::UnboundedReceiver<Job>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (QueueHandler_TO::from_ptr(RArc::new(Recorder(tx)), TD_Opaque), rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Job>) -> Job {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .ok()
        .flatten()
        .expect("no job was delivered within the deadline")
}

/// Pushed jobs reach the consumer once each, intact, and acknowledged jobs leave the queue.
pub async fn delivers_and_acknowledges(target: &Target) {
    let q = target.queue().await;
    let (handler, mut rx) = recorder();
    ok("consume", q.consume(s("conformance-deliver"), handler).await);
    let payloads: BTreeSet<Vec<u8>> = (0..3).map(|i| format!("job-{i}").into_bytes()).collect();
    for p in &payloads {
        ok("push", q.push(s("conformance-deliver"), RVec::from(p.clone())).await);
    }
    let mut seen = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for _ in 0..payloads.len() {
        let job = next(&mut rx).await;
        assert_eq!(job.queue.as_str(), "conformance-deliver");
        assert_eq!(job.attempt, 1, "{job:?}");
        ids.insert(job.id.to_string());
        seen.insert(job.payload.to_vec());
    }
    assert_eq!(seen, payloads);
    assert_eq!(ids.len(), payloads.len(), "job ids are not unique");
    eventually("acknowledged jobs leave the queue", async || {
        let pending = ok("pending", q.pending(s("conformance-deliver")).await);
        holds(pending == 0, format!("{pending} pending"))
    })
    .await;
}

/// A failed attempt is retried with the same id and the next attempt number.
pub async fn retries_a_failed_job(target: &Target) {
    let q = target.queue().await;
    let (handler, mut rx) = recorder();
    ok("consume", q.consume(s("conformance-retry"), handler).await);
    ok("push", q.push(s("conformance-retry"), RVec::from(b"fail-once".to_vec())).await);
    let first = next(&mut rx).await;
    let second = next(&mut rx).await;
    assert_eq!((first.attempt, second.attempt), (1, 2));
    assert_eq!(first.id, second.id, "a retry got a new id");
    assert_eq!(second.payload.as_slice(), b"fail-once");
    eventually("the retried job leaves the queue once acknowledged", async || {
        let pending = ok("pending", q.pending(s("conformance-retry")).await);
        holds(pending == 0, format!("{pending} pending"))
    })
    .await;
}

/// A job its handler rejects (REJECTED: no attempt can succeed) is set aside at once: it is
/// not pending a retry.
pub async fn sets_a_rejected_job_aside(target: &Target) {
    let q = target.queue().await;
    let (handler, mut rx) = recorder();
    ok("consume", q.consume(s("conformance-poison"), handler).await);
    ok("push", q.push(s("conformance-poison"), RVec::from(b"poison".to_vec())).await);
    assert_eq!(next(&mut rx).await.attempt, 1);
    eventually("the rejected job leaves the queue without a retry", async || {
        let pending = ok("pending", q.pending(s("conformance-poison")).await);
        holds(pending == 0, format!("{pending} pending"))
    })
    .await;
    assert!(rx.try_recv().is_err(), "a rejected job was delivered again");
}

/// Jobs pushed before anyone consumes wait, counted as pending, and are delivered later; queues
/// are independent.
pub async fn keeps_jobs_until_consumed(target: &Target) {
    let q = target.queue().await;
    ok("push", q.push(s("conformance-later"), RVec::from(b"a".to_vec())).await);
    ok("push", q.push(s("conformance-later"), RVec::from(b"b".to_vec())).await);
    assert_eq!(ok("pending", q.pending(s("conformance-later")).await), 2);
    assert_eq!(ok("pending", q.pending(s("conformance-other")).await), 0);
    let (handler, mut rx) = recorder();
    ok("consume", q.consume(s("conformance-later"), handler).await);
    let mut got = BTreeSet::new();
    got.insert(next(&mut rx).await.payload.to_vec());
    got.insert(next(&mut rx).await.payload.to_vec());
    assert_eq!(got, BTreeSet::from([b"a".to_vec(), b"b".to_vec()]));
}

/// Health answers Ok; shutdown is idempotent and later calls answer UNAVAILABLE.
pub async fn health_and_shutdown(target: &Target) {
    let q = target.queue().await;
    ok("health", q.health().await);
    ok("shutdown", q.shutdown().await);
    ok("second shutdown", q.shutdown().await);
    let e = q.push(s("conformance-down"), RVec::from(b"x".to_vec())).await.into_result();
    assert_eq!(e.unwrap_err().code, ErrorCode::UNAVAILABLE);
}

/// Expand the queue suite for the [`Target`] that `$target()` returns.
#[macro_export]
macro_rules! queue_suite {
    ($target:path) => {
        $crate::__conformance_cases!(
            queue,
            $target,
            [
                delivers_and_acknowledges,
                retries_a_failed_job,
                sets_a_rejected_job_aside,
                keeps_jobs_until_consumed,
                health_and_shutdown,
            ]
        );
    };
}
