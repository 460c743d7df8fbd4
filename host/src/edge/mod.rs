//! The edge: the listener that accepts TCP connections and bounds what each may hold.
//!
//! Every connection, WebSocket or HTTP, is counted against a cap for the node before any byte
//! is read, and against one for its client address once that is known (at once, or after its
//! PROXY header); a WebSocket also against the address's WebSocket cap, so an address holding
//! as many sockets as it may can still use the HTTP API. One over a cap is still served, but
//! only to be told so quickly (4100 on a WebSocket, 503 on HTTP) and closed. Behind trusted
//! proxies the client address is the one they name (`proxy.rs`). HTTP/1.1 is served by hyper
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
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
};

use crate::{
    address_counts::AddressCounts,
    config::EdgeSettings,
    metrics::Metrics,
    telemetry::LogLimiter,
    wire::{Progress, Wire, Written},
};

mod proxy;

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

/// What a request knows of its connection (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The client's address: the TCP peer's, or the one its PROXY header named. A request's own
    /// client (after `Forwarded` from a trusted proxy) is its `ConnectInfo`.
    pub addr: SocketAddr,
    /// Set when the connection is over a limit and must be refused.
    pub over_limit: Option<OverLimit>,
    /// Write progress of the connection.
    pub progress: Written,
    /// The stream, shared, when a WebSocket on it is the TCP stream itself (no TLS between)
    /// and broadcasts may write to it directly (`websocket.direct_writes`).
    pub wire: Option<Arc<Wire>>,
}

/// Bounds of a listener beside the main one (metrics, admin): a handful of scrapers and
/// operators, never a crowd.
const BESIDE_MAX_CONNECTIONS: usize = 256;
/// Connections one address may hold on a listener beside the main one.
const BESIDE_MAX_PER_IP: usize = 32;

/// The counts behind the limits, and the edge's metrics.
#[derive(Debug)]
pub(crate) struct Edge {
    settings: EdgeSettings,
    max_connections: Option<usize>,
    /// TCP connections an address may hold: its WebSockets and its plain HTTP connections.
    max_per_ip: Option<usize>,
    proxies: proxy::Proxies,
    /// Close a connection over a limit at once instead of answering it (listeners beside the
    /// main one: their clients are operators' tools, and a descriptor held for a polite
    /// refusal is one the main port may need).
    closes_over_limit: bool,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    sockets_per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// TLS handshakes begun per address over the last second.
    handshakes: AddressCounts,
    lingering: AtomicUsize,
    open_gauge: Gauge,
    lingering_gauge: Gauge,
    refused: Family<Vec<(&'static str, &'static str)>, Counter>,
    refusals_logged: LogLimiter,
}

impl Edge {
    /// The main listener's edge with `settings`; the node's cap is resolved now (from the
    /// open-file limit when not configured).
    pub(crate) fn new(settings: &EdgeSettings, metrics: &Metrics) -> Arc<Self> {
        let max_connections = settings.max_connections.or_else(|| {
            open_file_limit().map(|limit| usize::try_from(limit / 10 * 9).unwrap_or(usize::MAX))
        });
        let open_gauge = metrics.edge_open.clone();
        Self::build(settings.clone(), max_connections, open_gauge, metrics, false)
    }

    /// The edge of a listener beside the main one (metrics, admin): the same deadlines and
    /// trusted proxies, small caps of its own, no PROXY protocol, counted apart from the main
    /// port's open connections.
    pub(crate) fn beside(settings: &EdgeSettings, metrics: &Metrics) -> Arc<Self> {
        let settings = EdgeSettings {
            max_connections: Some(BESIDE_MAX_CONNECTIONS),
            max_connections_per_ip: BESIDE_MAX_PER_IP,
            max_http_connections_per_ip: BESIDE_MAX_PER_IP,
            proxy_protocol: false,
            direct_writes: false,
            ..settings.clone()
        };
        Self::build(settings, Some(BESIDE_MAX_CONNECTIONS), Gauge::default(), metrics, true)
    }

    fn build(
        settings: EdgeSettings,
        max_connections: Option<usize>,
        open_gauge: Gauge,
        metrics: &Metrics,
        closes_over_limit: bool,
    ) -> Arc<Self> {
        let (ws, http) = (settings.max_connections_per_ip, settings.max_http_connections_per_ip);
        Arc::new(Self {
            max_connections,
            max_per_ip: (ws > 0 && http > 0).then(|| ws.saturating_add(http)),
            proxies: proxy::Proxies::new(settings.trusted_proxies.clone()),
            settings,
            closes_over_limit,
            open: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            sockets_per_ip: Mutex::default(),
            handshakes: AddressCounts::new(Duration::from_secs(1)),
            lingering: AtomicUsize::new(0),
            open_gauge,
            lingering_gauge: metrics.edge_lingering.clone(),
            refused: metrics.edge_refused.clone(),
            refusals_logged: LogLimiter::default(),
        })
    }

