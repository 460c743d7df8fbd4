//! The multi-node scenarios over a real `redis-server`, with real `sockhost` processes loading
//! the real `libsockhost_redis.so`; plus what is this transport's own: the shared database
//! table, and Redis over TLS.

use serde_json::json;
use sockhost_tests::{
    backends::RedisServer,
    cluster::{Bus, node, nodes, refused, scenarios},
    pusher::{Api, Client, TestApp},
    tls::Pki,
};

fn start() -> (RedisServer, Bus) {
    let redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), "test:");
    (redis, bus)
}

sockhost_tests::cluster_scenarios!(start);

#[tokio::test]
async fn the_connection_can_come_from_the_shared_database_table() {
    let redis = RedisServer::start();
    scenarios::delivers_across_nodes(Bus::redis_database(redis.port, "db:")).await;
}

#[tokio::test]
async fn rediss_urls_connect_over_tls_to_a_trusted_server() {
    let pki = Pki::generate();
    let redis = RedisServer::start_tls(&pki);
    assert!(redis.url().starts_with("rediss://"));
    let bus = Bus::redis(&redis.url(), "tls:").env("SSL_CERT_FILE", pki.ca().to_str().unwrap());
    let servers = nodes(&bus, 2, "").await;
    let app = TestApp::main();
    let mut on_b = Client::connect(&servers[1].ws_url(&app.key)).await;
    on_b.subscribe(&app, "secure").await;
    let api_a = Api::new(&servers[0].http_url(), &app);
    assert_eq!(api_a.trigger(&["secure"], "sealed", "over tls").await.0, 200);
    assert_eq!(on_b.expect("sealed").await["data"], "over tls");
}

#[tokio::test]
async fn a_server_whose_certificate_the_node_does_not_trust_is_refused_at_start() {
    let (pki, stranger) = (Pki::generate(), Pki::generate());
    let redis = RedisServer::start_tls(&pki);
    let bus =
        Bus::redis(&redis.url(), "tls:").env("SSL_CERT_FILE", stranger.ca().to_str().unwrap());
    let (code, log) = refused(&bus);
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("transport driver `redis`") && log.to_lowercase().contains("certificate"),
        "{log}"
    );
}

/// A silent peer delays a subscription count (it asks every node), never the connection:
/// the subscriber's next message is answered first.
#[tokio::test]
async fn a_silent_peer_does_not_stall_a_subscribe() {
    let (_redis, bus) = start();
    let extra = "[[app_manager.array.apps]]\nid = \"counting\"\nkey = \"counting-key\"\n\
                 secret = \"counting-secret\"\nenable_subscription_count = true\n";
    let servers = nodes(&bus, 2, extra).await;
    let app = TestApp::new("counting", "counting-key", "counting-secret");
    let mut client = Client::connect(&servers[0].ws_url(&app.key)).await;
    servers[1].pause();
    client.send(json!({ "event": "pusher:subscribe", "data": { "channel": "counted" } })).await;
    client.send(json!({ "event": "pusher:ping", "data": {} })).await;
    let order: Vec<String> = [client.expect_any().await, client.expect_any().await]
        .iter()
        .map(|m| m["event"].as_str().unwrap().to_string())
        .collect();
    servers[1].resume();
    assert_eq!(order, ["pusher_internal:subscription_succeeded", "pusher:pong"]);
    client.expect("pusher_internal:subscription_count").await;
}

