//! Prometheus metrics, served on their own port.
//!
//! Labels stay low-cardinality: never a socket id, channel or user id.

use std::sync::{Arc, atomic::AtomicI64};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{allocator::AllocatorGauges, plugins::PluginCounters};

/// Register each `(name, help, metric)`: a clone of the metric, which shares its value.
macro_rules! register {
    ($registry:expr, $(($name:literal, $help:literal, $metric:expr)),* $(,)?) => {
        $($registry.register($name, $help, $metric.clone());)*
    };
}

/// The server's metrics.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connected: Gauge,
    /// Connections accepted.
    pub new_connections: Counter,
    /// Connections closed.
    pub disconnections: Counter,
    /// Connections refused at the handshake (unknown key, quota, ...).
    pub connection_errors: Counter,
    /// Connections closed because they could not keep up with their queue.
    pub slow_consumer_disconnections: Counter,
    /// Current channel subscriptions.
    pub subscriptions: Gauge,
    /// Messages received from clients.
    pub ws_messages_received: Counter,
    /// Messages sent to clients.
    pub ws_messages_sent: Counter,
    /// Bytes received from clients.
    pub ws_bytes_received: Counter,
    /// Bytes sent to clients.
    pub ws_bytes_sent: Counter,
    /// HTTP API requests by status code.
    pub http_requests: Family<Vec<(&'static str, String)>, Counter>,
    /// Bytes of HTTP API request bodies.
    pub http_bytes_received: Counter,
    /// Events published (HTTP API triggers and client events), counted once per channel.
    pub events_published: Counter,
    /// Webhooks delivered.
    pub webhooks_sent: Counter,
    /// Webhook attempts that failed and will be retried.
    pub webhook_retries: Counter,
    /// Webhooks given up (after the last attempt, or lost before queueing).
    pub webhooks_failed: Counter,
    /// Times the queue driver could not take a webhook yet (its backend down); it is held.
    pub webhook_queue_errors: Counter,
    /// Nodes in the cluster, this one included.
    pub cluster_nodes: Gauge,
    /// 1 while this node is ready for new traffic (`/ready`), 0 while not.
    pub ready: Gauge,
    /// Webhook jobs waiting in the queue driver, as it last said.
    pub webhooks_pending: Gauge,
    /// Nodes the transport's broker counts (PUBSUB NUMSUB on Redis), as it last said.
    pub transport_nodes: Gauge,
    /// Broadcasts received from other nodes.
    pub bus_broadcasts_received: Counter,
    /// What delta compression sent (deltas, full frames on delta streams, bytes saved).
    pub deltas: crate::hub::DeltaCounters,
    /// Clients that could not apply a delta and asked for a full frame.
    pub delta_resyncs: Counter,
    /// Bus messages this node could not read.
    pub bus_refused: Counter,
    /// Publishes to the bus the transport refused (back-pressure, backend down).
    pub bus_publish_refused: Counter,
    /// Bus messages refused by the cluster secret, by reason (`missing`, `tag`, `stale`,
    /// `replay`).
    pub bus_unauthenticated: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Nodes found dead (silent past the node timeout).
    pub dead_nodes: Counter,
    /// Requests and events refused by a rate limit.
    pub rate_limited: Counter,
    /// Rate-limiter calls that failed (the check was let through).
    pub rate_limiter_errors: Counter,
    /// Open TCP connections on the listener (WebSocket, HTTP, and closing ones).
    pub edge_open: Gauge,
    /// Closed connections still discarding what their client sends.
    pub edge_lingering: Gauge,
    /// Connections refused at the listener, by reason (`node_limit`, `ip_limit`).
    pub edge_refused: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Connections or requests ended by a timeout, by kind (`header`, `body`, `write`).
    pub edge_timeouts: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Errors accepting connections (out of descriptors, ...).
    pub accept_errors: Counter,
    /// TLS handshakes that failed (a client that does not speak TLS, or trusts another CA).
    pub tls_handshake_failures: Counter,
    /// App lookups in the app manager's cache and database, by outcome.
    pub app_lookups: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Admin API requests, by outcome (`ok`, `refused`, `unauthorized`, `failed`).
    pub admin_requests: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Certificate reloads, by outcome (`ok`, `failed`).
    pub tls_reloads: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// WebSocket connections closed for a bad frame, by close code (1002, 1007, 1009).
    pub ws_protocol_errors: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Subscriptions refused by a per-connection limit, by reason (`channels`, `rate`).
    pub subscriptions_refused: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Resumes (`sockudo:resume`) clients sent, by outcome (`disabled`, `refused`, `started`).
    pub resumes: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Triggers with an idempotency key, by outcome (`first`, `duplicate`, `retried`,
    /// `in_progress`, `unavailable`).
    pub idempotency: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// App events published without a recovery position: the node keeps streams for as many
    /// channels as it may.
    pub recovery_untracked: Counter,
    /// App events this node had delivered already (bus duplicates), or of a stream the channel's
    /// replaced (late, from before a reset), dropped.
    pub recovery_duplicates: Counter,
    /// App events read from the history store to fill a gap in a channel's serials.
    pub recovery_repaired: Counter,
    /// App events a gap lost for good (the store no longer had them); the channel's
    /// position-tracking sockets were sent to reconnect and resume.
    pub recovery_lost: Counter,
    /// Failed calls to the history store.
    pub history_errors: Counter,
    /// App events the history store published to the other nodes in the step that gave them
    /// their position (it writes to the transport's server).
    pub history_published: Counter,
    /// App events refused because too many waited for the history store (it stalls, or a
    /// publisher floods a channel).
    pub history_backlog_refused: Counter,
    /// App events broadcast without a position because the history store did not take them
    /// (apps publishing best effort).
    pub recovery_best_effort: Counter,
    /// Webhook events dropped before queueing, by reason (`app_share`, `app_rate`, `outbox`).
    pub webhooks_dropped: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// HTTP triggers that met congested subscribers, by outcome (`delayed`, `refused`).
    pub publish_pushback: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Debug consoles watching a live log on this node.
    pub console_viewers: Gauge,
    /// Channels whose resumes fail because an event went out without a position (best
    /// effort), until their stream starts again.
    pub recovery_degraded_channels: Gauge,
    /// Bytes of events the node keeps for resumes, over every channel.
    pub recovery_buffer_bytes: Gauge,
    /// Channels whose kept events were forgotten to bring the node under
    /// `connection_recovery.max_memory_mb` (used longest ago first).
    pub recovery_buffers_evicted: Counter,
    /// Debug console logs cut off because the browser did not keep up.
    pub console_viewers_dropped: Counter,
    /// Other nodes' console watches refused: too many apps watched on this node.
    pub console_watches_refused: Counter,
    plugin_counters: Family<Vec<(&'static str, String)>, Gauge<i64, AtomicI64>>,
    plugins: Arc<PluginCounters>,
    /// The allocator's figures, read at each scrape.
    allocator: AllocatorGauges,
}

impl Metrics {
    /// Metrics named `<prefix><name>`, plus the counters plugins report.
    pub(crate) fn new(prefix: &str, plugins: Arc<PluginCounters>) -> Self {
        let mut registry = Registry::with_prefix(prefix.trim_end_matches('_'));
        let metrics = Self { plugins, ..Self::default() };
        metrics.register_connections(&mut registry);
        metrics.register_webhooks(&mut registry);
        metrics.register_cluster(&mut registry);
        metrics.register_edge(&mut registry);
        metrics.register_deltas(&mut registry);
        metrics.register_allocator(&mut registry);
        metrics.cluster_nodes.set(1);
        Self { registry, ..metrics }
    }

    /// Connections, subscriptions and what crosses the sockets and the HTTP API.
    fn register_connections(&self, registry: &mut Registry) {
        register!(
            registry,
            ("connected", "Open WebSocket connections", self.connected),
            ("new_connections", "WebSocket connections accepted", self.new_connections),
            ("new_disconnections", "WebSocket connections closed", self.disconnections),
            (
                "connection_errors",
                "WebSocket connections refused at the handshake",
                self.connection_errors
            ),
            (
                "slow_consumer_disconnections",
                "Connections closed with 4100 because their outbound queue was full",
                self.slow_consumer_disconnections
            ),
            ("subscriptions", "Current channel subscriptions", self.subscriptions),
            (
                "subscriptions_refused",
                "Subscriptions refused by a per-connection limit, by reason",
                self.subscriptions_refused
            ),
            ("resumes", "Connection resumes clients sent, by outcome", self.resumes),
            (
                "idempotent_publishes",
                "Triggers with an idempotency key, by outcome",
                self.idempotency
            ),
            (
                "recovery_untracked",
                "App events published without a recovery position (too many channels)",
                self.recovery_untracked
            ),
            (
                "recovery_duplicates",
                "App events dropped: this node had delivered their serial already, or their stream was replaced",
                self.recovery_duplicates
            ),
            (
                "recovery_repaired",
                "App events read from the history store to fill a gap",
                self.recovery_repaired
            ),
            (
                "recovery_lost",
                "App events a gap lost for good (their sockets were sent to resume)",
                self.recovery_lost
            ),
            ("history_errors", "Failed calls to the history store", self.history_errors),
            (
                "history_published",
                "App events the history store published to the other nodes as it positioned them",
                self.history_published
            ),
            (
                "recovery_buffers_evicted",
                "Channels whose kept events were forgotten to bring the node under its recovery memory",
                self.recovery_buffers_evicted
            ),
            (
                "history_backlog_refused",
                "App events refused because too many waited for the history store",
                self.history_backlog_refused
            ),
            (
                "recovery_best_effort",
                "App events broadcast without a position: the history store did not take them",
                self.recovery_best_effort
            ),
            ("ws_messages_received", "WebSocket messages received", self.ws_messages_received),
            ("ws_messages_sent", "WebSocket messages sent", self.ws_messages_sent),
            ("socket_received_bytes", "WebSocket bytes received", self.ws_bytes_received),
            ("socket_transmitted_bytes", "WebSocket bytes sent", self.ws_bytes_sent),
            (
                "ws_protocol_errors",
                "WebSocket connections closed for a bad frame, by close code",
                self.ws_protocol_errors
            ),
            ("http_calls_received", "HTTP API requests by status", self.http_requests),
            ("http_received_bytes", "HTTP API request body bytes", self.http_bytes_received),
            (
                "events_published",
                "Events published to a channel (HTTP API and client events)",
                self.events_published
            ),
            (
                "publish_pushback",
                "HTTP triggers that met congested subscribers, by outcome",
                self.publish_pushback
            ),
            (
                "rate_limit_triggered",
                "Requests and events refused by a rate limit",
                self.rate_limited
            ),
            (
                "rate_limiter_errors",
                "Rate-limiter calls that failed; the request was let through",
                self.rate_limiter_errors
            ),
        );
    }

    /// Webhooks.
    fn register_webhooks(&self, registry: &mut Registry) {
        register!(
            registry,
            ("webhooks_sent", "Webhooks delivered", self.webhooks_sent),
            (
                "webhook_retries",
                "Webhook attempts that failed and will be retried",
                self.webhook_retries
            ),
            ("webhooks_failed", "Webhooks given up", self.webhooks_failed),
            (
                "webhook_queue_errors",
                "Times the queue could not take a webhook yet; it is held until the queue is back",
                self.webhook_queue_errors
            ),
            (
                "webhooks_dropped",
                "Webhook events dropped before queueing, by reason",
                self.webhooks_dropped
            ),
            (
                "webhooks_queue_pending",
                "Webhook jobs waiting in the queue driver, looked at every few seconds",
                self.webhooks_pending
            ),
        );
    }

    /// The bus and the other nodes, plugins' own counters, readiness.
    fn register_cluster(&self, registry: &mut Registry) {
        register!(
            registry,
            (
                "bus_broadcasts_received",
                "Broadcasts received from other nodes",
                self.bus_broadcasts_received
            ),
            ("bus_refused", "Bus messages this node could not read", self.bus_refused),
            (
                "bus_publish_refused",
                "Publishes to the other nodes the transport refused (back-pressure, backend down)",
                self.bus_publish_refused
            ),
            (
                "bus_unauthenticated",
                "Bus messages refused by the cluster secret, by reason",
                self.bus_unauthenticated
            ),
            ("dead_nodes", "Nodes found dead", self.dead_nodes),
            ("cluster_nodes", "Nodes in the cluster, this one included", self.cluster_nodes),
            (
                "recovery_degraded_channels",
                "Channels whose resumes fail: an event went out without a position (best effort)",
                self.recovery_degraded_channels
            ),
            (
                "recovery_buffer_bytes",
                "Bytes of events kept for resumes on this node, over every channel",
                self.recovery_buffer_bytes
            ),
            (
                "transport_nodes",
                "Nodes the transport's broker counts (where it can tell); more than cluster_nodes means nodes on the broker this one does not hear (another cluster secret or version)",
                self.transport_nodes
            ),
            (
                "plugin_events",
                "Counters reported by plugins (reconnects, drops, ...)",
                self.plugin_counters
            ),
            (
                "ready",
                "1 while this node is ready for new traffic (/ready), 0 while draining or over its memory threshold",
                self.ready
            ),
        );
    }

    /// The edge: accepting, bounding and encrypting connections.
    fn register_edge(&self, registry: &mut Registry) {
        register!(
            registry,
            (
                "edge_open_connections",
                "Open TCP connections on the listener, closing ones included",
                self.edge_open
            ),
            (
                "edge_lingering_connections",
                "Closed connections still discarding what their client sends",
                self.edge_lingering
            ),
            (
                "edge_refused",
                "Connections refused at the listener's limits, by reason",
                self.edge_refused
            ),
            (
                "edge_timeouts",
                "Connections or requests ended by a timeout, by kind",
                self.edge_timeouts
            ),
            (
                "accept_errors",
                "Errors accepting connections (out of file descriptors, ...)",
                self.accept_errors
            ),
            (
                "tls_handshake_failures",
                "TLS handshakes that failed or timed out",
                self.tls_handshake_failures
            ),
            (
                "app_lookups",
                "App lookups through the app manager, by outcome: cached, fetched, unknown, stale (the database failed; the cached app served), failed (not cached either: refused), invalid (a record that is not a valid app)",
                self.app_lookups
            ),
            ("admin_requests", "Admin API requests, by outcome", self.admin_requests),
            ("console_viewers", "Debug console live logs open on this node", self.console_viewers),
            (
                "console_viewers_dropped",
                "Debug console live logs cut off because the browser fell behind",
                self.console_viewers_dropped
            ),
            (
                "console_watches_refused",
                "Console watches from other nodes refused: too many apps watched here",
                self.console_watches_refused
            ),
            (
                "tls_certificate_reloads",
                "Certificate reloads (file change or SIGHUP), by outcome; a failed one keeps the old certificate",
                self.tls_reloads
            ),
        );
    }

    /// Delta compression.
    fn register_deltas(&self, registry: &mut Registry) {
        register!(
            registry,
            ("delta_messages", "Events sent as deltas", self.deltas.deltas),
            (
                "delta_full_messages",
                "Events sent whole to subscribers of deltas (stream starts, periodic, resyncs)",
                self.deltas.full
            ),
            (
                "delta_saved_bytes",
                "Bytes deltas saved against sending their events whole",
                self.deltas.saved_bytes
            ),
            (
                "delta_resyncs",
                "Clients that could not apply a delta and asked for the next event whole",
                self.delta_resyncs
            ),
        );
    }

    /// The allocator's own figures (jemalloc's), beside the process's resident size.
    fn register_allocator(&self, registry: &mut Registry) {
        let a = &self.allocator;
        register!(
            registry,
            (
                "allocator_allocated_bytes",
                "Bytes the server has allocated and not freed",
                a.allocated
            ),
            ("allocator_active_bytes", "Bytes of the allocator's pages in use", a.active),
            (
                "allocator_resident_bytes",
                "Bytes the allocator holds in memory, its own bookkeeping included",
                a.resident
            ),
            (
                "allocator_retained_bytes",
                "Bytes the allocator gave back to the system and keeps mapped for reuse",
                a.retained
            ),
            ("allocator_metadata_bytes", "Bytes of the allocator's own bookkeeping", a.metadata),
        );
    }

    /// Count one in a family labelled by a single static pair.
    pub(crate) fn count(
        family: &Family<Vec<(&'static str, &'static str)>, Counter>,
        label: &'static str,
        value: &'static str,
    ) {
        family.get_or_create(&vec![(label, value)]).inc();
    }

    /// The text exposition.
    pub(crate) fn render(&self) -> String {
        self.allocator.refresh();
        for ((plugin, name), value) in self.plugins.snapshot() {
            self.plugin_counters
                .get_or_create(&vec![("plugin", plugin), ("name", name)])
                .set(value);
        }
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
