//! The server: the shared context, the router, and [`run`].

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::extract::ConnectInfo;
use axum::{
    Router,
    http::header,
    response::IntoResponse,
    routing::{get, post},
};
use hyper::{Request, body::Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;

use crate::{
    adapter::Adapter,
    apps::Apps,
    beside,
    cluster::Cluster,
    cluster_events,
    config::Settings,
    edge::{Edge, Peer},
    http_api,
    hub::Hub,
    metrics::Metrics,
    plugins::{Drivers, RateDecision},
    readiness::Readiness,
    telemetry::LogLimiter,
    tls::{self, Certificates},
    webhooks::{self, Webhooks},
    ws,
};

/// How long a connection over a limit has to send its request head.
const REFUSAL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);
/// The pause after a failed accept (out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Everything request handlers and connection tasks share.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The validated settings.
    pub settings: Settings,
    /// The apps.
    pub apps: Apps,
    /// Channel state and delivery.
    pub adapter: Adapter,
    /// The plugin drivers.
    pub drivers: Drivers,
    /// Metrics.
    pub metrics: Metrics,
    /// Cancelled when the server shuts down; connection tasks close with 4200.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Webhook batching and delayed `channel_vacated`.
    pub webhooks: Webhooks,
    /// The listener's counts and limits.
    pub edge: Arc<Edge>,
    /// Whether this node wants new traffic.
    pub readiness: Readiness,
    /// The debug console's live log and figures.
    pub console: crate::console::Console,
    socket_prefix: u32,
    socket_counter: AtomicU64,
}

impl Ctx {
    /// A context over `settings` and `drivers`.
    pub(crate) fn new(settings: Settings, drivers: Drivers) -> Self {
        let metrics = Metrics::new(&settings.metrics_prefix, drivers.counters.clone());
        let cluster = Cluster::new(
            drivers.transport.clone(),
            settings.cluster.clone(),
            metrics.bus_publish_refused.clone(),
        );
        let edge = Edge::new(&settings.edge, &metrics);
        metrics.ready.set(1);
        Self {
            console: crate::console::Console::new(cluster.node_id, &metrics),
            edge,
            readiness: Readiness::new(settings.max_memory_percent, settings.max_memory_bytes),
            apps: match &drivers.app_manager {
                None => Apps::new(settings.apps.clone()),
                Some(manager) => {
                    Apps::managed(manager.clone(), settings.app_records.clone(), &metrics)
                }
            },
            adapter: Adapter::new(Arc::new(Hub::new(metrics.deltas.clone())), cluster),
            settings,
            drivers,
            metrics,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            webhooks: Webhooks::default(),
            // A random first part makes ids unique across nodes; the counter, within this one.
            socket_prefix: rand::random::<u32>() % 1_000_000_000 + 1,
            socket_counter: AtomicU64::new(rand::random::<u32>().into()),
        }
    }

    /// Consume `cost` tokens of `key` against `limit` per `window_ms` through the rate-limiter
    /// driver: `None` if allowed (or unlimited, or limits are off), the decision if refused. A
    /// driver that fails lets the request through (`rate_limiter.fail_open`, the default) or
    /// refuses it for a second, with a log line and a metric either way.
    pub(crate) async fn rate_limit(
        &self,
        key: &str,
        cost: u32,
        limit: u32,
        window_ms: u64,
    ) -> Option<RateDecision> {
        if limit == 0 || !self.settings.rate_limiter_enabled {
            return None;
        }
        match self.drivers.rate_limiter.check(key, cost, limit, window_ms).await {
            Ok(decision) if decision.allowed => None,
            Ok(decision) => {
                self.metrics.rate_limited.inc();
                Some(decision)
            }
            Err(error) if self.settings.rate_limiter_fail_open => {
                self.metrics.rate_limiter_errors.inc();
                tracing::warn!(%error, key, "The rate limiter failed; letting the request through.");
                None
            }
            Err(error) => {
                self.metrics.rate_limiter_errors.inc();
                self.metrics.rate_limited.inc();
                tracing::warn!(%error, key, "The rate limiter failed; refusing the request (fail_open = false).");
                Some(RateDecision { allowed: false, limit, remaining: 0, reset_after_ms: 1000 })
            }
        }
    }

