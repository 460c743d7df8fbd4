//! The rate limiter: token windows per key, shared by the nodes that use the same backend.

use abi_stable::{
    StableAbi, sabi_trait,
    std_types::{RBox, RStr},
};
use async_ffi::FfiFuture;

use crate::PResult;

/// The answer to one check.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the tokens were granted (and consumed).
    pub allowed: bool,
    /// The limit the check was made against.
    pub limit: u32,
    /// Tokens left in the current window after this check.
    pub remaining: u32,
    /// Milliseconds until the window resets and tokens are available again.
    pub reset_after_ms: u64,
}

/// Limits how many tokens a key may consume per window.
#[sabi_trait]
pub trait RateLimiter: Send + Sync {
    /// Check and consume `cost` tokens for `key`, allowing at most `limit` tokens per window of
    /// `window_ms` milliseconds. Denied checks consume nothing.
    fn check(
        &self,
        key: RStr<'_>,
        cost: u32,
        limit: u32,
        window_ms: u64,
    ) -> FfiFuture<PResult<RateDecision>>;

    /// Whether the backend answers now.
    fn health(&self) -> FfiFuture<PResult<()>>;

    /// Release the backend; later calls answer `UNAVAILABLE`. Idempotent.
    #[sabi(last_prefix_field)]
    fn shutdown(&self) -> FfiFuture<PResult<()>>;
}

/// A rate limiter as the host owns it.
pub type RateLimiterBox = RateLimiter_TO<'static, RBox<()>>;
