//! The transport suite. Expand it with [`transport_suite!`](crate::transport_suite).

use std::collections::BTreeSet;

use abi_stable::std_types::{RStr, RVec};

use super::{Delivery, PATIENCE, Target, ok};
use crate::ErrorCode;

fn s(text: &str) -> RStr<'_> {
    RStr::from_str(text)
}

fn bytes(data: impl Into<Vec<u8>>) -> RVec<u8> {
    RVec::from(data.into())
}

/// A message published by one instance reaches another that subscribed, by both publish paths.
pub async fn delivers_between_instances(target: &Target) {
    let (a, _a_host) = target.transport().await;
    let (b, b_host) = target.transport().await;
    ok("subscribe", b.subscribe(s("conformance-basic")).await);
    ok("publish", a.publish(s("conformance-basic"), bytes("awaited")).await);
    assert_eq!(
        b_host.next().await,
        Delivery { topic: "conformance-basic".into(), payload: b"awaited".to_vec() }
    );
    ok("try_publish", a.try_publish(s("conformance-basic"), bytes("enqueued")));
    assert_eq!(b_host.next().await.payload, b"enqueued");
}

/// Topic names with dots, colons, `#`, spaces, unicode and 200 characters arrive on the topic
/// they were published to, and only there.
pub async fn carries_awkward_topic_names(target: &Target) {
    let long = "x".repeat(200);
    let topics = [
        "app.1.channel.with.dots",
        "prefix:#broadcast:private-chat",
        "a#b#c",
        "spaces in a topic",
        "wild*card>and?",
        "ünïcødé-频道-🚀",
        long.as_str(),
    ];
    let (a, _a_host) = target.transport().await;
    let (b, b_host) = target.transport().await;
    for topic in topics {
        ok("subscribe", b.subscribe(s(topic)).await);
    }
    for topic in topics {
        ok("publish", a.publish(s(topic), bytes(topic)).await);
    }
    let mut seen = BTreeSet::new();
    for _ in topics {
        let d = b_host.next().await;
        assert_eq!(d.topic.as_bytes(), d.payload, "a message arrived on another topic");
        seen.insert(d.topic);
    }
    assert_eq!(seen, topics.iter().map(|t| t.to_string()).collect::<BTreeSet<_>>());
}

/// After `unsubscribe` resolves, messages to that topic are no longer delivered, and
/// subscribing again resumes delivery.
pub async fn unsubscribe_stops_delivery(target: &Target) {
    let (a, _a_host) = target.transport().await;
    let (b, b_host) = target.transport().await;
    ok("subscribe", b.subscribe(s("conformance-unsub")).await);
    ok("subscribe", b.subscribe(s("conformance-marker")).await);
    ok("publish", a.publish(s("conformance-unsub"), bytes("before")).await);
    assert_eq!(b_host.next().await.payload, b"before");

    ok("unsubscribe", b.unsubscribe(s("conformance-unsub")).await);
    ok("publish", a.publish(s("conformance-unsub"), bytes("after")).await);
    ok("publish", a.publish(s("conformance-marker"), bytes("marker")).await);
    let d = b_host.next().await;
    assert_eq!(d.topic, "conformance-marker", "a message arrived after unsubscribe: {d:?}");

    ok("subscribe again", b.subscribe(s("conformance-unsub")).await);
    ok("publish", a.publish(s("conformance-unsub"), bytes("again")).await);
    assert_eq!(b_host.next().await.payload, b"again");
    ok("unsubscribe an unknown topic", b.unsubscribe(s("conformance-never")).await);
}

