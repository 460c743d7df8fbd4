//! What the `redis` and `redis-cluster` plugins share: the connection settings
//! (`[database.redis]`, `REDIS_URL`, the cluster seeds) and the cache, queue, rate-limiter and
//! history drivers, written once over any Redis connection (a single server's connection manager or a
//! cluster connection).
//!
//! Every multi-key operation is one Lua script whose keys share a hash tag, so it runs
//! atomically on one shard of a cluster as on a single server.

pub mod build;
pub mod bus;
pub mod cache;
pub mod client;
pub mod connection;
pub mod driven;
pub mod handle;
pub mod history;
pub mod queue;
pub mod rate_limiter;
pub mod sentinel;

use sockhost_plugin_api::PluginError;

/// A Redis error as the plugin boundary's error: trouble reaching the server or cluster (lost
/// connections, no node for a slot, a failover under way) is retryable; anything the client
/// would not retry (a script error, a wrong type) is a refusal.
pub fn redis_error(what: &str, e: &redis::RedisError) -> PluginError {
    if e.is_io_error() || e.is_timeout() || !matches!(e.retry_method(), redis::RetryMethod::NoRetry)
    {
        PluginError::unavailable(format!("{what}: {e}"))
    } else {
        PluginError::rejected(format!("{what}: {e}"))
    }
}

/// Run `call` within `timeout`, with errors as the boundary's.
pub async fn within<T>(
    what: &str,
    timeout: std::time::Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, PluginError> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| PluginError::timeout(format!("{what}: no answer within {timeout:?}")))?
        .map_err(|e| redis_error(what, &e))
}
