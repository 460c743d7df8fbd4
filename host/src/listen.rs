//! The accept loop every listener runs (the main port, the TLS redirect, the metrics and admin
//! listeners): each connection counted and bounded by an edge, TLS when asked, then its HTTP
//! exchanges served by a router until it closes or the listener stops.

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::{Request, body::Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;

use crate::{
    edge::{Edge, Peer},
    metrics::Metrics,
    telemetry::LogLimiter,
};

/// How long a connection over a limit has to send its request head.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);
/// The pause after a failed accept (out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accept connections on `listener` until `stop` is cancelled, serving each with `app`
/// through `edge`'s limits and timeouts (and TLS, with `tls`); then let open HTTP exchanges
/// finish (up to `grace`). Upgraded WebSockets are not waited for here: their tasks are
/// tracked apart.
pub(crate) async fn serve(
    metrics: &Arc<Metrics>,
    grace: Duration,
    edge: Arc<Edge>,
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    tls: Option<TlsAcceptor>,
) {
    let settings = edge.settings().clone();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(settings.header_timeout);
    // A connection over a limit is only told so: it gets a short deadline for its request, and
    // the refusal closes it (`Connection: close`; keep-alive stays on so that a WebSocket
    // upgrade can still carry its 4100).
    let mut refusing = http.clone();
    refusing.header_read_timeout(settings.header_timeout.min(REFUSAL_DEADLINE));
    let exchanges = TaskTracker::new();
    let accept_errors = LogLimiter::default();
    loop {
        let (stream, addr) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors: wait a little rather than spin on accept.
                    metrics.accept_errors.inc();
                    if accept_errors.allow() {
                        tracing::error!(%error, "Accepting a connection failed.");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Counted now, before the task runs, so the node's cap holds however fast they come.
        let ticket = edge.open();
        let (metrics, edge, app, stop, tls) =
            (metrics.clone(), edge.clone(), app.clone(), stop.clone(), tls.clone());
        let builders = (http.clone(), refusing.clone());
        exchanges.spawn(async move {
            let Some((io, peer)) = edge.accept(stream, addr, ticket).await else { return };
            if peer.over_limit.is_some() && edge.closes_over_limit() {
                return;
            }
            let builder = if peer.over_limit.is_some() { builders.1 } else { builders.0 };
            let client = peer.addr;
            let mut exchange = Exchange { metrics, edge, builder, app, peer, stop };
            let Some(acceptor) = tls else { return exchange.run(io).await };
            // TLS needs its session for every byte: no broadcast writes the socket directly.
            exchange.peer.wire = None;
            if !exchange.edge.allow_handshake(client.ip()) {
                return;
            }
            // The handshake is part of the request head's time: a client that opens a socket
            // and says nothing is dropped at the same deadline.
            match tokio::time::timeout(settings.header_timeout, acceptor.accept(io)).await {
                Ok(Ok(stream)) => exchange.run(stream).await,
                Ok(Err(error)) => {
                    exchange.metrics.tls_handshake_failures.inc();
                    tracing::debug!(%error, %client, "A TLS handshake failed.");
                }
                Err(_) => {
                    exchange.metrics.tls_handshake_failures.inc();
                    Metrics::count(&exchange.metrics.edge_timeouts, "kind", "header");
                }
            }
        });
    }
    drop(listener);
    exchanges.close();
    if tokio::time::timeout(grace, exchanges.wait()).await.is_err() {
        tracing::warn!("HTTP exchanges still open after the grace period; stopping anyway.");
    }
}

/// One accepted connection's HTTP exchanges (and a WebSocket upgrade), over any stream.
struct Exchange {
    metrics: Arc<Metrics>,
    edge: Arc<Edge>,
    builder: hyper::server::conn::http1::Builder,
    app: Router,
    peer: Peer,
    stop: CancellationToken,
}

impl Exchange {
    async fn run<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Self { metrics, edge, builder, app, peer, stop } = self;
        let addr = peer.addr;
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            // Each request's client: behind a trusted proxy, the one its headers name.
            let client = edge.client(peer.addr, request.headers());
            request.extensions_mut().insert(ConnectInfo(client));
            request.extensions_mut().insert(peer.clone());
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let mut connection = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
        // At shutdown an idle connection closes, and a busy one after its response.
        let served = tokio::select! {
            served = &mut connection => served,
            () = stop.cancelled() => {
                Pin::new(&mut connection).graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = served {
            if error.is_timeout() {
                Metrics::count(&metrics.edge_timeouts, "kind", "header");
            }
            tracing::debug!(%error, %addr, "An HTTP connection ended with an error.");
        }
    }
}
