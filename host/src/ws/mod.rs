//! The WebSocket endpoint `/app/{key}`: one task per connection.

mod connection;
mod resume;
mod session;

use std::{collections::HashMap, sync::Arc};

use axum::{
    Extension,
    extract::{ConnectInfo, Path, Query, State, WebSocketUpgrade},
    response::Response,
};

use futures_util::FutureExt as _;
use tracing::Instrument as _;

use crate::{ctx::Ctx, edge::Peer};

/// Read buffer per connection, held for the connection's life (tungstenite keeps it), so paid by
/// every idle connection: small, since most Pusher messages from clients fit in it (a ping is 35
/// bytes, a private subscription ~200); a larger message grows it as it arrives
/// (tungstenite's default is 128 KiB).
const READ_BUFFER_BYTES: usize = 256;
/// Bytes written per flush to the socket.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// Upgrade to a WebSocket; every check (key, protocol, quota) answers on the socket itself with
/// a Pusher error code, which is what clients understand.
pub(crate) async fn upgrade(
    ws: WebSocketUpgrade,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    State(ctx): State<Arc<Ctx>>,
    addr: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    peer: Option<Extension<Peer>>,
) -> Response {
    let ip = addr.map(|Extension(ConnectInfo(addr))| addr.ip());
    let mut peer = peer.map(|Extension(peer)| peer);
    // The address's WebSocket cap (its plain HTTP connections are not counted in it); held
    // until the connection ends. One over it is upgraded to be told 4100.
    let hold = match ip {
        Some(ip) => ctx.edge.hold_socket(ip),
        None => Ok(None),
    };
    let hold = match (hold, peer.as_mut()) {
        (Ok(hold), _) => hold,
        (Err(over), Some(peer)) => {
            peer.over_limit.get_or_insert(over);
            None
        }
        (Err(_), None) => None,
    };
    let max = ctx.settings.ws_max_message_bytes;
    let tracker = ctx.tracker.clone();
    // Every log line about this connection says which it is (the fields left empty here are
    // filled in once known).
    let span = tracing::info_span!(
        "connection",
        key = %key,
        app = tracing::field::Empty,
        socket_id = tracing::field::Empty,
        ip = tracing::field::Empty,
    );
    if let Some(ip) = ip {
        span.record("ip", tracing::field::display(ip));
    }
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WRITE_BUFFER_BYTES * 64)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade({
            // One box for everything the connection starts with: axum keeps the callback's
            // space in the connection's task for as long as it lives (232 bytes unboxed).
            let start = Box::new((ctx, key, query, ip, peer, span, hold, tracker));
            move |socket| {
                let (ctx, key, query, ip, peer, span, hold, tracker) = *start;
                // `map`, not an async block awaiting `run`: that would hold the future twice.
                let run = connection::run(socket, ctx, key, query, ip, peer).instrument(span);
                tracker.track_future(run.map(move |()| drop(hold)))
            }
        })
}
