//! The validated settings the server runs with: every rule is checked once here, so the rest of
//! the host trusts its settings.

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::{
    App, AppConfig, AppRecovery, ClusterSettings, Config, ConfigError, DriverChoice, DriverSection,
    DriverSelection, LogSettings, StoreFailurePolicy, StreamSettings, delta_rules,
};
use crate::protocol::webhook::Kind;

/// Per-app limits, with the server-wide defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest channel name.
    pub max_channel_name_length: usize,
    /// Channels one trigger may name.
    pub max_event_channels_at_once: usize,
    /// Longest event name.
    pub max_event_name_length: usize,
    /// Largest event data, in bytes.
    pub max_event_payload_bytes: usize,
    /// Events per batch trigger.
    pub max_event_batch_size: usize,
    /// Members per presence channel.
    pub max_presence_members: usize,
    /// Largest presence `user_info`, in bytes.
    pub max_presence_member_size_bytes: usize,
    /// Client events per second per connection.
    pub max_client_events_per_second: u32,
    /// Channels one connection may be subscribed to at once.
    pub max_channels_per_connection: usize,
    /// Subscribes and unsubscribes per connection per minute.
    pub max_subscriptions_per_minute: u32,
}

/// Connection recovery's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverySettings {
    /// How long an event stays recoverable.
    pub ttl: Duration,
    /// Events kept per channel, and the most one resume replays.
    pub max_events: usize,
    /// Bytes of kept events on the node at most, over every channel.
    pub max_bytes: usize,
    /// With history on, what the store keeps: positions then come from it, for the whole
    /// cluster.
    pub history: Option<HistoryLimits>,
}

/// Idempotent publish's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencySettings {
    /// How long a key is remembered.
    pub ttl: Duration,
    /// The longest key, in characters.
    pub max_key_length: usize,
}

/// What the history store keeps of each channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Events kept per channel.
    pub max_events: u64,
    /// How long an event is kept.
    pub max_age: Duration,
}

/// Webhook delivery settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Attempts before a webhook is given up.
    pub max_attempts: u32,
    /// How long one delivery may take.
    pub request_timeout: Duration,
    /// How long `channel_vacated` waits before re-checking.
    pub vacated_delay: Duration,
    /// How long batching apps collect events.
    pub batching_window: Duration,
    /// Events one app may have waiting in the outbox.
    pub max_queued_per_app: usize,
    /// Events one app may raise per second on this node.
    pub max_events_per_second_per_app: u64,
}

/// The listener's bounds (`[edge]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSettings {
    /// Open connections on this node; `None` until resolved at start from the open-file limit.
    pub max_connections: Option<usize>,
    /// WebSocket connections per client address; 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// Plain HTTP connections per client address beside its WebSockets; 0 = unlimited.
    pub max_http_connections_per_ip: usize,
    /// Broadcasts may write to a plain-TCP WebSocket themselves (`websocket.direct_writes`):
    /// its stream is then shared behind a lock.
    pub direct_writes: bool,
    /// Peers whose word on the client's address is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Every connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// TLS handshakes per client address per second; 0 = unlimited.
    pub max_tls_handshakes_per_ip_per_second: u32,
    /// Time to send a request head (and the keep-alive idle time).
    pub header_timeout: Duration,
    /// Time to send an HTTP API body.
    pub body_timeout: Duration,
    /// How long a closed connection discards what the client still sends.
    pub linger: Duration,
    /// How much it discards at most.
    pub linger_max_bytes: u64,
}

