//! The host's side of [`HostIo`] over tokio, for the server and the conformance harness
//! alike. Compiled into the host (feature `host-tcp`), never into a plugin: its tokio is the
//! host's.

use std::task::{Context, Poll};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, RErr, ROk, RSlice, RSliceMut, RStr},
};
use async_ffi::{FfiContext, FfiFuture, FfiPoll, FutureExt as _};
use tokio::{net::TcpStream, runtime::Handle};

use crate::{
    HostIo, HostIo_TO, HostIoBox, HostSocket, HostSocket_TO, HostSocketBox, PResult, PluginError,
};

/// The host's runtime, on which plugins' sockets and tasks run.
#[derive(Debug, Clone)]
pub struct TokioHostIo(Option<Handle>);

impl TokioHostIo {
    /// `handle`'s runtime.
    pub fn on(handle: Handle) -> Self {
        Self(Some(handle))
    }

    /// As the FFI object a plugin's `host_io` takes.
    pub fn boxed(self) -> HostIoBox {
        HostIo_TO::from_ptr(RArc::new(self), TD_Opaque)
    }
}

impl HostIo for TokioHostIo {
    /// Connected on the host's runtime (a spawned task: the plugin may poll this from a
    /// thread of its own).
    fn connect_tcp(&self, host: RStr<'_>, port: u16) -> FfiFuture<PResult<HostSocketBox>> {
        let Some(handle) = &self.0 else {
            let refused = PluginError::unavailable("this host has no runtime to drive sockets on");
            return std::future::ready(RErr(refused)).into_ffi();
        };
        let host = host.to_string();
        let connecting = handle.spawn(async move {
            let stream = TcpStream::connect((host.as_str(), port)).await.map_err(|e| {
                PluginError::unavailable(format!("connecting to {host}:{port}: {e}"))
            })?;
            // Requests are small and each waits for its answer.
            let _ = stream.set_nodelay(true);
            Ok(HostSocket_TO::from_value(TokioSocket(stream), TD_Opaque))
        });
        // A caller that stops waiting (its timeout) takes the attempt with it: the task is
        // aborted, rather than left to the kernel's connect timeout with its socket open.
        let abort = AbortOnDrop(connecting.abort_handle());
        async move {
            let answer = match connecting.await {
                Ok(Ok(socket)) => ROk(socket),
                Ok(Err(error)) => RErr(error),
                Err(error) => {
                    RErr(PluginError::internal(format!("the connect task ended: {error}")))
                }
            };
            drop(abort);
            answer
        }
        .into_ffi()
    }

    fn spawn(&self, task: FfiFuture<()>) {
        if let Some(handle) = &self.0 {
            handle.spawn(task);
        }
    }
}

/// Aborts a task when dropped (a finished task is not affected).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A plugin's TCP connection on the host's reactor.
struct TokioSocket(TcpStream);

/// One read or write: wait for `ready`, then `attempt` it, until it does not would-block
/// (`try_read`/`try_write` clear the readiness when the socket has nothing or no room, so
/// the next poll waits for the reactor).
fn transfer(
    cx: &mut FfiContext<'_>,
    what: &str,
    ready: impl Fn(&mut Context<'_>) -> Poll<std::io::Result<()>>,
    mut attempt: impl FnMut() -> std::io::Result<usize>,
) -> FfiPoll<PResult<usize>> {
    let failed = |error: std::io::Error| {
        FfiPoll::Ready(RErr(PluginError::unavailable(format!("{what}: {error}"))))
    };
    cx.with_context(|cx| {
        loop {
            match ready(cx) {
                Poll::Pending => return FfiPoll::Pending,
                Poll::Ready(Err(error)) => return failed(error),
                Poll::Ready(Ok(())) => {}
            }
            match attempt() {
                Ok(n) => return FfiPoll::Ready(ROk(n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return failed(error),
            }
        }
    })
}

impl HostSocket for TokioSocket {
    fn poll_read(
        &self,
        mut buf: RSliceMut<'_, u8>,
        cx: &mut FfiContext<'_>,
    ) -> FfiPoll<PResult<usize>> {
        transfer(cx, "reading", |cx| self.0.poll_read_ready(cx), || self.0.try_read(&mut buf))
    }

    fn poll_write(&self, buf: RSlice<'_, u8>, cx: &mut FfiContext<'_>) -> FfiPoll<PResult<usize>> {
        transfer(cx, "writing", |cx| self.0.poll_write_ready(cx), || self.0.try_write(&buf))
    }
}