    /// A new socket id, `<digits>.<digits>`, unique on this node.
    pub(crate) fn next_socket_id(&self) -> String {
        format!("{}.{}", self.socket_prefix, self.socket_counter.fetch_add(1, Ordering::Relaxed))
    }
}

/// The router for WebSocket connections, the HTTP API and health checks.
pub(crate) fn router(ctx: Arc<Ctx>) -> Router {
    let api = Router::new()
        .route("/apps/{app_id}/events", post(http_api::events::trigger))
        .route("/apps/{app_id}/batch_events", post(http_api::events::batch))
        .route("/apps/{app_id}/channels", get(http_api::channels::list))
        .route("/apps/{app_id}/channels/{channel}", get(http_api::channels::show))
        .route("/apps/{app_id}/channels/{channel}/users", get(http_api::channels::users))
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            post(http_api::users::terminate),
        )
        .route("/up", get(http_api::health::up))
        .route("/ready", get(http_api::health::ready))
        .route("/up/{app_id}", get(http_api::health::up_app))
        .fallback(http_api::not_found)
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), http_api::count_requests))
        .layer(axum::middleware::from_fn(http_api::with_client))
        .layer(axum::middleware::from_fn(http_api::refuse_over_limit))
        .layer(axum::middleware::from_fn(http_api::in_span));
    Router::new().route("/app/{key}", get(ws::upgrade)).merge(api).with_state(ctx)
}

/// How often the drivers are asked for their backlog and node count.
const BACKEND_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Ask the drivers, every few seconds, what only they can tell: the webhook jobs waiting in
/// the queue, and how many nodes the broker counts. A broker that counts more nodes than the
/// cluster has means nodes this one cannot hear (another cluster secret, another build): said
/// once per change in the log, and in the metrics.
async fn watch_backends(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(BACKEND_POLL);
    let mut warned = None;
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ask = BACKEND_POLL;
        if let Ok(Ok(pending)) =
            tokio::time::timeout(ask, ctx.drivers.queue.pending(webhooks::QUEUE)).await
        {
            ctx.metrics.webhooks_pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
        }
        let Ok(Ok(Some(seen))) =
            tokio::time::timeout(ask, ctx.drivers.transport.node_count_hint()).await
        else {
            continue;
        };
        ctx.metrics.transport_nodes.set(i64::try_from(seen).unwrap_or(i64::MAX));
        let members = u64::try_from(ctx.adapter.cluster().peers().len() + 1).unwrap_or(u64::MAX);
        let unheard = (seen > members).then_some((seen, members));
        if unheard != warned {
            if let Some((seen, members)) = unheard {
                tracing::warn!(
                    seen,
                    members,
                    "The broker counts more nodes than this node hears: check that every node has the same cluster secret and build."
                );
            }
            warned = unheard;
        }
    }
}

/// Keep readiness up to date with the resident size, when a memory threshold is set.
async fn watch_memory(ctx: Arc<Ctx>) {
    if let Some(threshold) = ctx.readiness.threshold() {
        tracing::info!(threshold_mib = threshold >> 20, "Not ready above this resident size.");
    }
    ctx.readiness
        .watch(ctx.shutdown.clone(), |over, resident| {
            ctx.metrics.ready.set(i64::from(!over));
            if over {
                tracing::warn!(
                    resident_mib = resident >> 20,
                    "Over the memory threshold: not ready, refusing new connections."
                );
            } else {
                tracing::info!(
                    resident_mib = resident >> 20,
                    "Back under the memory threshold: ready."
                );
            }
        })
        .await;
}

