//! One connection's task: the handshake checks, then a loop that reads client messages, writes
//! queued frames, pings after silence, and closes when asked.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc, task::Poll, time::Duration};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::time::{Instant, Sleep};

use super::session::Session;
use crate::{
    apps::{App, Lookup},
    config::Settings,
    ctx::Ctx,
    edge::{OverLimit, Peer},
    feed::{Entry, Kind},
    hub::{Closer, Conn, Next, Outbound},
    metrics::Metrics,
    protocol::{
        codes,
        frames::{self, Dialect},
    },
};

/// Frames written per flush at most, so one busy connection does not starve the others.
const WRITE_BATCH: usize = 64;
/// How long a closing connection waits at most for its last frames (the error and the close
/// frame) to be taken: a client that stopped reading must not hold the task for long.
const CLOSE_PATIENCE: Duration = Duration::from_secs(5);

/// Send `pusher:error` with `code` and close the socket with the same code. The client may be
/// the reason for closing (too slow to read), so it gets `patience` to take the frames; then the
/// socket is dropped regardless.
async fn refuse(
    socket: &mut WebSocket,
    dialect: Dialect,
    patience: std::time::Duration,
    code: u16,
    reason: &str,
) {
    let frames = async {
        let _ =
            socket.feed(Message::Text(render(dialect, frames::error(code, reason).into()))).await;
        close(socket, code, reason).await;
    };
    let _ = tokio::time::timeout(patience, frames).await;
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    // Close reasons must fit a control frame (125 bytes, 2 of them the code).
    let mut reason = reason.to_string();
    while reason.len() > 123 {
        reason.pop();
    }
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    let _ = socket.close().await;
}

