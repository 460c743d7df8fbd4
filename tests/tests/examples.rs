//! The production configurations in `examples/production/`, each run as it is by two real
//! `sockhost` nodes against a real backend (pointed there through the environment, as an
//! operator would), with an event sent across.

use sockhost_tests::{
    backends::{NatsServer, RedisCluster, RedisServer},
    pusher::{Api, Client, TestApp},
    server::Server,
    workspace_root,
};

async fn two_nodes_deliver(example: &str, env: &[(&str, &str)]) {
    let path = workspace_root().join("examples/production").join(example);
    let start = || {
        let mut builder = Server::builder().config_file(&path);
        for (name, value) in env {
            builder = builder.env(name, value);
        }
        builder.start()
    };
    let (a, b) = (start(), start());
    for node in [&a, &b] {
        node.wait_for_metric("sockhost_cluster_nodes", |n| n == 2.0).await;
    }
    let app = TestApp::new("app-id", "app-key", "app-secret");
    let mut on_b = Client::connect(&b.ws_url(&app.key)).await;
    on_b.subscribe(&app, "private-orders").await;
    let api_a = Api::new(&a.http_url(), &app);
    assert_eq!(api_a.trigger(&["private-orders"], "created", "42").await.0, 200);
    assert_eq!(on_b.expect("created").await["data"], "42");
}

#[tokio::test]
async fn redis_for_everything() {
    let redis = RedisServer::start();
    two_nodes_deliver("redis.toml", &[("REDIS_URL", &redis.url())]).await;
}

#[tokio::test]
async fn redis_cluster_with_sharded_pub_sub() {
    let cluster = RedisCluster::start();
    two_nodes_deliver("redis-cluster.toml", &[("REDIS_CLUSTER_NODES", &cluster.seeds())]).await;
}

#[tokio::test]
async fn nats() {
    let nats = NatsServer::start();
    two_nodes_deliver("nats.toml", &[("NATS_SERVERS", &nats.url())]).await;
}