/// Push-back on publishers (`[overload]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverloadSettings {
    /// Queue fill, in percent, above which a subscriber counts as behind.
    pub watermark_percent: u8,
    /// How long a trigger to a congested channel waits before 429.
    pub max_publish_delay: Duration,
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// Sent in `connection_established`; silence this long makes the server ping.
    pub activity_timeout: Duration,
    /// How long a ping may go unanswered.
    pub pong_timeout: Duration,
    /// How long shutdown waits for connections to close.
    pub shutdown_grace_period: Duration,
    /// The drivers to construct.
    pub drivers: DriverSelection,
    /// Whether rate limits are enforced.
    pub rate_limiter_enabled: bool,
    /// Whether a failing rate limiter lets requests through (true) or refuses them.
    pub rate_limiter_fail_open: bool,
    /// The apps of the configuration file (with the `memory` app manager).
    pub apps: Vec<App>,
    /// How the app manager's records become apps, and how long they are trusted.
    pub app_records: AppRecordRules,
    /// The admin API, when enabled.
    pub admin: Option<AdminSettings>,
    /// Largest HTTP API request body, in bytes.
    pub http_body_limit: usize,
    /// Largest WebSocket message a client may send, in bytes.
    pub ws_max_message_bytes: usize,
    /// Outbound messages that may wait per connection.
    pub ws_max_queued_messages: usize,
    /// `(host, port)` of the metrics listener, if enabled.
    pub metrics_addr: Option<(String, u16)>,
    /// How long a connection of an app that requires sign-in has to sign in.
    pub user_authentication_timeout: Duration,
    /// How long a cache channel keeps its last event.
    pub cache_ttl: Duration,
    /// Webhook delivery.
    pub webhooks: WebhookSettings,
    /// Cluster timing.
    pub cluster: ClusterSettings,
    /// Prefix of metric names.
    pub metrics_prefix: String,
    /// Bytes queued to one connection at most; 0 = no byte bound.
    pub ws_max_queued_bytes: usize,
    /// How long a write to a connection may make no progress.
    pub ws_write_timeout: Duration,
    /// The listener's bounds.
    pub edge: EdgeSettings,
    /// Push-back on publishers.
    pub overload: OverloadSettings,
    /// How logs are written.
    pub log: LogSettings,
    /// Above this share of the memory limit, in percent, the node is not ready; `None`: never.
    pub max_memory_percent: Option<u8>,
    /// Above this resident size, in bytes, the node is not ready; `None`: never.
    pub max_memory_bytes: Option<u64>,
    /// TLS on the main port; `None`: plain.
    pub tls: Option<TlsSettings>,
    /// Whether subscribers' tag filters are applied.
    pub tag_filtering: bool,
    /// Connection recovery; `None`: off (a resume is answered 4301).
    pub recovery: Option<RecoverySettings>,
    /// Idempotent publish; `None`: off (keys are ignored).
    pub idempotency: Option<IdempotencySettings>,
    /// Whether clients are granted delta compression (the server's `delta_compression`).
    pub delta: Option<Arc<StreamSettings>>,
    /// Channels one connection may receive deltas on.
    pub delta_channels_per_socket: usize,
}

/// What makes an app manager's record an app: the server-wide limits and delta settings it
/// starts from, and how long a node trusts it.
#[derive(Debug, Clone)]
pub struct AppRecordRules {
    /// The limits an app does not set.
    pub defaults: Limits,
    /// The server's delta compression.
    pub delta: Option<Arc<StreamSettings>>,
    /// How long a node serves a looked-up app before asking again (`app_manager.cache.ttl`).
    pub ttl: Duration,
    /// How long one lookup may take.
    pub lookup_timeout: Duration,
}

