//! Sockudo's protocol 2 (`?protocol=2`): the same server, its events named `sockudo:` and
//! `sockudo_internal:`; the client may use either prefix; a protocol-7 socket on the same
//! channel keeps Pusher's names, from the same broadcast.

use serde_json::{Value, json};
use sockhost_tests::{
    pusher::{Api, Client, TestApp},
    server::Server,
};

fn v2_url(server: &Server, key: &str) -> String {
    format!("ws://127.0.0.1:{}/app/{key}?protocol=2", server.port)
}

#[tokio::test]
async fn protocol_two_names_the_servers_events_sockudo() {
    let server = Server::builder().env("TAG_FILTERING_ENABLED", "true").start();
    let app = TestApp::main();
    let mut v2 = Client::connect_raw(&v2_url(&server, &app.key)).await;
    let established = v2.expect("sockudo:connection_established").await;
    let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
    assert!(data["socket_id"].is_string(), "{established}");

    v2.send(json!({ "event": "sockudo:ping", "data": {} })).await;
    assert_eq!(v2.expect_any().await["event"], "sockudo:pong");
    v2.send(json!({ "event": "sockudo:subscribe", "data": { "channel": "news" } })).await;
    assert_eq!(v2.expect_any().await["event"], "sockudo_internal:subscription_succeeded");
    // pusher: names are understood too.
    v2.send(json!({ "event": "pusher:subscribe", "data": { "channel": "other" } })).await;
    assert_eq!(v2.expect_any().await["event"], "sockudo_internal:subscription_succeeded");

    // A protocol-7 socket on the same channel: the same broadcast, Pusher's names.
    let mut v7 = Client::connect(&server.ws_url(&app.key)).await;
    v7.subscribe(&app, "news").await;
    let api = Api::new(&server.http_url(), &app);
    assert_eq!(api.trigger(&["news"], "headline", "h").await.0, 200);
    assert_eq!(v2.expect_any().await["event"], "headline");
    assert_eq!(v7.expect_any().await["event"], "headline");

    // Errors are sockudo:error; a bad filter is one, and the connection stays.
    let bad = json!({ "channel": "ticker", "filter": { "op": "not", "nodes": [] } });
    v2.send(json!({ "event": "sockudo:subscribe", "data": bad })).await;
    let error = v2.expect_any().await;
    assert_eq!(
        (error["event"].as_str(), &error["data"]["code"]),
        (Some("sockudo:error"), &json!(4000))
    );
    v2.send(json!({ "event": "sockudo:ping", "data": {} })).await;
    assert_eq!(v2.expect_any().await["event"], "sockudo:pong");
}

#[tokio::test]
async fn a_refusal_at_connect_is_in_the_connections_dialect() {
    let server = Server::start();
    let mut refused = Client::connect_raw(&v2_url(&server, "no-such-key")).await;
    let error = refused.expect_any().await;
    assert_eq!(error["event"], "sockudo:error", "{error}");
    assert_eq!(refused.expect_close().await.0, 4001);
}

#[tokio::test]
async fn a_resume_is_answered_as_sockudo_answers_it_with_recovery_off() {
    let server = Server::start();
    let app = TestApp::main();
    let mut v2 = Client::connect_raw(&v2_url(&server, &app.key)).await;
    v2.expect("sockudo:connection_established").await;
    // As sockudo-js and sockudo-python send it after a reconnect: data as a JSON string.
    let positions = json!({ "channel_positions": { "news": { "stream_id": "s", "serial": 4 } } });
    v2.send(json!({ "event": "sockudo:resume", "data": positions.to_string() })).await;
    let error = v2.expect_any().await;
    assert_eq!(
        (error["event"].as_str(), &error["data"]["code"]),
        (Some("sockudo:error"), &json!(4301)),
        "{error}"
    );
    // The connection stays, and the pusher: name is understood too.
    v2.send(json!({ "event": "pusher:resume", "data": { "channel_serials": { "news": 4 } } }))
        .await;
    assert_eq!(v2.expect_any().await["data"]["code"], 4301);
    v2.send(json!({ "event": "sockudo:ping", "data": {} })).await;
    assert_eq!(v2.expect_any().await["event"], "sockudo:pong");
    let refused = server.labelled_metric(r#"sockhost_resumes_total{outcome="disabled"}"#).await;
    assert!((refused - 2.0).abs() < f64::EPSILON, "{refused}");
}
