//! A connection's TCP stream, shared by its task and, once it is a plain-TCP WebSocket, by the
//! threads that broadcast to it (with `websocket.direct_writes`; otherwise only its write
//! progress is kept here).
//!
//! A broadcast that finds a connection idle (nothing queued, nothing being written) writes the
//! frame to its socket itself, without waking the connection's task: for a quiet socket the
//! wake-up, the task's turn and the copy into tungstenite's buffer cost more than the write.
//! Two writers on one socket must never interleave inside a frame, so every write goes through
//! this lock, and in direct mode a write is taken whole or not at all: what the socket does not
//! accept at once waits in `out`, which is written before anything else. tungstenite hands its
//! transport whole frames only (a buffer of formatted frames), so its frames stay whole too.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use socket2::SockRef;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// Bytes `out` may hold before a write from the connection's task waits for the socket (a
/// write when `out` is empty is always taken: it is one buffer of tungstenite's, bounded by its
/// own limit).
const MAX_OUT: usize = 1024 * 1024;

/// The stream and what waits to be written to it.
#[derive(Debug, Default)]
struct State {
    /// `None` once the connection is closed (its descriptor may belong to another by then).
    stream: Option<TcpStream>,
    /// Bytes taken from writers that the socket has not accepted yet, written first.
    out: Vec<u8>,
    /// Writes are taken whole (a WebSocket over plain TCP); otherwise they pass through.
    direct: bool,
}

/// What a direct write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direct {
    /// Every byte was taken: `left` of them wait in `out` for the connection's task to flush.
    Taken {
        /// Bytes the socket did not accept at once.
        left: usize,
    },
    /// Nothing was written (the socket is full, bytes wait before these, the connection is not
    /// in direct mode or is gone): the connection's task writes them.
    NotNow,
}

/// How many bytes the client has accepted, for the write deadline: a counter, not a clock,
/// because it moves on every write of every connection and reading a clock there costs.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    written: AtomicU64,
}

impl Progress {
    /// Called by the stream's one writer at a time (under the wire's lock when it is shared),
    /// so no read-modify-write is needed.
    pub(crate) fn wrote(&self, n: usize) {
        let total = self.written.load(Ordering::Relaxed).wrapping_add(n as u64);
        self.written.store(total, Ordering::Relaxed);
    }

    /// Bytes the client has accepted so far.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// A write's outcome, its bytes counted if it took any.
    pub(crate) fn count(&self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = written {
            self.wrote(n);
        }
        written
    }
}

/// Where a connection's write progress is read: its own counter, or its wire's.
#[derive(Debug, Clone)]
pub(crate) enum Written {
    /// The stream is the connection's task's alone.
    Alone(Arc<Progress>),
    /// The stream is in a wire.
    Wire(Arc<Wire>),
}

impl Written {
    /// Bytes the client has accepted so far.
    pub(crate) fn written(&self) -> u64 {
        match self {
            Self::Alone(progress) => progress.written(),
            Self::Wire(wire) => wire.written(),
        }
    }
}

/// A connection's stream, shared.
#[derive(Debug)]
pub(crate) struct Wire {
    state: Mutex<State>,
    /// Inline rather than shared: a broadcast's write to a quiet socket then touches no
    /// memory of the connection's beyond its queue and this (every line it touches is a
    /// cache miss, the larger part of such a write's user time).
    progress: Progress,
}

impl Wire {
    /// A wire holding the connection's stream, for broadcasts to write to.
    pub(crate) fn shared(stream: TcpStream) -> Self {
        let state = State { stream: Some(stream), ..State::default() };
        Self { state: Mutex::new(state), progress: Progress::default() }
    }

    /// The state; a panic elsewhere while it was held leaves it usable (what was written is
    /// counted as it goes).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wrote(&self, n: usize) {
        self.progress.wrote(n);
    }

    /// Bytes the client has accepted so far.
    pub(crate) fn written(&self) -> u64 {
        self.progress.written()
    }

    /// From now on writes are taken whole, and [`Wire::write_direct`] may write. Only for a
    /// WebSocket over plain TCP, whose task has no write of its own under way.
    pub(crate) fn go_direct(&self) {
        self.lock().direct = true;
    }

    /// Write `bufs` whole without waiting: what the socket takes at once goes now, the rest
    /// waits in `out` for the connection's task. Nothing is written if anything waits already.
    pub(crate) fn write_direct(&self, bufs: &[IoSlice<'_>]) -> Direct {
        let mut state = self.lock();
        let State { stream: Some(stream), out, direct: true } = &mut *state else {
            return Direct::NotNow;
        };
        if !out.is_empty() {
            return Direct::NotNow;
        }
        // Straight to the socket, past tokio's readiness cache: reading it is one more cache
        // miss per quiet socket. A refusal (`WouldBlock`) is not recorded there; the task's
        // own write finds it out and waits for readiness as usual.
        let n = match SockRef::from(&*stream).send_vectored(bufs) {
            Ok(0) | Err(_) => return Direct::NotNow,
            Ok(n) => n,
        };
        self.wrote(n);
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if n < total {
            let mut skip = n;
            for buf in bufs {
                let from = skip.min(buf.len());
                out.extend_from_slice(&buf[from..]);
                skip -= from;
            }
        }
        Direct::Taken { left: total - n }
    }

    /// The connection is closed: its stream, for a lingering close. Writers find none after.
    pub(crate) fn take(&self) -> Option<TcpStream> {
        let mut state = self.lock();
        state.out = Vec::new();
        state.stream.take()
    }

    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.lock().stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_read(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut state = self.lock();
        let State { stream: Some(stream), out, direct } = &mut *state else {
            return Poll::Ready(Err(gone()));
        };
        if !*direct {
            return self.progress.count(Pin::new(stream).poll_write(cx, buf));
        }
        if !out.is_empty() {
            let flushed = self.flush_out(stream, out, cx)?;
            if flushed.is_pending() && out.len() + buf.len() > MAX_OUT {
                return Poll::Pending;
            }
        }
        if out.is_empty() {
            let n = match stream.try_write(buf) {
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
                Err(error) => return Poll::Ready(Err(error)),
            };
            self.wrote(n);
            out.extend_from_slice(&buf[n..]);
        } else {
            out.extend_from_slice(buf);
        }
        Poll::Ready(Ok(buf.len()))
    }

    /// Write what waits in `out` until it is empty (ready) or the socket is full (pending,
    /// woken when it can take more).
    fn flush_out(
        &self,
        stream: &TcpStream,
        out: &mut Vec<u8>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !out.is_empty() {
            match stream.try_write(out) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.wrote(n);
                    out.drain(..n);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    match stream.poll_write_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(ready) => ready?,
                    }
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        // Given back: a connection idle after a burst holds no buffer.
        *out = Vec::new();
        Poll::Ready(Ok(()))
    }

    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.lock();
        let State { stream: Some(stream), out, .. } = &mut *state else {
            return Poll::Ready(Err(gone()));
        };
        if !out.is_empty() && self.flush_out(stream, out, cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(stream).poll_flush(cx)
    }

    pub(crate) fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.lock();
        let State { stream: Some(stream), out, .. } = &mut *state else {
            return Poll::Ready(Ok(()));
        };
        if !out.is_empty() && self.flush_out(stream, out, cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(stream).poll_shutdown(cx)
    }
}

fn gone() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}
