//! The transport conformance suite against the built `libsockhost_rabbitmq.so` and a real
//! RabbitMQ node started for each case; plus what is this transport's own: long topics, the
//! capped node queue, and a restart of the broker.

use sockhost_plugin_api::{
    TransportBox,
    abi::{RStr, RVec},
    conformance::{Target, TestHost, eventually, ok},
};
use sockhost_tests::{backends::RabbitServer, cdylib};

fn rabbitmq() -> Target {
    rabbitmq_with(RabbitServer::start(), "")
}

fn rabbitmq_with(server: RabbitServer, extra: &str) -> Target {
    let config = format!("url = \"{}\"\nprefix = \"conformance\"\n{extra}", server.url());
    Target::new(cdylib("sockhost_rabbitmq"), "rabbitmq", &config).keep(server)
}

sockhost_plugin_api::transport_suite!(rabbitmq);

/// A sender and a receiver whose queue holds 100 messages (10 prefetched), subscribed to
/// `slow` with its deliveries blocked: a node that does not read. The target keeps the broker.
async fn behind_a_capped_queue() -> (Target, TransportBox, TransportBox, TestHost) {
    let target = rabbitmq_with(RabbitServer::start(), "max_queue_length = 100\nprefetch = 10\n");
    let (sender, _) = target.transport().await;
    let (receiver, host) = target.transport().await;
    host.block_deliveries();
    ok("subscribe", receiver.subscribe(RStr::from_str("slow")).await);
    (target, sender, receiver, host)
}

/// A topic longer than a routing key may be (255 bytes) goes by its digest and arrives under
/// its own name.
#[test]
fn a_topic_longer_than_a_routing_key_round_trips() {
    sockhost_plugin_api::conformance::run(async {
        let target = rabbitmq();
        let (sender, _) = target.transport().await;
        let (receiver, host) = target.transport().await;
        let topic = format!("#broadcast:app:{}", "é".repeat(200));
        ok("subscribe", receiver.subscribe(RStr::from_str(&topic)).await);
        ok("publish", sender.publish(RStr::from_str(&topic), RVec::from(b"long".to_vec())).await);
        assert_eq!(host.next().await.topic, topic);
    });
}

/// What the cap dropped since the last count (a count a second) is counted when the node
/// shuts down, not lost with its queues: a node that shuts down right after falling far
/// behind has counted every message its queue could not keep.
#[test]
fn what_the_cap_dropped_is_counted_at_shutdown() {
    sockhost_plugin_api::conformance::run(async {
        let (_target, sender, receiver, host) = behind_a_capped_queue().await;
        let batch: Vec<_> = (0..2_000u32)
            .map(|i| sender.publish(RStr::from_str("slow"), RVec::from(i.to_be_bytes().to_vec())))
            .collect();
        for published in futures_util::future::join_all(batch).await {
            ok("publish", published);
        }
        ok("shutdown", receiver.shutdown().await);
        // Kept at most: the capped queue, what was prefetched, and one on its way.
        let dropped = host.metric("dropped_slow");
        assert!(dropped >= 2_000 - (100 + 10 + 1), "{dropped} counted as dropped");
        assert!(dropped <= 2_000, "{dropped} counted as dropped");
    });
}

/// A node that does not read (its deliveries blocked) has its queue capped in the broker: the
/// oldest messages go, the broker's queue never holds more than the cap, and what it dropped is
/// counted (`dropped_slow`): each message was delivered or counted.
#[test]
fn a_slow_node_is_capped_in_the_broker() {
    sockhost_plugin_api::conformance::run(async {
        let (_target, sender, _receiver, host) = behind_a_capped_queue().await;
        for i in 0..2_000u32 {
            ok(
                "publish",
                sender.publish(RStr::from_str("slow"), RVec::from(i.to_be_bytes().to_vec())).await,
            );
        }
        host.unblock_deliveries();
        eventually("what the queue kept", || std::future::ready(host.delivered() >= 100)).await;
        // The prefetched ones plus the capped queue: far fewer than were published.
        assert!(host.delivered() <= 100 + 10 + 1, "{} delivered", host.delivered());
        // Every other one was counted as dropped: none went missing silently.
        eventually("every message delivered or counted", || {
            std::future::ready(host.delivered() as i64 + host.metric("dropped_slow") == 2_000)
        })
        .await;
    });
}
