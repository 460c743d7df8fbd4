//! The `adapter.cluster` table, with the reference's fields and defaults, and the seed nodes,
//! credentials and TLS from the environment and `[database.redis.cluster]`.

use serde::Deserialize;
use sockhost_plugin_api::PluginError;

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

/// `[database.redis]`, of which this transport reads only the `cluster` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Database {
    /// `[database.redis.cluster]`.
    pub cluster: ClusterDatabase,
}

/// `[database.redis.cluster]`: the cluster's nodes, credentials and TLS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ClusterDatabase {
    /// Seed nodes, as URLs or `{ host, port }` tables.
    pub nodes: Vec<Seed>,
    /// ACL user name for every node.
    pub username: Option<String>,
    /// Password for every node.
    pub password: Option<String>,
    /// Connect over TLS (`rediss://`) even where a seed says `redis://`.
    pub use_tls: bool,
}

/// One seed node in `[database.redis.cluster] nodes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Seed {
    /// `"redis://host:port"`.
    Url(String),
    /// `{ host = "...", port = 7000 }`.
    Address {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
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
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            toml::from_str(text).map_err(|e| {
                PluginError::config(format!(
                    "adapter.cluster: {}",
                    e.message().trim_end_matches('.')
                ))
            })?
        };
        if config.queue_capacity == 0 || config.request_timeout_ms == 0 {
            return Err(PluginError::config(
                "adapter.cluster: queue_capacity and request_timeout_ms must be at least 1",
            ));
        }
        Ok(config)
    }

    /// The seed URLs, from the first place that names any: this table, `REDIS_CLUSTER_NODES`,
    /// `DATABASE_REDIS_CLUSTER_NODES`, `[database.redis.cluster]`. With `use_tls` every seed
    /// is a `rediss://` URL. An empty list is a configuration error naming every place.
    pub fn seeds(&self) -> Result<Vec<String>, PluginError> {
        let from_env = |name: &str| -> Vec<String> {
            std::env::var(name)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        let mut seeds = self.nodes.clone();
        if seeds.is_empty() {
            seeds = from_env("REDIS_CLUSTER_NODES");
        }
        if seeds.is_empty() {
            seeds = from_env("DATABASE_REDIS_CLUSTER_NODES");
        }
        if seeds.is_empty() {
            seeds = self
                .database
                .cluster
                .nodes
                .iter()
                .map(|seed| match seed {
                    Seed::Url(url) => url.clone(),
                    Seed::Address { host, port } => format!("redis://{host}:{port}"),
                })
                .collect();
        }
        if seeds.is_empty() {
            return Err(PluginError::config(
                "adapter.cluster.nodes: no seed nodes (set adapter.cluster.nodes, \
                 REDIS_CLUSTER_NODES, DATABASE_REDIS_CLUSTER_NODES or database.redis.cluster.nodes)",
            ));
        }
        for seed in &mut seeds {
            if !seed.contains("://") {
                *seed = format!("redis://{seed}");
            }
            if self.database.cluster.use_tls
                && let Some(rest) = seed.strip_prefix("redis://")
            {
                *seed = format!("rediss://{rest}");
            }
        }
        Ok(seeds)
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
