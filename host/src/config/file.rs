//! The configuration file's shape. Every field has a default; the names follow Sockudo's
//! configuration so that its operators can move over with the same file.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Default: "0.0.0.0". Env: `HOST`.
    pub host: String,
    /// Port for WebSocket connections and the HTTP API. Default: 6001. Env: `PORT`.
    pub port: u16,
    /// Log at debug level unless `RUST_LOG` says otherwise. Default: false. Env: `DEBUG`.
    pub debug: bool,
    /// Seconds of silence after which the server pings a connection; sent to clients in
    /// `pusher:connection_established`. Default: 120. Env: `ACTIVITY_TIMEOUT`.
    pub activity_timeout: u64,
    /// Seconds a connection has to answer the server's ping before it is closed with 4201.
    /// Default: 30. Env: `PONG_TIMEOUT`.
    pub pong_timeout: u64,
    /// Seconds to wait for connections to close at shutdown. Default: 10.
    /// Env: `SHUTDOWN_GRACE_PERIOD`.
    pub shutdown_grace_period: u64,
    /// Seconds a connection of an app that requires sign-in has to sign in before it is closed
    /// with 4009. Default: 30. Env: `USER_AUTHENTICATION_TIMEOUT`.
    pub user_authentication_timeout: u64,
    /// The transport between nodes.
    pub adapter: DriverSection,
    /// The cache driver.
    pub cache: DriverSection,
    /// The queue driver.
    pub queue: DriverSection,
    /// The rate-limiter driver.
    pub rate_limiter: DriverSection,
    /// Where apps come from.
    pub app_manager: AppManagerConfig,
    /// Channel limits applied to every app unless the app overrides them.
    pub channel_limits: ChannelLimits,
    /// Event limits applied to every app unless the app overrides them.
    pub event_limits: EventLimits,
    /// Presence limits applied to every app unless the app overrides them.
    pub presence: PresenceLimits,
    /// The HTTP API.
    pub http_api: HttpApiConfig,
    /// Webhook delivery.
    pub webhooks: WebhooksConfig,
    /// Membership of the cluster.
    pub cluster_health: ClusterHealthConfig,
    /// Backend connections shared by drivers (`[database.redis]`, ...): each driver gets the
    /// table named after its backend as `database` in its own settings. The host reads none of
    /// their fields.
    pub database: BTreeMap<String, serde_json::Value>,
    /// The WebSocket endpoint.
    pub websocket: WebSocketConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// What every TCP connection (WebSocket or HTTP) may hold, and for how long.
    pub edge: EdgeConfig,
    /// Push-back on publishers when subscribers cannot keep up.
    pub overload: OverloadConfig,
    /// How logs are written.
    pub log: LogConfig,
    /// When the node says it is ready for traffic (`/ready`) and admits new connections.
    pub readiness: ReadinessConfig,
    /// TLS on the WebSocket and HTTP API port.
    pub ssl: SslConfig,
    /// Tag filtering of published events.
    pub tag_filtering: TagFilteringConfig,
    /// Connection recovery: a reconnected client resumes where it was.
    pub connection_recovery: ConnectionRecoveryConfig,
    /// Channel history: positions assigned once for the cluster, so a client resumes on any
    /// node.
    pub history: HistoryConfig,
    /// Idempotent publish: a retried trigger with the same key is answered, not published again.
    pub idempotency: IdempotencyConfig,
    /// Delta compression.
    pub delta_compression: DeltaCompressionConfig,
    /// The admin API.
    pub admin: AdminConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 6001,
            debug: false,
            activity_timeout: 120,
            pong_timeout: 30,
            shutdown_grace_period: 10,
            user_authentication_timeout: 30,
            adapter: DriverSection::named("local"),
            cache: DriverSection::named("memory"),
            queue: DriverSection::named("memory"),
            rate_limiter: DriverSection::named("memory"),
            app_manager: AppManagerConfig::default(),
            channel_limits: ChannelLimits::default(),
            event_limits: EventLimits::default(),
            presence: PresenceLimits::default(),
            http_api: HttpApiConfig::default(),
            webhooks: WebhooksConfig::default(),
            cluster_health: ClusterHealthConfig::default(),
            database: BTreeMap::new(),
            websocket: WebSocketConfig::default(),
            metrics: MetricsConfig::default(),
            edge: EdgeConfig::default(),
            overload: OverloadConfig::default(),
            log: LogConfig::default(),
            readiness: ReadinessConfig::default(),
            ssl: SslConfig::default(),
            tag_filtering: TagFilteringConfig::default(),
            connection_recovery: ConnectionRecoveryConfig::default(),
            history: HistoryConfig::default(),
            idempotency: IdempotencyConfig::default(),
            delta_compression: DeltaCompressionConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

