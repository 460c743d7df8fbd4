//! Merging the layers into one [`Config`]: defaults, file, environment, flags.
//!
//! The file and the overrides are merged as a JSON tree first and deserialized once, so every
//! layer is checked by the same rules. To list every problem at once, a value that fails to
//! deserialize is reported and taken out of the tree (falling back to its default), and
//! deserialization is tried again.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{Config, Settings};

/// One problem with the configuration: where it is (a file path with the field, or an
/// environment variable) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {problem}")]
pub struct ConfigError {
    /// `sockhost.toml: event_limits.max_batch_size`, `PORT`, `--port`, ...
    pub place: String,
    /// What is wrong, one line.
    pub problem: String,
}

impl ConfigError {
    fn new(place: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { place: place.into(), problem: problem.into() }
    }
}

/// Where configuration comes from; tests build one by hand instead of reading the process.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The config file, if one was named or found.
    pub file: Option<PathBuf>,
    /// Environment variables (name, value).
    pub env: Vec<(String, String)>,
    /// `--host`.
    pub host: Option<String>,
    /// `--port`.
    pub port: Option<u16>,
}

impl Sources {
    /// The config file: `explicit` if given, else `sockhost.toml`, else `config/config.json`
    /// (Sockudo's layout), in the working directory, if they exist.
    pub fn locate_file(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(path) = explicit {
            return Some(path.to_path_buf());
        }
        ["sockhost.toml", "config/config.toml", "config/config.json"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    /// Comma-separated strings.
    List,
}

/// Environment variables and the config path each sets (the reference's names).
const ENV: &[(&str, &str, Kind)] = &[
    ("HOST", "host", Kind::Str),
    ("PORT", "port", Kind::Int),
    ("DEBUG", "debug", Kind::Bool),
    ("ACTIVITY_TIMEOUT", "activity_timeout", Kind::Int),
    ("PONG_TIMEOUT", "pong_timeout", Kind::Int),
    ("SHUTDOWN_GRACE_PERIOD", "shutdown_grace_period", Kind::Int),
    ("USER_AUTHENTICATION_TIMEOUT", "user_authentication_timeout", Kind::Int),
    ("WEBHOOK_MAX_ATTEMPTS", "webhooks.max_attempts", Kind::Int),
    ("WEBHOOK_BATCHING_DURATION", "webhooks.batching_window_ms", Kind::Int),
    ("CHANNEL_CACHE_TTL", "channel_limits.cache_ttl", Kind::Int),
    ("ADAPTER_REQUESTS_TIMEOUT", "adapter.requests_timeout_ms", Kind::Int),
    ("ADAPTER_ENABLE_SOCKET_COUNTING", "adapter.enable_socket_counting", Kind::Bool),
    ("ADAPTER_CLUSTER_SECRET", "adapter.cluster_secret", Kind::Str),
    ("ADAPTER_BUFFER_MULTIPLIER_PER_CPU", "adapter.buffer_multiplier_per_cpu", Kind::Int),
    ("CLUSTER_HEALTH_ENABLED", "cluster_health.enabled", Kind::Bool),
    ("CLUSTER_HEALTH_HEARTBEAT_INTERVAL", "cluster_health.heartbeat_interval_ms", Kind::Int),
    ("CLUSTER_HEALTH_NODE_TIMEOUT", "cluster_health.node_timeout_ms", Kind::Int),
    ("CLUSTER_HEALTH_CLEANUP_INTERVAL", "cluster_health.cleanup_interval_ms", Kind::Int),
    ("ADAPTER_DRIVER", "adapter.driver", Kind::Str),
    ("CACHE_DRIVER", "cache.driver", Kind::Str),
    ("QUEUE_DRIVER", "queue.driver", Kind::Str),
    ("RATE_LIMITER_DRIVER", "rate_limiter.driver", Kind::Str),
    ("RATE_LIMITER_ENABLED", "rate_limiter.enabled", Kind::Bool),
    ("RATE_LIMITER_FAIL_OPEN", "rate_limiter.fail_open", Kind::Bool),
    ("APP_MANAGER_DRIVER", "app_manager.driver", Kind::Str),
    ("APP_MANAGER_CACHE_TTL", "app_manager.cache.ttl", Kind::Int),
    ("APP_MANAGER_LOOKUP_TIMEOUT_MS", "app_manager.lookup_timeout_ms", Kind::Int),
    ("DATABASE_POSTGRES_HOST", "database.postgres.host", Kind::Str),
    ("DATABASE_POSTGRES_PORT", "database.postgres.port", Kind::Int),
    ("DATABASE_POSTGRES_USERNAME", "database.postgres.username", Kind::Str),
    ("DATABASE_POSTGRES_PASSWORD", "database.postgres.password", Kind::Str),
    ("DATABASE_POSTGRES_DATABASE", "database.postgres.database", Kind::Str),
    ("DATABASE_POSTGRES_TABLE_NAME", "database.postgres.table_name", Kind::Str),
    ("DATABASE_MYSQL_HOST", "database.mysql.host", Kind::Str),
    ("DATABASE_MYSQL_PORT", "database.mysql.port", Kind::Int),
    ("DATABASE_MYSQL_USERNAME", "database.mysql.username", Kind::Str),
    ("DATABASE_MYSQL_PASSWORD", "database.mysql.password", Kind::Str),
    ("DATABASE_MYSQL_DATABASE", "database.mysql.database", Kind::Str),
    ("DATABASE_MYSQL_TABLE_NAME", "database.mysql.table_name", Kind::Str),
    ("DATABASE_DYNAMODB_REGION", "database.dynamodb.region", Kind::Str),
    ("DATABASE_DYNAMODB_TABLE_NAME", "database.dynamodb.table_name", Kind::Str),
    ("DATABASE_DYNAMODB_ENDPOINT_URL", "database.dynamodb.endpoint_url", Kind::Str),
    ("ADMIN_ENABLED", "admin.enabled", Kind::Bool),
    ("ADMIN_HOST", "admin.host", Kind::Str),
    ("ADMIN_PORT", "admin.port", Kind::Int),
    ("ADMIN_TOKEN", "admin.token", Kind::Str),
    ("HTTP_API_REQUEST_LIMIT_IN_MB", "http_api.request_limit_in_mb", Kind::Int),
    ("WEBSOCKET_MAX_PAYLOAD_KB", "websocket.max_payload_kb", Kind::Int),
    ("WEBSOCKET_MAX_MESSAGES", "websocket.max_messages", Kind::Int),
    ("WEBSOCKET_MAX_BYTES", "websocket.max_bytes", Kind::Int),
    ("WEBSOCKET_WRITE_TIMEOUT_MS", "websocket.write_timeout_ms", Kind::Int),
    ("WEBSOCKET_DIRECT_WRITES", "websocket.direct_writes", Kind::Bool),
    ("WEBHOOK_MAX_QUEUED_PER_APP", "webhooks.max_queued_per_app", Kind::Int),
    ("WEBHOOK_MAX_EVENTS_PER_SECOND_PER_APP", "webhooks.max_events_per_second_per_app", Kind::Int),
    ("CHANNEL_LIMITS_MAX_PER_CONNECTION", "channel_limits.max_per_connection", Kind::Int),
    (
        "CHANNEL_LIMITS_MAX_SUBSCRIPTIONS_PER_MINUTE",
        "channel_limits.max_subscriptions_per_minute",
        Kind::Int,
    ),
    ("EDGE_MAX_CONNECTIONS", "edge.max_connections", Kind::Int),
    ("EDGE_MAX_CONNECTIONS_PER_IP", "edge.max_connections_per_ip", Kind::Int),
    ("EDGE_HEADER_TIMEOUT_MS", "edge.header_timeout_ms", Kind::Int),
    ("EDGE_BODY_TIMEOUT_MS", "edge.body_timeout_ms", Kind::Int),
    ("EDGE_LINGER_MS", "edge.linger_ms", Kind::Int),
    ("EDGE_TRUSTED_PROXIES", "edge.trusted_proxies", Kind::List),
    ("EDGE_PROXY_PROTOCOL", "edge.proxy_protocol", Kind::Bool),
    ("EDGE_MAX_HTTP_CONNECTIONS_PER_IP", "edge.max_http_connections_per_ip", Kind::Int),
    (
        "EDGE_MAX_TLS_HANDSHAKES_PER_IP_PER_SECOND",
        "edge.max_tls_handshakes_per_ip_per_second",
        Kind::Int,
    ),
    ("ADMIN_ALLOWED_HOSTS", "admin.allowed_hosts", Kind::List),
    ("OVERLOAD_WATERMARK_PERCENT", "overload.watermark_percent", Kind::Int),
    ("OVERLOAD_MAX_PUBLISH_DELAY_MS", "overload.max_publish_delay_ms", Kind::Int),
    ("METRICS_ENABLED", "metrics.enabled", Kind::Bool),
    ("METRICS_HOST", "metrics.host", Kind::Str),
    ("METRICS_PORT", "metrics.port", Kind::Int),
    ("METRICS_PROMETHEUS_PREFIX", "metrics.prefix", Kind::Str),
    ("LOG_FORMAT", "log.format", Kind::Str),
    ("LOG_COLOR", "log.color", Kind::Str),
    ("READINESS_MAX_MEMORY_PERCENT", "readiness.max_memory_percent", Kind::Int),
    ("READINESS_MAX_MEMORY_MB", "readiness.max_memory_mb", Kind::Int),
    ("SSL_ENABLED", "ssl.enabled", Kind::Bool),
    ("TAG_FILTERING_ENABLED", "tag_filtering.enabled", Kind::Bool),
    ("CONNECTION_RECOVERY_ENABLED", "connection_recovery.enabled", Kind::Bool),
    ("CONNECTION_RECOVERY_BUFFER_TTL", "connection_recovery.buffer_ttl_seconds", Kind::Int),
    ("CONNECTION_RECOVERY_MAX_BUFFER_SIZE", "connection_recovery.max_buffer_size", Kind::Int),
    ("CONNECTION_RECOVERY_MAX_MEMORY_MB", "connection_recovery.max_memory_mb", Kind::Int),
    ("HISTORY_ENABLED", "history.enabled", Kind::Bool),
    ("HISTORY_BACKEND", "history.backend", Kind::Str),
    ("HISTORY_RETENTION_WINDOW_SECONDS", "history.retention_window_seconds", Kind::Int),
    ("HISTORY_MAX_MESSAGES_PER_CHANNEL", "history.max_messages_per_channel", Kind::Int),
    ("IDEMPOTENCY_ENABLED", "idempotency.enabled", Kind::Bool),
    ("IDEMPOTENCY_TTL_SECONDS", "idempotency.ttl_seconds", Kind::Int),
    ("IDEMPOTENCY_MAX_KEY_LENGTH", "idempotency.max_key_length", Kind::Int),
    ("DELTA_COMPRESSION_ENABLED", "delta_compression.enabled", Kind::Bool),
    ("DELTA_COMPRESSION_ALGORITHM", "delta_compression.algorithm", Kind::Str),
    (
        "DELTA_COMPRESSION_FULL_MESSAGE_INTERVAL",
        "delta_compression.full_message_interval",
        Kind::Int,
    ),
    ("DELTA_COMPRESSION_MIN_MESSAGE_SIZE", "delta_compression.min_message_size", Kind::Int),
    ("DELTA_COMPRESSION_MAX_STATE_AGE_SECS", "delta_compression.max_state_age_secs", Kind::Int),
    ("DELTA_COMPRESSION_CONFLATION_KEY_PATH", "delta_compression.conflation_key_path", Kind::Str),
    ("SSL_CERT_PATH", "ssl.cert_path", Kind::Str),
    ("SSL_KEY_PATH", "ssl.key_path", Kind::Str),
    ("SSL_REDIRECT_HTTP", "ssl.redirect_http", Kind::Bool),
    ("SSL_HTTP_PORT", "ssl.http_port", Kind::Int),
];

/// The default app's fields, set by environment when the configuration lists no app.
const DEFAULT_APP_ENV: &[(&str, &str, Kind, &str)] = &[
    ("SOCKUDO_DEFAULT_APP_ID", "id", Kind::Str, "app-id"),
    ("SOCKUDO_DEFAULT_APP_KEY", "key", Kind::Str, "app-key"),
    ("SOCKUDO_DEFAULT_APP_SECRET", "secret", Kind::Str, "app-secret"),
    ("SOCKUDO_DEFAULT_APP_ENABLED", "enabled", Kind::Bool, "true"),
    ("SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES", "enable_client_messages", Kind::Bool, "false"),
    ("SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS", "max_connections", Kind::Int, "0"),
    (
        "SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND",
        "max_backend_events_per_second",
        Kind::Int,
        "0",
    ),
    (
        "SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND",
        "max_client_events_per_second",
        Kind::Int,
        "10",
    ),
    (
        "SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND",
        "max_read_requests_per_second",
        Kind::Int,
        "0",
    ),
    (
        "SOCKUDO_DEFAULT_APP_ENABLE_USER_AUTHENTICATION",
        "enable_user_authentication",
        Kind::Bool,
        "false",
    ),
];

/// Merge the sources and validate the result: the settings, or every problem found (the
/// values that failed to parse are checked no further; everything else is).
pub fn settings(sources: &Sources) -> Result<Settings, Vec<ConfigError>> {
    let (config, mut errors) = load(sources)?;
    match Settings::from_config(config) {
        Ok(settings) if errors.is_empty() => Ok(settings),
        Ok(_) => Err(errors),
        Err(more) => {
            errors.extend(more);
            Err(errors)
        }
    }
}

/// Merge the sources into a [`Config`] with the problems found on the way (a value with a
/// problem is left at its default). Fails outright only if the file cannot be read.
pub fn load(sources: &Sources) -> Result<(Config, Vec<ConfigError>), Vec<ConfigError>> {
    let mut errors = Vec::new();
    let file_name = sources.file.as_ref().map(|p| p.display().to_string());
    let mut tree = match &sources.file {
        Some(path) => match read_file(path) {
            Ok(tree) => tree,
            Err(e) => return Err(vec![e]),
        },
        None => Value::Object(Map::new()),
    };

    let env =
        |name: &str| sources.env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    for (name, path, kind) in ENV {
        if let Some(raw) = env(name) {
            match typed(raw, *kind) {
                Ok(value) => set(&mut tree, path, value),
                Err(problem) => errors.push(ConfigError::new(*name, problem)),
            }
        }
    }
    if let Some(host) = &sources.host {
        set(&mut tree, "host", Value::String(host.clone()));
    }
    if let Some(port) = sources.port {
        set(&mut tree, "port", Value::from(port));
    }
    let has_apps = tree
        .pointer("/app_manager/array/apps")
        .and_then(Value::as_array)
        .is_some_and(|apps| !apps.is_empty());
    if !has_apps {
        let mut app = Map::new();
        for (name, field, kind, default) in DEFAULT_APP_ENV {
            match typed(env(name).unwrap_or(default), *kind) {
                Ok(value) => {
                    app.insert((*field).to_string(), value);
                }
                Err(problem) => errors.push(ConfigError::new(*name, problem)),
            }
        }
        set(&mut tree, "app_manager.array.apps", Value::Array(vec![Value::Object(app)]));
    }

    let place = |field: &str| match &file_name {
        Some(file) => format!("{file}: {field}"),
        None => field.to_string(),
    };
    // Deserialize, and on each failure report it, drop the offending value and try again.
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, Config>(tree.clone()) {
            Ok(config) => {
                errors.extend(check_driver_tables(&config, &place));
                return Ok((config, errors));
            }
            Err(e) => {
                // `apps[0].key` -> `apps.0.key`, the form `remove` walks.
                let path = e.path().to_string().replace('[', ".").replace(']', "");
                let message = e.inner().to_string();
                // For an unknown field the path already ends with its name.
                let (field, problem) = match unknown_field(&message) {
                    Some(name) if path == "." => (name.to_string(), "unknown field".to_string()),
                    Some(name) if !path.ends_with(name) => {
                        (format!("{path}.{name}"), "unknown field".to_string())
                    }
                    Some(_) => (path.clone(), "unknown field".to_string()),
                    None => (path.clone(), message.clone()),
                };
                errors.push(ConfigError::new(place(&display_path(&field)), problem));
                if !remove(&mut tree, &field) {
                    // Nothing left to take out: give up on the file's values altogether.
                    tree = Value::Object(Map::new());
                }
            }
        }
    }
    Ok((Config::default(), errors))
}

/// A driver section's extra keys must be tables (one per driver).
fn check_driver_tables(config: &Config, place: &impl Fn(&str) -> String) -> Vec<ConfigError> {
    let sections = [
        ("adapter", &config.adapter.tables),
        ("cache", &config.cache.tables),
        ("queue", &config.queue.tables),
        ("rate_limiter", &config.rate_limiter.tables),
        ("history", &config.history.tables),
    ];
    let mut errors = Vec::new();
    for (name, tables) in sections {
        for (key, value) in tables {
            if !value.is_object() {
                errors.push(ConfigError::new(
                    place(&format!("{name}.{key}")),
                    "unknown field (driver settings go in a table named after the driver)",
                ));
            }
        }
    }
    errors
}

/// `apps.0.key` -> `apps[0].key`, as operators read it.
fn display_path(path: &str) -> String {
    let mut out = String::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

fn read_file(path: &Path) -> Result<Value, ConfigError> {
    let place = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&place, format!("cannot be read: {e}")))?;
    let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let tree = if is_json {
        serde_json::from_str::<Value>(&text)
            .map_err(|e| ConfigError::new(&place, format!("not valid JSON: {e}")))?
    } else {
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            ConfigError::new(
                &place,
                format!("not valid TOML: {}", e.message().trim_end_matches('.')),
            )
        })?;
        serde_json::to_value(table).map_err(|e| ConfigError::new(&place, e.to_string()))?
    };
    if tree.is_object() {
        Ok(tree)
    } else {
        Err(ConfigError::new(&place, "the top level must be a table of settings"))
    }
}

fn typed(raw: &str, kind: Kind) -> Result<Value, String> {
    match kind {
        Kind::Str => Ok(Value::String(raw.to_string())),
        Kind::Int => raw
            .trim()
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| format!("expected a whole number, found {raw:?}")),
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, found {raw:?}")),
        },
        Kind::List => Ok(Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::String(item.to_string()))
                .collect(),
        )),
    }
}

/// Set the dotted `path` in `tree`, creating tables on the way.
fn set(tree: &mut Value, path: &str, value: Value) {
    let mut node = tree;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let map = node.as_object_mut().expect("just made an object");
        if parts.peek().is_none() {
            map.insert(part.to_string(), value);
            return;
        }
        node = map.entry(part.to_string()).or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Remove the dotted `path` (array indices as numbers) from `tree`; whether anything was removed.
fn remove(tree: &mut Value, path: &str) -> bool {
    let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    let Some((last, parents)) = parts.split_last() else { return false };
    let mut node = tree;
    for part in parents {
        node = match node {
            Value::Object(map) => match map.get_mut(*part) {
                Some(next) => next,
                None => return false,
            },
            Value::Array(items) => {
                match part.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(next) => next,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    match node {
        Value::Object(map) => map.remove(*last).is_some(),
        Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}
