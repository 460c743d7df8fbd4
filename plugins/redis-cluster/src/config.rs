//! The `adapter.cluster` table, with the reference's fields and defaults, and the seed nodes,
//! credentials and TLS from the environment and `[database.redis.cluster]`.

use serde::Deserialize;
use sockhost_plugin_api::{PluginError, sdk};
use sockhost_redis_drivers::connection::Database;

/// Settings of the `redis-cluster` transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// Seed node URLs (`redis://host:port` or `rediss://host:port`). Default: none here, then
    /// `REDIS_CLUSTER_NODES`, `DATABASE_REDIS_CLUSTER_NODES`, `[database.redis.cluster] nodes`.
    pub nodes: Vec<String>,
    /// Prefix of every pub/sub channel. Default: "sockudo_adapter:".
    pub prefix: String,
    /// Milliseconds an awaited command may take. Default: 1000.
    pub request_timeout_ms: u64,
    /// Accepted for compatibility with the reference: the cluster connection is always a
    /// persistent, multiplexed one that reconnects by itself.
    pub use_connection_manager: bool,
    /// `SPUBLISH`/`SSUBSCRIBE` (Redis 7.0+) instead of `PUBLISH`/`SUBSCRIBE`. Default: false.
    pub use_sharded_pubsub: bool,
    /// Messages that may wait to be written; a `try_publish` beyond answers BACKPRESSURE.
    /// Default: 65536.
    pub queue_capacity: usize,
    /// The server's shared `[database.redis]` table, which the host passes along.
    pub database: Database,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            prefix: "sockudo_adapter:".into(),
            request_timeout_ms: 1000,
            use_connection_manager: true,
            use_sharded_pubsub: false,
            queue_capacity: 65_536,
            database: Database::default(),
        }
    }
}

impl TransportConfig {
    /// Parse the table (empty text: defaults), naming the field in any error.
    pub fn parse(text: &str) -> Result<Self, PluginError> {
        let config: Self = sdk::config::parse("adapter.cluster", text)?;
        if config.queue_capacity == 0 || config.request_timeout_ms == 0 {
            return Err(PluginError::config(
                "adapter.cluster: queue_capacity and request_timeout_ms must be at least 1",
            ));
        }
        Ok(config)
    }

    /// The seed URLs: this table's `nodes`, else `REDIS_CLUSTER_NODES`,
    /// `DATABASE_REDIS_CLUSTER_NODES`, `[database.redis.cluster]`; `rediss://` with `use_tls`.
    pub fn seeds(&self) -> Result<Vec<String>, PluginError> {
        self.database.cluster_seeds(&self.nodes, "adapter.cluster.nodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_defaults_hold() {
        let config = TransportConfig::parse("").unwrap();
        assert_eq!(config.prefix, "sockudo_adapter:");
        assert_eq!(config.request_timeout_ms, 1000);
        assert!(config.use_connection_manager);
        assert!(!config.use_sharded_pubsub);
    }

    #[test]
    fn seeds_come_from_the_database_table_with_tls() {
        let config = TransportConfig::parse(
            "[database.cluster]\nuse_tls = true\nnodes = [{ host = \"a\", port = 7000 }, \"redis://b:7001\"]\n",
        )
        .unwrap();
        assert_eq!(config.seeds().unwrap(), ["rediss://a:7000", "rediss://b:7001"]);
    }

    #[test]
    fn unknown_fields_are_named() {
        let error = TransportConfig::parse("use_shardded_pubsub = true").unwrap_err();
        assert!(error.message.contains("use_shardded_pubsub"), "{}", error.message);
    }
}
