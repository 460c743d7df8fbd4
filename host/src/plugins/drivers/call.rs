//! Every call into a plugin goes through here: a panic that escapes a plugin becomes an error,
//! and an error names the driver's kind and name.

use std::{
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use sockhost_plugin_api::{DriverKind, PResult, PluginError};

use super::DriverError;

/// Awaits a plugin future, turning a panic that escapes it (a plugin that does not catch its
/// own) into an error instead of taking down the host's task.
pub(super) struct Guarded<F>(pub(super) F);

impl<T, F: Future<Output = PResult<T>> + Unpin> Future for Guarded<F> {
    type Output = Result<T, PluginError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut self.0).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(answer)) => Poll::Ready(answer.into_result()),
            Err(_) => Poll::Ready(Err(PluginError::panicked("a plugin future panicked in poll"))),
        }
    }
}

/// A driver object with its kind and name, for error messages.
pub(super) struct Named<T> {
    kind: DriverKind,
    pub(super) name: Arc<str>,
    pub(super) inner: T,
}

impl<T> Named<T> {
    pub(super) fn new(kind: DriverKind, name: &str, inner: T) -> Self {
        Self { kind, name: name.into(), inner }
    }

    pub(super) fn err(&self, error: PluginError) -> DriverError {
        DriverError::Plugin { kind: self.kind, name: self.name.clone(), error }
    }

    pub(super) async fn call<R, F>(&self, fut: F) -> Result<R, DriverError>
    where
        F: Future<Output = PResult<R>> + Unpin,
    {
        Guarded(fut).await.map_err(|e| self.err(e))
    }

    pub(super) fn sync<R>(&self, call: impl FnOnce(&T) -> PResult<R>) -> Result<R, DriverError> {
        match catch_unwind(AssertUnwindSafe(|| call(&self.inner))) {
            Ok(answer) => answer.into_result().map_err(|e| self.err(e)),
            Err(_) => Err(self.err(PluginError::panicked("a plugin call panicked"))),
        }
    }
}

impl<T> std::fmt::Debug for Named<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`", self.kind, self.name)
    }
}