/// The admin API's listener and token.
#[derive(Clone)]
pub struct AdminSettings {
    /// `(host, port)` it listens on.
    pub addr: (String, u16),
    /// The bearer token.
    pub token: String,
    /// Host names a request's `Host` may name (lowercase, without port); empty allows any.
    pub allowed_hosts: Vec<String>,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never in a log line.
        f.debug_struct("AdminSettings").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Settings {
    /// Check `config` and build the settings, or every problem found.
    pub fn from_config(config: Config) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let delta_server = delta_rules::server(&config.delta_compression, &mut errors);
        check_bounds(&config, &mut errors);
        check_rules(&config, &mut errors);
        let log = LogSettings::parse(&config.log, config.debug)
            .map_err(|(place, problem)| err(&mut errors, place, problem))
            .unwrap_or_default();
        let tls = config.ssl.enabled.then(|| TlsSettings {
            cert: config.ssl.cert_path.clone().into(),
            key: config.ssl.key_path.clone().into(),
            redirect_port: config.ssl.redirect_http.then_some(config.ssl.http_port),
        });
        let defaults = default_limits(&config);
        let apps = apps(&config, &defaults, delta_server.as_ref(), &mut errors);
        let drivers = drivers(&config, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let cluster = cluster_settings(&config);
        let (webhooks, edge) = (webhook_settings(&config), edge_settings(&config, &mut errors));
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            host: config.host,
            port: config.port,
            activity_timeout: Duration::from_secs(config.activity_timeout),
            pong_timeout: Duration::from_secs(config.pong_timeout),
            shutdown_grace_period: Duration::from_secs(config.shutdown_grace_period),
            drivers,
            rate_limiter_enabled: config.rate_limiter.enabled.unwrap_or(true),
            rate_limiter_fail_open: config.rate_limiter.fail_open.unwrap_or(true),
            apps,
            app_records: AppRecordRules {
                defaults,
                delta: delta_server.clone(),
                ttl: Duration::from_secs(config.app_manager.cache.ttl),
                lookup_timeout: Duration::from_millis(
                    config.app_manager.lookup_timeout_ms.unwrap_or(2000),
                ),
            },
            admin: config.admin.enabled.then(|| AdminSettings {
                addr: (config.admin.host.clone(), config.admin.port),
                token: config.admin.token.clone().unwrap_or_default(),
                allowed_hosts: admin_hosts(&config.admin),
            }),
            http_body_limit: to_usize(
                config.http_api.request_limit_in_mb.saturating_mul(1024 * 1024),
            ),
            ws_max_message_bytes: to_usize(config.websocket.max_payload_kb.saturating_mul(1024)),
            ws_max_queued_messages: to_usize(config.websocket.max_messages),
            metrics_addr: config
                .metrics
                .enabled
                .then(|| (config.metrics.host.clone(), config.metrics.port)),
            metrics_prefix: config.metrics.prefix,
            user_authentication_timeout: Duration::from_secs(config.user_authentication_timeout),
            cache_ttl: Duration::from_secs(config.channel_limits.cache_ttl),
            cluster,
            webhooks,
            ws_max_queued_bytes: to_usize(config.websocket.max_bytes),
            ws_write_timeout: Duration::from_millis(config.websocket.write_timeout_ms),
            edge,
            overload: OverloadSettings {
                watermark_percent: u8::try_from(config.overload.watermark_percent).unwrap_or(99),
                max_publish_delay: Duration::from_millis(config.overload.max_publish_delay_ms),
            },
            log,
            max_memory_percent: u8::try_from(config.readiness.max_memory_percent)
                .ok()
                .filter(|p| *p > 0),
            max_memory_bytes: (config.readiness.max_memory_mb > 0)
                .then(|| config.readiness.max_memory_mb.saturating_mul(1024 * 1024)),
            tls,
            tag_filtering: config.tag_filtering.enabled,
            idempotency: config.idempotency.enabled.then(|| IdempotencySettings {
                ttl: Duration::from_secs(config.idempotency.ttl_seconds),
                max_key_length: config.idempotency.max_key_length,
            }),
            recovery: config.connection_recovery.enabled.then(|| RecoverySettings {
                ttl: Duration::from_secs(config.connection_recovery.buffer_ttl_seconds),
                max_events: config.connection_recovery.max_buffer_size,
                max_bytes: usize::try_from(
                    config.connection_recovery.max_memory_mb.saturating_mul(1024 * 1024),
                )
                .unwrap_or(usize::MAX),
                history: config.history.enabled.then(|| HistoryLimits {
                    max_events: config.history.max_messages_per_channel,
                    max_age: Duration::from_secs(config.history.retention_window_seconds),
                }),
            }),
            delta: delta_server,
            delta_channels_per_socket: config.delta_compression.max_channel_states_per_socket,
        })
    }
}

/// Record a problem at `place`.
fn err(errors: &mut Vec<ConfigError>, place: &str, problem: String) {
    errors.push(ConfigError { place: place.into(), problem });
}

/// Values that must be at least 1, and the heartbeat against the node timeout.
fn check_bounds(config: &Config, errors: &mut Vec<ConfigError>) {
    for (name, value) in [
        ("activity_timeout", config.activity_timeout),
        ("pong_timeout", config.pong_timeout),
        ("channel_limits.max_name_length", config.channel_limits.max_name_length),
        ("event_limits.max_channels_at_once", config.event_limits.max_channels_at_once),
        ("event_limits.max_name_length", config.event_limits.max_name_length),
        ("event_limits.max_payload_in_kb", config.event_limits.max_payload_in_kb),
        ("event_limits.max_batch_size", config.event_limits.max_batch_size),
        ("presence.max_members_per_channel", config.presence.max_members_per_channel),
        ("presence.max_member_size_in_kb", config.presence.max_member_size_in_kb),
        ("http_api.request_limit_in_mb", config.http_api.request_limit_in_mb),
        ("websocket.max_payload_kb", config.websocket.max_payload_kb),
        ("websocket.max_messages", config.websocket.max_messages),
        ("user_authentication_timeout", config.user_authentication_timeout),
        ("channel_limits.cache_ttl", config.channel_limits.cache_ttl),
        ("webhooks.max_attempts", config.webhooks.max_attempts.into()),
        ("webhooks.request_timeout_ms", config.webhooks.request_timeout_ms),
        ("cluster_health.heartbeat_interval_ms", config.cluster_health.heartbeat_interval_ms),
        ("cluster_health.node_timeout_ms", config.cluster_health.node_timeout_ms),
        ("cluster_health.cleanup_interval_ms", config.cluster_health.cleanup_interval_ms),
        ("channel_limits.max_per_connection", config.channel_limits.max_per_connection),
        (
            "channel_limits.max_subscriptions_per_minute",
            config.channel_limits.max_subscriptions_per_minute,
        ),
        ("websocket.write_timeout_ms", config.websocket.write_timeout_ms),
        ("webhooks.max_queued_per_app", config.webhooks.max_queued_per_app),
        ("webhooks.max_events_per_second_per_app", config.webhooks.max_events_per_second_per_app),
        ("edge.header_timeout_ms", config.edge.header_timeout_ms),
        ("edge.body_timeout_ms", config.edge.body_timeout_ms),
        ("overload.watermark_percent", config.overload.watermark_percent),
    ] {
        if value == 0 {
            err(errors, name, "must be at least 1".into());
        }
    }
    let health = &config.cluster_health;
    if health.heartbeat_interval_ms > health.node_timeout_ms / 3 {
        err(
            errors,
            "cluster_health.heartbeat_interval_ms",
            format!(
                "must be at most node_timeout_ms / 3 ({}), or healthy nodes are taken for dead",
                health.node_timeout_ms / 3
            ),
        );
    }
}