/// Messages from one instance to one topic arrive in the order they were accepted.
pub async fn preserves_order_per_topic(target: &Target) {
    const COUNT: u32 = 2_000;
    let (a, _a_host) = target.transport().await;
    let (b, b_host) = target.transport().await;
    ok("subscribe", b.subscribe(s("conformance-order")).await);
    for i in 0..COUNT {
        loop {
            let answer =
                a.try_publish(s("conformance-order"), bytes(i.to_be_bytes())).into_result();
            match answer {
                Ok(()) => break,
                Err(e) if e.code == ErrorCode::BACKPRESSURE => tokio::task::yield_now().await,
                Err(e) => panic!("try_publish failed: {e}"),
            }
        }
    }
    for want in 0..COUNT {
        let d = b_host.next().await;
        let got = u32::from_be_bytes(d.payload.as_slice().try_into().expect("a 4-byte payload"));
        assert_eq!(got, want, "messages arrived out of order");
    }
}

/// A burst through `try_publish` never blocks and never fails except with BACKPRESSURE, and
/// every accepted message is delivered.
pub async fn reports_backpressure_without_blocking(target: &Target) {
    const BURST: usize = 100_000;
    let (a, _a_host) = target.transport().await;
    let (b, b_host) = target.transport().await;
    ok("subscribe", b.subscribe(s("conformance-burst")).await);
    let mut accepted = 0usize;
    let mut refused = 0usize;
    for i in 0..BURST {
        match a.try_publish(s("conformance-burst"), bytes(format!("{i:064}"))).into_result() {
            Ok(()) => accepted += 1,
            Err(e) if e.code == ErrorCode::BACKPRESSURE => refused += 1,
            Err(e) => panic!("try_publish answered {e}, not BACKPRESSURE"),
        }
    }
    assert_eq!(accepted + refused, BURST);
    assert!(accepted > 0, "nothing was accepted");
    for n in 0..accepted {
        if b_host.next_within(PATIENCE).await.is_none() {
            panic!("only {n} of {accepted} accepted messages were delivered");
        }
    }
}

/// A 1 MiB payload arrives intact.
pub async fn carries_a_large_payload(target: &Target) {
    let payload: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let (a, _a_host) = target.transport().await;
    let (b, b_host) = target.transport().await;
    ok("subscribe", b.subscribe(s("conformance-large")).await);
    ok("publish", a.publish(s("conformance-large"), bytes(payload.clone())).await);
    let d = b_host.next().await;
    assert_eq!(d.payload.len(), payload.len());
    assert!(d.payload == payload, "the payload arrived altered");
}

/// Health answers Ok on a working backend, and the node-count hint, if given, counts this node.
pub async fn reports_health(target: &Target) {
    let (a, _a_host) = target.transport().await;
    ok("health", a.health().await);
    if let Some(n) = ok("node_count_hint", a.node_count_hint().await).into_option() {
        assert!(n >= 1, "the node count hint {n} does not count this node");
    }
}

/// Shutdown answers Ok twice, and afterwards every call answers UNAVAILABLE without panicking.
pub async fn shutdown_is_idempotent(target: &Target) {
    let (a, _a_host) = target.transport().await;
    ok("shutdown", a.shutdown().await);
    ok("second shutdown", a.shutdown().await);
    let unavailable = |what: &str, code: ErrorCode| {
        assert_eq!(code, ErrorCode::UNAVAILABLE, "{what} after shutdown");
    };
    let e = a.try_publish(s("conformance-down"), bytes("x")).into_result().unwrap_err();
    unavailable("try_publish", e.code);
    let e = a.publish(s("conformance-down"), bytes("x")).await.into_result().unwrap_err();
    unavailable("publish", e.code);
    let e = a.subscribe(s("conformance-down")).await.into_result().unwrap_err();
    unavailable("subscribe", e.code);
}

/// Expand the transport suite: one `#[test]` per case, for the [`Target`] that `$target()`
/// returns.
#[macro_export]
macro_rules! transport_suite {
    ($target:path) => {
        $crate::__conformance_cases!(
            transport,
            $target,
            [
                delivers_between_instances,
                carries_awkward_topic_names,
                unsubscribe_stops_delivery,
                preserves_order_per_topic,
                reports_backpressure_without_blocking,
                carries_a_large_payload,
                reports_health,
                shutdown_is_idempotent,
            ]
        );
    };
}
