//! The transport conformance suite against the built `libsockhost_nats.so` and a real
//! `nats-server` started for each case; plus a burst far beyond NATS's default buffers.

use sockhost_plugin_api::{
    abi::{RStr, RVec},
    conformance::{Target, eventually, ok},
};
use sockhost_tests::{backends::NatsServer, cdylib};

fn nats() -> Target {
    nats_with("")
}

fn nats_with(extra: &str) -> Target {
    let server = NatsServer::start();
    let config = format!("servers = [\"{}\"]\nprefix = \"conformance:\"\n{extra}", server.url());
    Target::new(cdylib("sockhost_nats"), "nats", &config).keep(server)
}

sockhost_plugin_api::transport_suite!(nats);

/// 100,000 messages in one burst: every one arrives, or the ones NATS dropped are reported as
/// slow consumers. With the default capacity, none is dropped.
#[test]
fn a_burst_of_100000_messages_is_delivered_or_reported() {
    sockhost_plugin_api::conformance::run(async {
        const BURST: usize = 100_000;
        let target = nats();
        let (sender, _) = target.transport().await;
        let (receiver, host) = target.transport().await;
        ok("subscribe", receiver.subscribe(RStr::from_str("burst")).await);
        for i in 0..BURST {
            let payload = RVec::from(i.to_be_bytes().to_vec());
            // A full send buffer answers BACKPRESSURE; the awaited publish waits for room.
            if sender.try_publish(RStr::from_str("burst"), payload.clone()).is_err() {
                ok("publish", sender.publish(RStr::from_str("burst"), payload).await);
            }
        }
        eventually("the burst to arrive", || {
            std::future::ready(host.delivered() == BURST || host.metric("slow_consumers") > 0)
        })
        .await;
        assert_eq!(host.metric("slow_consumers"), 0, "NATS dropped messages for a slow consumer");
        assert_eq!(host.delivered(), BURST);
    });
}

/// With a tiny buffer and a burst, NATS drops; the plugin says so in a metric, never silently.
#[test]
fn a_slow_consumer_is_reported() {
    sockhost_plugin_api::conformance::run(async {
        let target = nats_with("subscription_capacity = 4\n");
        let (sender, _) = target.transport().await;
        let (receiver, host) = target.transport().await;
        host.block_deliveries();
        ok("subscribe", receiver.subscribe(RStr::from_str("slow")).await);
        for i in 0..10_000usize {
            let payload = RVec::from(i.to_be_bytes().to_vec());
            if sender.try_publish(RStr::from_str("slow"), payload.clone()).is_err() {
                ok("publish", sender.publish(RStr::from_str("slow"), payload).await);
            }
        }
        eventually("a slow consumer report", || {
            std::future::ready(host.metric("slow_consumers") > 0)
        })
        .await;
        host.unblock_deliveries();
    });
}