/// Connection recovery's bounds, and where positions come from: without history, from this
/// node's memory, which a resume on another node could not be vouched for; with history, from
/// the store, which must be shared by every node unless the node is alone.
fn check_recovery(config: &Config, errors: &mut Vec<ConfigError>) {
    let recovery = &config.connection_recovery;
    let history = &config.history;
    let transport = config.adapter.driver.trim();
    let alone = transport.is_empty() || transport == "local";
    if recovery.enabled && !history.enabled && !alone {
        err(
            errors,
            "connection_recovery.enabled",
            format!(
                "without history, positions come from this node's memory, so it works with the `local` transport only (not `{transport}`); set history.enabled with a shared history.backend (redis, redis-cluster)"
            ),
        );
    }
    if history.enabled && !recovery.enabled {
        let problem = "history is read through resumes: set connection_recovery.enabled too";
        err(errors, "history.enabled", problem.to_string());
    }
    if history.enabled && history.backend.trim() == "memory" && !alone {
        err(
            errors,
            "history.backend",
            format!(
                "`memory` keeps history in this node only, so it works with the `local` transport only (not `{transport}`); use a shared backend (redis, redis-cluster)"
            ),
        );
    }
    if history.enabled && !(1..=MAX_HISTORY_EVENTS).contains(&history.max_messages_per_channel) {
        let problem = format!("must be 1 to {MAX_HISTORY_EVENTS}");
        err(errors, "history.max_messages_per_channel", problem);
    }
    let idempotency = &config.idempotency;
    if idempotency.enabled && !(1..=MAX_HISTORY_SECS).contains(&idempotency.ttl_seconds) {
        let problem = format!("must be 1 to {MAX_HISTORY_SECS}");
        err(errors, "idempotency.ttl_seconds", problem);
    }
    if idempotency.enabled && !(1..=1024).contains(&idempotency.max_key_length) {
        err(errors, "idempotency.max_key_length", "must be 1 to 1024".to_string());
    }
    if history.enabled && !(1..=MAX_HISTORY_SECS).contains(&history.retention_window_seconds) {
        let problem = format!("must be 1 to {MAX_HISTORY_SECS}");
        err(errors, "history.retention_window_seconds", problem);
    }
    if !(1..=MAX_RECOVERY_BUFFER).contains(&recovery.max_buffer_size) {
        let problem = format!("must be 1 to {MAX_RECOVERY_BUFFER}");
        err(errors, "connection_recovery.max_buffer_size", problem);
    }
    if !(1..=MAX_RECOVERY_TTL_SECS).contains(&recovery.buffer_ttl_seconds) {
        let problem = format!("must be 1 to {MAX_RECOVERY_TTL_SECS}");
        err(errors, "connection_recovery.buffer_ttl_seconds", problem);
    }
    if !(1..=MAX_RECOVERY_MEMORY_MB).contains(&recovery.max_memory_mb) {
        let problem = format!("must be 1 to {MAX_RECOVERY_MEMORY_MB}");
        err(errors, "connection_recovery.max_memory_mb", problem);
    }
}

/// MiB the node's recovery buffers may be given at most (1 TiB: a typo, not a plan).
const MAX_RECOVERY_MEMORY_MB: u64 = 1024 * 1024;

/// Events one channel's history may hold at most.
const MAX_HISTORY_EVENTS: u64 = 1_000_000;
/// The longest an event may stay in history, in seconds (a year).
const MAX_HISTORY_SECS: u64 = 366 * 86_400;
/// Events one channel's recovery buffer may hold at most.
const MAX_RECOVERY_BUFFER: usize = 10_000;
/// The longest an event may stay recoverable, in seconds (a day).
const MAX_RECOVERY_TTL_SECS: u64 = 86_400;