/// A driver choice: `driver = "name"` plus one table per driver with that driver's own
/// settings (`[adapter.redis]`, `[cache.memory]`, ...), passed to the plugin as text. The host
/// never reads those tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DriverSection {
    /// The driver's name. Env: `ADAPTER_DRIVER`, `CACHE_DRIVER`, `QUEUE_DRIVER`,
    /// `RATE_LIMITER_DRIVER`.
    pub driver: String,
    /// For the rate limiter: whether limits are enforced at all. Default: true.
    /// Env: `RATE_LIMITER_ENABLED`.
    pub enabled: Option<bool>,
    /// For the rate limiter: what a limiter that fails (its backend down) answers. True lets
    /// requests through (with a log line and the `sockhost_rate_limiter_errors_total` metric),
    /// false refuses them as if limited. Default: true. Env: `RATE_LIMITER_FAIL_OPEN`.
    pub fail_open: Option<bool>,
    /// For the adapter: milliseconds a cluster-wide query waits for every node's answer before
    /// answering with what it has. Default: 5000. Env: `ADAPTER_REQUESTS_TIMEOUT`.
    pub requests_timeout_ms: Option<u64>,
    /// For the adapter: share connection counts between nodes, so an app's `max_connections`
    /// holds for the whole cluster. Default: true. Env: `ADAPTER_ENABLE_SOCKET_COUNTING`.
    pub enable_socket_counting: Option<bool>,
    /// For the adapter: the cluster secret (at least 16 characters; every node the same).
    /// Every bus message is sealed with it and checked on arrival, so whoever can write to the
    /// broker cannot act as a node. Unset: messages are not authenticated (a warning at start
    /// on a multi-node transport). Env: `ADAPTER_CLUSTER_SECRET`.
    pub cluster_secret: Option<String>,
    /// For the adapter: accepted for compatibility with the reference. It bounds concurrent
    /// local sends there; here a broadcast never waits on a socket (each connection has its
    /// own bounded queue), so there is nothing to bound. Env: `ADAPTER_BUFFER_MULTIPLIER_PER_CPU`.
    pub buffer_multiplier_per_cpu: Option<u64>,
    /// The per-driver tables, by driver name.
    #[serde(flatten)]
    pub tables: BTreeMap<String, serde_json::Value>,
}

impl DriverSection {
    fn named(driver: &str) -> Self {
        Self {
            driver: driver.into(),
            enabled: None,
            fail_open: None,
            requests_timeout_ms: None,
            enable_socket_counting: None,
            cluster_secret: None,
            buffer_multiplier_per_cpu: None,
            tables: BTreeMap::new(),
        }
    }
}

impl Default for DriverSection {
    fn default() -> Self {
        Self::named("")
    }
}

/// Where apps come from: the list below (`memory`), or an app-manager plugin's database.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AppManagerConfig {
    /// `memory` (the list below), `postgres` (also `pgsql`, `postgresql`), `mysql`,
    /// `dynamodb`, or another plugin's. Default: "memory". Env: `APP_MANAGER_DRIVER`.
    pub driver: Option<String>,
    /// The static list of apps.
    pub array: AppArray,
    /// The per-node cache of a database driver's apps.
    pub cache: AppCacheConfig,
    /// How long one lookup in the database may take, in milliseconds. Default: 2000.
    /// Env: `APP_MANAGER_LOOKUP_TIMEOUT_MS`.
    pub lookup_timeout_ms: Option<u64>,
    /// The per-driver tables (`[app_manager.postgres]`), passed to the plugin with the shared
    /// `[database.<backend>]` table.
    #[serde(flatten)]
    pub tables: BTreeMap<String, serde_json::Value>,
}

/// `app_manager.cache`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppCacheConfig {
    /// Accepted for the reference; apps from a database are always cached on each node (a
    /// lookup per connection would put the database on the hot path).
    pub enabled: bool,
    /// Seconds a node trusts an app it looked up before asking the database again: how long an
    /// edit made outside sockhost takes to be seen (edits through the admin API reach every
    /// node at once). Default: 300. Env: `APP_MANAGER_CACHE_TTL`.
    pub ttl: u64,
}

impl Default for AppCacheConfig {
    fn default() -> Self {
        Self { enabled: true, ttl: 300 }
    }
}

