//! The rate-limiter driver: a fixed window counted atomically by a Lua script, so one limit
//! holds for every node that shares the server.

use redis::aio::ConnectionLike;
use serde::Deserialize;
use sockhost_plugin_api::{PluginError, RateDecision, sdk::RateLimiterDriver};

use crate::{connection::DriverConnection, handle::Handle, within};

/// A rate limiter's table (`[rate_limiter.redis]` / `[rate_limiter.redis-cluster]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Prefix of every counter's key. Default: "sockudo_rate_limit:".
    pub prefix: String,
    /// Where it connects (`url_override`, `nodes`, `request_timeout_ms`, `cluster_mode`,
    /// `[database.redis]`).
    #[serde(flatten)]
    pub connection: DriverConnection,
}

impl RateLimiterConfig {
    /// Milliseconds a command may take: the table's, else 1000 (a request waits on it).
    pub fn request_timeout_ms(&self) -> u64 {
        self.connection.timeout_ms(1000)
    }
}

impl Default for RateLimiterConfig {
    fn default() -> Self {
        Self { prefix: "sockudo_rate_limit:".into(), connection: DriverConnection::default() }
    }
}

/// Check and take `cost` tokens of at most `limit` per window, in one step. A refused check
/// takes nothing. The window starts with the first token taken and ends with the key's expiry.
/// Answers {allowed, remaining, milliseconds until the window ends}.
const CHECK: &str = r"
local cost = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  if ttl == -2 then used = 0 end
  ttl = window
end
if used + cost > limit then
  return {0, math.max(limit - used, 0), ttl}
end
used = redis.call('INCRBY', KEYS[1], cost)
if used == cost or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], window)
  ttl = window
end
return {1, limit - used, ttl}
";

/// A rate limiter in Redis.
pub struct RedisRateLimiter<C> {
    handle: Handle<C>,
    prefix: String,
    script: redis::Script,
}

impl<C> std::fmt::Debug for RedisRateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl<C> RedisRateLimiter<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A limiter over `conn` with `config`'s prefix and timeout.
    pub fn new(conn: C, config: &RateLimiterConfig) -> Self {
        Self {
            handle: Handle::new(conn, config.request_timeout_ms(), "rate limiter"),
            prefix: config.prefix.clone(),
            script: redis::Script::new(CHECK),
        }
    }
}

impl<C> RateLimiterDriver for RedisRateLimiter<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn check(
        &self,
        key: &str,
        cost: u32,
        limit: u32,
        window_ms: u64,
    ) -> Result<RateDecision, PluginError> {
        let mut conn = self.handle.open()?;
        let mut invocation = self.script.key(format!("{}{key}", self.prefix));
        invocation.arg(cost).arg(limit).arg(window_ms.max(1));
        let (allowed, remaining, reset): (i64, i64, i64) =
            within("redis rate limit", self.handle.timeout, invocation.invoke_async(&mut conn))
                .await?;
        Ok(RateDecision {
            allowed: allowed == 1,
            limit,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            reset_after_ms: u64::try_from(reset.max(0)).unwrap_or(0),
        })
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.handle.ping().await
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        self.handle.close();
        Ok(())
    }
}