/// The rules between settings and on their values.
fn check_rules(config: &Config, errors: &mut Vec<ConfigError>) {
    check_recovery(config, errors);
    if config.ssl.enabled {
        for (place, value) in
            [("ssl.cert_path", &config.ssl.cert_path), ("ssl.key_path", &config.ssl.key_path)]
        {
            if value.trim().is_empty() {
                err(errors, place, "must name a PEM file when ssl.enabled is true".into());
            }
        }
    }
    if config.readiness.max_memory_percent > 100 {
        err(errors, "readiness.max_memory_percent", "must be at most 100 (0 turns it off)".into());
    }
    if config.overload.watermark_percent > 99 {
        err(
            errors,
            "overload.watermark_percent",
            "must be below 100, or queues fill before a channel counts as congested".into(),
        );
    }
    if config.channel_limits.max_subscriptions_per_minute > u64::from(u32::MAX) {
        err(errors, "channel_limits.max_subscriptions_per_minute", "is too large".into());
    }
    if let Some(secret) = &config.adapter.cluster_secret
        && !secret.is_empty()
        && secret.chars().count() < 16
    {
        err(
            errors,
            "adapter.cluster_secret",
            "must be at least 16 characters (a long random string, the same on every node)".into(),
        );
    }
    if config.adapter.requests_timeout_ms == Some(0) {
        err(errors, "adapter.requests_timeout_ms", "must be at least 1".into());
    }
    if config.metrics.enabled && config.metrics.port == config.port && config.port != 0 {
        err(errors, "metrics.port", format!("must differ from port ({})", config.port));
    }
    if let Some(token) = config.admin.token.as_deref().filter(|_| config.admin.enabled) {
        if token.chars().count() < 32 {
            err(errors, "admin.token", "must be at least 32 characters".into());
        }
    } else if config.admin.enabled {
        let problem = "required when the admin API is enabled (ADMIN_TOKEN); there is no default";
        err(errors, "admin.token", problem.into());
    }
    if config.admin.enabled && config.admin.port == config.port && config.port != 0 {
        err(errors, "admin.port", format!("must differ from port ({})", config.port));
    }
    if config.app_manager.cache.ttl == 0 {
        err(errors, "app_manager.cache.ttl", "must be at least 1".into());
    }
    if config.app_manager.lookup_timeout_ms == Some(0) {
        err(errors, "app_manager.lookup_timeout_ms", "must be at least 1".into());
    }
}

/// The server-wide limits every app starts from.
fn default_limits(config: &Config) -> Limits {
    Limits {
        max_channel_name_length: to_usize(config.channel_limits.max_name_length),
        max_event_channels_at_once: to_usize(config.event_limits.max_channels_at_once),
        max_event_name_length: to_usize(config.event_limits.max_name_length),
        max_event_payload_bytes: to_usize(
            config.event_limits.max_payload_in_kb.saturating_mul(1024),
        ),
        max_event_batch_size: to_usize(config.event_limits.max_batch_size),
        max_presence_members: to_usize(config.presence.max_members_per_channel),
        max_presence_member_size_bytes: to_usize(
            config.presence.max_member_size_in_kb.saturating_mul(1024),
        ),
        max_client_events_per_second: 10,
        max_channels_per_connection: to_usize(config.channel_limits.max_per_connection),
        max_subscriptions_per_minute: u32::try_from(
            config.channel_limits.max_subscriptions_per_minute,
        )
        .unwrap_or(u32::MAX),
    }
}

/// The apps of the config file, checked: unique ids and keys, limits, webhooks, delta rules.
fn apps(
    config: &Config,
    defaults: &Limits,
    delta_server: Option<&Arc<StreamSettings>>,
    errors: &mut Vec<ConfigError>,
) -> Vec<App> {
    let mut apps = Vec::new();
    let mut ids = HashMap::new();
    let mut keys = HashMap::new();
    for (i, app) in config.app_manager.array.apps.iter().enumerate() {
        let place = |field: &str| format!("app_manager.array.apps[{i}].{field}");
        for (field, value) in [("id", &app.id), ("key", &app.key), ("secret", &app.secret)] {
            if value.trim().is_empty() {
                err(errors, &place(field), "must not be empty".into());
            }
        }
        if let Some(problem) = id_problem(&app.id) {
            err(errors, &place("id"), problem.into());
        }
        if let Some(first) = ids.insert(app.id.clone(), i) {
            err(errors, &place("id"), format!("duplicate id {:?} (also apps[{first}])", app.id));
        }
        if let Some(first) = keys.insert(app.key.clone(), i) {
            err(errors, &place("key"), format!("duplicate key {:?} (also apps[{first}])", app.key));
        }
        apps.push(app_of(app, defaults, delta_server, &place, errors));
    }
    apps
}

