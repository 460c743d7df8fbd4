//! The multi-node scenarios over a real three-master Redis Cluster with classic pub/sub, with
//! real `sockhost` processes loading the real `libsockhost_redis_cluster.so`; plus what is this
//! transport's own: seeds, credentials and TLS from the configuration, and its refusals.

use sockhost_tests::{
    backends::{ClusterOptions, RedisCluster},
    cluster::{self, Bus, nodes, refused},
    pusher::{Api, Client, TestApp},
    tls::Pki,
};

fn start() -> (RedisCluster, Bus) {
    let cluster = RedisCluster::start();
    let bus = Bus::redis_cluster(&cluster.seeds(), false);
    (cluster, bus)
}

sockhost_tests::cluster_scenarios!(start);

/// One event from node A to a subscriber on node B over `bus`.
async fn one_event_crosses(bus: &Bus) {
    cluster::one_event_crosses(&nodes(bus, 2, "").await, "crossing").await;
}

#[tokio::test]
async fn seeds_credentials_and_tls_come_from_the_database_table() {
    let pki = Pki::generate();
    let cluster = RedisCluster::start_with(ClusterOptions {
        tls: Some(&pki),
        password: Some("cluster-secret"),
        ..ClusterOptions::default()
    });
    let nodes_list: Vec<String> =
        cluster.ports().iter().map(|p| format!("{{ host = \"127.0.0.1\", port = {p} }}")).collect();
    let bus = Bus {
        adapter: format!(
            "[adapter]\ndriver = \"redis-cluster\"\n[adapter.cluster]\nprefix = \"tls:\"\n\
             [database.redis.cluster]\nnodes = [{}]\npassword = \"cluster-secret\"\nuse_tls = true\n",
            nodes_list.join(", ")
        ),
        plugin: "redis-cluster",
        env: vec![("SSL_CERT_FILE".into(), pki.ca().to_str().unwrap().into())],
        manifest: None,
        history: None,
    };
    one_event_crosses(&bus).await;

    // The same cluster with a wrong password, and with a CA the node does not trust: refused.
    let wrong_password =
        Bus { adapter: bus.adapter.replace("cluster-secret", "guess"), ..bus.clone() };
    let (code, log) = refused(&wrong_password);
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("transport driver `redis-cluster`"), "{log}");
    let stranger = Pki::generate();
    let untrusting =
        Bus { env: vec![("SSL_CERT_FILE".into(), stranger.ca().to_str().unwrap().into())], ..bus };
    let (code, log) = refused(&untrusting);
    assert_ne!(code, Some(0), "{log}");
    assert!(log.to_lowercase().contains("certificate"), "{log}");
}

#[tokio::test]
async fn no_seed_nodes_is_a_clear_start_up_error() {
    let bus = Bus {
        adapter: "[adapter]\ndriver = \"redis-cluster\"\n".into(),
        plugin: "redis-cluster",
        env: vec![("REDIS_CLUSTER_NODES".into(), String::new())],
        manifest: None,
        history: None,
    };
    let (code, log) = refused(&bus);
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("adapter.cluster.nodes: no seed nodes"), "{log}");
}

#[tokio::test]
async fn sharded_pub_sub_against_a_cluster_without_it_is_refused_at_start() {
    // SSUBSCRIBE renamed away: a cluster whose nodes answer as a server without sharded
    // pub/sub would.
    let cluster = RedisCluster::start_with(ClusterOptions {
        extra: vec!["--rename-command".into(), "SSUBSCRIBE".into(), String::new()],
        ..ClusterOptions::default()
    });
    let (code, log) = refused(&Bus::redis_cluster(&cluster.seeds(), true));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("adapter.cluster.use_sharded_pubsub"), "{log}");
}

/// With recovery on and the cluster as the history store, the store publishes each event in
/// the script that positions it, on the shard of the channel's keys: classic pub/sub copies it
/// to every node of the cluster, so node B's protocol-2 subscriber gets what went through A,
/// in order, with the store's serials, and A counts every event as published by the store.
/// The channel is one whose keys and bus channel are on different masters, so the publish
/// reaches B's subscription through the cluster's own forwarding. With sharded pub/sub the
/// channel's bus topic lives on another shard's slot, so the transport offers nothing to
/// publish on and A publishes itself.
#[tokio::test]
async fn the_cluster_store_publishes_each_event_as_it_positions_it_over_classic_pub_sub() {
    let cluster = RedisCluster::start();
    let app = TestApp::main();
    let apart = |channel: &String| {
        let keys = format!("{{{}:{}:{channel}}}", app.id.len(), app.id);
        let bus_channel = format!("test:#broadcast:{}:{channel}", app.id);
        cluster.owner_of(&keys) != cluster.owner_of(&bus_channel)
    };
    let channel = (0..).map(|n| format!("private-fused-{n}")).find(apart).expect("a channel");
    for sharded in [false, true] {
        let bus = Bus::redis_cluster(&cluster.seeds(), sharded);
        let history = bus.history.clone().expect("a cluster bus has a history table");
        let servers =
            nodes(&bus, 2, &format!("[connection_recovery]\nenabled = true\n{history}")).await;
        let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[1].port, app.key);
        let mut on_b = Client::connect_v2(&url).await;
        let ack = on_b.subscribe_v2(&app, &channel).await;
        let start = ack["serial"].as_u64().unwrap_or_else(|| panic!("{ack}"));
        let api_a = Api::new(&servers[0].http_url(), &app);
        for n in 1..=20u64 {
            let (status, body) = api_a.trigger(&[&channel], "tick", &n.to_string()).await;
            assert_eq!(status, 200, "{body}");
        }
        for n in 1..=20u64 {
            let tick = on_b.expect("tick").await;
            assert_eq!(tick["serial"].as_u64(), Some(start + n), "sharded {sharded}: {tick}");
            assert_eq!(tick["data"], n.to_string(), "{tick}");
            assert_eq!(tick["stream_id"], ack["stream_id"], "{tick}");
        }
        let by_store = servers[0].metric("sockhost_history_published_total").await;
        assert_eq!(by_store, if sharded { 0.0 } else { 20.0 }, "sharded {sharded}");
        assert_eq!(servers[1].metric("sockhost_bus_refused_total").await, 0.0);
    }
}
