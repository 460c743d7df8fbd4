//! The multi-node scenarios over a real three-master Redis Cluster with classic pub/sub, with
//! real `sockhost` processes loading the real `libsockhost_redis_cluster.so`; plus what is this
//! transport's own: seeds, credentials and TLS from the configuration, and its refusals.

use sockhost_tests::{
    backends::{ClusterOptions, RedisCluster},
    cluster::{Bus, nodes, refused},
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
    let servers = nodes(bus, 2, "").await;
    let app = TestApp::main();
    let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
    on_b.subscribe(&app, "crossing").await;
    let api_a = Api::new(&servers[0].http_url(), &app);
    assert_eq!(api_a.trigger(&["crossing"], "crossed", "yes").await.0, 200);
    assert_eq!(on_b.expect("crossed").await["data"], "yes");
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
