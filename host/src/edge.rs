//! The edge: the listener that accepts TCP connections and bounds what each may hold.
//!
//! Every connection, WebSocket or HTTP, is counted against a cap for the node and one for its
//! client address before any byte is read; one over a cap is still served, but only to be
//! told so quickly (4100 on a WebSocket, 503 on HTTP) and closed. HTTP/1.1 is served by hyper
//! with a timer, so a request head (and the idle time between kept-alive requests) has a
//! deadline: a client that sends a few bytes and stops is dropped, not kept forever.
//!
//! Closing is a lingering close: when a connection that was sent anything is dropped, its
//! write side is shut and what the client still sends is read and discarded for a bounded time
//! and size. A refusal sent before the client finished (a 413 for a body too large, a 1009
//! close for a frame too large) then reaches the client, instead of a reset that would discard
//! it unread.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
};

use crate::{config::EdgeSettings, metrics::Metrics, telemetry::LogLimiter};

/// Closed connections discarding input at once, at most; past it a connection closes at once.
const MAX_LINGERING: usize = 4096;

/// Why a connection is over a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverLimit {
    /// The node holds `edge.max_connections`.
    Node,
    /// The client's address holds `edge.max_connections_per_ip`.
    Address,
}

impl OverLimit {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Node => "node_limit",
            Self::Address => "ip_limit",
        }
    }

    /// What the client is told.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::Node => "The server is at its connection limit; retry later",
            Self::Address => "Too many connections from this address; retry later",
        }
    }
}

/// How many bytes the client has accepted, for the write deadline: a counter, not a clock,
/// because it moves on every write of every connection and reading a clock there costs.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    written: AtomicU64,
}

impl Progress {
    fn wrote(&self, n: usize) {
        // One writer (the connection's task or hyper's), so no read-modify-write is needed.
        let total = self.written.load(Ordering::Relaxed).wrapping_add(n as u64);
        self.written.store(total, Ordering::Relaxed);
    }

    /// Bytes the client has accepted so far.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// What a request knows of its connection (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Set when the connection is over a limit and must be refused.
    pub over_limit: Option<OverLimit>,
    /// Write progress of the connection.
    pub progress: Arc<Progress>,
}

/// The counts behind the limits, and the edge's metrics.
#[derive(Debug)]
pub(crate) struct Edge {
    settings: EdgeSettings,
    max_connections: Option<usize>,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    lingering: AtomicUsize,
    open_gauge: Gauge,
    lingering_gauge: Gauge,
    refused: Family<Vec<(&'static str, &'static str)>, Counter>,
    refusals_logged: LogLimiter,
}

impl Edge {
    /// The edge with `settings`; the node's cap is resolved now (from the open-file limit when
    /// not configured).
    pub(crate) fn new(settings: &EdgeSettings, metrics: &Metrics) -> Arc<Self> {
        let max_connections = settings.max_connections.or_else(|| {
            open_file_limit().map(|limit| usize::try_from(limit / 10 * 9).unwrap_or(usize::MAX))
        });
        Arc::new(Self {
            settings: settings.clone(),
            max_connections,
            open: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            lingering: AtomicUsize::new(0),
            open_gauge: metrics.edge_open.clone(),
            lingering_gauge: metrics.edge_lingering.clone(),
            refused: metrics.edge_refused.clone(),
            refusals_logged: LogLimiter::default(),
        })
    }

    /// The node's connection cap, if any.
    pub(crate) fn max_connections(&self) -> Option<usize> {
        self.max_connections
    }

    /// The settings.
    pub(crate) fn settings(&self) -> &EdgeSettings {
        &self.settings
    }

