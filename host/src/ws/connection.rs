//! One connection's task: the handshake checks, then a loop that reads client messages, writes
//! queued frames, pings after silence, and closes when asked.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt as _, StreamExt as _, stream::SplitSink};
use tokio::{
    sync::mpsc,
    time::{Instant, Sleep},
};

use super::session::Session;
use crate::{
    apps::App,
    edge::Peer,
    hub::{Closer, Conn},
    metrics::Metrics,
    protocol::{
        codes,
        frames::{self, Dialect},
    },
    server::Ctx,
};

/// Frames written per flush at most, so one busy connection does not starve the others.
const WRITE_BATCH: usize = 64;
/// How long a closing connection waits at most for its last frames (the error and the close
/// frame) to be taken: a client that stopped reading must not hold the task for long.
const CLOSE_PATIENCE: Duration = Duration::from_secs(5);

type Sink = SplitSink<WebSocket, Message>;

/// Send `pusher:error` with `code` and close the socket with the same code. The client may be
/// the reason for closing (too slow to read), so it gets `patience` to take the frames; then the
/// socket is dropped regardless.
async fn refuse(
    sink: &mut Sink,
    dialect: Dialect,
    patience: std::time::Duration,
    code: u16,
    reason: &str,
) {
    let frames = async {
        let _ = sink.feed(Message::Text(render(dialect, frames::error(code, reason).into()))).await;
        close(sink, code, reason).await;
    };
    let _ = tokio::time::timeout(patience, frames).await;
}

async fn close(sink: &mut Sink, code: u16, reason: &str) {
    // Close reasons must fit a control frame (125 bytes, 2 of them the code).
    let mut reason = reason.to_string();
    while reason.len() > 123 {
        reason.pop();
    }
    let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    let _ = sink.close().await;
}

fn close_reason(code: u16) -> &'static str {
    match code {
        codes::OVER_CAPACITY => "Over capacity: the connection could not keep up with its messages",
        codes::RECONNECT => "Server shutting down; reconnect",
        codes::PONG_NOT_RECEIVED => "Pong reply not received",
        codes::UNAUTHORIZED => "Connection not authorized",
        _ => "Closed by the server",
    }
}

/// Why a connection is refused at the handshake: its close code and reason.
struct Refused(u16, String);

impl Refused {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Self(code, reason.into())
    }
}

/// The handshake's checks, in order: the edge's and the node's bounds, the app, the protocol,
/// the address's rate and the app's quota (which counts the connection when it admits it).
async fn admit(
    ctx: &Ctx,
    key: &str,
    query: &HashMap<String, String>,
    ip: Option<std::net::IpAddr>,
    peer: Option<&Peer>,
) -> Result<Arc<App>, Refused> {
    if let Some(over) = peer.and_then(|p| p.over_limit) {
        return Err(Refused::new(codes::OVER_CAPACITY, over.message()));
    }
    if ctx.readiness.over_memory() {
        Metrics::count(&ctx.metrics.edge_refused, "reason", "memory");
        let reason = "Node is over its memory threshold; connect to another";
        return Err(Refused::new(codes::OVER_CAPACITY, reason));
    }
    let Some(app) = ctx.apps.by_key(key).cloned() else {
        return Err(Refused::new(codes::APP_NOT_FOUND, format!("App key {key} does not exist")));
    };
    if !app.enabled {
        return Err(Refused::new(codes::APP_DISABLED, "App is disabled"));
    }
    match query.get("protocol").map(|p| p.parse::<u32>()) {
        None => return Err(Refused::new(codes::NO_PROTOCOL, "No protocol version supplied")),
        Some(Ok(2 | 5..=7)) => {}
        Some(_) => {
            return Err(Refused::new(codes::UNSUPPORTED_PROTOCOL, "Unsupported protocol version"));
        }
    }
    if let Some(ip) = ip {
        let key = format!("connections:{}:{ip}", app.id);
        if ctx.rate_limit(&key, 1, app.max_connections_per_ip_per_minute, 60_000).await.is_some() {
            let reason = "Too many new connections from this address; retry later";
            return Err(Refused::new(codes::OVER_CAPACITY, reason));
        }
    }
    if !ctx.adapter.admit(&app.id, app.max_connections) {
        return Err(Refused::new(codes::OVER_CAPACITY, "App is over its connection quota"));
    }
    Ok(app)
}

