//! The constructors both plugins export: parse the driver's table, connect to a single server
//! or a cluster, and wrap the driver for the boundary.

use std::time::Duration;

use sockhost_plugin_api::{CacheBox, PluginError, QueueBox, RateLimiterBox, sdk};

use crate::{
    cache::{CacheConfig, RedisCache},
    connection::{self, Database},
    queue::{QueueConfig, RedisQueue},
    rate_limiter::{RateLimiterConfig, RedisRateLimiter},
};

/// Which kind of Redis a plugin's drivers speak to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One server (`redis`), through a connection manager.
    Server,
    /// A Redis Cluster (`redis-cluster`), through a cluster connection.
    Cluster,
}

impl Backend {
    /// The driver name this backend's drivers have.
    pub fn driver(self) -> &'static str {
        match self {
            Self::Server => "redis",
            Self::Cluster => "redis-cluster",
        }
    }
}

/// Connect as `backend` says, then make the driver with `make` over either connection.
macro_rules! connected {
    ($backend:expr, $place:expr, $database:expr, $url:expr, $nodes:expr, $timeout:expr,
     $host:expr, |$conn:ident| $make:expr) => {
        match $backend {
            Backend::Server => {
                let host = Some($host.clone());
                let $conn =
                    connection::ServerConnection::open($database, $url, $timeout, host).await?;
                $make
            }
            Backend::Cluster => {
                let seeds = $database.cluster_seeds($nodes, &format!("{}.nodes", $place))?;
                let $conn = connection::cluster(&seeds, &$database.cluster, $timeout).await?;
                $make
            }
        }
    };
}

/// `cluster_mode = true` under a single-server driver names the wrong driver: refused, rather
/// than connecting to one server as if the setting were not there.
fn check_mode(place: &str, cluster_mode: bool, backend: Backend) -> Result<(), PluginError> {
    if cluster_mode && backend == Backend::Server {
        return Err(PluginError::config(format!(
            "{place}.cluster_mode: the `redis` driver speaks to one server; use the `redis-cluster` driver for Redis Cluster"
        )));
    }
    Ok(())
}

fn timeout(ms: u64) -> Duration {
    Duration::from_millis(ms.max(1))
}

/// The cache driver of `backend`.
pub async fn cache(args: sdk::CreateArgs, backend: Backend) -> Result<CacheBox, PluginError> {
    let place = format!("cache.{}", backend.driver());
    let config: CacheConfig = sdk::config::parse(&place, &args.config)?;
    check_mode(&place, config.cluster_mode, backend)?;
    let database: &Database = &config.database;
    Ok(connected!(
        backend,
        place,
        database,
        config.url_override.as_deref(),
        &config.nodes,
        timeout(config.request_timeout_ms),
        args.host,
        |conn| sdk::cache_box(args.runtime, RedisCache::new(conn, &config))
    ))
}

/// The queue driver of `backend`.
pub async fn queue(args: sdk::CreateArgs, backend: Backend) -> Result<QueueBox, PluginError> {
    let place = format!("queue.{}", backend.driver());
    let config: QueueConfig = sdk::config::parse(&place, &args.config)?;
    check_mode(&place, config.cluster_mode, backend)?;
    config.check(&place)?;
    let database = config.database.clone();
    let database = &database;
    Ok(connected!(
        backend,
        place,
        database,
        config.url_override.as_deref(),
        &config.nodes,
        timeout(config.request_timeout_ms),
        args.host,
        |conn| sdk::queue_box(
            args.runtime,
            RedisQueue::new(conn, config.clone(), args.host.clone())
        )
    ))
}

/// The rate-limiter driver of `backend`.
pub async fn rate_limiter(
    args: sdk::CreateArgs,
    backend: Backend,
) -> Result<RateLimiterBox, PluginError> {
    let place = format!("rate_limiter.{}", backend.driver());
    let config: RateLimiterConfig = sdk::config::parse(&place, &args.config)?;
    check_mode(&place, config.cluster_mode, backend)?;
    let database: &Database = &config.database;
    Ok(connected!(
        backend,
        place,
        database,
        config.url_override.as_deref(),
        &config.nodes,
        timeout(config.request_timeout_ms),
        args.host,
        |conn| sdk::rate_limiter_box(args.runtime, RedisRateLimiter::new(conn, &config))
    ))
}
