//! A peer's full presence state arriving on the bus: how long a real node takes to apply a
//! 60,000-member sync, and whether a broadcast sent right behind it waits for it.
//!
//! Run with: `cargo build --release --workspace && cargo bench --workspace --bench presence_sync`
//!
//! One real `sockhost` node (release build, real redis plugin, cluster secret) on a real
//! `redis-server`; a fake peer holding the secret publishes, for each round, a sync of N members,
//! then a broadcast to a channel a client is subscribed to, then a presence join the client
//! hears. Control messages are applied in order, so the join is heard once the sync is applied.
//! Each figure is set against the same round with an empty sync (the baseline).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sockhost::peer::{Body, Control, Envelope, Seal};
use sockhost_tests::{
    backends::RedisServer,
    cluster::{Bus, CLUSTER_SECRET, broadcast_body, nodes},
    pusher::{Client, TestApp},
};

const MEMBERS: usize = 60_000;
const ROUNDS: usize = 7;

/// Milliseconds from publishing the sync until the join behind it is heard (the sync applied),
/// and from publishing the broadcast until it is delivered.
struct Round {
    applied_ms: f64,
    broadcast_ms: f64,
}

struct Peer<'a> {
    redis: &'a RedisServer,
    seal: Seal,
    node: u64,
    seq: u64,
}

impl Peer<'_> {
    /// The next sealed envelope.
    fn seal(&mut self, body: Body) -> Vec<u8> {
        self.seq += 1;
        self.seal.seal(&Envelope { node: self.node, seq: self.seq, body }.encode())
    }

    async fn publish(&self, topic: &str, bytes: &[u8]) {
        self.redis.publish_raw(&format!("bench:{topic}"), bytes).await;
    }

    async fn send(&mut self, topic: &str, body: Body) {
        let bytes = self.seal(body);
        self.publish(topic, &bytes).await;
    }
}

fn marker(joined: bool) -> Body {
    Body::Control(Control::Presence {
        app: "app-1".into(),
        channel: "presence-marker".into(),
        user_id: "marker".into(),
        info: joined.then(|| json!({})),
    })
}

async fn round(redis: &RedisServer, client: &mut Client, node: u64, members: usize) -> Round {
    let mut peer = Peer { redis, seal: Seal::new(CLUSTER_SECRET), node, seq: 0 };
    let crowd: serde_json::Map<String, Value> =
        (0..members).map(|i| (format!("u{i}"), json!({}))).collect();
    let state = json!({ "app-1": { "presence-crowd": crowd } });
    let sync = Control::PresenceSync { state, occupied: Vec::new(), online: Vec::new() };
    let broadcast = broadcast_body("watched", "after-sync");

    // Sealed beforehand: the peer's own encoding is not the node's cost.
    let (sync, broadcast, join) =
        (peer.seal(Body::Control(sync)), peer.seal(broadcast), peer.seal(marker(true)));
    let start = Instant::now();
    peer.publish("#control", &sync).await;
    let sent = Instant::now();
    peer.publish("#broadcast:app-1:watched", &broadcast).await;
    peer.publish("#control", &join).await;
    let (mut applied, mut delivered) = (None, None);
    while applied.is_none() || delivered.is_none() {
        let event = client.expect_any().await;
        match event["event"].as_str() {
            Some("after-sync") => delivered = Some(sent.elapsed()),
            Some("pusher_internal:member_added") => applied = Some(start.elapsed()),
            _ => {}
        }
    }
    peer.send("#control", Body::Control(Control::Goodbye)).await;
    client.expect("pusher_internal:member_removed").await;
    let ms = |d: Option<Duration>| d.unwrap_or_default().as_secs_f64() * 1000.0;
    Round { applied_ms: ms(applied), broadcast_ms: ms(delivered) }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let redis = RedisServer::start();
        let bus = Bus::redis(&redis.url(), "bench:").env("RUST_LOG", "info,sockhost::cluster::reader=debug");
        let servers = nodes(&bus, 1, "").await;
        let app = TestApp::main();
        let mut client = Client::connect(&servers[0].ws_url(&app.key)).await;
        client.subscribe(&app, "watched").await;
        client.join(&app, "presence-marker", "local", json!({})).await;

        let (mut empty, mut big) = (Vec::new(), Vec::new());
        // Alternate, each round from a new peer, so drift hits both alike.
        for i in 0..ROUNDS as u64 {
            empty.push(round(&redis, &mut client, 2 * i + 2, 0).await);
            big.push(round(&redis, &mut client, 2 * i + 3, MEMBERS).await);
        }
        let applied = |r: &[Round]| median(r.iter().map(|r| r.applied_ms).collect());
        let broadcast = |r: &[Round]| median(r.iter().map(|r| r.broadcast_ms).collect());
        // The node's own account of each sync: the time its state worker spent applying it.
        let own: Vec<f64> = servers[0]
            .log()
            .lines()
            .filter(|l| l.contains("full state") && !l.contains("changed=0 "))
            .filter_map(|l| l.split("elapsed_ms=").nth(1)?.trim().parse().ok())
            .collect();
        println!("presence sync on one node over Redis, median of {ROUNDS} rounds:");
        println!(
            "  sync applied (publish to the join behind it heard): empty {:.1} ms, {MEMBERS} members {:.1} ms",
            applied(&empty),
            applied(&big)
        );
        println!(
            "  of which the node's state worker applying it ({} syncs): median {:.1} ms",
            own.len(),
            median(own.clone())
        );
        println!(
            "  broadcast right behind the sync delivered in: empty {:.2} ms, {MEMBERS} members {:.2} ms ({:.2}x)",
            broadcast(&empty),
            broadcast(&big),
            broadcast(&big) / broadcast(&empty)
        );
    });
}