/// Run one connection to its end.
pub(super) async fn run(
    socket: WebSocket,
    ctx: Arc<Ctx>,
    key: String,
    query: HashMap<String, String>,
    ip: Option<std::net::IpAddr>,
    peer: Option<Peer>,
) {
    let (mut sink, mut stream) = socket.split();
    let patience = ctx.settings.pong_timeout.min(CLOSE_PATIENCE);
    let dialect = Dialect::of(query.get("protocol").map(String::as_str));
    let app = match admit(&ctx, &key, &query, ip, peer.as_ref()).await {
        Ok(app) => app,
        Err(Refused(code, reason)) => {
            ctx.metrics.connection_errors.inc();
            return refuse(&mut sink, dialect, patience, code, &reason).await;
        }
    };

    let (conn, mut outbound, closer) = open(&ctx, &app);
    let activity_timeout = ctx.settings.activity_timeout;
    let mut session = Session::new(ctx.clone(), app.clone(), conn.clone());

    let mut keepalive = Keepalive {
        last_heard: Instant::now(),
        ping_sent: None,
        activity_timeout,
        pong_timeout: ctx.settings.pong_timeout,
    };
    let write_timeout = ctx.settings.ws_write_timeout;
    let timer = tokio::time::sleep(activity_timeout);
    // The write deadline, re-armed whenever a write blocks.
    let stall = tokio::time::sleep(write_timeout);
    // Made once, not per loop turn: registering with a notifier on every message costs.
    let close_requested = closer.wait();
    let shutting_down = ctx.shutdown.cancelled();
    // Apps that require sign-in give a connection this long to do it.
    let signin_required = app.enable_user_authentication;
    let signin_deadline = tokio::time::sleep(ctx.settings.user_authentication_timeout);
    tokio::pin!(timer, stall, close_requested, shutting_down, signin_deadline);

    let end = loop {
        tokio::select! {
            biased;
            () = &mut close_requested => break End::Close(closer.requested().unwrap_or(codes::RECONNECT)),
            () = &mut shutting_down => break End::Close(codes::RECONNECT),
            () = &mut signin_deadline, if signin_required && !session.signed_in() => break End::Close(codes::UNAUTHORIZED),
            frame = outbound.recv() => {
                let Some(frame) = frame else { break End::Close(codes::RECONNECT) };
                // A client that stops reading blocks this write. While it is blocked, a close
                // request, the keepalive and sign-in timers and the write deadline still run;
                // they are armed only for a write that does not complete at once.
                let write = write_batch(&mut sink, dialect, frame, &mut outbound, &ctx, &closer);
                tokio::pin!(write);
                let at_once = tokio::select! {
                    biased;
                    written = &mut write => Some(written),
                    () = std::future::ready(()) => None,
                };
                let ended = match at_once {
                    Some(written) => written.is_err().then_some(End::Gone),
                    None => {
                        // The deadline passes only after a whole `write_timeout` in which the
                        // client accepted no byte.
                        let mut seen = peer.as_ref().map(|p| p.progress.written());
                        stall.as_mut().reset(Instant::now() + write_timeout);
                        loop {
                            tokio::select! {
                                biased;
                                () = &mut close_requested => break Some(End::Close(closer.requested().unwrap_or(codes::RECONNECT))),
                                () = &mut shutting_down => break Some(End::Close(codes::RECONNECT)),
                                () = &mut signin_deadline, if signin_required && !session.signed_in() => break Some(End::Close(codes::UNAUTHORIZED)),
                                () = &mut timer => {
                                    if let Some(code) = keepalive.on_timer(timer.as_mut(), &conn) {
                                        break Some(End::Close(code));
                                    }
                                }
                                () = &mut stall => {
                                    let now = peer.as_ref().map(|p| p.progress.written());
                                    if now == seen {
                                        Metrics::count(&ctx.metrics.edge_timeouts, "kind", "write");
                                        break Some(End::Close(codes::OVER_CAPACITY));
                                    }
                                    seen = now;
                                    stall.as_mut().reset(Instant::now() + write_timeout);
                                }
                                written = &mut write => break written.is_err().then_some(End::Gone),
                            }
                        }
                    }
                };
                if let Some(end) = ended {
                    break end;
                }
            }
            message = stream.next() => {
                keepalive.heard();
                if let Some(end) = read(message, &mut session, &mut sink, dialect, patience, &ctx).await {
                    break end;
                }
            }
            () = &mut timer => {
                if let Some(code) = keepalive.on_timer(timer.as_mut(), &conn) {
                    break End::Close(code);
                }
            }
        }
    };

    if let End::Close(code) = end {
        if code == codes::OVER_CAPACITY {
            ctx.metrics.slow_consumer_disconnections.inc();
        }
        let reason = close_reason(code);
        tracing::debug!(code, reason, "Closing.");
        refuse(&mut sink, dialect, patience, code, reason).await;
    }
    session.end().await;
    ctx.adapter.release(&app.id);
    ctx.metrics.connected.dec();
    ctx.metrics.disconnections.inc();
    tracing::debug!("Disconnected.");
}

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client left, or broke the protocol and was told so: nothing more to write.
    Gone,
    /// The server closes it with this code (and `pusher:error` before).
    Close(u16),
}