/// Accept connections on `listener` until `stop` is cancelled, serving each with `app`
/// through `edge`'s limits and timeouts (and TLS, with `tls`); then let open HTTP exchanges
/// finish (up to `grace`). Upgraded WebSockets are not waited for here: their tasks are
/// tracked apart.
pub(crate) async fn serve(
    ctx: &Arc<Ctx>,
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
                    ctx.metrics.accept_errors.inc();
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
        let (ctx, edge, app, stop, tls) =
            (ctx.clone(), edge.clone(), app.clone(), stop.clone(), tls.clone());
        let builders = (http.clone(), refusing.clone());
        exchanges.spawn(async move {
            let Some((io, peer)) = edge.accept(stream, addr, ticket).await else { return };
            if peer.over_limit.is_some() && edge.closes_over_limit() {
                return;
            }
            let builder = if peer.over_limit.is_some() { builders.1 } else { builders.0 };
            let client = peer.addr;
            let exchange = Exchange { ctx, edge, builder, app, peer, stop };
            let Some(acceptor) = tls else { return exchange.run(io).await };
            if !exchange.edge.allow_handshake(client.ip()) {
                return;
            }
            // The handshake is part of the request head's time: a client that opens a socket
            // and says nothing is dropped at the same deadline.
            match tokio::time::timeout(settings.header_timeout, acceptor.accept(io)).await {
                Ok(Ok(stream)) => exchange.run(stream).await,
                Ok(Err(error)) => {
                    exchange.ctx.metrics.tls_handshake_failures.inc();
                    tracing::debug!(%error, %client, "A TLS handshake failed.");
                }
                Err(_) => {
                    exchange.ctx.metrics.tls_handshake_failures.inc();
                    Metrics::count(&exchange.ctx.metrics.edge_timeouts, "kind", "header");
                }
            }
        });
    }
    drop(listener);
    exchanges.close();
    if tokio::time::timeout(ctx.settings.shutdown_grace_period, exchanges.wait()).await.is_err() {
        tracing::warn!("HTTP exchanges still open after the grace period; stopping anyway.");
    }
}

/// One accepted connection's HTTP exchanges (and a WebSocket upgrade), over any stream.
struct Exchange {
    ctx: Arc<Ctx>,
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
        let Self { ctx, edge, builder, app, peer, stop } = self;
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
                Metrics::count(&ctx.metrics.edge_timeouts, "kind", "header");
            }
            tracing::debug!(%error, %addr, "An HTTP connection ended with an error.");
        }
    }
}

/// Serve on `listener` until `shutdown` resolves; then stop accepting, close every socket with
/// 4200, wait up to the grace period for connection tasks, release the drivers and return.
///
/// # Errors
/// If the listener or the metrics listener fails.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    mut drivers: Drivers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics_listener = match &settings.metrics_addr {
        Some((host, port)) => Some(TcpListener::bind((host.as_str(), *port)).await?),
        None => None,
    };
    let admin_listener = match &settings.admin {
        Some(admin) => Some(TcpListener::bind((admin.addr.0.as_str(), admin.addr.1)).await?),
        None => None,
    };
    let grace = settings.shutdown_grace_period;
    // Read before anything starts, so a bad certificate is a refusal at start.
    let certificates = match &settings.tls {
        Some(tls) => Some(Certificates::load(&tls.cert, &tls.key).map_err(std::io::Error::other)?),
        None => None,
    };
    let inbox = drivers.inbox.take();
    let ctx = Arc::new(Ctx::new(settings, drivers));
    if let Some(inbox) = inbox {
        cluster_events::start(&ctx, inbox).await;
    }
    if ctx.settings.drivers.transport.name != "local" && !ctx.adapter.cluster().authenticated() {
        tracing::warn!(
            transport = %ctx.settings.drivers.transport.name,
            "No adapter.cluster_secret (ADAPTER_CLUSTER_SECRET): bus messages are not authenticated, so anything that can write to the broker can act as a node. Set the same long random secret on every node."
        );
    }
    let token = ctx.shutdown.clone();
    tokio::spawn(watch_memory(ctx.clone()));
    tokio::spawn(watch_backends(ctx.clone()));
    tokio::spawn(signal_shutdown(ctx.clone(), shutdown));
    // On every node: another node's console may watch this one's log and figures.
    tokio::spawn(crate::console::run(ctx.clone()));
    if let Some(listener) = metrics_listener {
        let app = Router::new().route("/metrics", get(render_metrics)).with_state(ctx.clone());
        beside::serve(&ctx, listener, app, "Metrics")?;
    }
    if let (Some(listener), Some(admin)) = (admin_listener, &ctx.settings.admin) {
        let app = beside::checking_host(crate::admin::router(ctx.clone()), &admin.allowed_hosts);
        beside::serve(&ctx, listener, app, "Admin API")?;
    }
    start_webhooks(&ctx).await?;
    let acceptor = match certificates {
        None => None,
        Some(certificates) => {
            Some(start_tls(&ctx, certificates, listener.local_addr()?.port()).await?)
        }
    };
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = acceptor.is_some(),
        max_connections = ctx.edge.max_connections().map_or_else(|| "unlimited".to_string(), |m| m.to_string()),
        "Listening."
    );
    serve(&ctx, ctx.edge.clone(), listener, router(ctx.clone()), token, acceptor).await;
    ctx.tracker.close();
    if tokio::time::timeout(grace, ctx.tracker.wait()).await.is_err() {
        tracing::warn!(
            remaining = ctx.tracker.len(),
            "Connections still open after the grace period; stopping anyway."
        );
    }
    cluster_events::stop(&ctx).await;
    ctx.drivers.shutdown().await;
    tracing::info!("Stopped.");
    Ok(())
}