/// `app_manager.array`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppArray {
    /// The apps. With none, a default app exists, set from the `SOCKUDO_DEFAULT_APP_*`
    /// environment variables (id `app-id`, key `app-key`, secret `app-secret`).
    pub apps: Vec<AppConfig>,
}

/// One app. Unset limits take the server-wide value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app id used in HTTP API paths.
    pub id: String,
    /// The public key clients connect with.
    pub key: String,
    /// The secret that signs auth strings and API requests.
    pub secret: String,
    /// Whether the app accepts connections and requests. Default: true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Concurrent connections allowed; 0 means unlimited. Default: 0.
    #[serde(default)]
    pub max_connections: u64,
    /// Whether clients may send `client-` events. Default: false.
    #[serde(default)]
    pub enable_client_messages: bool,
    /// With connection recovery on, keep the recovery position (`message_id`, `stream_id`,
    /// `serial`) on protocol-7 frames too and accept `pusher:resume` there, for pusher-js with
    /// the recovery helper (pusher-js ignores the extra keys). Default: false (Pusher's frames
    /// byte for byte).
    #[serde(default)]
    pub v1_recovery_fields: bool,
    /// Client events per second per connection. Default: 10.
    #[serde(default)]
    pub max_client_events_per_second: Option<u32>,
    /// Events per second the HTTP API accepts for this app, each channel of a trigger counting
    /// once; 0 means unlimited. Default: 0.
    #[serde(default)]
    pub max_backend_events_per_second: u32,
    /// HTTP API read requests (channel queries) per second; 0 means unlimited. Default: 0.
    #[serde(default)]
    pub max_read_requests_per_second: u32,
    /// New WebSocket connections per client IP per minute; 0 means unlimited. Default: 0.
    #[serde(default)]
    pub max_connections_per_ip_per_minute: u32,
    /// Require `pusher:signin` within `user_authentication_timeout`. Default: false.
    #[serde(default)]
    pub enable_user_authentication: bool,
    /// Send `pusher_internal:subscription_count` to subscribers of non-presence channels, and
    /// the `subscription_count` webhook. Default: false.
    #[serde(default)]
    pub enable_subscription_count: bool,
    /// Where this app's webhooks go.
    #[serde(default)]
    pub webhooks: Vec<WebhookTarget>,
    /// Collect this app's webhook events for `webhooks.batching_window_ms` and send them
    /// together. Default: false.
    #[serde(default)]
    pub webhook_batching: bool,
    /// Delta settings by channel name or pattern (`*` matches any run of characters); the
    /// server's `delta_compression` where none matches.
    #[serde(default)]
    pub channel_delta_compression: std::collections::BTreeMap<String, ChannelDeltaConfig>,
    /// Overrides `presence.max_members_per_channel`.
    #[serde(default)]
    pub max_presence_members_per_channel: Option<u64>,
    /// Overrides `presence.max_member_size_in_kb`.
    #[serde(default)]
    pub max_presence_member_size_in_kb: Option<u64>,
    /// Overrides `channel_limits.max_name_length`.
    #[serde(default)]
    pub max_channel_name_length: Option<u64>,
    /// Overrides `event_limits.max_channels_at_once`.
    #[serde(default)]
    pub max_event_channels_at_once: Option<u64>,
    /// Overrides `event_limits.max_name_length`.
    #[serde(default)]
    pub max_event_name_length: Option<u64>,
    /// Overrides `event_limits.max_payload_in_kb`.
    #[serde(default)]
    pub max_event_payload_in_kb: Option<u64>,
    /// Overrides `event_limits.max_batch_size`.
    #[serde(default)]
    pub max_event_batch_size: Option<u64>,
    /// Overrides `channel_limits.max_per_connection`.
    #[serde(default)]
    pub max_channels_per_connection: Option<u64>,
    /// Overrides `channel_limits.max_subscriptions_per_minute`.
    #[serde(default)]
    pub max_subscriptions_per_minute: Option<u64>,
    /// Overrides of `connection_recovery` for this app, as Sockudo names them.
    #[serde(default)]
    pub connection_recovery: Option<AppRecoveryConfig>,
    /// This app's history policy.
    #[serde(default)]
    pub history: Option<AppHistoryConfig>,
}

/// An app's overrides of `connection_recovery`. Recovery must be on for the server (its
/// buffers and history store are the server's); an app can turn it off or narrow it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppRecoveryConfig {
    /// Whether the app's events get positions and its clients may resume. Default: the
    /// server's `connection_recovery.enabled`.
    pub enabled: Option<bool>,
    /// How long an event of this app stays recoverable, at most the server's
    /// `buffer_ttl_seconds`.
    pub buffer_ttl_seconds: Option<u64>,
    /// The most one resume of this app replays, at most the server's `max_buffer_size`.
    pub max_buffer_size: Option<u64>,
}

