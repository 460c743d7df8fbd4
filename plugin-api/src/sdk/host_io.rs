//! A TCP connection the host drives ([`HostIo::connect_tcp`](crate::HostIo::connect_tcp)), as tokio's `AsyncRead` and
//! `AsyncWrite`, so that a client library (redis-rs) runs over it unchanged, and the host's
//! executor for the tasks that drive it ([`HostIo::spawn`](crate::HostIo::spawn)).
//!
//! The host lends its runtime once, after loading ([`install`], the root module's `host_io`);
//! a host built before that lends nothing, and [`connect`] answers `None`.

use std::{
    future::Future,
    io,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
};

use abi_stable::std_types::{RSlice, RSliceMut, RStr};
use async_ffi::{ContextExt, FfiPoll, FutureExt as _};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    runtime::Handle,
};

use crate::{HostIoBox, HostSocketBox, PluginError};

/// The host's runtime, as lent to this plugin (this static lives in the plugin's image).
static HOST_IO: OnceLock<HostIoBox> = OnceLock::new();

/// The root module's `host_io`: keep what the host lends (the first one, if called twice).
pub extern "C" fn install(io: HostIoBox) {
    // Nothing here can panic but the standard library's own checks; never across the boundary.
    let _ = catch_unwind(AssertUnwindSafe(|| HOST_IO.set(io)));
}

/// A connection the host drives (boxed: the FFI object is not `Unpin`, a box is).
pub struct HostStream(Box<HostSocketBox>);

impl std::fmt::Debug for HostStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostStream")
    }
}

/// Whether the host lent its runtime.
pub fn offered() -> bool {
    HOST_IO.get().is_some()
}

/// Open a TCP connection to `address:port` on the host's runtime; `Ok(None)` when the host
/// lent none, so that the caller connects on its own runtime instead.
///
/// # Errors
/// The host could not connect (refused, unreachable, a name that does not resolve).
pub async fn connect(address: &str, port: u16) -> Result<Option<HostStream>, PluginError> {
    let Some(io) = HOST_IO.get() else { return Ok(None) };
    let socket = io.connect_tcp(RStr::from_str(address), port).await.into_result()?;
    Ok(Some(HostStream(Box::new(socket))))
}

/// Run `task` on the host's executor, with `runtime` (the plugin's) entered at each poll for
/// its timers and its panics caught; on the plugin's runtime when the host lent none.
pub fn spawn(runtime: &'static Handle, task: impl Future<Output = ()> + Send + 'static) {
    let Some(io) = HOST_IO.get() else {
        runtime.spawn(task);
        return;
    };
    let entered = super::enter(runtime, move || async move {
        task.await;
        Ok(())
    });
    io.spawn(
        async move {
            let _ = entered.await;
        }
        .into_ffi(),
    );
}

fn io_error(error: &PluginError) -> io::Error {
    io::Error::other(error.to_string())
}

impl AsyncRead for HostStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let space = buf.initialize_unfilled();
        let read = cx.with_ffi_context(|cx| self.0.poll_read(RSliceMut::from_mut_slice(space), cx));
        match read {
            FfiPoll::Ready(answer) => match answer.into_result() {
                Ok(n) => {
                    // The host reports what it wrote into the slice, at most its length.
                    buf.advance(n.min(buf.remaining()));
                    Poll::Ready(Ok(()))
                }
                Err(error) => Poll::Ready(Err(io_error(&error))),
            },
            FfiPoll::Pending => Poll::Pending,
            FfiPoll::Panicked => Poll::Ready(Err(io::Error::other("the host's read panicked"))),
        }
    }
}

impl AsyncWrite for HostStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = cx.with_ffi_context(|cx| self.0.poll_write(RSlice::from_slice(buf), cx));
        match written {
            FfiPoll::Ready(answer) => Poll::Ready(
                answer.into_result().map(|n| n.min(buf.len())).map_err(|e| io_error(&e)),
            ),
            FfiPoll::Pending => Poll::Pending,
            FfiPoll::Panicked => Poll::Ready(Err(io::Error::other("the host's write panicked"))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP keeps nothing back: what was taken is on its way.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Closed when dropped.
        Poll::Ready(Ok(()))
    }
}