/// One app from its settings (the file's, or a record of the app manager's), checked; the
/// problems go to `errors`, each at `place(field)`.
pub(crate) fn app_of(
    app: &AppConfig,
    defaults: &Limits,
    delta_server: Option<&Arc<StreamSettings>>,
    place: &dyn Fn(&str) -> String,
    errors: &mut Vec<ConfigError>,
) -> App {
    let limits = app_limits(app, defaults, place, errors);
    check_webhooks(app, place, errors);
    App {
        id: app.id.clone(),
        key: app.key.clone(),
        secret: app.secret.clone(),
        enabled: app.enabled,
        max_connections: app.max_connections,
        enable_client_messages: app.enable_client_messages,
        v1_recovery_fields: app.v1_recovery_fields,
        recovery: app_recovery(app, place, errors),
        limits,
        max_backend_events_per_second: app.max_backend_events_per_second,
        max_read_requests_per_second: app.max_read_requests_per_second,
        max_connections_per_ip_per_minute: app.max_connections_per_ip_per_minute,
        enable_user_authentication: app.enable_user_authentication,
        enable_subscription_count: app.enable_subscription_count,
        webhooks: app.webhooks.clone(),
        webhook_batching: app.webhook_batching,
        deltas: delta_rules::app(delta_server, &app.channel_delta_compression, place, errors),
        previous_secret: None,
    }
}

/// An app's recovery settings; 0 is refused where it would turn recovery off by stealth (the
/// app says `enabled = false` for that).
fn app_recovery(
    app: &AppConfig,
    place: &dyn Fn(&str) -> String,
    errors: &mut Vec<ConfigError>,
) -> AppRecovery {
    let own = app.connection_recovery.clone().unwrap_or_default();
    let mut positive = |value: Option<u64>, field: &str| match value {
        Some(0) => {
            err(errors, &place(field), "must be at least 1".into());
            None
        }
        value => value,
    };
    let ttl = positive(own.buffer_ttl_seconds, "connection_recovery.buffer_ttl_seconds");
    let max_replay = positive(own.max_buffer_size, "connection_recovery.max_buffer_size");
    let policy = app.history.as_ref().map(|h| h.on_store_failure).unwrap_or_default();
    AppRecovery {
        enabled: own.enabled.unwrap_or(true),
        ttl: ttl.map(Duration::from_secs),
        max_replay: max_replay.map(to_usize),
        best_effort: policy == StoreFailurePolicy::BestEffort,
    }
}

/// An app's limits: its own where it sets them, else the server's; 0 is refused.
fn app_limits(
    app: &AppConfig,
    defaults: &Limits,
    place: &dyn Fn(&str) -> String,
    errors: &mut Vec<ConfigError>,
) -> Limits {
    let mut pick = |value: Option<u64>, default: usize, field: &str, scale: u64| match value {
        Some(0) => {
            err(errors, &place(field), "must be at least 1".into());
            default
        }
        Some(v) => to_usize(v.saturating_mul(scale)),
        None => default,
    };
    let d = defaults;
    Limits {
        max_channel_name_length: pick(
            app.max_channel_name_length,
            d.max_channel_name_length,
            "max_channel_name_length",
            1,
        ),
        max_event_channels_at_once: pick(
            app.max_event_channels_at_once,
            d.max_event_channels_at_once,
            "max_event_channels_at_once",
            1,
        ),
        max_event_name_length: pick(
            app.max_event_name_length,
            d.max_event_name_length,
            "max_event_name_length",
            1,
        ),
        max_event_payload_bytes: pick(
            app.max_event_payload_in_kb,
            d.max_event_payload_bytes,
            "max_event_payload_in_kb",
            1024,
        ),
        max_event_batch_size: pick(
            app.max_event_batch_size,
            d.max_event_batch_size,
            "max_event_batch_size",
            1,
        ),
        max_presence_members: pick(
            app.max_presence_members_per_channel,
            d.max_presence_members,
            "max_presence_members_per_channel",
            1,
        ),
        max_presence_member_size_bytes: pick(
            app.max_presence_member_size_in_kb,
            d.max_presence_member_size_bytes,
            "max_presence_member_size_in_kb",
            1024,
        ),
        max_client_events_per_second: u32::try_from(pick(
            app.max_client_events_per_second.map(u64::from),
            d.max_client_events_per_second as usize,
            "max_client_events_per_second",
            1,
        ))
        .unwrap_or(u32::MAX),
        max_channels_per_connection: pick(
            app.max_channels_per_connection,
            d.max_channels_per_connection,
            "max_channels_per_connection",
            1,
        ),
        max_subscriptions_per_minute: u32::try_from(pick(
            app.max_subscriptions_per_minute,
            d.max_subscriptions_per_minute as usize,
            "max_subscriptions_per_minute",
            1,
        ))
        .unwrap_or(u32::MAX),
    }
}