fn close_reason(code: u16) -> &'static str {
    match code {
        codes::OVER_CAPACITY => "Over capacity: the connection could not keep up with its messages",
        codes::RECONNECT => "Server shutting down; reconnect",
        codes::PONG_NOT_RECEIVED => "Pong reply not received",
        codes::RESUME => "Events were missed; reconnect and resume",
        codes::UNAUTHORIZED => "Connection not authorized",
        codes::APP_DISABLED => "App is disabled",
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
    ctx: Arc<Ctx>,
    key: String,
    query: HashMap<String, String>,
    ip: Option<std::net::IpAddr>,
    over_limit: Option<OverLimit>,
) -> Result<Arc<App>, Refused> {
    let (ctx, key, query) = (&*ctx, key.as_str(), &query);
    if let Some(over) = over_limit {
        return Err(Refused::new(codes::OVER_CAPACITY, over.message()));
    }
    if ctx.readiness.over_memory() {
        Metrics::count(&ctx.metrics.edge_refused, "reason", "memory");
        let reason = "Node is over its memory threshold; connect to another";
        return Err(Refused::new(codes::OVER_CAPACITY, reason));
    }
    let lookup = match ip {
        Some(ip) => crate::apps::CLIENT.scope(ip, ctx.apps.by_key(key)).await,
        None => ctx.apps.by_key(key).await,
    };
    let app = match lookup {
        Lookup::Found(app) => app,
        Lookup::Unknown => {
            let reason = format!("App key {key} does not exist");
            return Err(Refused::new(codes::APP_NOT_FOUND, reason));
        }
        // 4100, not 4001: pusher-js gives up on 4000-4099, and this passes with the outage.
        Lookup::Unavailable => {
            let reason = format!("App key {key} could not be looked up; retry later");
            return Err(Refused::new(codes::OVER_CAPACITY, reason));
        }
        Lookup::Refused => {
            let reason = "Too many connections for app keys that do not exist from this address; retry later";
            return Err(Refused::new(codes::OVER_CAPACITY, reason));
        }
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
///
/// Not an `async fn`: the future is held for the connection's whole life, and an `async fn`
/// keeps its arguments besides the locals they become (the socket twice). The socket is not
/// split either: reading and writing never overlap here, and a split puts it behind a shared
/// lock (one more allocation, and a lock taken for every read and write). The rare, deep
/// states (the handshake's lookups, a client message's handling, a blocked write, the close)
/// run boxed, so that the future is only as large as an idle connection's state (8 KB before,
/// most of an idle connection's memory).
pub(super) fn run(
    mut socket: WebSocket,
    ctx: Arc<Ctx>,
    key: String,
    query: HashMap<String, String>,
    ip: Option<std::net::IpAddr>,
    peer: Option<Peer>,
) -> impl Future<Output = ()> + Send {
    let patience = ctx.settings.pong_timeout.min(CLOSE_PATIENCE);
    let dialect = Dialect::of(query.get("protocol").map(String::as_str));
    // Protocol 2 sends a client event back to its sender too, unless the connection asks not
    // to (`echo_messages=false`), as Sockudo does; protocol 7 never does (Pusher's rule).
    let echo = dialect == Dialect::V2
        && !matches!(query.get("echo_messages").map(String::as_str), Some("false" | "0"));
    // Made here, so that the key and query live in its box, not in the connection's future.
    let over_limit = peer.as_ref().and_then(|p| p.over_limit);
    let admission = Box::pin(admit(ctx.clone(), key, query, ip, over_limit));
    async move {
        let app = match admission.await {
            Ok(app) => app,
            Err(Refused(code, reason)) => {
                ctx.metrics.connection_errors.inc();
                return Box::pin(refuse(&mut socket, dialect, patience, code, &reason)).await;
            }
        };

        let (conn, mut outbound, closer) = open(&ctx, &app, dialect, peer.as_ref());
        // Boxed: most of its 360 bytes are maps an idle connection leaves empty, and in the box
        // they do not push the connection's future into a larger allocation size class.
        let mut session = Box::new(Session::new(ctx.clone(), app.clone(), conn.clone(), echo));
        let shutting_down = ctx.shutdown.cancelled();
        let app_ended = app_ended(&ctx, &app.id);
        // Apps that require sign-in give a connection this long to do it (a timer only there).
        let signin_deadline = app
            .enable_user_authentication
            .then(|| Box::pin(tokio::time::sleep(ctx.settings.user_authentication_timeout)));
        let timer = tokio::time::sleep(ctx.settings.activity_timeout);
        tokio::pin!(shutting_down, app_ended, timer);
        let mut stops = Stops::new(shutting_down, app_ended, signin_deadline);
        let mut keepalive = Keepalive::new(timer, &ctx.settings);
        // The socket's reads, the timers and the stops are polled with this waker, so that
        // they mark the task stirred when they wake it, and only then are they polled again: a
        // task woken for a frame writes it and sleeps (see `Closer`).
        let rare = outbound.rare_waker();
        let mut frames_first = false;

        let end = loop {
            let next = outbound.next(frames_first).await;
            frames_first = matches!(next, Next::Stirred);
            match next {
                Next::Close(code) => break End::Close(code),
                Next::Frame { frame, more } => {
                    let batch = Batch { first: frame, more };
                    // Written at once almost always; only a blocked write takes the boxed
                    // wait, so that its state is not part of every connection's future.
                    let ended = {
                        let write =
                            write_batch(&mut socket, dialect, batch, &mut outbound, &ctx, &closer);
                        tokio::pin!(write);
                        match write.as_mut().now_or_never() {
                            Some(written) => written.is_err().then_some(End::Gone),
                            None => {
                                let watch = Watch {
                                    stops: &mut stops,
                                    keepalive: &mut keepalive,
                                    signed_in: session.signed_in(),
                                };
                                let on = (&conn, &*closer, peer.as_ref(), &*ctx);
                                Box::pin(wait_for(write, watch, on)).await
                            }
                        }
                    };
                    if let Some(end) = ended {
                        break end;
                    }
                    outbound.written();
                }
                Next::Flush => {
                    // What a direct write left (rare): boxed whole.
                    let watch = Watch {
                        stops: &mut stops,
                        keepalive: &mut keepalive,
                        signed_in: session.signed_in(),
                    };
                    let on = (&conn, &*closer, peer.as_ref(), &*ctx);
                    let flush = socket.flush();
                    tokio::pin!(flush);
                    if let Some(end) = Box::pin(wait_for(flush, watch, on)).await {
                        break end;
                    }
                    outbound.written();
                }
                Next::Stirred => {
                    let message = {
                        let mut cx = std::task::Context::from_waker(&rare);
                        if let Poll::Ready(end) = stops.poll_any(&mut cx, session.signed_in()) {
                            break end;
                        }
                        if keepalive.poll_due(&mut cx).is_ready() {
                            if let Some(code) = keepalive.on_timer(&conn) {
                                break End::Close(code);
                            }
                            // Polled again next turn, to wait on the re-armed timer.
                            closer.restir();
                        }
                        socket.poll_next_unpin(&mut cx)
                    };
                    if let Poll::Ready(message) = message {
                        if matches!(message, None | Some(Ok(Message::Close(_)) | Err(_))) {
                            // The connection ends, with a close frame (tungstenite's answer
                            // or ours): no broadcast writes after it.
                            outbound.stop_writing();
                        }
                        keepalive.heard();
                        // The socket may hold more messages than its readiness says: look again.
                        closer.restir();
                        let read =
                            read(message, &mut session, &mut socket, dialect, patience, &ctx);
                        if let Some(end) = Box::pin(read).await {
                            break end;
                        }
                    }
                }
            }
        };

        // Nothing is written after the close frame, not even by a broadcast.
        outbound.stop_writing();
        if let End::Close(code) = end {
            Box::pin(close_with(&mut socket, dialect, patience, code, &ctx)).await;
        }
        Box::pin(session.end()).await;
        ctx.feed.tap.record(&app.id, || closed(&conn, end));
        ctx.adapter.release(&app.id);
        ctx.metrics.connected.dec();
        ctx.metrics.disconnections.inc();
        tracing::debug!("Disconnected.");
    }
}

/// The server ends the connection with `code` (counted when the client was too slow).
async fn close_with(
    socket: &mut WebSocket,
    dialect: Dialect,
    patience: Duration,
    code: u16,
    ctx: &Ctx,
) {
    if code == codes::OVER_CAPACITY {
        ctx.metrics.slow_consumer_disconnections.inc();
    }
    tracing::debug!(code, reason = close_reason(code), "Closing.");
    refuse(socket, dialect, patience, code, close_reason(code)).await;
}

/// What ends a connection from outside its socket, besides a close its closer asks for: the
/// node shutting down, its app disabled, the sign-in deadline of an app that requires sign-in.
struct Stops<'a> {
    shutting_down: Pin<&'a mut (dyn Future<Output = ()> + Send + 'a)>,
    app_ended: Pin<&'a mut (dyn Future<Output = ()> + Send + 'a)>,
    /// The sign-in deadline, for apps that require sign-in.
    signin_deadline: Option<Pin<Box<Sleep>>>,
}

