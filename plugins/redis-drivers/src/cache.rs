//! The cache driver: values under a key prefix, with Redis's own expiry.

use redis::aio::ConnectionLike;
use serde::Deserialize;
use sockhost_plugin_api::{PluginError, abi::RVec, sdk::CacheDriver};

use crate::{connection::DriverConnection, handle::Handle, within};

/// A cache driver's table (`[cache.redis]` / `[cache.redis-cluster]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Prefix of every key. Default: "sockudo_cache:".
    pub prefix: String,
    /// Where it connects (`url_override`, `nodes`, `request_timeout_ms`, `cluster_mode`,
    /// `[database.redis]`).
    #[serde(flatten)]
    pub connection: DriverConnection,
}

impl CacheConfig {
    /// Milliseconds a command may take: the table's, else 5000.
    pub fn request_timeout_ms(&self) -> u64 {
        self.connection.timeout_ms(5000)
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { prefix: "sockudo_cache:".into(), connection: DriverConnection::default() }
    }
}

/// A cache in Redis. Each key stands alone (no multi-key operation), so on a cluster keys
/// spread over every shard.
pub struct RedisCache<C> {
    handle: Handle<C>,
    prefix: String,
}

impl<C> std::fmt::Debug for RedisCache<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl<C> RedisCache<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A cache over `conn` with `config`'s prefix and timeout.
    pub fn new(conn: C, config: &CacheConfig) -> Self {
        Self {
            handle: Handle::new(conn, config.request_timeout_ms(), "cache"),
            prefix: config.prefix.clone(),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl<C> CacheDriver for RedisCache<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn get(&self, key: &str) -> Result<Option<RVec<u8>>, PluginError> {
        let mut conn = self.handle.open()?;
        let value: Option<Vec<u8>> = within(
            "redis GET",
            self.handle.timeout,
            redis::cmd("GET").arg(self.key(key)).query_async(&mut conn),
        )
        .await?;
        Ok(value.map(RVec::from))
    }

    async fn set(&self, key: &str, value: RVec<u8>, ttl_ms: u64) -> Result<(), PluginError> {
        let mut conn = self.handle.open()?;
        let mut command = redis::cmd("SET");
        command.arg(self.key(key)).arg(value.as_slice());
        if ttl_ms > 0 {
            command.arg("PX").arg(ttl_ms);
        }
        within("redis SET", self.handle.timeout, command.query_async::<()>(&mut conn)).await
    }

    async fn delete(&self, key: &str) -> Result<bool, PluginError> {
        let mut conn = self.handle.open()?;
        let removed: u64 = within(
            "redis DEL",
            self.handle.timeout,
            redis::cmd("DEL").arg(self.key(key)).query_async(&mut conn),
        )
        .await?;
        Ok(removed > 0)
    }

    async fn has(&self, key: &str) -> Result<bool, PluginError> {
        let mut conn = self.handle.open()?;
        let found: u64 = within(
            "redis EXISTS",
            self.handle.timeout,
            redis::cmd("EXISTS").arg(self.key(key)).query_async(&mut conn),
        )
        .await?;
        Ok(found > 0)
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.handle.ping().await
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        self.handle.close();
        Ok(())
    }
}
