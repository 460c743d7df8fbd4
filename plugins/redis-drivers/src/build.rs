//! The constructors both plugins export: parse the driver's table, connect to a single server
//! or a cluster, and wrap the driver for the boundary.

use std::time::Duration;

use sockhost_plugin_api::{
    CacheBox, HistoryBox, HistoryBusBox, PluginError, QueueBox, RateLimiterBox, sdk,
};

use crate::{
    cache::{CacheConfig, RedisCache},
    connection::{self, DriverConnection},
    driven::HostDriven,
    history::{HistoryConfig, RedisHistory},
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

/// Connect as `backend` and the driver's `connection` settings say, then make the driver with
/// `make` over either connection.
macro_rules! connected {
    ($backend:expr, $place:expr, $config:expr, $host:expr, |$conn:ident| $make:expr) => {{
        let (settings, timeout) = (&$config.connection, timeout($config.request_timeout_ms()));
        let database = &settings.database;
        match $backend {
            Backend::Server => {
                let host = Some($host.clone());
                let url = settings.url_override.as_deref();
                let $conn =
                    connection::ServerConnection::open(database, url, timeout, host).await?;
                $make
            }
            Backend::Cluster => {
                let seeds =
                    database.cluster_seeds(&settings.nodes, &format!("{}.nodes", $place))?;
                let $conn = connection::cluster(&seeds, &database.cluster, timeout).await?;
                $make
            }
        }
    }};
}

/// `cluster_mode = true` under a single-server driver names the wrong driver: refused, rather
/// than connecting to one server as if the setting were not there.
fn check_mode(
    place: &str,
    connection: &DriverConnection,
    backend: Backend,
) -> Result<(), PluginError> {
    if connection.cluster_mode && backend == Backend::Server {
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
    check_mode(&place, &config.connection, backend)?;
    Ok(connected!(backend, place, config, args.host, |conn| sdk::cache_box(
        args.runtime,
        RedisCache::new(conn, &config)
    )))
}

/// The queue driver of `backend`.
pub async fn queue(args: sdk::CreateArgs, backend: Backend) -> Result<QueueBox, PluginError> {
    let place = format!("queue.{}", backend.driver());
    let config: QueueConfig = sdk::config::parse(&place, &args.config)?;
    check_mode(&place, &config.connection, backend)?;
    config.check(&place)?;
    Ok(connected!(backend, place, config, args.host, |conn| sdk::queue_box(
        args.runtime,
        RedisQueue::new(conn, config.clone(), args.host.clone())
    )))
}

/// The rate-limiter driver of `backend`.
pub async fn rate_limiter(
    args: sdk::CreateArgs,
    backend: Backend,
) -> Result<RateLimiterBox, PluginError> {
    let place = format!("rate_limiter.{}", backend.driver());
    let config: RateLimiterConfig = sdk::config::parse(&place, &args.config)?;
    check_mode(&place, &config.connection, backend)?;
    Ok(connected!(backend, place, config, args.host, |conn| sdk::rate_limiter_box(
        args.runtime,
        RedisRateLimiter::new(conn, &config)
    )))
}

/// The history driver of `backend`.
pub async fn history(args: sdk::CreateArgs, backend: Backend) -> Result<HistoryBox, PluginError> {
    let place = format!("history.{}", backend.driver());
    let config: HistoryConfig = sdk::config::parse(&place, &args.config)?;
    check_mode(&place, &config.connection, backend)?;
    if let Some(conn) = host_driven(&args, backend, &config).await? {
        return Ok(sdk::history_box(args.runtime, RedisHistory::new(conn, &config)));
    }
    Ok(connected!(backend, place, config, args.host, |conn| sdk::history_box(
        args.runtime,
        RedisHistory::new(conn, &config)
    )))
}

/// The history store's connection to one server named by a URL, over a socket the host drives
/// (see [`crate::driven`]): the host awaits a store call per event. `None` for a cluster, a
/// server found through sentinels, TLS, or a host that does not offer sockets.
async fn host_driven(
    args: &sdk::CreateArgs,
    backend: Backend,
    config: &HistoryConfig,
) -> Result<Option<HostDriven>, PluginError> {
    let own = config.connection.url_override.as_deref();
    let database = &config.connection.database;
    if backend != Backend::Server || database.sentinel(own).is_some() {
        return Ok(None);
    }
    let url = database.server_url(own);
    HostDriven::open(&url, timeout(config.request_timeout_ms()), &args.host, args.runtime).await
}

/// The history driver's way onto the bus: the same store, which publishes each event itself
/// where this library's transport publishes on its server or cluster. One server named by a
/// URL (not found through sentinels, whose master moves), or a cluster by its seeds (classic
/// pub/sub, which reaches every node from the shard the script runs on; a transport with
/// sharded pub/sub registers nothing, as its channel lives on another shard).
pub async fn history_bus(
    args: sdk::CreateArgs,
    backend: Backend,
) -> Result<HistoryBusBox, PluginError> {
    let place = format!("history.{}", backend.driver());
    let config: HistoryConfig = sdk::config::parse(&place, &args.config)?;
    check_mode(&place, &config.connection, backend)?;
    let own = config.connection.url_override.as_deref();
    let database = &config.connection.database;
    let server = match backend {
        Backend::Server => database
            .sentinel(own)
            .is_none()
            .then(|| connection::server_identity(&database.server_url(own)))
            .flatten(),
        Backend::Cluster => connection::cluster_identity(
            &database.cluster_seeds(&config.connection.nodes, &format!("{place}.nodes"))?,
        ),
    };
    if let Some(conn) = host_driven(&args, backend, &config).await? {
        let store = RedisHistory::new(conn, &config).on_server(server);
        return Ok(sdk::history_bus_box(args.runtime, store));
    }
    Ok(connected!(backend, place, config, args.host, |conn| sdk::history_bus_box(
        args.runtime,
        RedisHistory::new(conn, &config).on_server(server.clone())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_keys_stay_at_the_top_of_each_table_with_their_defaults() {
        let cache: CacheConfig = sdk::config::parse("cache.redis", "").unwrap();
        let limiter: RateLimiterConfig = sdk::config::parse("rate_limiter.redis", "").unwrap();
        assert_eq!(cache.request_timeout_ms(), 5000);
        assert_eq!(limiter.request_timeout_ms(), 1000);
        let defaults: QueueConfig = sdk::config::parse("queue.redis", "concurrency = 2").unwrap();
        assert_eq!((defaults.concurrency, defaults.request_timeout_ms()), (2, 5000));
        let queue: QueueConfig = sdk::config::parse(
            "queue.redis",
            "prefix = \"q:\"\nurl_override = \"redis://h:1\"\nnodes = [\"redis://n:2\"]\n\
             request_timeout_ms = 7\ncluster_mode = true\n[database]\nport = 6380\n",
        )
        .unwrap();
        let connection = &queue.connection;
        assert_eq!(queue.prefix, "q:");
        assert_eq!(connection.url_override.as_deref(), Some("redis://h:1"));
        assert_eq!(connection.nodes, ["redis://n:2"]);
        assert_eq!(queue.request_timeout_ms(), 7);
        assert!(connection.cluster_mode);
        assert_eq!(connection.database.port, Some(6380));
    }

    #[test]
    fn unknown_keys_are_still_refused_by_name() {
        for (place, text) in [
            ("cache.redis", "url_overide = \"redis://h:1\""),
            ("cache.redis", "[database]\nprot = 1"),
        ] {
            let error = sdk::config::parse::<CacheConfig>(place, text).unwrap_err();
            let key = if text.contains("prot") { "prot" } else { "url_overide" };
            assert!(error.message.contains(key), "{}", error.message);
        }
    }
}