impl<'a> Stops<'a> {
    fn new(
        shutting_down: Pin<&'a mut (dyn Future<Output = ()> + Send + 'a)>,
        app_ended: Pin<&'a mut (dyn Future<Output = ()> + Send + 'a)>,
        signin_deadline: Option<Pin<Box<Sleep>>>,
    ) -> Self {
        Self { shutting_down, app_ended, signin_deadline }
    }

    /// Ready with the end when one of them came, in that order of precedence.
    fn poll_any(&mut self, cx: &mut std::task::Context<'_>, signed_in: bool) -> Poll<End> {
        if self.shutting_down.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Close(codes::RECONNECT));
        }
        if self.app_ended.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Close(codes::APP_DISABLED));
        }
        if !signed_in
            && let Some(deadline) = self.signin_deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(End::Close(codes::UNAUTHORIZED));
        }
        Poll::Pending
    }

    /// Resolves with the end when one of them comes.
    async fn any(&mut self, signed_in: bool) -> End {
        std::future::poll_fn(|cx| self.poll_any(cx, signed_in)).await
    }
}

/// Finish `write` while the connection's timers and stops still run (see [`finish_write`]).
/// `None` once written.
async fn wait_for(
    write: Pin<&mut impl Future<Output = Result<(), axum::Error>>>,
    watch: Watch<'_, '_>,
    (conn, closer, peer, ctx): (&Conn, &Closer, Option<&Peer>, &Ctx),
) -> Option<End> {
    let ended = finish_write(write, watch, conn, closer, peer, ctx).await;
    // The timers and stops were polled with the task's own waker.
    closer.restir();
    ended
}