/// An app's webhooks: http(s) URLs, known kinds, valid header names.
fn check_webhooks(app: &AppConfig, place: &dyn Fn(&str) -> String, errors: &mut Vec<ConfigError>) {
    for (w, hook) in app.webhooks.iter().enumerate() {
        let hook_place = |field: &str| place(&format!("webhooks[{w}].{field}"));
        match reqwest::Url::parse(&hook.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(url) => err(
                errors,
                &hook_place("url"),
                format!("must be http or https, not {}", url.scheme()),
            ),
            Err(e) => err(errors, &hook_place("url"), format!("is not a URL: {e}")),
        }
        for kind in &hook.event_types {
            if Kind::parse(kind).is_none() {
                err(
                    errors,
                    &hook_place("event_types"),
                    format!(
                        "unknown kind {kind:?}; known: {}",
                        Kind::ALL.map(Kind::name).join(", ")
                    ),
                );
            }
        }
        for name in hook.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                err(errors, &hook_place("headers"), format!("{name:?} is not a valid header name"));
            }
        }
    }
}

/// What is wrong with `id` as an app's id beyond being empty or too long, in the configuration
/// file or a database row: the keys kept for an app in the shared cache and rate limiter
/// (idempotent publishes, cache channels) are its id and the rest joined by `:`, so an id
/// holding one could name another app's keys. (Database lookups and the admin API take only
/// letters, digits, `.`, `_` and `-` already.)
pub(crate) fn id_problem(id: &str) -> Option<&'static str> {
    id.contains(':').then_some(
        "must not contain `:` (it separates an app's id from the rest of the keys kept for it in the cache and rate limiter)",
    )
}

/// The drivers chosen, each with its table as TOML text.
fn drivers(config: &Config, errors: &mut Vec<ConfigError>) -> DriverSelection {
    let mut choice = |kind: &str, section: &DriverSection, default: &str| -> DriverChoice {
        // A section that names no driver (only its tables) keeps the default driver.
        let name = if section.driver.trim().is_empty() { default } else { section.driver.as_str() };
        let table = section.tables.get(name).or_else(|| {
            // The reference names the redis-cluster adapter's table `adapter.cluster`.
            (name == "redis-cluster").then(|| section.tables.get("cluster")).flatten()
        });
        driver_choice(config, kind, name, table, errors)
    };
    let transport = choice("adapter", &config.adapter, "local");
    let cache = choice("cache", &config.cache, "memory");
    let queue = choice("queue", &config.queue, "memory");
    let rate_limiter = choice("rate_limiter", &config.rate_limiter, "memory");
    let manager = &config.app_manager;
    let app_manager = match manager.driver.as_deref().map(str::trim) {
        None | Some("" | "memory") => None,
        // The reference's other names of its PostgreSQL driver.
        Some("pgsql" | "postgresql" | "postgres") => {
            let table =
                ["postgres", "pgsql", "postgresql"].iter().find_map(|n| manager.tables.get(*n));
            Some(driver_choice(config, "app_manager", "postgres", table, errors))
        }
        Some(name) => {
            Some(driver_choice(config, "app_manager", name, manager.tables.get(name), errors))
        }
    };
    let history = config.history.enabled.then(|| {
        let name = match config.history.backend.trim() {
            "" => "memory",
            // The reference's other names of PostgreSQL.
            "pgsql" | "postgresql" => "postgres",
            name => name,
        };
        driver_choice(config, "history", name, config.history.tables.get(name), errors)
    });
    DriverSelection { transport, cache, queue, rate_limiter, app_manager, history }
}

/// A driver with its table as TOML text. The shared backend table (`database.redis` for
/// `redis` and `redis-cluster`, `database.postgres` for `postgres`) goes along as `database`,
/// unless the driver's own table sets one.
fn driver_choice(
    config: &Config,
    kind: &str,
    name: &str,
    table: Option<&serde_json::Value>,
    errors: &mut Vec<ConfigError>,
) -> DriverChoice {
    let backend = name.split('-').next().unwrap_or(name);
    let mut table = table.cloned().unwrap_or_else(|| serde_json::Value::Object(Default::default()));
    if let (Some(shared), Some(object)) = (config.database.get(backend), table.as_object_mut()) {
        object.entry("database").or_insert_with(|| shared.clone());
    }
    let config = match table.as_object().filter(|o| !o.is_empty()).map(toml::to_string) {
        None => String::new(),
        Some(Ok(text)) => text,
        Some(Err(e)) => {
            let problem = format!("cannot be passed to the driver: {e}");
            err(errors, &format!("{kind}.{name}"), problem);
            String::new()
        }
    };
    DriverChoice { name: name.to_string(), config }
}

