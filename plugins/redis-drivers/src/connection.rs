//! Where a Redis driver connects: its own table's `url_override` / `nodes`, the environment
//! (`REDIS_URL`, `REDIS_CLUSTER_NODES`, `DATABASE_REDIS_CLUSTER_NODES`) and the server's shared
//! `[database.redis]` table, in the reference's order; and opening the connections.

use std::time::Duration;

use redis::{
    ProtocolVersion,
    aio::{ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
};
use serde::Deserialize;
use sockhost_plugin_api::PluginError;

/// `[database.redis]`: the connection every Redis driver uses unless its own table says
/// otherwise. Fields no driver here uses (key prefixes, sentinels) are allowed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Database {
    /// A full URL, used as is.
    pub url: Option<String>,
    /// Host. Default: 127.0.0.1.
    pub host: Option<String>,
    /// Port. Default: 6379.
    pub port: Option<u16>,
    /// ACL user name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Database number. Default: 0.
    pub db: Option<u32>,
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

impl Database {
    /// The URL `[database.redis]` describes, if it says anything.
    fn url(&self) -> Option<String> {
        if let Some(url) = &self.url {
            return Some(url.clone());
        }
        if self.host.is_none()
            && self.port.is_none()
            && self.password.is_none()
            && self.db.is_none()
        {
            return None;
        }
        let auth = match (&self.username, &self.password) {
            (Some(user), Some(password)) => format!("{user}:{password}@"),
            (None, Some(password)) => format!(":{password}@"),
            _ => String::new(),
        };
        Some(format!(
            "redis://{auth}{}:{}/{}",
            self.host.as_deref().unwrap_or("127.0.0.1"),
            self.port.unwrap_or(6379),
            self.db.unwrap_or(0)
        ))
    }

    /// A single server's URL: `own` (the driver's table), else `REDIS_URL` (which, as in the
    /// reference, overrides `[database.redis]`), else `[database.redis]`, else the local default.
    pub fn server_url(&self, own: Option<&str>) -> String {
        own.map(String::from)
            .or_else(|| std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()))
            .or_else(|| self.url())
            .unwrap_or_else(|| "redis://127.0.0.1:6379".into())
    }

    /// A cluster's seed URLs, from the first place that names any: `own` (the driver's table),
    /// `REDIS_CLUSTER_NODES`, `DATABASE_REDIS_CLUSTER_NODES`, `[database.redis.cluster]`. With
    /// `use_tls` every seed is a `rediss://` URL. None anywhere is an error naming `field`.
    pub fn cluster_seeds(&self, own: &[String], field: &str) -> Result<Vec<String>, PluginError> {
        let from_env = |name: &str| -> Vec<String> {
            std::env::var(name)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        let mut seeds = own.to_vec();
        if seeds.is_empty() {
            seeds = from_env("REDIS_CLUSTER_NODES");
        }
        if seeds.is_empty() {
            seeds = from_env("DATABASE_REDIS_CLUSTER_NODES");
        }
        if seeds.is_empty() {
            seeds = self
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
            return Err(PluginError::config(format!(
                "{field}: no seed nodes (set {field}, REDIS_CLUSTER_NODES, \
                 DATABASE_REDIS_CLUSTER_NODES or database.redis.cluster.nodes)"
            )));
        }
        for seed in &mut seeds {
            if !seed.contains("://") {
                *seed = format!("redis://{seed}");
            }
            if self.cluster.use_tls
                && let Some(rest) = seed.strip_prefix("redis://")
            {
                *seed = format!("rediss://{rest}");
            }
        }
        Ok(seeds)
    }
}

/// A URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// rustls picks its crypto from a process-wide default; a plugin's copy of rustls has none
/// until one is installed (an error only means another thread installed it first).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Open a connection manager to one server (it reconnects by itself after), failing with the
/// server's own reason (a wrong password, an untrusted certificate) rather than a bare timeout.
pub async fn server(url: &str, timeout: Duration) -> Result<ConnectionManager, PluginError> {
    server_client(url, "redis URL", timeout).await.map(|(_, manager)| manager)
}

/// As [`server`], also giving the client (to open other connections, such as a subscriber's);
/// `what` names the setting the URL came from in a configuration error.
pub async fn server_client(
    url: &str,
    what: &str,
    timeout: Duration,
) -> Result<(redis::Client, ConnectionManager), PluginError> {
    install_crypto();
    let shown = redact(url);
    let client = redis::Client::open(url)
        .map_err(|e| PluginError::config(format!("{what} {shown:?}: {e}")))?;
    // One plain attempt first: the connection manager retries by itself, which would turn a
    // refusal (a wrong password, an untrusted certificate) into a bare timeout.
    crate::within(&format!("redis {shown}"), timeout, client.get_multiplexed_async_connection())
        .await?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let manager = crate::within(
        &format!("redis {shown}"),
        timeout,
        client.get_connection_manager_with_config(config),
    )
    .await?;
    Ok((client, manager))
}

/// A cluster client over `seeds` with the credentials of `[database.redis.cluster]`, speaking
/// RESP3 (for pushes), with `timeout` per connection and answer, and reconnecting with backoff
/// from 500 ms to 10 s, as in the reference.
pub fn cluster_builder(
    seeds: &[String],
    database: &ClusterDatabase,
    timeout: Duration,
) -> ClusterClientBuilder {
    let mut builder = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .min_retry_wait(500)
        .max_retry_wait(10_000)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .use_protocol(ProtocolVersion::RESP3);
    if let Some(username) = &database.username {
        builder = builder.username(username);
    }
    if let Some(password) = &database.password {
        builder = builder.password(password);
    }
    builder
}

/// Open a cluster connection over `seeds` with the credentials of `[database.redis.cluster]`.
/// It follows the cluster's topology and reconnects with backoff from 500 ms to 10 s.
pub async fn cluster(
    seeds: &[String],
    database: &ClusterDatabase,
    timeout: Duration,
) -> Result<ClusterConnection, PluginError> {
    install_crypto();
    let shown: Vec<String> = seeds.iter().map(|s| redact(s)).collect();
    let client = cluster_builder(seeds, database, timeout)
        .build()
        .map_err(|e| PluginError::config(format!("redis cluster seeds {shown:?}: {e}")))?;
    crate::within(&format!("redis cluster {shown:?}"), timeout * 5, client.get_async_connection())
        .await
}