/// What still runs while a write is blocked.
struct Watch<'w, 'a> {
    stops: &'w mut Stops<'a>,
    keepalive: &'w mut Keepalive<'a>,
    signed_in: bool,
}

/// A write the client does not take at once (it stopped reading). While it is blocked, a close
/// request, the keepalive and sign-in timers still run, and the connection ends after a whole
/// `ws_write_timeout` in which the client accepted no byte. `None` once the write completes.
async fn finish_write(
    mut write: Pin<&mut impl Future<Output = Result<(), axum::Error>>>,
    watch: Watch<'_, '_>,
    conn: &Conn,
    closer: &Closer,
    peer: Option<&Peer>,
    ctx: &Ctx,
) -> Option<End> {
    let Watch { stops, keepalive, signed_in } = watch;
    let write_timeout = ctx.settings.ws_write_timeout;
    let mut seen = peer.map(|p| p.progress.written());
    let stall = tokio::time::sleep(write_timeout);
    tokio::pin!(stall);
    loop {
        tokio::select! {
            biased;
            code = closer.closing() => return Some(End::Close(code)),
            end = stops.any(signed_in) => return Some(end),
            () = keepalive.due() => {
                if let Some(code) = keepalive.on_timer(conn) {
                    return Some(End::Close(code));
                }
            }
            () = &mut stall => {
                let now = peer.map(|p| p.progress.written());
                if now == seen {
                    Metrics::count(&ctx.metrics.edge_timeouts, "kind", "write");
                    return Some(End::Close(codes::OVER_CAPACITY));
                }
                seen = now;
                stall.as_mut().reset(Instant::now() + write_timeout);
            }
            written = &mut write => return written.is_err().then_some(End::Gone),
        }
    }
}

/// Resolves when the app is disabled or deleted. Its token is taken after the lookup, so an
/// app disabled in between is caught by looking at the app once more.
fn app_ended(ctx: &Ctx, app_id: &str) -> impl Future<Output = ()> + Send + 'static {
    let ending = ctx.adapter.app_ending(app_id);
    let disabled = ctx.apps.known(app_id).is_some_and(|app| !app.enabled);
    async move {
        if !disabled {
            ending.cancelled_owned().await;
        }
    }
}