/// The cluster layer's settings.
fn cluster_settings(config: &Config) -> ClusterSettings {
    ClusterSettings {
        heartbeat_interval: Duration::from_millis(
            config.cluster_health.heartbeat_interval_ms.max(1),
        ),
        // Disabled health means nodes are never expired.
        node_timeout: if config.cluster_health.enabled {
            Duration::from_millis(config.cluster_health.node_timeout_ms)
        } else {
            Duration::MAX
        },
        cleanup_interval: Duration::from_millis(config.cluster_health.cleanup_interval_ms.max(1)),
        requests_timeout: Duration::from_millis(config.adapter.requests_timeout_ms.unwrap_or(5000)),
        socket_counting: config.adapter.enable_socket_counting.unwrap_or(true),
        secret: config.adapter.cluster_secret.clone().filter(|s| !s.is_empty()),
    }
}

/// The webhook sender's settings.
fn webhook_settings(config: &Config) -> WebhookSettings {
    WebhookSettings {
        max_attempts: config.webhooks.max_attempts,
        request_timeout: Duration::from_millis(config.webhooks.request_timeout_ms),
        vacated_delay: Duration::from_millis(config.webhooks.vacated_delay_ms),
        batching_window: Duration::from_millis(config.webhooks.batching_window_ms.max(1)),
        max_queued_per_app: to_usize(config.webhooks.max_queued_per_app),
        max_events_per_second_per_app: config.webhooks.max_events_per_second_per_app,
    }
}

/// The edge's bounds; a trusted proxy that is neither an address nor a CIDR is a problem.
fn edge_settings(config: &Config, errors: &mut Vec<ConfigError>) -> EdgeSettings {
    let mut trusted_proxies = Vec::new();
    for (i, entry) in config.edge.trusted_proxies.iter().enumerate() {
        let entry = entry.trim();
        match entry.parse::<ipnet::IpNet>() {
            Ok(net) => trusted_proxies.push(net.trunc()),
            Err(_) => match entry.parse::<std::net::IpAddr>() {
                Ok(addr) => trusted_proxies.push(ipnet::IpNet::from(addr)),
                Err(_) => err(
                    errors,
                    &format!("edge.trusted_proxies[{i}]"),
                    format!("{entry:?} is neither an address nor a CIDR (\"10.0.0.0/8\")"),
                ),
            },
        }
    }
    EdgeSettings {
        max_connections: (config.edge.max_connections > 0)
            .then(|| to_usize(config.edge.max_connections)),
        max_connections_per_ip: to_usize(config.edge.max_connections_per_ip),
        max_http_connections_per_ip: to_usize(config.edge.max_http_connections_per_ip),
        direct_writes: config.websocket.direct_writes,
        trusted_proxies,
        proxy_protocol: config.edge.proxy_protocol,
        max_tls_handshakes_per_ip_per_second: u32::try_from(
            config.edge.max_tls_handshakes_per_ip_per_second,
        )
        .unwrap_or(u32::MAX),
        header_timeout: Duration::from_millis(config.edge.header_timeout_ms),
        body_timeout: Duration::from_millis(config.edge.body_timeout_ms),
        linger: Duration::from_millis(config.edge.linger_ms),
        linger_max_bytes: config.edge.linger_max_bytes,
    }
}

/// The names the admin listener answers to: the configured ones, else its own host and the
/// loopback names; `"*"` lifts the check.
fn admin_hosts(admin: &super::file::AdminConfig) -> Vec<String> {
    let configured: Vec<String> = admin
        .allowed_hosts
        .iter()
        .map(|h| h.trim().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    if configured.iter().any(|h| h == "*") {
        return Vec::new();
    }
    if !configured.is_empty() {
        return configured;
    }
    let own = admin.host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let mut names = vec![own, "localhost".into(), "127.0.0.1".into(), "::1".into()];
    names.dedup();
    names
}

/// TLS on the main port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain (PEM).
    pub cert: std::path::PathBuf,
    /// The private key (PEM).
    pub key: std::path::PathBuf,
    /// The port of a plain listener that redirects to HTTPS, if any.
    pub redirect_port: Option<u16>,
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}