/// An app's history policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppHistoryConfig {
    /// What a publish does when the history store cannot take its event. Default: `reject`.
    pub on_store_failure: StoreFailurePolicy,
}

/// What a publish to a recovery channel does when the history store cannot take its event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreFailurePolicy {
    /// Answer 503 and broadcast nothing: no event goes out that a resume could not recover.
    #[default]
    Reject,
    /// Broadcast without a position: subscribers connected now get it, and a resume from
    /// before it is told `persistence_unavailable` (the channel starts a new stream once the
    /// store is back).
    BestEffort,
}

fn yes() -> bool {
    true
}

/// One webhook endpoint of an app.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    /// The URL events are POSTed to.
    pub url: String,
    /// The kinds sent there (`channel_occupied`, `channel_vacated`, `member_added`,
    /// `member_removed`, `client_event`, `cache_miss`, `subscription_count`); empty means all.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Extra headers sent with each request.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// `cluster_health` (the reference's names and defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterHealthConfig {
    /// Expire silent nodes. Default: true. Env: `CLUSTER_HEALTH_ENABLED`.
    pub enabled: bool,
    /// Milliseconds between heartbeats; at most `node_timeout_ms / 3`. Default: 10000.
    /// Env: `CLUSTER_HEALTH_HEARTBEAT_INTERVAL`.
    pub heartbeat_interval_ms: u64,
    /// Milliseconds of silence after which a node is dead. Default: 30000.
    /// Env: `CLUSTER_HEALTH_NODE_TIMEOUT`.
    pub node_timeout_ms: u64,
    /// Milliseconds between checks for dead nodes. Default: 10000.
    /// Env: `CLUSTER_HEALTH_CLEANUP_INTERVAL`.
    pub cleanup_interval_ms: u64,
}

impl Default for ClusterHealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            heartbeat_interval_ms: 10_000,
            node_timeout_ms: 30_000,
            cleanup_interval_ms: 10_000,
        }
    }
}

/// `webhooks`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Attempts per webhook before it is given up (logged and counted). Each retry waits
    /// longer, as the queue driver's backoff says. Default: 5. Env: `WEBHOOK_MAX_ATTEMPTS`.
    pub max_attempts: u32,
    /// Milliseconds one delivery may take. Default: 5000.
    pub request_timeout_ms: u64,
    /// Milliseconds `channel_vacated` waits before it re-checks the channel, so that a quick
    /// reconnect sends neither vacated nor occupied. Default: 3000.
    pub vacated_delay_ms: u64,
    /// Milliseconds an app with `webhook_batching` collects events for. Default: 50.
    /// Env: `WEBHOOK_BATCHING_DURATION`.
    pub batching_window_ms: u64,
    /// Webhook events one app may have waiting in this node's outbox (its share of the
    /// outbox, so one app's flood cannot push out the others'); beyond it, new events of that
    /// app are dropped, logged and counted. Default: 8192. Env: `WEBHOOK_MAX_QUEUED_PER_APP`.
    pub max_queued_per_app: u64,
    /// Webhook events one app may raise per second on this node (occupied, vacated, member,
    /// cache-miss, client and count events together); beyond it they are dropped, logged and
    /// counted. Default: 1000. Env: `WEBHOOK_MAX_EVENTS_PER_SECOND_PER_APP`.
    pub max_events_per_second_per_app: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            request_timeout_ms: 5000,
            vacated_delay_ms: 3000,
            batching_window_ms: 50,
            max_queued_per_app: 8192,
            max_events_per_second_per_app: 1000,
        }
    }
}

/// `channel_limits`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelLimits {
    /// Longest channel name, prefix included. Default: 200.
    pub max_name_length: u64,
    /// Seconds a cache channel keeps its last event. Default: 3600.
    pub cache_ttl: u64,
    /// Channels one connection may be subscribed to at once; a subscription beyond it is
    /// refused (`pusher:subscription_error`, type `LimitReached`, status 403). Default: 200.
    /// Env: `CHANNEL_LIMITS_MAX_PER_CONNECTION`.
    pub max_per_connection: u64,
    /// Subscribes and unsubscribes one connection may send per minute, together (a reconnect
    /// resubscribing every channel fits). Subscribes beyond it are refused with status 429;
    /// unsubscribes always go through (each needs a subscribe before it). Default: 600.
    /// Env: `CHANNEL_LIMITS_MAX_SUBSCRIPTIONS_PER_MINUTE`.
    pub max_subscriptions_per_minute: u64,
}