/// The live log's line for a connection that ended.
fn closed(conn: &Conn, end: End) -> Entry {
    let entry = Entry::new(Kind::Disconnected).socket(&conn.socket_id);
    match end {
        End::Gone => entry.detail("closed by the client (or its connection broke)"),
        End::Close(code) => {
            entry.detail(format!("closed by the server: {code} {}", close_reason(code)))
        }
    }
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
fn open(
    ctx: &Ctx,
    app: &App,
    dialect: Dialect,
    peer: Option<&Peer>,
) -> (Conn, Outbound, Arc<Closer>) {
    let socket_id = ctx.next_socket_id();
    let span = tracing::Span::current();
    span.record("app", app.id.as_str());
    span.record("socket_id", socket_id.as_str());
    // Broadcasts write to the socket directly only over plain TCP (TLS needs its session).
    let direct = peer.and_then(|p| p.wire.clone()).map(|wire| (wire, dialect));
    let (closer, outbound) = Closer::open_on(
        ctx.settings.ws_max_queued_messages,
        ctx.settings.ws_max_queued_bytes,
        ctx.settings.overload.watermark_percent,
        direct,
    );
    // Protocol-2 sockets get app events with their recovery position, as Sockudo sends them;
    // protocol-7 ones too when the app asks (pusher-js with the recovery helper). Not for an
    // app that turned recovery off: its sockets are told recovery is not enabled.
    let positions = ctx.recovery.is_some()
        && app.recovery.enabled
        && (dialect == Dialect::V2 || app.v1_recovery_fields);
    let conn = Conn::new(socket_id.as_str().into(), closer.clone()).with_positions(positions);
    ctx.metrics.connected.inc();
    ctx.metrics.new_connections.inc();
    tracing::debug!("Connected.");
    ctx.feed.tap.record(&app.id, || Entry::new(Kind::Connected).socket(&socket_id));
    let activity = ctx.settings.activity_timeout.as_secs();
    conn.send(&frames::connection_established(&socket_id, activity).into());
    (conn, outbound, closer)
}

/// What a client sent: handled (`None`), or the end of the connection (the client left, or
/// broke the protocol and its close was already written).
async fn read(
    message: Option<Result<Message, axum::Error>>,
    session: &mut Session,
    socket: &mut WebSocket,
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
                    let _ = socket.feed(Message::Text(render(dialect, error.into()))).await;
                }
                let _ = tokio::time::timeout(patience, close(socket, code, &text)).await;
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

/// A frame to write, and whether more were queued behind it.
struct Batch {
    first: Utf8Bytes,
    more: bool,
}

/// Write the batch's first frame and, if there are more, whatever else is queued (up to a
/// batch), then flush once.
async fn write_batch(
    socket: &mut WebSocket,
    dialect: Dialect,
    Batch { first, more }: Batch,
    outbound: &mut Outbound,
    ctx: &Ctx,
    closer: &Closer,
) -> Result<(), axum::Error> {
    let counted = |frame: &Utf8Bytes| if closer.counts(frame.len()) { frame.len() } else { 0 };
    let (mut bytes, mut taken) = (first.len(), counted(&first));
    socket.feed(Message::Text(render(dialect, first))).await?;
    let mut count = 1;
    while more && count < WRITE_BATCH {
        let Some(frame) = outbound.try_recv() else { break };
        bytes += frame.len();
        taken += counted(&frame);
        socket.feed(Message::Text(render(dialect, frame))).await?;
        count += 1;
    }
    // Frames count against the queue's byte bound until they are handed to the socket (a
    // blocked write keeps them counted; a failed one ends the connection).
    closer.dequeued(taken);
    ctx.metrics.ws_messages_sent.inc_by(count as u64);
    ctx.metrics.ws_bytes_sent.inc_by(bytes as u64);
    socket.flush().await
}

/// The keepalive: a ping after `activity_timeout` of silence, 4201 if no answer within
/// `pong_timeout`.
struct Keepalive<'a> {
    timer: Pin<&'a mut Sleep>,
    last_heard: Instant,
    ping_sent: Option<Instant>,
    activity_timeout: Duration,
    pong_timeout: Duration,
}

impl<'a> Keepalive<'a> {
    fn new(timer: Pin<&'a mut Sleep>, settings: &Settings) -> Self {
        Self {
            timer,
            last_heard: Instant::now(),
            ping_sent: None,
            activity_timeout: settings.activity_timeout,
            pong_timeout: settings.pong_timeout,
        }
    }

    /// Resolves when the timer fires (then call [`Keepalive::on_timer`]).
    async fn due(&mut self) {
        (&mut self.timer).await;
    }

    /// Ready when the timer fired (then call [`Keepalive::on_timer`]).
    fn poll_due(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.timer.as_mut().poll(cx)
    }

    fn heard(&mut self) {
        self.last_heard = Instant::now();
        self.ping_sent = None;
    }

    /// The timer fired: ping, re-arm, or the close code if a ping went unanswered.
    fn on_timer(&mut self, conn: &Conn) -> Option<u16> {
        let now = Instant::now();
        match self.ping_sent {
            Some(_) => Some(codes::PONG_NOT_RECEIVED),
            None if now.duration_since(self.last_heard) >= self.activity_timeout => {
                conn.send(&frames::ping().into());
                self.ping_sent = Some(now);
                self.timer.as_mut().reset(now + self.pong_timeout);
                None
            }
            None => {
                self.timer.as_mut().reset(self.last_heard + self.activity_timeout);
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
