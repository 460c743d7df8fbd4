//! The `memory` cache.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Deserialize;
use sockhost_plugin_api::{PluginError, abi::RVec, sdk::CacheDriver};

/// Settings of the `memory` cache (names and defaults as the reference's memory cache).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MemoryCacheConfig {
    /// How many keys it holds at most; when full, expired keys go first, then the key that
    /// would expire soonest. Default: 10000.
    max_capacity: usize,
    /// How often expired keys are swept. Default: 60000. Milliseconds.
    cleanup_interval_ms: u64,
}

impl Default for MemoryCacheConfig {
    fn default() -> Self {
        Self { max_capacity: 10_000, cleanup_interval_ms: 60_000 }
    }
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// An in-process map with expiry.
pub struct MemoryCache {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    max_capacity: usize,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache")
            .field("max_capacity", &self.max_capacity)
            .finish_non_exhaustive()
    }
}

impl MemoryCache {
    /// A cache configured by `config`; starts its sweeper on the current (plugin) runtime.
    pub fn new(config: &str) -> Result<Self, PluginError> {
        let config: MemoryCacheConfig =
            sockhost_plugin_api::sdk::config::parse("cache.memory", config)?;
        if config.max_capacity == 0 {
            return Err(PluginError::config("memory cache: max_capacity must be at least 1"));
        }
        if config.cleanup_interval_ms == 0 {
            return Err(PluginError::config(
                "memory cache: cleanup_interval_ms must be at least 1",
            ));
        }
        let cache = Self {
            entries: Arc::default(),
            max_capacity: config.max_capacity,
            closed: Arc::default(),
        };
        let (entries, closed) = (Arc::downgrade(&cache.entries), cache.closed.clone());
        let every = Duration::from_millis(config.cleanup_interval_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(entries) = entries.upgrade() else {
                    break;
                };
                if closed.load(Ordering::Acquire) {
                    break;
                }
                if let Ok(mut map) = entries.lock() {
                    let now = Instant::now();
                    map.retain(|_, e| e.live(now));
                }
            }
        });
        Ok(cache)
    }

    fn map(&self) -> Result<MutexGuard<'_, HashMap<String, Entry>>, PluginError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PluginError::unavailable("the memory cache is shut down"));
        }
        self.entries.lock().map_err(|_| PluginError::internal("the cache lock is poisoned"))
    }
}

impl CacheDriver for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<RVec<u8>>, PluginError> {
        let now = Instant::now();
        let map = self.map()?;
        Ok(map.get(key).filter(|e| e.live(now)).map(|e| RVec::from(e.value.clone())))
    }

    async fn set(&self, key: &str, value: RVec<u8>, ttl_ms: u64) -> Result<(), PluginError> {
        let now = Instant::now();
        let expires = (ttl_ms > 0).then(|| now + Duration::from_millis(ttl_ms));
        let mut map = self.map()?;
        if map.len() >= self.max_capacity && !map.contains_key(key) {
            map.retain(|_, e| e.live(now));
            if map.len() >= self.max_capacity {
                let soonest = map
                    .iter()
                    .min_by_key(|(_, e)| {
                        e.expires.unwrap_or(now + Duration::from_secs(u32::MAX.into()))
                    })
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    map.remove(&k);
                }
            }
        }
        map.insert(key.to_owned(), Entry { value: value.into_vec(), expires });
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, PluginError> {
        let now = Instant::now();
        Ok(self.map()?.remove(key).is_some_and(|e| e.live(now)))
    }

    async fn has(&self, key: &str) -> Result<bool, PluginError> {
        let now = Instant::now();
        Ok(self.map()?.get(key).is_some_and(|e| e.live(now)))
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.map().map(drop)
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        if !self.closed.swap(true, Ordering::AcqRel)
            && let Ok(mut map) = self.entries.lock()
        {
            map.clear();
        }
        Ok(())
    }
}
