//! The server: the shared context, the router, and [`run`].

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    http::header,
    response::IntoResponse,
    routing::{get, post},
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{
    beside,
    config::Settings,
    ctx::Ctx,
    http_api, listen,
    metrics::Metrics,
    plugins::Drivers,
    tls::{self, Certificates},
    webhooks, ws,
};

/// The router for WebSocket connections, the HTTP API and health checks.
pub(crate) fn router(ctx: Arc<Ctx>) -> Router {
    let api = Router::new()
        .route("/apps/{app_id}/events", post(http_api::events::trigger))
        .route("/apps/{app_id}/batch_events", post(http_api::events::batch))
        .route("/apps/{app_id}/channels", get(http_api::channels::list))
        .route("/apps/{app_id}/channels/{channel}", get(http_api::channels::show))
        .route("/apps/{app_id}/channels/{channel}/users", get(http_api::channels::users))
        .route("/apps/{app_id}/channels/{channel}/history", get(http_api::history::page))
        .route("/apps/{app_id}/channels/{channel}/history/state", get(http_api::history::state))
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
        ctx.events.start(inbox, ctx.shutdown.clone()).await;
    }
    if ctx.settings.drivers.transport.name != "local" && !ctx.adapter.cluster().authenticated() {
        tracing::warn!(
            transport = %ctx.settings.drivers.transport.name,
            "No adapter.cluster_secret (ADAPTER_CLUSTER_SECRET): bus messages are not authenticated, so anything that can write to the broker can act as a node. Set the same long random secret on every node."
        );
    }
    warn_uncoordinated_idempotency(&ctx.settings);
    let token = ctx.shutdown.clone();
    tokio::spawn(watch_memory(ctx.clone()));
    tokio::spawn(watch_backends(ctx.clone()));
    tokio::spawn(signal_shutdown(ctx.clone(), shutdown));
    // On every node: another node's console may watch this one's log and figures.
    tokio::spawn(ctx.feed.clone().run(ctx.adapter.clone(), ctx.shutdown.clone()));
    if let Some(recovery) = &ctx.recovery {
        tokio::spawn(recovery.clone().sweep(ctx.shutdown.clone()));
    }
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
    listen::serve(
        &ctx.metrics,
        grace,
        ctx.edge.clone(),
        listener,
        router(ctx.clone()),
        token,
        acceptor,
    )
    .await;
    ctx.tracker.close();
    if tokio::time::timeout(grace, ctx.tracker.wait()).await.is_err() {
        tracing::warn!(
            remaining = ctx.tracker.len(),
            "Connections still open after the grace period; stopping anyway."
        );
    }
    ctx.events.stop().await;
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
    tokio::spawn(webhooks::forward(ctx.webhooks.clone()));
    let http = reqwest::Client::builder().build().map_err(std::io::Error::other)?;
    let deliver = webhooks::deliver(ctx.webhooks.clone(), http);
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
            let grace = ctx.settings.shutdown_grace_period;
            let redirect = http_api::redirect::router(port);
            listen::serve(&ctx.metrics, grace, edge, listener, redirect, stop, None).await;
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

/// Idempotency (on by default) over drivers that cannot coordinate it: said at start, not
/// refused (`none` is how rate limits are turned off, and most publishers send no key). With
/// `none`, nothing keeps a key; with `memory` on a transport with other nodes, each node keeps
/// its own, so a retry that reaches another node is published again.
fn warn_uncoordinated_idempotency(settings: &Settings) {
    let drivers = &settings.drivers;
    if settings.idempotency.is_none() {
        return;
    }
    let alone = drivers.transport.name == "local";
    for (kind, driver) in [("cache", &drivers.cache), ("rate_limiter", &drivers.rate_limiter)] {
        if driver.name == "none" {
            tracing::warn!(
                "Idempotent publish is on with the `none` {kind}, which keeps nothing: a retried publish that carries an idempotency key may be published again. Choose a {kind} driver (memory on one node, redis or redis-cluster across nodes), or set idempotency.enabled = false."
            );
        } else if driver.name == "memory" && !alone {
            tracing::warn!(
                transport = %drivers.transport.name,
                "Idempotent publish is on with the `memory` {kind}: keys are claimed on each node alone, so a retry that reaches another node is published again. Use a shared {kind} driver (redis, redis-cluster)."
            );
        }
    }
}