/// An admitted connection's socket id (recorded in its span), queue and closer, counted, with
/// `connection_established` enqueued first.
fn open(ctx: &Ctx, app: &App) -> (Conn, mpsc::Receiver<Utf8Bytes>, Arc<Closer>) {
    let socket_id = ctx.next_socket_id();
    let span = tracing::Span::current();
    span.record("app", app.id.as_str());
    span.record("socket_id", socket_id.as_str());
    let (queue, outbound) = mpsc::channel::<Utf8Bytes>(ctx.settings.ws_max_queued_messages);
    let closer = Arc::new(Closer::new(
        ctx.settings.ws_max_queued_messages,
        ctx.settings.ws_max_queued_bytes,
        ctx.settings.overload.watermark_percent,
    ));
    let conn = Conn::new(socket_id.as_str().into(), queue, closer.clone());
    ctx.metrics.connected.inc();
    ctx.metrics.new_connections.inc();
    tracing::debug!("Connected.");
    let activity = ctx.settings.activity_timeout.as_secs();
    conn.send(&frames::connection_established(&socket_id, activity).into());
    (conn, outbound, closer)
}

/// What a client sent: handled (`None`), or the end of the connection (the client left, or
/// broke the protocol and its close was already written).
async fn read(
    message: Option<Result<Message, axum::Error>>,
    session: &mut Session,
    sink: &mut Sink,
    dialect: Dialect,
    patience: Duration,
    ctx: &Ctx,
) -> Option<End> {
    match message {
        None | Some(Ok(Message::Close(_))) => Some(End::Gone),
        Some(Err(error)) => {
            tracing::debug!(%error, "Read failed.");
            if let Some((code, text)) = frame_error(error, ctx.settings.ws_max_message_bytes) {
                // The client sent something the protocol forbids: it gets the close code that
                // says what (RFC 6455 7.4.1), and the connection lingers so the code is read
                // rather than lost in a reset.
                Metrics::count(&ctx.metrics.ws_protocol_errors, "code", code_label(code));
                if code == 1009 {
                    let error = frames::error(codes::BAD_MESSAGE, &text);
                    let _ = sink.feed(Message::Text(render(dialect, error.into()))).await;
                }
                let _ = tokio::time::timeout(patience, close(sink, code, &text)).await;
            }
            Some(End::Gone)
        }
        Some(Ok(Message::Text(text))) => {
            ctx.metrics.ws_messages_received.inc();
            ctx.metrics.ws_bytes_received.inc_by(text.len() as u64);
            session.handle(text.as_str()).await;
            None
        }
        Some(Ok(Message::Binary(_))) => {
            ctx.metrics.ws_messages_received.inc();
            session.error(codes::BAD_MESSAGE, "Binary frames are not supported; send JSON text");
            None
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
    }
}

/// A frame in the connection's dialect (counted against the queue as it was enqueued).
fn render(dialect: Dialect, frame: Utf8Bytes) -> Utf8Bytes {
    match dialect.rename(frame.as_str()) {
        Some(renamed) => Utf8Bytes::from(renamed),
        None => frame,
    }
}

/// Write `first` and whatever else is queued (up to a batch), then flush once.
async fn write_batch(
    sink: &mut Sink,
    dialect: Dialect,
    first: Utf8Bytes,
    outbound: &mut mpsc::Receiver<Utf8Bytes>,
    ctx: &Ctx,
    closer: &Closer,
) -> Result<(), axum::Error> {
    let counted = |frame: &Utf8Bytes| if closer.counts(frame.len()) { frame.len() } else { 0 };
    let (mut bytes, mut taken) = (first.len(), counted(&first));
    sink.feed(Message::Text(render(dialect, first))).await?;
    let mut count = 1;
    while count < WRITE_BATCH {
        let Ok(frame) = outbound.try_recv() else { break };
        bytes += frame.len();
        taken += counted(&frame);
        sink.feed(Message::Text(render(dialect, frame))).await?;
        count += 1;
    }
    // Frames count against the queue's byte bound until they are handed to the socket (a
    // blocked write keeps them counted; a failed one ends the connection).
    closer.dequeued(taken);
    ctx.metrics.ws_messages_sent.inc_by(count as u64);
    ctx.metrics.ws_bytes_sent.inc_by(bytes as u64);
    sink.flush().await
}

/// The keepalive: a ping after `activity_timeout` of silence, 4201 if no answer within
/// `pong_timeout`.
struct Keepalive {
    last_heard: Instant,
    ping_sent: Option<Instant>,
    activity_timeout: Duration,
    pong_timeout: Duration,
}

impl Keepalive {
    fn heard(&mut self) {
        self.last_heard = Instant::now();
        self.ping_sent = None;
    }

    /// The timer fired: ping, re-arm, or the close code if a ping went unanswered.
    fn on_timer(&mut self, timer: std::pin::Pin<&mut Sleep>, conn: &Conn) -> Option<u16> {
        let now = Instant::now();
        match self.ping_sent {
            Some(_) => Some(codes::PONG_NOT_RECEIVED),
            None if now.duration_since(self.last_heard) >= self.activity_timeout => {
                conn.send(&frames::ping().into());
                self.ping_sent = Some(now);
                timer.reset(now + self.pong_timeout);
                None
            }
            None => {
                timer.reset(self.last_heard + self.activity_timeout);
                None
            }
        }
    }
}

/// The close code and reason for a frame the protocol forbids: 1009 too large, 1007 text that
/// is not UTF-8, 1002 any other protocol error; `None` for a connection that just broke.
fn frame_error(error: axum::Error, max: usize) -> Option<(u16, String)> {
    use tokio_tungstenite::tungstenite::{Error, error::CapacityError};
    match error.into_inner().downcast_ref::<Error>()? {
        Error::Capacity(CapacityError::MessageTooLong { .. }) => {
            Some((1009, format!("Message larger than the limit of {max} bytes")))
        }
        Error::Capacity(_) => Some((1009, "Message too large".into())),
        Error::Utf8(_) => Some((1007, "Text frame is not valid UTF-8".into())),
        Error::Protocol(error) => Some((1002, format!("Protocol error: {error}"))),
        _ => None,
    }
}

fn code_label(code: u16) -> &'static str {
    match code {
        1009 => "1009",
        1007 => "1007",
        _ => "1002",
    }
}
