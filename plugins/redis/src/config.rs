//! The `adapter.redis` table, with the reference's fields and defaults.

use serde::Deserialize;
use sockhost_plugin_api::{PluginError, sdk};
use sockhost_redis_drivers::connection::Database;

/// Settings of the `redis` transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// The server, as a `redis://` or `rediss://` URL. Default: the `REDIS_URL` environment
    /// variable (which, as in the reference, sets every Redis connection of the server at once),
    /// else `[database.redis]`, else `redis://127.0.0.1:6379`.
    pub url: Option<String>,
    /// Prefix of every Redis channel. Default: "sockudo_adapter:".
    pub prefix: String,
    /// Milliseconds an awaited command may take. Default: 5000.
    pub requests_timeout: u64,
    /// The reference's extra client options for the publisher; only an empty table is
    /// accepted (there is no such client here to pass them to), anything in it is refused.
    pub redis_pub_options: toml::Table,
    /// The same for the subscriber.
    pub redis_sub_options: toml::Table,
    /// Accepted for compatibility; Redis Cluster is the `redis-cluster` transport's business.
    pub cluster_mode: bool,
    /// Messages that may wait to be written; a `try_publish` beyond answers BACKPRESSURE.
    /// Default: 65536.
    pub queue_capacity: usize,
    /// The server's shared `[database.redis]` table, which the host passes along.
    pub database: Database,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            url: None,
            prefix: "sockudo_adapter:".into(),
            requests_timeout: 5000,
            redis_pub_options: toml::Table::new(),
            redis_sub_options: toml::Table::new(),
            cluster_mode: false,
            queue_capacity: 65_536,
            database: Database::default(),
        }
    }
}

impl TransportConfig {
    /// Parse the table (empty text: defaults), naming the field in any error.
    pub fn parse(text: &str) -> Result<Self, PluginError> {
        let config: Self = sdk::config::parse("adapter.redis", text)?;
        if config.cluster_mode {
            return Err(PluginError::config(
                "adapter.redis.cluster_mode: use the redis-cluster transport for Redis Cluster",
            ));
        }
        for (field, table) in [
            ("redis_pub_options", &config.redis_pub_options),
            ("redis_sub_options", &config.redis_sub_options),
        ] {
            if let Some(key) = table.keys().next() {
                return Err(PluginError::config(format!(
                    "adapter.redis.{field}.{key}: not supported (connection settings go in url or [database.redis])"
                )));
            }
        }
        if config.queue_capacity == 0 || config.requests_timeout == 0 {
            return Err(PluginError::config(
                "adapter.redis: queue_capacity and requests_timeout must be at least 1",
            ));
        }
        Ok(config)
    }

    /// The URL to connect to: this table's `url`, else `REDIS_URL` (which, as in the
    /// reference, overrides `[database.redis]`), else `[database.redis]`, else the local default.
    pub fn url(&self) -> String {
        self.database.server_url(self.url.as_deref())
    }
}