    /// The node's connection cap, if any.
    pub(crate) fn max_connections(&self) -> Option<usize> {
        self.max_connections
    }

    /// Whether a connection over a limit is closed at once rather than told so.
    pub(crate) fn closes_over_limit(&self) -> bool {
        self.closes_over_limit
    }

    /// The settings.
    pub(crate) fn settings(&self) -> &EdgeSettings {
        &self.settings
    }

    /// The client behind a request from `peer` (see [`proxy::Proxies::client`]).
    pub(crate) fn client(&self, peer: SocketAddr, headers: &axum::http::HeaderMap) -> SocketAddr {
        self.proxies.client(peer, headers)
    }

    /// Count a new connection against the node's cap, before anything is read from it: its
    /// ticket, and whether it is over the cap. A connection over a limit holds a ticket too (it
    /// holds a descriptor until it is closed).
    pub(crate) fn open(self: &Arc<Self>) -> (Ticket, Option<OverLimit>) {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.open_gauge.inc();
        let ticket = Ticket { edge: self.clone(), ip: None };
        let over = self.max_connections.is_some_and(|max| open > max).then(|| {
            self.over(OverLimit::Node, || {
                tracing::warn!(
                    open,
                    max = self.max_connections,
                    "Refusing connections: the node is at edge.max_connections."
                );
            })
        });
        (ticket, over)
    }

    /// Count a refusal for `reason` (the metric label), and log it when the log is not
    /// flooded.
    fn refuse(&self, reason: &'static str, log: impl FnOnce()) {
        self.refused.get_or_create(&vec![("reason", reason)]).inc();
        if self.refusals_logged.allow() {
            log();
        }
    }

    /// [`Edge::refuse`] for a connection over a limit.
    fn over(&self, over: OverLimit, log: impl FnOnce()) -> OverLimit {
        self.refuse(over.label(), log);
        over
    }

    /// Count the connection of `ticket` against its client address, unless the address is a
    /// trusted proxy's (which speaks for many clients; each of its requests is held to the
    /// caps of its own client instead). Whether the address is over its cap.
    fn attribute(&self, ticket: &mut Ticket, ip: IpAddr) -> Option<OverLimit> {
        if self.proxies.trusts(ip) {
            return None;
        }
        let from_ip = {
            let mut per_ip = self.per_ip.lock().expect("edge lock");
            let count = per_ip.entry(ip).or_insert(0);
            *count += 1;
            *count
        };
        ticket.ip = Some(ip);
        let max = self.max_per_ip?;
        (from_ip > max).then(|| {
            self.over(OverLimit::Address, || {
                tracing::warn!(
                    %ip,
                    open = from_ip,
                    max,
                    "Refusing connections from an address at edge.max_connections_per_ip + edge.max_http_connections_per_ip (behind a proxy, list it in edge.trusted_proxies)."
                );
            })
        })
    }

    /// Hold a WebSocket of the client `ip` against `edge.max_connections_per_ip`: its place,
    /// given back when dropped (`None` when unlimited), or the refusal.
    pub(crate) fn hold_socket(
        self: &Arc<Self>,
        ip: IpAddr,
    ) -> Result<Option<SocketHold>, OverLimit> {
        let max = self.settings.max_connections_per_ip;
        if max == 0 {
            return Ok(None);
        }
        let mut sockets = self.sockets_per_ip.lock().expect("edge lock");
        let count = sockets.entry(ip).or_insert(0);
        if *count >= max {
            let open = *count;
            drop(sockets);
            return Err(self.over(OverLimit::Address, || {
                tracing::warn!(
                    %ip,
                    open,
                    max,
                    "Refusing WebSockets from an address at edge.max_connections_per_ip."
                );
            }));
        }
        *count += 1;
        Ok(Some(SocketHold { edge: self.clone(), ip }))
    }

    /// Whether the client `ip` may begin another TLS handshake this second. Trusted proxies
    /// are not limited: they begin handshakes for many clients.
    pub(crate) fn allow_handshake(&self, ip: IpAddr) -> bool {
        let max = self.settings.max_tls_handshakes_per_ip_per_second;
        if max == 0 || self.proxies.trusts(ip) {
            return true;
        }
        let allowed = self.handshakes.add(ip) <= max;
        if !allowed {
            self.refuse("tls_rate", || {
                tracing::warn!(%ip, max, "Refusing TLS handshakes from an address over edge.max_tls_handshakes_per_ip_per_second.");
            });
        }
        allowed
    }

