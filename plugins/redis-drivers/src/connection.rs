//! Where a Redis driver connects: its own table's `url_override` / `nodes`, the environment
//! (`REDIS_URL`, `REDIS_CLUSTER_NODES`, `DATABASE_REDIS_CLUSTER_NODES`) and the server's shared
//! `[database.redis]` table, in the reference's order; and opening the connections.

use std::time::Duration;

use redis::{
    ProtocolVersion, aio::ConnectionManager, cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
};
use serde::Deserialize;
use sockhost_plugin_api::PluginError;

use crate::{
    client::{install_crypto, redact, server},
    sentinel,
};

/// Where a cache, queue or rate limiter connects: the same settings in each driver's table
/// (flattened into it, so the keys stay at the table's top level).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DriverConnection {
    /// This driver's own server URL, instead of `REDIS_URL` / `[database.redis]`.
    pub url_override: Option<String>,
    /// This driver's own cluster seeds (redis-cluster), instead of the shared ones.
    pub nodes: Vec<String>,
    /// Milliseconds a command may take. Default: the driver's ([`DriverConnection::timeout_ms`]).
    pub request_timeout_ms: Option<u64>,
    /// The reference's switch between one server and a cluster; here the driver's name says
    /// which, and `true` under the `redis` driver is refused.
    pub cluster_mode: bool,
    /// The server's shared `[database.redis]` table, which the host passes along.
    pub database: Database,
}

impl DriverConnection {
    /// `request_timeout_ms`, else the driver's `default` (the cache's and the queue's 5000, the
    /// rate limiter's 1000: a request waits on its checks).
    pub fn timeout_ms(&self, default: u64) -> u64 {
        self.request_timeout_ms.unwrap_or(default)
    }
}

/// `[database.redis]`: the connection every Redis driver uses unless its own table says
/// otherwise, with the reference's fields. An unknown field is refused, naming it: a setting
/// that is silently ignored (a Sentinel the server never asks) is worse than none.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// The reference's key prefix. Accepted so its files load; each driver here has its own
    /// `prefix` (transport channels, cache, queue and limiter keys), and this one is not used.
    pub key_prefix: Option<String>,
    /// `[database.redis.cluster]`.
    pub cluster: ClusterDatabase,
    /// Redis Sentinel: `[{ host, port }]`. When set (and no URL overrides it), the master is
    /// the one these sentinels name, followed across failovers.
    pub sentinels: Vec<sentinel::SentinelAddr>,
    /// The master's name in the sentinels' configuration. Default: "mymaster".
    pub name: Option<String>,
    /// ACL user for the sentinels. Env: `DATABASE_REDIS_SENTINEL_USERNAME`.
    pub sentinel_username: Option<String>,
    /// Password for the sentinels. Env: `DATABASE_REDIS_SENTINEL_PASSWORD`.
    pub sentinel_password: Option<String>,
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

/// The server a URL names, as `host:port/db` (`unix:path/db` for a socket), after `user@`
/// when the URL names a user: two plugins that name the same one talk to the same Redis as
/// the same user (another user may not be allowed to publish). `None` when the URL does not
/// parse.
pub fn server_identity(url: &str) -> Option<String> {
    use redis::{ConnectionAddr, IntoConnectionInfo};
    let info = url.into_connection_info().ok()?;
    let settings = info.redis_settings();
    let db = settings.db();
    let user = settings.username().map(|user| format!("{user}@")).unwrap_or_default();
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            Some(format!("{user}{host}:{port}/{db}"))
        }
        ConnectionAddr::Unix(path) => Some(format!("{user}unix:{}/{db}", path.display())),
        _ => None,
    }
}

/// The cluster a list of seed URLs names, as its seeds' `host:port`s sorted and joined:
/// two plugins given the same seeds (however ordered) talk to the same cluster. `None` when a
/// seed does not parse. Two lists naming different nodes of one cluster look like two
/// clusters, which only costs the store's publishing (the host then publishes).
pub fn cluster_identity(seeds: &[String]) -> Option<String> {
    let mut servers = seeds.iter().map(|seed| server_identity(seed)).collect::<Option<Vec<_>>>()?;
    servers.sort_unstable();
    servers.dedup();
    (!servers.is_empty()).then(|| format!("cluster:{}", servers.join(",")))
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

    /// Sentinel settings, when the server is to be found through sentinels: `sentinels` is set
    /// and no URL (`own`, `REDIS_URL`, `database.redis.url`) names a server directly.
    pub fn sentinel(&self, own: Option<&str>) -> Option<sentinel::SentinelSettings> {
        let named = own.is_some()
            || std::env::var("REDIS_URL").is_ok_and(|u| !u.is_empty())
            || self.url.is_some();
        if named || self.sentinels.is_empty() {
            return None;
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Some(sentinel::SentinelSettings {
            sentinels: self.sentinels.clone(),
            name: self.name.clone().unwrap_or_else(|| sentinel::DEFAULT_NAME.into()),
            sentinel_username: env("DATABASE_REDIS_SENTINEL_USERNAME")
                .or_else(|| self.sentinel_username.clone()),
            sentinel_password: env("DATABASE_REDIS_SENTINEL_PASSWORD")
                .or_else(|| self.sentinel_password.clone()),
            username: self.username.clone(),
            password: self.password.clone(),
            db: self.db.unwrap_or(0),
        })
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

/// A connection to one server: fixed, or the master that sentinels name (followed across
/// failovers). Either way a reconnecting connection; commands are the same.
#[derive(Debug, Clone)]
pub enum ServerConnection {
    /// One server at a fixed address.
    Fixed(ConnectionManager),
    /// The current master.
    Sentinel(sentinel::Following),
}

impl ServerConnection {
    /// Connect as `database` and `own` say: through sentinels, or to the server's URL.
    pub async fn open(
        database: &Database,
        own: Option<&str>,
        timeout: Duration,
        host: Option<sockhost_plugin_api::HostContextBox>,
    ) -> Result<Self, PluginError> {
        match database.sentinel(own) {
            Some(settings) => {
                let master = sentinel::Master::start(settings, timeout, host).await?;
                Ok(Self::Sentinel(sentinel::Following::open(master, timeout).await?))
            }
            None => Ok(Self::Fixed(server(&database.server_url(own), timeout).await?)),
        }
    }
}

impl redis::aio::ConnectionLike for ServerConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Fixed(conn) => conn.req_packed_command(cmd),
            Self::Sentinel(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Fixed(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Sentinel(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Fixed(conn) => conn.get_db(),
            Self::Sentinel(conn) => conn.get_db(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_named_by_its_seeds_in_any_order() {
        let seeds = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let one = cluster_identity(&seeds(&["redis://b:7001", "redis://a:7000"]));
        let other =
            cluster_identity(&seeds(&["rediss://a:7000", "redis://b:7001", "redis://a:7000"]));
        assert_eq!(one.as_deref(), Some("cluster:a:7000/0,b:7001/0"));
        assert_eq!(one, other, "order, scheme and repeats do not matter");
        assert_ne!(one, cluster_identity(&seeds(&["redis://a:7000"])));
        assert_eq!(cluster_identity(&seeds(&["redis://a:7000", "not a url"])), None);
        assert_eq!(cluster_identity(&[]), None);
        let as_user = cluster_identity(&seeds(&["redis://bus:secret@a:7000", "redis://b:7001"]));
        assert_eq!(
            as_user.as_deref(),
            Some("cluster:b:7001/0,bus@a:7000/0"),
            "the user, never the password"
        );
    }
}