impl Default for ChannelLimits {
    fn default() -> Self {
        Self {
            max_name_length: 200,
            cache_ttl: 3600,
            max_per_connection: 200,
            max_subscriptions_per_minute: 600,
        }
    }
}

/// `event_limits`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventLimits {
    /// Channels one trigger may name. Default: 100.
    pub max_channels_at_once: u64,
    /// Longest event name. Default: 200.
    pub max_name_length: u64,
    /// Largest event data, in KiB. Default: 100.
    pub max_payload_in_kb: u64,
    /// Events one batch trigger may carry. Default: 10.
    pub max_batch_size: u64,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            max_channels_at_once: 100,
            max_name_length: 200,
            max_payload_in_kb: 100,
            max_batch_size: 10,
        }
    }
}

/// `presence`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceLimits {
    /// Members one presence channel may hold. Default: 100.
    pub max_members_per_channel: u64,
    /// Largest `user_info`, in KiB. Default: 2.
    pub max_member_size_in_kb: u64,
}

impl Default for PresenceLimits {
    fn default() -> Self {
        Self { max_members_per_channel: 100, max_member_size_in_kb: 2 }
    }
}

/// `http_api`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpApiConfig {
    /// Largest request body, in MiB. Default: 10. Env: `HTTP_API_REQUEST_LIMIT_IN_MB`.
    pub request_limit_in_mb: u64,
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        Self { request_limit_in_mb: 10 }
    }
}

/// `websocket`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Largest message a client may send, in KiB. Default: 64. Env: `WEBSOCKET_MAX_PAYLOAD_KB`.
    pub max_payload_kb: u64,
    /// Messages waiting to be written to one connection; a connection that lets more pile up
    /// is too slow and is closed with 4100. Default: 1000. Env: `WEBSOCKET_MAX_MESSAGES`.
    pub max_messages: u64,
    /// Bytes waiting to be written to one connection; past it, as past `max_messages`, the
    /// connection is closed with 4100; 0 means no byte bound. Default: 1048576 (1 MiB).
    /// Env: `WEBSOCKET_MAX_BYTES`.
    pub max_bytes: u64,
    /// Milliseconds a write to a connection may make no progress (the client accepts no byte)
    /// before the connection is closed with 4100. Default: 30000.
    /// Env: `WEBSOCKET_WRITE_TIMEOUT_MS`.
    pub write_timeout_ms: u64,
    /// A broadcast claims idle plain-TCP sockets and has their frames written by one task of
    /// its own, instead of waking each connection's task (about half the user CPU per
    /// delivery; frames broadcast meanwhile go in the same write). Default: true.
    /// Env: `WEBSOCKET_DIRECT_WRITES`.
    pub direct_writes: bool,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            max_payload_kb: 64,
            max_messages: 1000,
            max_bytes: 1 << 20,
            write_timeout_ms: 30_000,
            direct_writes: true,
        }
    }
}

