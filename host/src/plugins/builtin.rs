//! The `none` drivers, built into the host: no plugin is needed to turn a feature off.

use sockhost_plugin_api::{
    Cache, Cache_TO, CacheBox, PResult, PluginError, Queue, Queue_TO, QueueBox, QueueHandlerBox,
    RateDecision, RateLimiter, RateLimiter_TO, RateLimiterBox,
    abi::{FfiFuture, FfiFutureExt as _, ROption, RStr, RVec, TD_Opaque},
};

fn ready<T: Send + 'static>(value: Result<T, PluginError>) -> FfiFuture<PResult<T>> {
    std::future::ready(PResult::from(value)).into_ffi()
}

/// Remembers nothing: every lookup misses.
#[derive(Debug)]
struct NoneCache;

impl Cache for NoneCache {
    fn get(&self, _key: RStr<'_>) -> FfiFuture<PResult<ROption<RVec<u8>>>> {
        ready(Ok(ROption::RNone))
    }
    fn set(&self, _key: RStr<'_>, _value: RVec<u8>, _ttl_ms: u64) -> FfiFuture<PResult<()>> {
        ready(Ok(()))
    }
    fn delete(&self, _key: RStr<'_>) -> FfiFuture<PResult<bool>> {
        ready(Ok(false))
    }
    fn has(&self, _key: RStr<'_>) -> FfiFuture<PResult<bool>> {
        ready(Ok(false))
    }
    fn health(&self) -> FfiFuture<PResult<()>> {
        ready(Ok(()))
    }
    fn shutdown(&self) -> FfiFuture<PResult<()>> {
        ready(Ok(()))
    }
}

/// Stores nothing: a push is refused, so the caller knows the job was not kept.
#[derive(Debug)]
struct NoneQueue;

impl Queue for NoneQueue {
    fn push(&self, queue: RStr<'_>, _payload: RVec<u8>) -> FfiFuture<PResult<()>> {
        ready(Err(PluginError::rejected(format!(
            "queue driver `none` keeps no jobs (queue `{queue}`); choose the memory queue to keep them"
        ))))
    }
    fn consume(&self, _queue: RStr<'_>, _handler: QueueHandlerBox) -> FfiFuture<PResult<()>> {
        ready(Ok(()))
    }
    fn pending(&self, _queue: RStr<'_>) -> FfiFuture<PResult<u64>> {
        ready(Ok(0))
    }
    fn health(&self) -> FfiFuture<PResult<()>> {
        ready(Ok(()))
    }
    fn shutdown(&self) -> FfiFuture<PResult<()>> {
        ready(Ok(()))
    }
}

/// Limits nothing: every check is allowed.
#[derive(Debug)]
struct NoneRateLimiter;

impl RateLimiter for NoneRateLimiter {
    fn check(
        &self,
        _key: RStr<'_>,
        _cost: u32,
        limit: u32,
        _window_ms: u64,
    ) -> FfiFuture<PResult<RateDecision>> {
        ready(Ok(RateDecision { allowed: true, limit, remaining: limit, reset_after_ms: 0 }))
    }
    fn health(&self) -> FfiFuture<PResult<()>> {
        ready(Ok(()))
    }
    fn shutdown(&self) -> FfiFuture<PResult<()>> {
        ready(Ok(()))
    }
}

pub(crate) fn none_cache() -> CacheBox {
    Cache_TO::from_value(NoneCache, TD_Opaque)
}

pub(crate) fn none_queue() -> QueueBox {
    Queue_TO::from_value(NoneQueue, TD_Opaque)
}

pub(crate) fn none_rate_limiter() -> RateLimiterBox {
    RateLimiter_TO::from_value(NoneRateLimiter, TD_Opaque)
}

/// A transport that goes nowhere, for unit tests of the layers above it.
#[cfg(test)]
#[derive(Debug)]
struct NowhereTransport;

#[cfg(test)]
impl sockhost_plugin_api::Transport for NowhereTransport {
    fn try_publish(&self, _topic: RStr<'_>, _payload: RVec<u8>) -> PResult<()> {
        PResult::from(Ok(()))
    }
    fn publish(&self, _topic: RStr<'_>, _payload: RVec<u8>) -> FfiFuture<PResult<()>> {
        ready(Ok(()))
    }
    fn subscribe(&self, _topic: RStr<'_>) -> FfiFuture<PResult<()>> {
        ready(Ok(()))
    }
    fn unsubscribe(&self, _topic: RStr<'_>) -> FfiFuture<PResult<()>> {
        ready(Ok(()))
    }
    fn node_count_hint(&self) -> FfiFuture<PResult<ROption<u64>>> {
        ready(Ok(ROption::RNone))
    }
    fn health(&self) -> FfiFuture<PResult<()>> {
        ready(Ok(()))
    }
    fn shutdown(&self) -> FfiFuture<PResult<()>> {
        ready(Ok(()))
    }
}

#[cfg(test)]
pub(crate) fn nowhere_transport() -> sockhost_plugin_api::TransportBox {
    sockhost_plugin_api::Transport_TO::from_value(NowhereTransport, TD_Opaque)
}