    /// Count a new connection from `ip`: its ticket, and whether it is over a limit. A
    /// connection over a limit holds a ticket too (it holds a descriptor until it is closed).
    fn admit(self: &Arc<Self>, ip: IpAddr) -> (Ticket, Option<OverLimit>) {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.open_gauge.inc();
        let from_ip = {
            let mut per_ip = self.per_ip.lock().expect("edge lock");
            let count = per_ip.entry(ip).or_insert(0);
            *count += 1;
            *count
        };
        let ticket = Ticket { edge: self.clone(), ip };
        let over = if self.max_connections.is_some_and(|max| open > max) {
            Some(OverLimit::Node)
        } else if self.settings.max_connections_per_ip > 0
            && from_ip > self.settings.max_connections_per_ip
        {
            Some(OverLimit::Address)
        } else {
            None
        };
        if let Some(over) = over {
            self.refused.get_or_create(&vec![("reason", over.label())]).inc();
            if self.refusals_logged.allow() {
                match over {
                    OverLimit::Node => tracing::warn!(
                        open,
                        max = self.max_connections,
                        "Refusing connections: the node is at edge.max_connections."
                    ),
                    OverLimit::Address => tracing::warn!(
                        %ip,
                        open = from_ip,
                        max = self.settings.max_connections_per_ip,
                        "Refusing connections from an address at edge.max_connections_per_ip (behind a proxy that hides client addresses, set it to 0)."
                    ),
                }
            }
        }
        (ticket, over)
    }

    /// Wrap an accepted stream: its IO for hyper and what its requests will know of it.
    pub(crate) fn accept(self: &Arc<Self>, stream: TcpStream, addr: SocketAddr) -> (EdgeIo, Peer) {
        let (ticket, over_limit) = self.admit(addr.ip());
        let progress = Arc::new(Progress::default());
        let io = EdgeIo { stream: Some(stream), ticket: Some(ticket), progress: progress.clone() };
        (io, Peer { addr, over_limit, progress })
    }
}

/// A connection's place in the counts, given back when it is finally closed.
#[derive(Debug)]
struct Ticket {
    edge: Arc<Edge>,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.edge.open.fetch_sub(1, Ordering::AcqRel);
        self.edge.open_gauge.dec();
        let mut per_ip = self.edge.per_ip.lock().expect("edge lock");
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// An accepted TCP stream that records write progress and lingers when dropped.
#[derive(Debug)]
pub(crate) struct EdgeIo {
    stream: Option<TcpStream>,
    ticket: Option<Ticket>,
    progress: Arc<Progress>,
}

fn gone() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

impl AsyncRead for EdgeIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_read(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(stream) = self.stream.as_mut() else { return Poll::Ready(Err(gone())) };
        let written = Pin::new(stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.progress.wrote(n);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(stream) = self.stream.as_mut() else { return Poll::Ready(Err(gone())) };
        let written = Pin::new(stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            self.progress.wrote(n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for EdgeIo {
    fn drop(&mut self) {
        let (Some(stream), Some(ticket)) = (self.stream.take(), self.ticket.take()) else {
            return;
        };
        let edge = ticket.edge.clone();
        let linger = edge.settings.linger;
        // Lingering is for an answer the client may not have read yet; a connection that was
        // never answered (a slow request head) closes at once and frees its descriptor.
        if linger.is_zero() || self.progress.written() == 0 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if edge.lingering.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING {
            edge.lingering.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        edge.lingering_gauge.inc();
        runtime.spawn(async move {
            discard(stream, linger, edge.settings.linger_max_bytes).await;
            edge.lingering.fetch_sub(1, Ordering::AcqRel);
            edge.lingering_gauge.dec();
            drop(ticket);
        });
    }
}

/// Shut the write side (what was written still goes out, then FIN) and read what the client
/// still sends until it closes, `linger` passes or `max_bytes` were read.
async fn discard(mut stream: TcpStream, linger: Duration, max_bytes: u64) {
    let _ = stream.shutdown().await;
    let deadline = tokio::time::Instant::now() + linger;
    let mut buf = [0u8; 8192];
    let mut total = 0u64;
    while total < max_bytes {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return,
            Ok(Ok(n)) => total += n as u64,
        }
    }
}

/// The soft limit on open files of this process, from `/proc/self/limits` (Linux); `None` if
/// unlimited or unknown.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}