/// `edge`: the listener's bounds, for WebSocket and HTTP connections alike.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Open connections this node accepts; beyond it a WebSocket is refused with 4100 and an
    /// HTTP request with 503 (health checks still answer). 0 means 90 % of the process's
    /// open-file limit, so the node never runs out of descriptors for its brokers and
    /// health checks. Default: 0. Env: `EDGE_MAX_CONNECTIONS`.
    pub max_connections: u64,
    /// WebSocket connections one client address may hold; 0 means unlimited. Generous by
    /// default, since many users can share one address (NAT). The address is the client's: the
    /// TCP peer's, or the one a trusted proxy names (`trusted_proxies`, `proxy_protocol`).
    /// Default: 1000. Env: `EDGE_MAX_CONNECTIONS_PER_IP`.
    pub max_connections_per_ip: u64,
    /// Plain HTTP connections (the HTTP API, health checks) one client address may hold beside
    /// its WebSockets, so an address at its WebSocket cap can still publish; 0 means unlimited.
    /// Default: 256. Env: `EDGE_MAX_HTTP_CONNECTIONS_PER_IP`.
    pub max_http_connections_per_ip: u64,
    /// Proxies whose word on the client's address is believed: addresses and CIDRs
    /// (`"10.0.0.0/8"`, `"::1"`). From them, a request's client address is the right-most hop
    /// of `Forwarded` (else `X-Forwarded-For`) that is not itself a trusted proxy; their own
    /// connections are not counted against the per-address caps. Default: none.
    /// Env: `EDGE_TRUSTED_PROXIES` (comma-separated).
    pub trusted_proxies: Vec<String>,
    /// Every connection to the main port starts with a PROXY protocol header (v1 or v2, as
    /// HAProxy and cloud load balancers send it), read within `header_timeout_ms`; a connection
    /// without a well-formed one is closed. The address it names is the client's when the peer
    /// is in `trusted_proxies`, or when that list is empty (the port is then reachable through
    /// the proxy only). Default: false. Env: `EDGE_PROXY_PROTOCOL`.
    pub proxy_protocol: bool,
    /// TLS handshakes one client address may start per second; beyond it a connection is closed
    /// before its handshake. 0 means unlimited. Default: 50.
    /// Env: `EDGE_MAX_TLS_HANDSHAKES_PER_IP_PER_SECOND`.
    pub max_tls_handshakes_per_ip_per_second: u64,
    /// Milliseconds a client has to send a request's head, including the wait for the next
    /// request on a kept-alive connection (the idle timeout). Default: 10000.
    /// Env: `EDGE_HEADER_TIMEOUT_MS`.
    pub header_timeout_ms: u64,
    /// Milliseconds a client has to send an HTTP API request's body. Default: 30000.
    /// Env: `EDGE_BODY_TIMEOUT_MS`.
    pub body_timeout_ms: u64,
    /// Milliseconds a closed connection keeps reading (and discarding) what the client still
    /// sends, so that a refusal sent before the client finished (413, 1009) reaches it instead
    /// of a reset. Default: 5000. Env: `EDGE_LINGER_MS`.
    pub linger_ms: u64,
    /// Bytes a closing connection discards at most before it is dropped. Default: 67108864.
    pub linger_max_bytes: u64,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            max_connections: 0,
            max_connections_per_ip: 1000,
            max_http_connections_per_ip: 256,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            max_tls_handshakes_per_ip_per_second: 50,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            linger_ms: 5000,
            linger_max_bytes: 64 << 20,
        }
    }
}

/// `overload`: what a publisher meets when a channel's subscribers fall behind.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverloadConfig {
    /// A channel is congested when most of its subscribers on this node have queues fuller
    /// than this percentage of `websocket.max_messages` / `max_bytes`. Default: 50.
    /// Env: `OVERLOAD_WATERMARK_PERCENT`.
    pub watermark_percent: u64,
    /// Milliseconds an HTTP trigger to a congested channel waits for its subscribers to catch
    /// up before it is refused with 429 and `Retry-After`; 0 refuses at once. Default: 1000.
    /// Env: `OVERLOAD_MAX_PUBLISH_DELAY_MS`.
    pub max_publish_delay_ms: u64,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        Self { watermark_percent: 50, max_publish_delay_ms: 1000 }
    }
}

/// `admin`: the admin API (apps, secret rotation) on its own listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin API. Default: false. Env: `ADMIN_ENABLED`.
    pub enabled: bool,
    /// Address of its listener. Default: "127.0.0.1" (reach it from elsewhere on purpose).
    /// Env: `ADMIN_HOST`.
    pub host: String,
    /// Port of its listener. Default: 6005. Env: `ADMIN_PORT`.
    pub port: u16,
    /// The bearer token every request must carry (`Authorization: Bearer <token>`), at least
    /// 32 characters; there is no default. Env: `ADMIN_TOKEN`.
    pub token: Option<String>,
    /// Host names (without port) a request's `Host` header may name, so a page on another
    /// site cannot reach the listener through DNS rebinding; `"*"` allows any. Default: the
    /// listener's `host`, `localhost`, `127.0.0.1` and `::1`. Env: `ADMIN_ALLOWED_HOSTS`
    /// (comma-separated).
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 6005,
            token: None,
            allowed_hosts: Vec::new(),
        }
    }
}

/// `metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics`. Default: true. Env: `METRICS_ENABLED`.
    pub enabled: bool,
    /// Address for the metrics listener. Default: "127.0.0.1" (it has no authentication; set
    /// "0.0.0.0" to let a scraper on another host reach it). Env: `METRICS_HOST`.
    pub host: String,
    /// Port for the metrics listener. Default: 9601. Env: `METRICS_PORT`.
    pub port: u16,
    /// Prefix of every metric name. Default: "sockhost_". Env: `METRICS_PROMETHEUS_PREFIX`.
    pub prefix: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true, host: "127.0.0.1".into(), port: 9601, prefix: "sockhost_".into() }
    }
}