    /// Take an accepted stream holding `ticket`: read its PROXY header when the edge expects
    /// one, count it against its client address, and wrap it. `None` when it is closed instead
    /// (no well-formed PROXY header in time).
    pub(crate) async fn accept(
        self: &Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
        (mut ticket, over_node): (Ticket, Option<OverLimit>),
    ) -> Option<(EdgeIo, Peer)> {
        let mut addr = peer;
        let mut prefix = Vec::new();
        if self.settings.proxy_protocol {
            match proxy::read_header(&mut stream, self.settings.header_timeout).await {
                Ok(header) => {
                    let believed = self.proxies.is_empty() || self.proxies.trusts(peer.ip());
                    if let Some(client) = header.client.filter(|_| believed) {
                        addr = client;
                    }
                    prefix = header.rest;
                }
                Err(error) => {
                    self.refuse("proxy_protocol", || {
                        tracing::warn!(%peer, %error, "Closing a connection without a valid PROXY header (edge.proxy_protocol is on).");
                    });
                    return None;
                }
            }
        }
        let over_address = self.attribute(&mut ticket, addr.ip());
        // Shared only where broadcasts may write to it: the lock costs every read and write.
        let (io, progress, wire) = if self.settings.direct_writes {
            let wire = Arc::new(Wire::shared(stream));
            (Io::Wire(wire.clone()), Written::Wire(wire.clone()), Some(wire))
        } else {
            let progress = Arc::new(Progress::default());
            (Io::Alone { stream, progress: progress.clone() }, Written::Alone(progress), None)
        };
        let io = EdgeIo { io, prefix, ticket: Some(ticket) };
        let over_limit = over_node.or(over_address);
        Some((io, Peer { addr, over_limit, progress, wire }))
    }
}

/// A connection's place in the counts, given back when it is finally closed.
#[derive(Debug)]
pub(crate) struct Ticket {
    edge: Arc<Edge>,
    ip: Option<IpAddr>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.edge.open.fetch_sub(1, Ordering::AcqRel);
        self.edge.open_gauge.dec();
        if let Some(ip) = self.ip {
            release(&self.edge.per_ip, ip);
        }
    }
}

/// A WebSocket's place in its client address's count, given back when it ends.
#[derive(Debug)]
pub(crate) struct SocketHold {
    edge: Arc<Edge>,
    ip: IpAddr,
}

impl Drop for SocketHold {
    fn drop(&mut self) {
        release(&self.edge.sockets_per_ip, self.ip);
    }
}

/// One less for `ip`; an address with none left is forgotten, so the map holds only the
/// addresses connected now.
fn release(counts: &Mutex<HashMap<IpAddr, usize>>, ip: IpAddr) {
    let mut counts = counts.lock().expect("edge lock");
    if let Some(count) = counts.get_mut(&ip) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&ip);
        }
    }
}

/// An accepted TCP stream that records write progress and lingers when dropped.
#[derive(Debug)]
pub(crate) struct EdgeIo {
    io: Io,
    /// Bytes read with a PROXY header that belong to the request, served before the stream's.
    prefix: Vec<u8>,
    ticket: Option<Ticket>,
}

/// Where an accepted stream is.
#[derive(Debug)]
enum Io {
    /// The connection's alone, its writes counted in `progress`.
    Alone { stream: TcpStream, progress: Arc<Progress> },
    /// In a wire broadcasts may write to.
    Wire(Arc<Wire>),
    /// Taken when the connection was dropped.
    Gone,
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
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            return Poll::Ready(Ok(()));
        }
        match &mut self.io {
            Io::Alone { stream, .. } => Pin::new(stream).poll_read(cx, buf),
            Io::Wire(wire) => wire.poll_read(cx, buf),
            Io::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Alone { stream, progress } => progress.count(Pin::new(stream).poll_write(cx, buf)),
            Io::Wire(wire) => wire.poll_write(cx, buf),
            Io::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Alone { stream, progress } => {
                progress.count(Pin::new(stream).poll_write_vectored(cx, bufs))
            }
            Io::Wire(wire) => {
                // Whole buffers only on a shared stream: one at a time.
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
                wire.poll_write(cx, first)
            }
            Io::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        matches!(&self.io, Io::Alone { stream, .. } if stream.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Alone { stream, .. } => Pin::new(stream).poll_flush(cx),
            Io::Wire(wire) => wire.poll_flush(cx),
            Io::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Alone { stream, .. } => Pin::new(stream).poll_shutdown(cx),
            Io::Wire(wire) => wire.poll_shutdown(cx),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for EdgeIo {
    fn drop(&mut self) {
        // Taken out of the wire first, so that no broadcast writes to the descriptor once it
        // may belong to another connection.
        let (stream, written) = match std::mem::replace(&mut self.io, Io::Gone) {
            Io::Alone { stream, progress } => (Some(stream), progress.written()),
            Io::Wire(wire) => (wire.take(), wire.written()),
            Io::Gone => (None, 0),
        };
        let (Some(stream), Some(ticket)) = (stream, self.ticket.take()) else {
            return;
        };
        let edge = ticket.edge.clone();
        let linger = edge.settings.linger;
        // Lingering is for an answer the client may not have read yet; a connection that was
        // never answered (a slow request head) closes at once and frees its descriptor.
        if linger.is_zero() || written == 0 {
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
