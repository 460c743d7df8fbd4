//! The host's side of [`HostIo`] over tokio, for the server and the conformance harness
//! alike. Compiled into the host (feature `host-tcp`), never into a plugin: its tokio is the
//! host's.

use std::task::Poll;

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
    /// The runtime of the calling thread; without one, every connect is refused.
    pub fn current() -> Self {
        Self(Handle::try_current().ok())
    }

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
        async move {
            match connecting.await {
                Ok(Ok(socket)) => ROk(socket),
                Ok(Err(error)) => RErr(error),
                Err(error) => {
                    RErr(PluginError::internal(format!("the connect task ended: {error}")))
                }
            }
        }
        .into_ffi()
    }

    fn spawn(&self, task: FfiFuture<()>) {
        if let Some(handle) = &self.0 {
            handle.spawn(task);
        }
    }
}

/// A plugin's TCP connection on the host's reactor.
struct TokioSocket(TcpStream);

fn failed(what: &str, error: &std::io::Error) -> FfiPoll<PResult<usize>> {
    FfiPoll::Ready(RErr(PluginError::unavailable(format!("{what}: {error}"))))
}

impl HostSocket for TokioSocket {
    fn poll_read(
        &self,
        mut buf: RSliceMut<'_, u8>,
        cx: &mut FfiContext<'_>,
    ) -> FfiPoll<PResult<usize>> {
        cx.with_context(|cx| {
            loop {
                match self.0.poll_read_ready(cx) {
                    Poll::Pending => return FfiPoll::Pending,
                    Poll::Ready(Err(error)) => return failed("reading", &error),
                    Poll::Ready(Ok(())) => {}
                }
                // `try_read` clears the readiness when the socket has nothing, so the next
                // poll waits for more.
                match self.0.try_read(&mut buf) {
                    Ok(n) => return FfiPoll::Ready(ROk(n)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(error) => return failed("reading", &error),
                }
            }
        })
    }

    fn poll_write(&self, buf: RSlice<'_, u8>, cx: &mut FfiContext<'_>) -> FfiPoll<PResult<usize>> {
        cx.with_context(|cx| {
            loop {
                match self.0.poll_write_ready(cx) {
                    Poll::Pending => return FfiPoll::Pending,
                    Poll::Ready(Err(error)) => return failed("writing", &error),
                    Poll::Ready(Ok(())) => {}
                }
                match self.0.try_write(&buf) {
                    Ok(n) => return FfiPoll::Ready(ROk(n)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(error) => return failed("writing", &error),
                }
            }
        })
    }
}
