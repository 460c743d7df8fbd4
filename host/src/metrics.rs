//! Prometheus metrics, served on their own port.
//!
//! Labels stay low-cardinality: never a socket id, channel or user id.

use std::sync::{Arc, atomic::AtomicI64};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::plugins::PluginCounters;

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
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
    /// Certificate reloads, by outcome (`ok`, `failed`).
    pub tls_reloads: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// WebSocket connections closed for a bad frame, by close code (1002, 1007, 1009).
    pub ws_protocol_errors: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Subscriptions refused by a per-connection limit, by reason (`channels`, `rate`).
    pub subscriptions_refused: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Webhook events dropped before queueing, by reason (`app_share`, `app_rate`, `outbox`).
    pub webhooks_dropped: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// HTTP triggers that met congested subscribers, by outcome (`delayed`, `refused`).
    pub publish_pushback: Family<Vec<(&'static str, &'static str)>, Counter>,
    plugin_counters: Family<Vec<(&'static str, String)>, Gauge<i64, AtomicI64>>,
    plugins: Arc<PluginCounters>,
}

impl Metrics {
    /// Metrics named `<prefix><name>`, plus the counters plugins report.
    pub fn new(prefix: &str, plugins: Arc<PluginCounters>) -> Self {
        let mut registry = Registry::with_prefix(prefix.trim_end_matches('_'));
        let metrics = Self {
            connected: Gauge::default(),
            new_connections: Counter::default(),
            disconnections: Counter::default(),
            connection_errors: Counter::default(),
            slow_consumer_disconnections: Counter::default(),
            subscriptions: Gauge::default(),
            ws_messages_received: Counter::default(),
            ws_messages_sent: Counter::default(),
            ws_bytes_received: Counter::default(),
            ws_bytes_sent: Counter::default(),
            http_requests: Family::default(),
            http_bytes_received: Counter::default(),
            events_published: Counter::default(),
            webhooks_sent: Counter::default(),
            webhook_retries: Counter::default(),
            webhook_queue_errors: Counter::default(),
            webhooks_failed: Counter::default(),
            cluster_nodes: Gauge::default(),
            ready: Gauge::default(),
            webhooks_pending: Gauge::default(),
            transport_nodes: Gauge::default(),
            bus_broadcasts_received: Counter::default(),
            deltas: crate::hub::DeltaCounters::default(),
            delta_resyncs: Counter::default(),
            bus_refused: Counter::default(),
            bus_publish_refused: Counter::default(),
            bus_unauthenticated: Family::default(),
            dead_nodes: Counter::default(),
            rate_limited: Counter::default(),
            rate_limiter_errors: Counter::default(),
            edge_open: Gauge::default(),
            edge_lingering: Gauge::default(),
            edge_refused: Family::default(),
            edge_timeouts: Family::default(),
            accept_errors: Counter::default(),
            tls_handshake_failures: Counter::default(),
            tls_reloads: Family::default(),
            ws_protocol_errors: Family::default(),
            subscriptions_refused: Family::default(),
            webhooks_dropped: Family::default(),
            publish_pushback: Family::default(),
            plugin_counters: Family::default(),
            plugins,
            registry: Registry::default(),
        };
        registry.register("connected", "Open WebSocket connections", metrics.connected.clone());
        registry.register(
            "new_connections",
            "WebSocket connections accepted",
            metrics.new_connections.clone(),
        );
        registry.register(
            "new_disconnections",
            "WebSocket connections closed",
            metrics.disconnections.clone(),
        );
        registry.register(
            "connection_errors",
            "WebSocket connections refused at the handshake",
            metrics.connection_errors.clone(),
        );
        registry.register(
            "slow_consumer_disconnections",
            "Connections closed with 4100 because their outbound queue was full",
            metrics.slow_consumer_disconnections.clone(),
        );
        registry.register(
            "subscriptions",
            "Current channel subscriptions",
            metrics.subscriptions.clone(),
        );
        registry.register(
            "ws_messages_received",
            "WebSocket messages received",
            metrics.ws_messages_received.clone(),
        );
        registry.register(
            "ws_messages_sent",
            "WebSocket messages sent",
            metrics.ws_messages_sent.clone(),
        );
        registry.register(
            "socket_received_bytes",
            "WebSocket bytes received",
            metrics.ws_bytes_received.clone(),
        );
        registry.register(
            "socket_transmitted_bytes",
            "WebSocket bytes sent",
            metrics.ws_bytes_sent.clone(),
        );
        registry.register(
            "http_calls_received",
            "HTTP API requests by status",
            metrics.http_requests.clone(),
        );
        registry.register(
            "http_received_bytes",
            "HTTP API request body bytes",
            metrics.http_bytes_received.clone(),
        );
        registry.register(
            "events_published",
            "Events published to a channel (HTTP API and client events)",
            metrics.events_published.clone(),
        );
        registry.register("webhooks_sent", "Webhooks delivered", metrics.webhooks_sent.clone());
        registry.register(
            "webhook_retries",
            "Webhook attempts that failed and will be retried",
            metrics.webhook_retries.clone(),
        );
        registry.register("webhooks_failed", "Webhooks given up", metrics.webhooks_failed.clone());
        registry.register(
            "webhook_queue_errors",
            "Times the queue could not take a webhook yet; it is held until the queue is back",
            metrics.webhook_queue_errors.clone(),
        );
        registry.register(
            "bus_broadcasts_received",
            "Broadcasts received from other nodes",
            metrics.bus_broadcasts_received.clone(),
        );
        registry.register(
            "bus_refused",
            "Bus messages this node could not read",
            metrics.bus_refused.clone(),
        );
        registry.register("delta_messages", "Events sent as deltas", metrics.deltas.deltas.clone());
        registry.register(
            "delta_full_messages",
            "Events sent whole to subscribers of deltas (stream starts, periodic, resyncs)",
            metrics.deltas.full.clone(),
        );
        registry.register(
            "delta_saved_bytes",
            "Bytes deltas saved against sending their events whole",
            metrics.deltas.saved_bytes.clone(),
        );
        registry.register(
            "delta_resyncs",
            "Clients that could not apply a delta and asked for the next event whole",
            metrics.delta_resyncs.clone(),
        );
        registry.register(
            "bus_publish_refused",
            "Publishes to the other nodes the transport refused (back-pressure, backend down)",
            metrics.bus_publish_refused.clone(),
        );
        registry.register(
            "bus_unauthenticated",
            "Bus messages refused by the cluster secret, by reason",
            metrics.bus_unauthenticated.clone(),
        );
        registry.register("dead_nodes", "Nodes found dead", metrics.dead_nodes.clone());
        registry.register(
            "cluster_nodes",
            "Nodes in the cluster, this one included",
            metrics.cluster_nodes.clone(),
        );
        registry.register(
            "rate_limit_triggered",
            "Requests and events refused by a rate limit",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "rate_limiter_errors",
            "Rate-limiter calls that failed; the request was let through",
            metrics.rate_limiter_errors.clone(),
        );
        registry.register(
            "plugin_events",
            "Counters reported by plugins (reconnects, drops, ...)",
            metrics.plugin_counters.clone(),
        );
        registry.register(
            "edge_open_connections",
            "Open TCP connections on the listener, closing ones included",
            metrics.edge_open.clone(),
        );
        registry.register(
            "edge_lingering_connections",
            "Closed connections still discarding what their client sends",
            metrics.edge_lingering.clone(),
        );
        registry.register(
            "ready",
            "1 while this node is ready for new traffic (/ready), 0 while draining or over its memory threshold",
            metrics.ready.clone(),
        );
        registry.register(
            "webhooks_queue_pending",
            "Webhook jobs waiting in the queue driver, looked at every few seconds",
            metrics.webhooks_pending.clone(),
        );
        registry.register(
            "transport_nodes",
            "Nodes the transport's broker counts (where it can tell); more than cluster_nodes means nodes on the broker this one does not hear (another cluster secret or version)",
            metrics.transport_nodes.clone(),
        );
        registry.register(
            "edge_refused",
            "Connections refused at the listener's limits, by reason",
            metrics.edge_refused.clone(),
        );
        registry.register(
            "edge_timeouts",
            "Connections or requests ended by a timeout, by kind",
            metrics.edge_timeouts.clone(),
        );
        registry.register(
            "accept_errors",
            "Errors accepting connections (out of file descriptors, ...)",
            metrics.accept_errors.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            metrics.tls_handshake_failures.clone(),
        );
        registry.register(
            "tls_certificate_reloads",
            "Certificate reloads (file change or SIGHUP), by outcome; a failed one keeps the old certificate",
            metrics.tls_reloads.clone(),
        );
        registry.register(
            "ws_protocol_errors",
            "WebSocket connections closed for a bad frame, by close code",
            metrics.ws_protocol_errors.clone(),
        );
        registry.register(
            "subscriptions_refused",
            "Subscriptions refused by a per-connection limit, by reason",
            metrics.subscriptions_refused.clone(),
        );
        registry.register(
            "webhooks_dropped",
            "Webhook events dropped before queueing, by reason",
            metrics.webhooks_dropped.clone(),
        );
        registry.register(
            "publish_pushback",
            "HTTP triggers that met congested subscribers, by outcome",
            metrics.publish_pushback.clone(),
        );
        metrics.cluster_nodes.set(1);
        Self { registry, ..metrics }
    }

    /// Count one in a family labelled by a single static pair.
    pub fn count(
        family: &Family<Vec<(&'static str, &'static str)>, Counter>,
        label: &'static str,
        value: &'static str,
    ) {
        family.get_or_create(&vec![(label, value)]).inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
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
