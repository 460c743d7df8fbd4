//! What the handlers (`ws/`, `http_api/`, `admin.rs`, `console/`) share: the services, each
//! built here from its own inputs, and the few things only handlers ask of the node as a whole
//! (a rate-limit decision, a new socket id). Nothing below the handlers sees this type.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    adapter::Adapter,
    apps::Apps,
    cluster::Cluster,
    cluster_events::ClusterEvents,
    config::Settings,
    edge::Edge,
    feed::Feed,
    hub::{Hub, SentCounters},
    metrics::Metrics,
    plugins::{Drivers, RateDecision, Retention},
    readiness::Readiness,
    recovery::{self, Recovery},
    webhooks::{self, Webhooks},
};

/// Everything request handlers and connection tasks share.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The validated settings.
    pub settings: Settings,
    /// The apps.
    pub apps: Arc<Apps>,
    /// Channel state and delivery.
    pub adapter: Arc<Adapter>,
    /// The plugin drivers.
    pub drivers: Drivers,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server shuts down; connection tasks close with 4200.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Webhook batching and delayed `channel_vacated`.
    pub webhooks: Arc<Webhooks>,
    /// What the node does when the cluster-wide view changes (member and occupancy events).
    pub events: Arc<ClusterEvents>,
    /// The listener's counts and limits.
    pub edge: Arc<Edge>,
    /// Whether this node wants new traffic.
    pub readiness: Readiness,
    /// The debug console's live log and figures.
    pub feed: Arc<Feed>,
    /// Channels' streams for connection recovery; `None` when it is off.
    pub recovery: Option<Arc<Recovery>>,
    socket_prefix: u32,
    socket_counter: AtomicU64,
}

impl Ctx {
    /// A context over `settings` and `drivers`.
    pub(crate) fn new(settings: Settings, drivers: Drivers) -> Self {
        let metrics = Arc::new(Metrics::new(&settings.metrics_prefix, drivers.counters.clone()));
        let cluster = Cluster::new(
            drivers.transport.clone(),
            settings.cluster.clone(),
            metrics.bus_publish_refused.clone(),
        );
        let edge = Edge::new(&settings.edge, &metrics);
        metrics.ready.set(1);
        let feed = Arc::new(Feed::new(cluster.node_id, &metrics));
        let apps = Arc::new(match &drivers.app_manager {
            None => Apps::new(settings.apps.clone()),
            Some(manager) => Apps::managed(manager.clone(), settings.app_records.clone(), &metrics),
        });
        let sent = SentCounters {
            messages: metrics.ws_messages_sent.clone(),
            bytes: metrics.ws_bytes_sent.clone(),
        };
        let hub = Hub::new(metrics.deltas.clone(), sent);
        let adapter = Arc::new(Adapter::new(Arc::new(hub), cluster));
        let shutdown = CancellationToken::new();
        let webhooks = Webhooks::new(webhooks::Inputs {
            settings: settings.webhooks.clone(),
            apps: apps.clone(),
            adapter: adapter.clone(),
            queue: drivers.queue.clone(),
            metrics: metrics.clone(),
            feed: feed.clone(),
            shutdown: shutdown.clone(),
        });
        let recovery = settings.recovery.map(|r| {
            let durable =
                r.history.zip(drivers.history.clone()).map(|(limits, history)| recovery::Durable {
                    history,
                    retention: Retention {
                        max_events: limits.max_events,
                        max_age_ms: u64::try_from(limits.max_age.as_millis()).unwrap_or(u64::MAX),
                    },
                    hub: adapter.hub().clone(),
                    tag_filtering: settings.tag_filtering,
                    counters: recovery::GateCounters {
                        duplicates: metrics.recovery_duplicates.clone(),
                        repaired: metrics.recovery_repaired.clone(),
                        lost: metrics.recovery_lost.clone(),
                        store_errors: metrics.history_errors.clone(),
                        published: metrics.history_published.clone(),
                        backlog_refused: metrics.history_backlog_refused.clone(),
                    },
                });
            let recovery = Recovery::new(r, metrics.recovery_untracked.clone(), durable);
            let recovery = recovery
                .with_degraded_gauge(metrics.recovery_degraded_channels.clone())
                .with_buffer_metrics(
                    metrics.recovery_buffer_bytes.clone(),
                    metrics.recovery_buffers_evicted.clone(),
                );
            Arc::new(recovery)
        });
        let events = Arc::new(ClusterEvents {
            adapter: adapter.clone(),
            apps: apps.clone(),
            webhooks: webhooks.clone(),
            feed: feed.clone(),
            metrics: metrics.clone(),
            tag_filtering: settings.tag_filtering,
            recovery: recovery.clone(),
        });
        Self {
            recovery,
            feed,
            edge,
            readiness: Readiness::new(settings.max_memory_percent, settings.max_memory_bytes),
            apps,
            adapter,
            settings,
            drivers,
            metrics,
            shutdown,
            tracker: TaskTracker::new(),
            webhooks,
            events,
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