/// How logs are written (to standard error).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `"text"` (for people) or `"json"` (one object a line, with the connection's or
    /// request's span fields, for a log pipeline). Default: "text". Env: `LOG_FORMAT`.
    pub format: String,
    /// Colour in text logs: `"auto"` (only on a terminal, and never with `NO_COLOR` set),
    /// `"always"` or `"never"`. Default: "auto". Env: `LOG_COLOR`.
    pub color: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: "text".into(), color: "auto".into() }
    }
}

/// When the node says it is ready for traffic and admits new connections.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadinessConfig {
    /// Above this share of its memory limit (the cgroup's `memory.max` when set, else the
    /// machine's memory), the node answers `/ready` with 503 and refuses new WebSocket
    /// connections with 4100, so a load balancer moves traffic away before the node runs out.
    /// 0 turns it off. Default: 0. Env: `READINESS_MAX_MEMORY_PERCENT`.
    pub max_memory_percent: u64,
    /// The same as an absolute resident size in MiB (with both set, the lower one counts).
    /// 0 turns it off. Default: 0. Env: `READINESS_MAX_MEMORY_MB`.
    pub max_memory_mb: u64,
}

/// TLS on the WebSocket and HTTP API port (the reference's names).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SslConfig {
    /// Serve TLS (`wss://`, `https://`). Default: false. Env: `SSL_ENABLED`.
    pub enabled: bool,
    /// The certificate chain, PEM, leaf first. Reloaded when the file changes or on SIGHUP.
    /// Env: `SSL_CERT_PATH`.
    pub cert_path: String,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1). Env: `SSL_KEY_PATH`.
    pub key_path: String,
    /// Also listen for plain HTTP on `http_port` and redirect every request to HTTPS.
    /// Default: false. Env: `SSL_REDIRECT_HTTP`.
    pub redirect_http: bool,
    /// The port of that redirecting listener. Default: 80. Env: `SSL_HTTP_PORT`.
    pub http_port: u16,
}

impl Default for SslConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            cert_path: String::new(),
            key_path: String::new(),
            redirect_http: false,
            http_port: 80,
        }
    }
}

/// Tag filtering: subscribers' `filter` applied to events published with `tags`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TagFilteringConfig {
    /// Apply filters. Off, filters are still checked at subscribe but every subscriber gets
    /// every event. Default: false. Env: `TAG_FILTERING_ENABLED`.
    pub enabled: bool,
}

/// Connection recovery (Sockudo's names and defaults): app events carry a position
/// (`message_id`, `stream_id`, `serial`) on protocol-2 sockets, and a client that reconnects
/// sends `sockudo:resume` with its positions and gets what it missed.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionRecoveryConfig {
    /// Keep each channel's recent events and answer resumes. Default: false. Env:
    /// `CONNECTION_RECOVERY_ENABLED`.
    pub enabled: bool,
    /// How long an event stays recoverable, in seconds. Default: 120. Env:
    /// `CONNECTION_RECOVERY_BUFFER_TTL`.
    pub buffer_ttl_seconds: u64,
    /// Events kept per channel, and the most one resume replays: a larger gap is
    /// `position_expired`, never a partial replay. Default: 100. Env:
    /// `CONNECTION_RECOVERY_MAX_BUFFER_SIZE`.
    pub max_buffer_size: usize,
    /// MiB of kept events on the node at most, over every channel; past it the channels
    /// used longest ago are forgotten first (their resumes then read the history store, or
    /// are told `position_expired`). Default: 64. Env: `CONNECTION_RECOVERY_MAX_MEMORY_MB`.
    pub max_memory_mb: u64,
}

impl Default for ConnectionRecoveryConfig {
    fn default() -> Self {
        Self { enabled: false, buffer_ttl_seconds: 120, max_buffer_size: 100, max_memory_mb: 64 }
    }
}

/// Channel history (Sockudo's names where it has them): a store shared by every node gives
/// each app event its position and keeps the channel's recent events, so that a client
/// resumes on any node, and a node that missed a bus message repairs the gap from it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HistoryConfig {
    /// Keep history (needs `connection_recovery.enabled`). Default: false. Env:
    /// `HISTORY_ENABLED`.
    pub enabled: bool,
    /// The store: `memory` (one node, `local` transport only), `redis`, `redis-cluster`, or
    /// any loaded plugin's history driver. Default: memory. Env: `HISTORY_BACKEND`.
    pub backend: String,
    /// How long an event is kept, in seconds. Default: 86400. Env:
    /// `HISTORY_RETENTION_WINDOW_SECONDS`.
    pub retention_window_seconds: u64,
    /// Events kept per channel. Default: 1000. Env: `HISTORY_MAX_MESSAGES_PER_CHANNEL`.
    pub max_messages_per_channel: u64,
    /// The per-backend tables (`[history.redis]`), passed to the plugin with the shared
    /// `[database.<backend>]` table.
    #[serde(flatten)]
    pub tables: BTreeMap<String, serde_json::Value>,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            backend: "memory".into(),
            retention_window_seconds: 86_400,
            max_messages_per_channel: 1000,
            tables: BTreeMap::new(),
        }
    }
}

