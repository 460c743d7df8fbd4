//! The cache: keys with values and expiry, shared by the nodes that use the same backend.

use abi_stable::{
    sabi_trait,
    std_types::{RBox, ROption, RStr, RVec},
};
use async_ffi::FfiFuture;

use crate::PResult;

/// A key-value store with per-key expiry. Keys are the host's (any UTF-8); values are bytes.
#[sabi_trait]
pub trait Cache: Send + Sync {
    /// The value under `key`, or none if it is missing or expired.
    fn get(&self, key: RStr<'_>) -> FfiFuture<PResult<ROption<RVec<u8>>>>;

    /// Store `value` under `key`, replacing any value. It expires `ttl_ms` milliseconds from now;
    /// `0` means it never expires.
    fn set(&self, key: RStr<'_>, value: RVec<u8>, ttl_ms: u64) -> FfiFuture<PResult<()>>;

    /// Remove `key`; answers whether it was present.
    fn delete(&self, key: RStr<'_>) -> FfiFuture<PResult<bool>>;

    /// Whether `key` is present and unexpired.
    fn has(&self, key: RStr<'_>) -> FfiFuture<PResult<bool>>;

    /// Whether the backend answers now.
    fn health(&self) -> FfiFuture<PResult<()>>;

    /// Release the backend; later calls answer `UNAVAILABLE`. Idempotent.
    #[sabi(last_prefix_field)]
    fn shutdown(&self) -> FfiFuture<PResult<()>>;
}

/// A cache as the host owns it.
pub type CacheBox = Cache_TO<'static, RBox<()>>;
