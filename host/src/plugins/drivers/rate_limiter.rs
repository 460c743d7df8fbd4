//! The rate-limiter handle.

use sockhost_plugin_api::{RateDecision, RateLimiterBox, abi::RStr};

use super::{DriverError, call::Named};

/// The rate limiter, as the host uses it.
#[derive(Debug)]
pub struct RateLimiter(pub(super) Named<RateLimiterBox>);

impl RateLimiter {
    /// The driver name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Check and consume `cost` tokens of `key` against `limit` per `window_ms`.
    pub async fn check(
        &self,
        key: &str,
        cost: u32,
        limit: u32,
        window_ms: u64,
    ) -> Result<RateDecision, DriverError> {
        self.0.call(self.0.inner.check(RStr::from_str(key), cost, limit, window_ms)).await
    }

    /// Whether the backend answers.
    pub async fn health(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.health()).await
    }

    /// Release the backend.
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        self.0.call(self.0.inner.shutdown()).await
    }
}
