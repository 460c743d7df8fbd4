//! The cache suite. Expand it with [`cache_suite!`](crate::cache_suite).

use abi_stable::std_types::{RStr, RVec};

use super::{Target, eventually, holds, ok};
use crate::ErrorCode;

fn s(text: &str) -> RStr<'_> {
    RStr::from_str(text)
}

/// Set, get, has, overwrite and delete behave as a map.
pub async fn stores_and_deletes(target: &Target) {
    let c = target.cache().await;
    let key = "conformance:app:1:channel:cache-room";
    assert!(ok("get", c.get(s(key)).await).is_none(), "a fresh key has a value");
    assert!(!ok("has", c.has(s(key)).await));
    ok("set", c.set(s(key), RVec::from(b"one".to_vec()), 60_000).await);
    assert_eq!(
        ok("get", c.get(s(key)).await).into_option().map(|v| v.to_vec()),
        Some(b"one".to_vec())
    );
    assert!(ok("has", c.has(s(key)).await));
    ok("overwrite", c.set(s(key), RVec::from(b"two".to_vec()), 60_000).await);
    assert_eq!(
        ok("get", c.get(s(key)).await).into_option().map(|v| v.to_vec()),
        Some(b"two".to_vec())
    );
    assert!(ok("delete", c.delete(s(key)).await), "delete of a present key answered false");
    assert!(!ok("delete", c.delete(s(key)).await), "delete of a missing key answered true");
    assert!(ok("get", c.get(s(key)).await).is_none());
}

/// A value expires after its TTL; a TTL of 0 never expires.
pub async fn expires_values(target: &Target) {
    let c = target.cache().await;
    ok("set", c.set(s("conformance:short"), RVec::from(b"v".to_vec()), 50).await);
    ok("set", c.set(s("conformance:forever"), RVec::from(b"v".to_vec()), 0).await);
    eventually("the 50 ms value expires", async || {
        holds(!ok("has", c.has(s("conformance:short")).await), "the key is still there")
    })
    .await;
    assert!(ok("get", c.get(s("conformance:short")).await).is_none());
    assert!(ok("has", c.has(s("conformance:forever")).await), "a TTL of 0 expired");
}

/// Keys with unusual characters and 1 MiB values round-trip.
pub async fn stores_awkward_keys_and_large_values(target: &Target) {
    let c = target.cache().await;
    let value: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 253) as u8).collect();
    for key in ["a b", "ünï:{tag}:#", "", &"k".repeat(500)] {
        ok("set", c.set(s(key), RVec::from(value.clone()), 60_000).await);
        let got = ok("get", c.get(s(key)).await).into_option().expect("the value is present");
        assert!(got.as_slice() == value.as_slice(), "the value for {key:?} came back altered");
    }
}

/// Health answers Ok; shutdown is idempotent and later calls answer UNAVAILABLE.
pub async fn health_and_shutdown(target: &Target) {
    let c = target.cache().await;
    ok("health", c.health().await);
    ok("shutdown", c.shutdown().await);
    ok("second shutdown", c.shutdown().await);
    let e = c.get(s("conformance:down")).await.into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::UNAVAILABLE);
}

/// Expand the cache suite for the [`Target`] that `$target()` returns.
#[macro_export]
macro_rules! cache_suite {
    ($target:path) => {
        $crate::__conformance_cases!(
            cache,
            $target,
            [
                stores_and_deletes,
                expires_values,
                stores_awkward_keys_and_large_values,
                health_and_shutdown,
            ]
        );
    };
}
