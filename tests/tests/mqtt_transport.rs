//! The transport conformance suite against the built `libsockhost_mqtt.so` and a real
//! Mosquitto started for each case; plus what is this transport's own: a message over the
//! broker's limit is refused and counted, and the connection goes on.

use sockhost_plugin_api::{
    abi::{RStr, RVec},
    conformance::{Target, ok},
};
use sockhost_tests::{backends::MosquittoServer, cdylib};

fn mqtt() -> Target {
    mqtt_with(MosquittoServer::start(), "")
}

fn mqtt_with(server: MosquittoServer, extra: &str) -> Target {
    let config = format!("url = \"{}\"\nprefix = \"conformance\"\n{extra}", server.url());
    Target::new(cdylib("sockhost_mqtt"), "mqtt", &config).keep(server)
}

sockhost_plugin_api::transport_suite!(mqtt);

/// A message larger than the broker takes (its CONNACK's maximum packet size) is refused and
/// counted instead of breaking the connection: the next one arrives.
#[test]
fn a_message_over_the_brokers_limit_is_refused_and_counted() {
    sockhost_plugin_api::conformance::run(async {
        let target = mqtt_with(MosquittoServer::start_with("max_packet_size 2000"), "");
        let (sender, sender_host) = target.transport().await;
        let (receiver, host) = target.transport().await;
        ok("subscribe", receiver.subscribe(RStr::from_str("sized")).await);
        let big = sender.try_publish(RStr::from_str("sized"), RVec::from(vec![b'x'; 5000]));
        assert!(big.is_err(), "a message over the limit was taken");
        assert_eq!(sender_host.metric("too_large"), 1);
        ok("publish", sender.publish(RStr::from_str("sized"), RVec::from(b"small".to_vec())).await);
        assert_eq!(host.next().await.payload, b"small");
    });
}

/// A node that does not read (its deliveries blocked) is capped in the broker: Mosquitto holds
/// at most `max_queued_messages` for it beyond what the sockets buffer, and drops the rest, so a
/// slow node never fills the broker's memory. A marker published after the node reads again
/// arrives after everything that was kept (one topic keeps its order), so what was kept is known.
/// The transport cannot count these drops: MQTT tells a subscriber nothing of them.
#[test]
fn a_slow_node_is_capped_in_the_broker() {
    sockhost_plugin_api::conformance::run(async {
        let target = mqtt_with(MosquittoServer::start_with("max_queued_messages 100"), "");
        let (sender, _) = target.transport().await;
        let (receiver, host) = target.transport().await;
        ok("subscribe", receiver.subscribe(RStr::from_str("slow")).await);
        host.block_deliveries();
        // 32 MB: more than the loopback sockets between them can hold.
        let published = 2_000;
        for _ in 0..published {
            let payload = RVec::from(vec![b'x'; 16 * 1024]);
            ok("publish", sender.publish(RStr::from_str("slow"), payload).await);
        }
        host.unblock_deliveries();
        // A marker is dropped too while the node's queue is still full, so another goes
        // whenever nothing came for a while; the first to arrive closes what was kept.
        let mut kept = 0;
        'drained: loop {
            ok(
                "publish",
                sender.publish(RStr::from_str("slow"), RVec::from(b"last".to_vec())).await,
            );
            while let Some(delivery) = host.next_within(std::time::Duration::from_millis(500)).await
            {
                if delivery.payload == b"last" {
                    break 'drained;
                }
                kept += 1;
            }
        }
        assert!(kept < published, "the broker held every message for a node that did not read");
    });
}