/// The presence member limit counts the members on every node: with a limit of two, a third
/// user is refused on either node once the other node's member has reached it.
#[tokio::test]
async fn the_presence_member_limit_holds_for_the_cluster() {
    let (_redis, bus) = start();
    let servers = nodes(&bus, 2, "").await;
    let app = TestApp::small();
    let channel = "presence-room";
    let mut first = Client::connect(&servers[0].ws_url(&app.key)).await;
    first.join(&app, channel, "1", json!({})).await;
    let mut second = Client::connect(&servers[1].ws_url(&app.key)).await;
    let members = second.join(&app, channel, "2", json!({})).await;
    // Each node knows the other's member once its own member is told (in the members it got,
    // or by a member_added when the replication came after).
    if !members["presence"]["ids"].as_array().unwrap().contains(&json!("1")) {
        second.expect("pusher_internal:member_added").await;
    }
    let added = first.expect("pusher_internal:member_added").await;
    assert!(added["data"].as_str().unwrap().contains("\"2\""), "{added}");
    for server in &servers {
        let mut third = Client::connect(&server.ws_url(&app.key)).await;
        let data = json!({ "user_id": "3" }).to_string();
        let auth = app.auth(&third.socket_id, channel, Some(&data));
        let refused = third.subscribe_raw(channel, Some(auth), Some(data)).await;
        assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
        assert_eq!(refused["data"]["type"], "LimitReached", "{refused}");
    }
    // A member already present on the other node may open a connection here.
    let mut again = Client::connect(&servers[0].ws_url(&app.key)).await;
    again.join(&app, channel, "2", json!({})).await;
}

/// Messages written to Redis by someone without the cluster secret are refused.
#[tokio::test]
async fn forged_bus_messages_are_refused() {
    let (redis, bus) = start();
    let redis = &redis;
    scenarios::forged_messages_are_refused(bus, move |topic: String, bytes: Vec<u8>| async move {
        redis.publish_raw(&format!("test:{topic}"), &bytes).await;
    })
    .await;
}

/// A fake peer's presence sync of 60,000 members, through Redis, is applied whole, and a
/// broadcast after it is delivered.
#[tokio::test]
async fn a_big_presence_sync_is_applied() {
    let (redis, bus) = start();
    let redis = &redis;
    scenarios::a_big_presence_sync_is_applied(
        bus,
        move |topic: String, bytes: Vec<u8>| async move {
            redis.publish_raw(&format!("test:{topic}"), &bytes).await;
        },
    )
    .await;
}

/// Two clusters with different secrets on one Redis never act on each other's messages.
#[tokio::test]
async fn nodes_with_different_secrets_do_not_see_each_other() {
    let (_redis, bus) = start();
    let first = node(&bus.clone().env("ADAPTER_CLUSTER_SECRET", "the first cluster's secret"), "");
    let second =
        node(&bus.clone().env("ADAPTER_CLUSTER_SECRET", "the second cluster's secret"), "");
    for server in [&first, &second] {
        server
            .wait_for_labelled_metric(
                "sockhost_bus_unauthenticated_total{reason=\"tag\"}",
                sockhost_tests::pusher::PATIENCE,
                |v| v >= 1.0,
            )
            .await;
        assert_eq!(server.metric("sockhost_cluster_nodes").await, 1.0);
        // The broker counts both: the node says it hears fewer than there are.
        server.wait_for_metric("sockhost_transport_nodes", |n| n == 2.0).await;
        assert!(server.log().contains("The broker counts more nodes"), "{}", server.log());
    }
    let app = TestApp::main();
    let mut on_second = Client::connect(&second.ws_url(&app.key)).await;
    on_second.subscribe(&app, "split").await;
    let first_api = Api::new(&first.http_url(), &app);
    assert_eq!(first_api.trigger(&["split"], "across", "x").await.0, 200);
    let second_api = Api::new(&second.http_url(), &app);
    assert_eq!(second_api.trigger(&["split"], "local", "y").await.0, 200);
    assert_eq!(on_second.expect_any().await["event"], "local");
}

/// A secret too short to be one is refused at start; no secret at all is a warning.
#[tokio::test]
async fn the_cluster_secret_is_checked_at_start() {
    let (_redis, bus) = start();
    let (code, log) = refused(&bus.clone().env("ADAPTER_CLUSTER_SECRET", "short"));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("adapter.cluster_secret: must be at least 16 characters"), "{log}");
    let open = node(&bus.env("ADAPTER_CLUSTER_SECRET", ""), "");
    assert!(open.log().contains("No adapter.cluster_secret"), "{}", open.log());
}
