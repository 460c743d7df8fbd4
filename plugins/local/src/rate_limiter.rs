//! The `memory` rate limiter: a fixed window per key.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Deserialize;
use sockhost_plugin_api::{PluginError, RateDecision, sdk::RateLimiterDriver};

/// Settings of the `memory` rate limiter.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MemoryRateLimiterConfig {
    /// Above this many tracked keys, a check first drops the keys whose window has passed, so
    /// memory stays bounded by the keys active in one window. The next sweep waits until the
    /// keys have doubled again, so a limiter holding many live keys does not scan them all on
    /// every check. Default: 100000.
    sweep_above_keys: usize,
}

impl Default for MemoryRateLimiterConfig {
    fn default() -> Self {
        Self { sweep_above_keys: 100_000 }
    }
}

#[derive(Default)]
struct Windows {
    by_key: HashMap<String, Window>,
    /// Sweep when there are more keys than this: `sweep_above_keys`, or twice what the last
    /// sweep left, whichever is more (each sweep then pays for the inserts since the last).
    next_sweep: usize,
}

struct Window {
    started: Instant,
    length: Duration,
    used: u32,
}

/// Fixed windows in process memory.
pub struct MemoryRateLimiter {
    windows: Mutex<Windows>,
    sweep_above_keys: usize,
    closed: AtomicBool,
}

impl std::fmt::Debug for MemoryRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRateLimiter").finish_non_exhaustive()
    }
}

impl MemoryRateLimiter {
    /// A limiter configured by `config`.
    pub fn new(config: &str) -> Result<Self, PluginError> {
        let config: MemoryRateLimiterConfig =
            sockhost_plugin_api::sdk::config::parse("rate_limiter.memory", config)?;
        Ok(Self {
            windows: Mutex::default(),
            sweep_above_keys: config.sweep_above_keys.max(1),
            closed: AtomicBool::new(false),
        })
    }

    fn check_open(&self) -> Result<(), PluginError> {
        if self.closed.load(Ordering::Acquire) {
            Err(PluginError::unavailable("the memory rate limiter is shut down"))
        } else {
            Ok(())
        }
    }
}

impl RateLimiterDriver for MemoryRateLimiter {
    async fn check(
        &self,
        key: &str,
        cost: u32,
        limit: u32,
        window_ms: u64,
    ) -> Result<RateDecision, PluginError> {
        self.check_open()?;
        if window_ms == 0 {
            return Err(PluginError::rejected("a rate-limit window must be at least 1 ms"));
        }
        let now = Instant::now();
        let length = Duration::from_millis(window_ms);
        let mut windows = self
            .windows
            .lock()
            .map_err(|_| PluginError::internal("the limiter lock is poisoned"))?;
        if windows.by_key.len() > windows.next_sweep.max(self.sweep_above_keys) {
            windows.by_key.retain(|_, w| now.duration_since(w.started) < w.length);
            windows.next_sweep = windows.by_key.len().saturating_mul(2);
        }
        let window = match windows.by_key.get_mut(key) {
            Some(window) => window,
            None => windows.by_key.entry(key.to_owned()).or_insert(Window {
                started: now,
                length,
                used: 0,
            }),
        };
        if now.duration_since(window.started) >= window.length || window.length != length {
            *window = Window { started: now, length, used: 0 };
        }
        let allowed = window.used.saturating_add(cost) <= limit;
        if allowed {
            window.used += cost;
        }
        let elapsed = now.duration_since(window.started);
        let reset_after_ms =
            u64::try_from((window.length - elapsed).as_millis()).unwrap_or(u64::MAX).max(1);
        Ok(RateDecision {
            allowed,
            limit,
            remaining: limit.saturating_sub(window.used),
            reset_after_ms,
        })
    }

    async fn health(&self) -> Result<(), PluginError> {
        self.check_open()
    }

    async fn shutdown(&self) -> Result<(), PluginError> {
        self.closed.store(true, Ordering::Release);
        if let Ok(mut windows) = self.windows.lock() {
            windows.by_key.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sweeps_are_amortized_and_keep_live_windows() {
        let limiter = MemoryRateLimiter::new("sweep_above_keys = 4").unwrap();
        // Eight live keys, each used once: the sweep at five keeps all of them.
        for i in 0..8 {
            assert!(limiter.check(&format!("live-{i}"), 1, 2, 60_000).await.unwrap().allowed);
        }
        for i in 0..8 {
            let decision = limiter.check(&format!("live-{i}"), 1, 2, 60_000).await.unwrap();
            assert!(decision.allowed && decision.remaining == 0, "live-{i} lost its window");
        }
        {
            let windows = limiter.windows.lock().unwrap();
            assert_eq!(windows.by_key.len(), 8);
            // The next sweep waits for twice the keys the last one left.
            assert!(windows.next_sweep >= 8, "{}", windows.next_sweep);
        }
        // Windows that have passed are dropped by the next sweep.
        for i in 0..20 {
            limiter.check(&format!("short-{i}"), 1, 1, 1).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        for i in 0..20 {
            limiter.check(&format!("later-{i}"), 1, 1, 60_000).await.unwrap();
        }
        let windows = limiter.windows.lock().unwrap();
        assert!(windows.by_key.len() < 8 + 20 + 20, "expired windows were never swept");
    }
}
