//! Panic guards and the ways a plugin future crosses the boundary.

use std::{
    any::Any,
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    task::{Context, Poll},
};

use async_ffi::{FfiFuture, FutureExt as _};
use tokio::runtime::Handle;

use crate::{PResult, PluginError};

/// The text of a caught panic.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}

/// Run a synchronous export body, turning a panic into [`ErrorCode::PANICKED`](crate::ErrorCode::PANICKED).
pub fn guard<T>(body: impl FnOnce() -> Result<T, PluginError>) -> PResult<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result.into(),
        Err(payload) => Err(PluginError::panicked(panic_message(&*payload))).into(),
    }
}

/// An already-finished future.
pub fn ready<T: Send + 'static>(result: Result<T, PluginError>) -> FfiFuture<PResult<T>> {
    std::future::ready(PResult::from(result)).into_ffi()
}

/// Hand `fut` to the host, to be polled by the host's executor with the plugin runtime entered.
///
/// No thread hop: the plugin's sockets and timers register with the plugin's reactor (driven by
/// the plugin's workers), which wakes the host's task when they are ready. Panics in `poll` (and
/// in building `fut`) become errors. If the host drops the future, the operation is cancelled;
/// use [`spawn`] for work that must finish regardless.
pub fn enter<T, F>(handle: &Handle, fut: impl FnOnce() -> F) -> FfiFuture<PResult<T>>
where
    T: Send + 'static,
    F: Future<Output = Result<T, PluginError>> + Send + 'static,
{
    let fut = {
        let _entered = handle.enter();
        match catch_unwind(AssertUnwindSafe(fut)) {
            Ok(fut) => fut,
            Err(payload) => return ready(Err(PluginError::panicked(panic_message(&*payload)))),
        }
    };
    Entered { handle: handle.clone(), fut: Some(Box::pin(fut)) }.into_ffi()
}

/// Run `fut` on the plugin runtime and hand the host a future of its result.
///
/// Costs a thread hop (microseconds), so it is for work that must complete even if the host
/// stops waiting (construction, shutdown), never for the per-message path.
pub fn spawn<T, F>(handle: &Handle, fut: F) -> FfiFuture<PResult<T>>
where
    T: Send + 'static,
    F: Future<Output = Result<T, PluginError>> + Send + 'static,
{
    let task = handle.spawn(fut);
    let handle = handle.clone();
    enter(&handle, move || async move {
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(PluginError::panicked(panic_message(&*e.into_panic()))),
            Err(e) => Err(PluginError::internal(format!("plugin task ended: {e}"))),
        }
    })
}

/// A future polled with a runtime entered, its panics caught.
struct Entered<F> {
    handle: Handle,
    /// `None` once it has finished or panicked, so it is never polled again.
    fut: Option<Pin<Box<F>>>,
}

impl<T, F> Future for Entered<F>
where
    F: Future<Output = Result<T, PluginError>>,
{
    type Output = PResult<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(
                Err(PluginError::internal("future polled after completion")).into(),
            );
        };
        let _entered = this.handle.enter();
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => {
                this.fut = None;
                Poll::Ready(result.into())
            }
            Err(payload) => {
                this.fut = None;
                Poll::Ready(Err(PluginError::panicked(panic_message(&*payload))).into())
            }
        }
    }
}

impl<F> Drop for Entered<F> {
    fn drop(&mut self) {
        // Resources of the plugin runtime deregister on drop; do it with that runtime entered.
        // A panic here would abort the process, so it is caught and dropped.
        if let Some(fut) = self.fut.take() {
            let _entered = self.handle.enter();
            let _ = catch_unwind(AssertUnwindSafe(move || drop(fut)));
        }
    }
}