/// Idempotent publish (Sockudo's names and defaults): a trigger with an idempotency key (the
/// body's `idempotency_key`, else the `X-Idempotency-Key` header) that comes again within the
/// window gets the first answer and is not published again. The key is claimed through the
/// rate-limiter driver and the answer kept in the cache driver, so with shared drivers (Redis)
/// it holds for the whole cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// Default: true. Env: `IDEMPOTENCY_ENABLED`.
    pub enabled: bool,
    /// How long a key is remembered, in seconds. Default: 120. Env: `IDEMPOTENCY_TTL_SECONDS`.
    pub ttl_seconds: u64,
    /// The longest key, in characters. Default: 128. Env: `IDEMPOTENCY_MAX_KEY_LENGTH`.
    pub max_key_length: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self { enabled: true, ttl_seconds: 120, max_key_length: 128 }
    }
}

/// Delta compression: subscribers that ask for it get each event as the difference from the
/// previous one of its stream. Sockudo's names and defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeltaCompressionConfig {
    /// Grant deltas to clients that ask. Default: true. Env: `DELTA_COMPRESSION_ENABLED`.
    pub enabled: bool,
    /// `fossil` or `xdelta3` (`vcdiff`), for subscribers that name none. Default: fossil. Env:
    /// `DELTA_COMPRESSION_ALGORITHM`.
    pub algorithm: String,
    /// Deltas in a row before an event goes whole again. Default: 10. Env:
    /// `DELTA_COMPRESSION_FULL_MESSAGE_INTERVAL`.
    pub full_message_interval: u32,
    /// Events shorter than this many bytes go whole. Default: 100. Env:
    /// `DELTA_COMPRESSION_MIN_MESSAGE_SIZE`.
    pub min_message_size: usize,
    /// A stream without events this long is forgotten. Default: 300. Env:
    /// `DELTA_COMPRESSION_MAX_STATE_AGE_SECS`.
    pub max_state_age_secs: u64,
    /// Channels one connection may receive deltas on; further subscriptions get events whole.
    /// Default: 100.
    pub max_channel_states_per_socket: usize,
    /// Streams (event and conflation key pairs) a channel keeps on a node; the least recently
    /// used is forgotten beyond. Default: 100.
    pub max_conflation_states_per_channel: Option<usize>,
    /// Dotted path in the event data whose value keys separate streams (`asset`,
    /// `market.symbol`). Default: none. Env: `DELTA_COMPRESSION_CONFLATION_KEY_PATH`.
    pub conflation_key_path: Option<String>,
    /// Leave `algorithm` out of delta frames. Default: false.
    pub omit_delta_algorithm: bool,
}

impl Default for DeltaCompressionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            algorithm: "fossil".into(),
            full_message_interval: 10,
            min_message_size: 100,
            max_state_age_secs: 300,
            max_channel_states_per_socket: 100,
            max_conflation_states_per_channel: Some(100),
            conflation_key_path: None,
            omit_delta_algorithm: false,
        }
    }
}

/// An app's delta setting for the channels a name or pattern matches: `inherit`, `disabled`,
/// an algorithm name, or a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ChannelDeltaConfig {
    /// `inherit`, `disabled`, `fossil` or `xdelta3`.
    Simple(String),
    /// The settings spelled out.
    Full(ChannelDeltaTable),
}

/// [`ChannelDeltaConfig`] spelled out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelDeltaTable {
    /// Default: true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The algorithm for subscribers that name none; the server's if unset.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// The conflation key path on these channels; the server's if unset.
    #[serde(default)]
    pub conflation_key: Option<String>,
    /// Streams a channel keeps; the server's if unset.
    #[serde(default)]
    pub max_conflation_keys: Option<usize>,
    /// Accepted for Sockudo's files; a stream keeps one base per key whatever it says.
    #[serde(default)]
    pub max_messages_per_key: Option<usize>,
    /// Accepted for Sockudo's files; tags never reach clients here.
    #[serde(default)]
    pub enable_tags: Option<bool>,
}
