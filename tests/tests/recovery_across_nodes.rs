//! Connection recovery across nodes, beyond the scenario every transport runs
//! (`a_client_resumes_on_any_node`): what a node does when the bus loses an event.

use serde_json::json;
use sockhost_plugin_api::{
    Retention,
    abi::{RStr, RVec},
    conformance::Target,
};
use sockhost_tests::{
    backends::RedisServer,
    cdylib,
    cluster::{Bus, nodes},
    pusher::{Api, Client, TestApp},
};

/// An event the bus lost: in the store (written through the real redis history driver, as a
/// node's publish writes it) but never broadcast. The next event over the bus shows the node
/// the gap, which it fills from the store before delivering: the subscriber gets both, in
/// serial order, and the repair is counted.
#[tokio::test]
async fn a_node_fills_a_gap_the_bus_left_from_the_store() {
    let redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), "gap:");
    let extra = format!("[connection_recovery]\nenabled = true\n{}", bus.history.clone().unwrap());
    let servers = nodes(&bus, 2, &extra).await;
    let app = TestApp::main();
    let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2", servers[0].port, app.key);
    let mut on_a = Client::connect_raw(&url).await;
    on_a.expect("sockudo:connection_established").await;
    on_a.send(json!({ "event": "sockudo:subscribe", "data": { "channel": "news" } })).await;
    let ack = on_a.expect("sockudo_internal:subscription_succeeded").await;
    assert_eq!(ack["serial"], 0, "{ack}");

    // The lost one: appended as a node appends, with no broadcast.
    let config = format!("url_override = \"{}\"\nprefix = \"gap:history:\"\n", redis.url());
    let store = Target::new(cdylib("sockhost_redis"), "redis", &config).history().await;
    let frame = json!({ "event": "tick", "channel": "news", "data": "lost" }).to_string();
    let record = json!({ "m": "lost-1", "f": frame }).to_string();
    let retention = Retention { max_events: 1000, max_age_ms: 86_400_000 };
    let appended = store
        .append(
            RStr::from_str(&app.id),
            RStr::from_str("news"),
            RVec::from(record.into_bytes()),
            retention,
        )
        .await
        .into_result()
        .unwrap();
    assert_eq!(appended.serial, 1);

    let api_b = Api::new(&servers[1].http_url(), &app);
    assert_eq!(api_b.trigger(&["news"], "tick", "after").await.0, 200);
    let first = on_a.expect("tick").await;
    assert_eq!((first["serial"].as_u64(), first["data"].as_str()), (Some(1), Some("lost")));
    assert_eq!(first["message_id"], "lost-1");
    let second = on_a.expect("tick").await;
    assert_eq!((second["serial"].as_u64(), second["data"].as_str()), (Some(2), Some("after")));
    assert!(servers[0].metric("sockhost_recovery_repaired_total").await >= 1.0);
}

/// With history on and the store down, a publish is refused with 503 rather than broadcast
/// without a position that no resume could recover.
#[tokio::test]
async fn a_publish_the_store_cannot_take_is_refused() {
    let redis = RedisServer::start();
    let bus = Bus::redis(&redis.url(), "down:");
    let extra = format!("[connection_recovery]\nenabled = true\n{}", bus.history.clone().unwrap());
    let servers = nodes(&bus, 1, &extra).await;
    let app = TestApp::main();
    let mut v7 = Client::connect(&servers[0].ws_url(&app.key)).await;
    v7.subscribe(&app, "news").await;
    let api = Api::new(&servers[0].http_url(), &app);
    assert_eq!(api.trigger(&["news"], "tick", "kept").await.0, 200);
    assert_eq!(v7.expect("tick").await["data"], "kept");
    drop(redis);
    let (status, body) = api.trigger(&["news"], "tick", "not kept").await;
    assert_eq!(status, 503, "{body}");
    assert!(servers[0].metric("sockhost_history_errors_total").await >= 1.0);
}
