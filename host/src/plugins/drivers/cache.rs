//! The cache handle.

use sockhost_plugin_api::{
    CacheBox,
    abi::{RStr, RVec},
};

use super::{DriverError, call::Named};

/// The cache, as the host uses it.
#[derive(Debug)]
pub struct Cache(pub(super) Named<CacheBox>);

impl Cache {
    /// The driver name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The value under `key`, if present.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, DriverError> {
        let value = self.0.call(self.0.inner.get(RStr::from_str(key))).await?;
        Ok(value.into_option().map(RVec::into_vec))
    }

    /// Store `value` under `key` for `ttl_ms` (0: no expiry).
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl_ms: u64) -> Result<(), DriverError> {
        self.0.call(self.0.inner.set(RStr::from_str(key), RVec::from(value), ttl_ms)).await
    }

    /// Whether `key` holds a value, without reading it.
    pub async fn has(&self, key: &str) -> Result<bool, DriverError> {
        self.0.call(self.0.inner.has(RStr::from_str(key))).await
    }

    /// Remove `key`; whether it was present.
    pub async fn delete(&self, key: &str) -> Result<bool, DriverError> {
        self.0.call(self.0.inner.delete(RStr::from_str(key))).await
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
