//! The multi-node scenarios over a real `redis-server`, with real `sockhost` processes loading
//! the real `libsockhost_redis.so`; plus what is Redis's own: the broker restarting.

use serde_json::json;
use sockhost_tests::{
    backends::RedisServer,
    cluster::{Bus, nodes, scenarios},
    pusher::{Api, Client, TestApp},
};

fn bus(redis: &RedisServer) -> Bus {
    Bus::redis(&redis.url(), "test:")
}

#[tokio::test]
async fn delivers_across_nodes() {
    let redis = RedisServer::start();
    scenarios::delivers_across_nodes(bus(&redis)).await;
}

#[tokio::test]
async fn the_connection_can_come_from_the_shared_database_table() {
    let redis = RedisServer::start();
    scenarios::delivers_across_nodes(Bus::redis_database(redis.port, "db:")).await;
}

#[tokio::test]
async fn presence_and_counts_are_cluster_wide() {
    let redis = RedisServer::start();
    scenarios::presence_and_counts_are_cluster_wide(bus(&redis)).await;
}

#[tokio::test]
async fn terminate_reaches_every_node() {
    let redis = RedisServer::start();
    scenarios::terminate_reaches_every_node(bus(&redis)).await;
}

#[tokio::test]
async fn a_late_node_gets_the_presence_state() {
    let redis = RedisServer::start();
    scenarios::a_late_node_gets_the_presence_state(bus(&redis)).await;
}

#[tokio::test]
async fn nodes_receive_only_channels_they_serve() {
    let redis = RedisServer::start();
    scenarios::nodes_receive_only_channels_they_serve(bus(&redis)).await;
}

#[tokio::test]
async fn a_killed_nodes_members_are_removed_once() {
    let redis = RedisServer::start();
    scenarios::a_killed_nodes_members_are_removed_once(bus(&redis)).await;
}

#[tokio::test]
async fn a_graceful_shutdown_is_announced() {
    let redis = RedisServer::start();
    scenarios::a_graceful_shutdown_is_announced(bus(&redis)).await;
}

#[tokio::test]
async fn occupancy_webhooks_are_cluster_wide() {
    let redis = RedisServer::start();
    scenarios::occupancy_webhooks_are_cluster_wide(bus(&redis)).await;
}

#[tokio::test]
async fn connection_quota_holds_for_the_cluster() {
    let redis = RedisServer::start();
    scenarios::connection_quota_holds_for_the_cluster(bus(&redis)).await;
}

#[tokio::test]
async fn a_silent_node_makes_answers_partial() {
    let redis = RedisServer::start();
    scenarios::a_silent_node_makes_answers_partial(bus(&redis)).await;
}

#[tokio::test]
async fn watchlists_follow_users_across_nodes() {
    let redis = RedisServer::start();
    scenarios::watchlists_follow_users_across_nodes(bus(&redis)).await;
}

#[tokio::test]
async fn nodes_reconnect_after_redis_restarts_and_local_delivery_never_stops() {
    let mut redis = RedisServer::start();
    let servers = nodes(&bus(&redis), 2, "").await;
    let app = TestApp::main();
    let mut on_a = Client::connect(&servers[0].ws_url(&app.key)).await;
    let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
    on_a.subscribe(&app, "resilient").await;
    on_b.subscribe(&app, "resilient").await;
    let api_a = Api::new(&servers[0].http_url(), &app);

    redis.kill();
    // Local delivery goes on without the broker.
    assert_eq!(api_a.trigger(&["resilient"], "local", "1").await.0, 200);
    assert_eq!(on_a.expect("local").await["data"], "1");

    redis.restart();
    // Each node's subscriber connection comes back and subscribes again, and the nodes see each
    // other again; then cross-node delivery works as before.
    for server in &servers {
        let deadline = tokio::time::Instant::now() + sockhost_tests::pusher::PATIENCE;
        while server
            .labelled_metric("sockhost_plugin_events{plugin=\"redis\",name=\"reconnects\"}")
            .await
            < 1.0
        {
            assert!(tokio::time::Instant::now() < deadline, "no reconnect:\n{}", server.log());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        server.wait_for_metric("sockhost_cluster_nodes", |n| n == 2.0).await;
    }
    assert_eq!(api_a.trigger(&["resilient"], "again", "2").await.0, 200);
    // The event published while Redis was down may arrive late (the writer retries); never lost
    // silently, never out of order.
    let mut got = on_b.expect_any().await;
    if got["event"] == "local" {
        got = on_b.expect_any().await;
    }
    assert_eq!((got["event"].clone(), got["data"].clone()), (json!("again"), json!("2")));
    assert_eq!(on_a.expect("again").await["data"], "2");
}
