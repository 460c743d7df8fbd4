//! The server: the shared context, the router, and [`run`].

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    http::header,
    response::IntoResponse,
    routing::{get, post},
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    adapter::Adapter,
    apps::Apps,
    cluster::{self, Cluster},
    config::Settings,
    http_api,
    hub::Hub,
    metrics::Metrics,
    plugins::{Drivers, RateDecision},
    webhooks::{self, Webhooks},
    ws,
};

/// Everything request handlers and connection tasks share.
#[derive(Debug)]
pub struct Ctx {
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
    socket_prefix: u32,
    socket_counter: AtomicU64,
}

impl Ctx {
    /// A context over `settings` and `drivers`.
    pub fn new(settings: Settings, drivers: Drivers) -> Self {
        let metrics = Metrics::new(&settings.metrics_prefix, drivers.counters.clone());
        let cluster = Cluster::new(drivers.transport.clone(), settings.cluster.clone());
        Self {
            apps: Apps::new(settings.apps.clone()),
            adapter: Adapter::new(Arc::new(Hub::default()), cluster),
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
    pub async fn rate_limit(
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
    pub fn next_socket_id(&self) -> String {
        format!("{}.{}", self.socket_prefix, self.socket_counter.fetch_add(1, Ordering::Relaxed))
    }
}

/// The router for WebSocket connections, the HTTP API and health checks.
pub fn router(ctx: Arc<Ctx>) -> Router {
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
        .route("/up/{app_id}", get(http_api::health::up_app))
        .fallback(http_api::not_found)
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), http_api::count_requests));
    Router::new().route("/app/{key}", get(ws::upgrade)).merge(api).with_state(ctx)
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
    let grace = settings.shutdown_grace_period;
    let inbox = drivers.inbox.take();
    let ctx = Arc::new(Ctx::new(settings, drivers));
    if let Some(inbox) = inbox {
        cluster::node::start(&ctx, inbox).await;
    }
    let token = ctx.shutdown.clone();
    tokio::spawn({
        let token = token.clone();
        async move {
            shutdown.await;
            tracing::info!("Shutting down: closing connections with 4200.");
            token.cancel();
        }
    });
    if let Some(metrics_listener) = metrics_listener {
        tracing::info!(addr = %metrics_listener.local_addr()?, "Metrics listening.");
        let app = Router::new().route("/metrics", get(render_metrics)).with_state(ctx.clone());
        let token = token.clone();
        tokio::spawn(async move {
            let served = axum::serve(metrics_listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "The metrics listener failed.");
            }
        });
    }
    tokio::spawn(webhooks::forward(ctx.clone()));
    let http = reqwest::Client::builder().build().map_err(std::io::Error::other)?;
    let deliver = webhooks::deliver(ctx.clone(), http, ctx.settings.webhooks.clone());
    if let Err(error) = ctx.drivers.queue.consume(webhooks::QUEUE, deliver).await {
        tracing::error!(%error, "Webhooks will not be delivered: the queue refused a consumer.");
    }
    tracing::info!(addr = %listener.local_addr()?, "Listening.");
    let app = router(ctx.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned()).await?;
    ctx.tracker.close();
    if tokio::time::timeout(grace, ctx.tracker.wait()).await.is_err() {
        tracing::warn!(
            remaining = ctx.tracker.len(),
            "Connections still open after the grace period; stopping anyway."
        );
    }
    cluster::node::stop(&ctx).await;
    ctx.drivers.shutdown().await;
    tracing::info!("Stopped.");
    Ok(())
}

async fn render_metrics(
    axum::extract::State(ctx): axum::extract::State<Arc<Ctx>>,
) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        ctx.metrics.render(),
    )
}