/// When `shutdown` resolves: not ready any more, and every task told to stop.
async fn signal_shutdown(ctx: Arc<Ctx>, shutdown: impl Future<Output = ()>) {
    shutdown.await;
    tracing::info!("Shutting down: closing connections with 4200.");
    ctx.metrics.ready.set(0);
    ctx.shutdown.cancel();
}

/// The webhook forwarder (events to the queue) and the queue's consumer (the deliveries).
async fn start_webhooks(ctx: &Arc<Ctx>) -> std::io::Result<()> {
    tokio::spawn(webhooks::forward(ctx.clone()));
    let http = reqwest::Client::builder().build().map_err(std::io::Error::other)?;
    let deliver = webhooks::deliver(ctx.clone(), http, ctx.settings.webhooks.clone());
    if let Err(error) = ctx.drivers.queue.consume(webhooks::QUEUE, deliver).await {
        tracing::error!(%error, "Webhooks will not be delivered: the queue refused a consumer.");
    }
    Ok(())
}

/// Serve TLS with `certificates` (reloaded as they change), and the plain listener that
/// redirects to HTTPS when asked for; the acceptor for the main port, on `port`.
async fn start_tls(
    ctx: &Arc<Ctx>,
    certificates: Arc<Certificates>,
    port: u16,
) -> std::io::Result<TlsAcceptor> {
    let acceptor = tls::acceptor(certificates.clone()).map_err(std::io::Error::other)?;
    let watcher = ctx.clone();
    tokio::spawn(certificates.watch(ctx.shutdown.clone(), move |outcome| match outcome {
        Ok(()) => {
            Metrics::count(&watcher.metrics.tls_reloads, "outcome", "ok");
            tracing::info!("Reloaded the TLS certificate; new connections get it.");
        }
        Err(error) => {
            Metrics::count(&watcher.metrics.tls_reloads, "outcome", "failed");
            tracing::error!(%error, "The new TLS certificate was refused; keeping the old one.");
        }
    }));
    if let Some(http_port) = ctx.settings.tls.as_ref().and_then(|t| t.redirect_port) {
        let listener =
            TcpListener::bind((ctx.settings.host.as_str(), http_port)).await.map_err(|e| {
                std::io::Error::other(format!("ssl.http_port: binding {http_port}: {e}"))
            })?;
        tracing::info!(addr = %listener.local_addr()?, "Redirecting plain HTTP to HTTPS.");
        let (ctx, stop) = (ctx.clone(), ctx.shutdown.clone());
        tokio::spawn(async move {
            let edge = ctx.edge.clone();
            serve(&ctx, edge, listener, http_api::redirect::router(port), stop, None).await;
        });
    }
    Ok(acceptor)
}

async fn render_metrics(
    axum::extract::State(ctx): axum::extract::State<Arc<Ctx>>,
) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        ctx.metrics.render(),
    )
}
