//! The multi-node scenarios over a real three-master Redis Cluster with sharded pub/sub
//! (`SPUBLISH`/`SSUBSCRIBE`), with real `sockhost` processes loading the real
//! `libsockhost_redis_cluster.so`; plus what is sharding's own: channels spread over the
//! shards, a channel's slot moving to another shard, and a master failing over to its replica.

use sockhost_tests::{
    backends::{ClusterOptions, RedisCluster},
    cluster::{Bus, nodes},
    pusher::{Api, Client, TestApp},
};

fn start() -> (RedisCluster, Bus) {
    let cluster = RedisCluster::start();
    let bus = Bus::redis_cluster(&cluster.seeds(), true);
    (cluster, bus)
}

sockhost_tests::cluster_scenarios!(start);

/// `cmdstat_spublish` calls on the node on `port`.
fn spublish_calls(cluster: &RedisCluster, port: u16) -> u64 {
    let stats = cluster.cli(port, &["INFO", "commandstats"]).unwrap_or_default();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_spublish:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn broadcasts_for_different_channels_land_on_different_shards() {
    let (cluster, bus) = start();
    let servers = nodes(&bus, 2, "").await;
    let app = TestApp::main();
    let channels: Vec<String> = (0..24).map(|i| format!("spread-{i}")).collect();
    let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
    for channel in &channels {
        on_b.subscribe(&app, channel).await;
    }
    let before: Vec<u64> = cluster.ports().iter().map(|&p| spublish_calls(&cluster, p)).collect();
    let api_a = Api::new(&servers[0].http_url(), &app);
    for channel in &channels {
        assert_eq!(api_a.trigger(&[channel.as_str()], "spread", channel).await.0, 200);
        assert_eq!(on_b.expect("spread").await["data"], channel.as_str());
    }
    // Each channel's subscription lives on the shard that owns its slot...
    let mut owners = std::collections::HashSet::new();
    for channel in &channels {
        let topic = format!("test:#broadcast:app-1:{channel}");
        let owner = cluster.owner_of(&topic);
        let held = cluster.cli(owner, &["PUBSUB", "SHARDCHANNELS", &topic]).unwrap_or_default();
        assert_eq!(held, topic, "the shard on {owner} does not hold {topic}");
        owners.insert(owner);
    }
    assert!(owners.len() >= 2, "every channel landed on one shard: {owners:?}");
    // ...and the publishes went to those shards, not all to one.
    let published: Vec<u64> = cluster
        .ports()
        .iter()
        .zip(&before)
        .map(|(&p, before)| spublish_calls(&cluster, p) - before)
        .collect();
    assert!(published.iter().filter(|&&n| n > 0).count() >= 2, "{published:?}");
    assert!(published.iter().sum::<u64>() >= channels.len() as u64, "{published:?}");
}

#[tokio::test]
async fn a_channel_whose_slot_moves_to_another_shard_is_followed() {
    let (cluster, bus) = start();
    let servers = nodes(&bus, 2, "").await;
    let app = TestApp::main();
    let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
    on_b.subscribe(&app, "moving").await;
    let api_a = Api::new(&servers[0].http_url(), &app);
    assert_eq!(api_a.trigger(&["moving"], "before", "1").await.0, 200);
    on_b.expect("before").await;

    let topic = "test:#broadcast:app-1:moving";
    let from = cluster.owner_of(topic);
    let to = cluster.ports().into_iter().find(|&p| p != from).unwrap();
    cluster.move_slot_of(topic, to);
    // The old shard drops the subscription (a `sunsubscribe` push); the node subscribes again
    // on the new owner, and says so.
    let resubscribes = "sockhost_plugin_events{plugin=\"redis-cluster\",name=\"resubscribes\"}";
    servers[1]
        .wait_for_labelled_metric(resubscribes, sockhost_tests::pusher::PATIENCE, |n| n >= 1.0)
        .await;
    assert_eq!(cluster.cli(to, &["PUBSUB", "SHARDCHANNELS", topic]).unwrap_or_default(), topic);
    assert_eq!(api_a.trigger(&["moving"], "after", "2").await.0, 200);
    assert_eq!(on_b.expect("after").await["data"], "2");
}

#[tokio::test]
async fn a_master_that_fails_over_is_followed_to_its_replica() {
    let mut cluster =
        RedisCluster::start_with(ClusterOptions { replicas: true, ..ClusterOptions::default() });
    let bus = Bus::redis_cluster(&cluster.seeds(), true);
    let servers = nodes(&bus, 2, "").await;
    let app = TestApp::main();
    let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
    on_b.subscribe(&app, "failing").await;
    let api_a = Api::new(&servers[0].http_url(), &app);
    assert_eq!(api_a.trigger(&["failing"], "before", "1").await.0, 200);
    on_b.expect("before").await;

    // Kill the master that holds the channel's shard; its replica is promoted.
    let topic = "test:#broadcast:app-1:failing";
    let master = cluster.owner_of(topic);
    cluster.kill_node(master);
    let promoted = cluster.owner_of(topic);
    assert_ne!(promoted, master);

    // The node lost that connection, subscribes again where the slot now lives, and says so.
    // As after a broker restart, the cluster client backs off its reconnects (up to 10 s).
    let reconnects = "sockhost_plugin_events{plugin=\"redis-cluster\",name=\"reconnects\"}";
    servers[1]
        .wait_for_labelled_metric(reconnects, sockhost_tests::pusher::PATIENCE * 3, |n| n >= 1.0)
        .await;
    assert_eq!(
        cluster.cli(promoted, &["PUBSUB", "SHARDCHANNELS", topic]).unwrap_or_default(),
        topic
    );
    assert_eq!(api_a.trigger(&["failing"], "after", "2").await.0, 200);
    assert_eq!(on_b.expect("after").await["data"], "2");
}
