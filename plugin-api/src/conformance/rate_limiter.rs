//! The rate-limiter suite. Expand it with [`rate_limiter_suite!`](crate::rate_limiter_suite).

use abi_stable::std_types::RStr;

use super::{Target, eventually, holds, ok};
use crate::ErrorCode;

fn s(text: &str) -> RStr<'_> {
    RStr::from_str(text)
}

/// `limit` tokens are granted per window, counting down; the next is denied with the time to
/// the reset; a denied check consumes nothing; keys are independent.
pub async fn limits_within_a_window(target: &Target) {
    let l = target.rate_limiter().await;
    let window = 60_000;
    for remaining in [2, 1, 0] {
        let d = ok("check", l.check(s("conformance:a"), 1, 3, window).await);
        assert!(d.allowed, "a check within the limit was denied: {d:?}");
        assert_eq!((d.limit, d.remaining), (3, remaining), "{d:?}");
    }
    let d = ok("check", l.check(s("conformance:a"), 1, 3, window).await);
    assert!(!d.allowed, "a check over the limit was allowed: {d:?}");
    assert_eq!(d.remaining, 0);
    assert!(d.reset_after_ms > 0 && d.reset_after_ms <= window, "reset after {d:?}");
    let other = ok("check", l.check(s("conformance:b"), 1, 3, window).await);
    assert!(other.allowed && other.remaining == 2, "keys are not independent: {other:?}");
}

/// A check costs `cost` tokens, and a check that would go over is denied without consuming.
pub async fn consumes_the_cost(target: &Target) {
    let l = target.rate_limiter().await;
    let d = ok("check", l.check(s("conformance:cost"), 4, 10, 60_000).await);
    assert!(d.allowed && d.remaining == 6, "{d:?}");
    let d = ok("check", l.check(s("conformance:cost"), 7, 10, 60_000).await);
    assert!(!d.allowed, "a check over the limit was allowed: {d:?}");
    let d = ok("check", l.check(s("conformance:cost"), 6, 10, 60_000).await);
    assert!(d.allowed && d.remaining == 0, "the denied check consumed tokens: {d:?}");
}

/// Once the window has passed, tokens are granted again.
pub async fn resets_after_the_window(target: &Target) {
    let l = target.rate_limiter().await;
    assert!(ok("check", l.check(s("conformance:reset"), 2, 2, 100).await).allowed);
    assert!(!ok("check", l.check(s("conformance:reset"), 1, 2, 100).await).allowed);
    eventually("the window resets", async || {
        let decision = ok("check", l.check(s("conformance:reset"), 1, 2, 100).await);
        holds(decision.allowed, format!("refused, {} ms left", decision.reset_after_ms))
    })
    .await;
}

/// Health answers Ok; shutdown is idempotent and later calls answer UNAVAILABLE.
pub async fn health_and_shutdown(target: &Target) {
    let l = target.rate_limiter().await;
    ok("health", l.health().await);
    ok("shutdown", l.shutdown().await);
    ok("second shutdown", l.shutdown().await);
    let e = l.check(s("conformance:down"), 1, 1, 1000).await.into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::UNAVAILABLE);
}

/// Expand the rate-limiter suite for the [`Target`] that `$target()` returns.
#[macro_export]
macro_rules! rate_limiter_suite {
    ($target:path) => {
        $crate::__conformance_cases!(
            rate_limiter,
            $target,
            [
                limits_within_a_window,
                consumes_the_cost,
                resets_after_the_window,
                health_and_shutdown,
            ]
        );
    };
}
