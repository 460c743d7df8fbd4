//! Client events: who may send them, where, how large and how often, and who receives them.

use serde_json::json;
use sockhost_tests::{
    pusher::{Client, TestApp},
    server::Server,
};

fn client_event(channel: &str, event: &str, data: serde_json::Value) -> serde_json::Value {
    json!({ "event": event, "channel": channel, "data": data })
}

#[tokio::test]
async fn client_events_reach_the_other_subscribers_and_never_the_sender() {
    let server = Server::start();
    let app = TestApp::main();
    let mut a = Client::connect(&server.ws_url(&app.key)).await;
    let mut b = Client::connect(&server.ws_url(&app.key)).await;
    let mut c = Client::connect(&server.ws_url(&app.key)).await;
    a.subscribe(&app, "private-chat").await;
    b.subscribe(&app, "private-chat").await;
    c.subscribe(&app, "private-other").await;

    a.send(client_event("private-chat", "client-typing", json!({ "who": "a" }))).await;
    let got = b.expect("client-typing").await;
    assert_eq!(
        got,
        json!({ "event": "client-typing", "channel": "private-chat", "data": { "who": "a" } })
    );
    // The sender and the other channel's subscriber get nothing: a ping answered proves the
    // server handled the event before it.
    a.send(json!({ "event": "pusher:ping" })).await;
    a.expect("pusher:pong").await;
    c.expect_nothing().await;
}

#[tokio::test]
async fn client_events_on_presence_channels_carry_the_user_id() {
    let server = Server::start();
    let app = TestApp::main();
    let mut a = Client::connect(&server.ws_url(&app.key)).await;
    let mut b = Client::connect(&server.ws_url(&app.key)).await;
    a.join(&app, "presence-team", "ann", json!({})).await;
    b.join(&app, "presence-team", "ben", json!({})).await;
    a.expect("pusher_internal:member_added").await;
    b.send(client_event("presence-team", "client-wave", json!("hi"))).await;
    let got = a.expect("client-wave").await;
    assert_eq!(got["user_id"], "ben");
    assert_eq!(got["data"], "hi");
}

#[tokio::test]
async fn client_events_are_refused_with_4301_and_the_connection_stays() {
    let server = Server::start();
    let app = TestApp::main();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client.subscribe(&app, "public-room").await;
    client.subscribe(&app, "private-encrypted-x").await;

    client.send(client_event("public-room", "client-x", json!({}))).await;
    assert!(client.expect_error(4301).await.contains("private or presence"));
    client.send(client_event("private-encrypted-x", "client-x", json!({}))).await;
    assert!(client.expect_error(4301).await.contains("encrypted"));
    client.send(client_event("private-not-joined", "client-x", json!({}))).await;
    assert!(client.expect_error(4301).await.contains("Not subscribed"));

    let quiet = TestApp::quiet();
    let mut muted = Client::connect(&server.ws_url(&quiet.key)).await;
    muted.subscribe(&quiet, "private-room").await;
    muted.send(client_event("private-room", "client-x", json!({}))).await;
    assert!(muted.expect_error(4301).await.contains("not enabled"));

    client.send(json!({ "event": "pusher:ping" })).await;
    client.expect("pusher:pong").await;
}

#[tokio::test]
async fn client_events_are_limited_in_size_name_and_rate() {
    let server = Server::start();
    let app = TestApp::limited();
    let mut sender = Client::connect(&server.ws_url(&app.key)).await;
    let mut receiver = Client::connect(&server.ws_url(&app.key)).await;
    sender.subscribe(&app, "private-limits").await;
    receiver.subscribe(&app, "private-limits").await;

    sender.send(client_event("private-limits", "client-big", json!("x".repeat(1100)))).await;
    assert!(sender.expect_error(4301).await.contains("limit is 1024"));
    sender
        .send(client_event("private-limits", &format!("client-{}", "n".repeat(20)), json!({})))
        .await;
    assert!(sender.expect_error(4301).await.contains("Event name longer than 20"));

    // Three per second are allowed; the fourth within the same second is refused.
    for i in 0..4 {
        sender.send(client_event("private-limits", "client-tick", json!(i))).await;
    }
    assert!(sender.expect_error(4301).await.contains("rate limit"));
    for i in 0..3 {
        assert_eq!(receiver.expect("client-tick").await["data"], i);
    }
    receiver.expect_nothing().await;
}

/// A protocol-2 client subscribed to a private channel signed with `app`.
async fn v2_subscribed(server: &Server, app: &TestApp, query: &str, channel: &str) -> Client {
    let url = format!("ws://127.0.0.1:{}/app/{}?protocol=2{query}", server.port, app.key);
    let mut client = Client::connect_v2(&url).await;
    client.subscribe_v2(app, channel).await;
    client
}

/// Protocol 2 sends a client event back to its sender too, as Sockudo does, unless the
/// connection asked not to (`echo_messages=false`); protocol 7 never does (Pusher's rule).
#[tokio::test]
async fn protocol_2_echoes_client_events_unless_asked_not_to() {
    let server = Server::start();
    let app = TestApp::main();
    let channel = "private-echo";
    let mut echoed = v2_subscribed(&server, &app, "", channel).await;
    let mut quiet = v2_subscribed(&server, &app, "&echo_messages=false", channel).await;
    let mut v7 = Client::connect(&server.ws_url(&app.key)).await;
    v7.subscribe(&app, channel).await;

    echoed.send(client_event(channel, "client-a", json!(1))).await;
    for client in [&mut echoed, &mut quiet, &mut v7] {
        assert_eq!(client.expect("client-a").await["data"], 1);
    }
    // Each sender's next frame is the other's event: its own never came back.
    quiet.send(client_event(channel, "client-b", json!(2))).await;
    assert_eq!(v7.expect_any().await["event"], "client-b");
    v7.send(client_event(channel, "client-c", json!(3))).await;
    assert_eq!(quiet.expect_any().await["event"], "client-c");
    assert_eq!(echoed.expect("client-b").await["data"], 2);
    assert_eq!(echoed.expect("client-c").await["data"], 3);
}
