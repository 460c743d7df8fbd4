//! Connections: the handshake, its refusals, keep-alive, and messages the server does not
//! understand. The real binary and the real local plugin, driven over a real WebSocket.

use std::collections::HashSet;

use serde_json::json;
use sockhost_tests::{
    pusher::{Client, TestApp},
    server::Server,
};
use tokio_tungstenite::tungstenite::Message;

fn url(server: &Server, key: &str, query: &str) -> String {
    format!("ws://127.0.0.1:{}/app/{key}{query}", server.port)
}

#[tokio::test]
async fn connection_established_carries_a_unique_socket_id_and_the_activity_timeout() {
    let server = Server::start();
    let mut ids = HashSet::new();
    for _ in 0..20 {
        let mut raw = Client::connect_raw(&server.ws_url("key-1")).await;
        let message = raw.expect("pusher:connection_established").await;
        let data: serde_json::Value =
            serde_json::from_str(message["data"].as_str().unwrap()).unwrap();
        let socket_id = data["socket_id"].as_str().unwrap().to_string();
        let (a, b) = socket_id.split_once('.').unwrap();
        assert!(
            a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()),
            "{socket_id}"
        );
        assert_eq!(data["activity_timeout"], 120);
        assert!(ids.insert(socket_id), "a socket id was given twice");
    }
}

#[tokio::test]
async fn handshake_refusals_carry_their_codes() {
    let server = Server::start();
    let cases = [
        (url(&server, "no-such-key", "?protocol=7"), 4001),
        (url(&server, "disabled-key", "?protocol=7"), 4003),
        (url(&server, "key-1", "?protocol=3"), 4007),
        (url(&server, "key-1", "?protocol=abc"), 4007),
        (url(&server, "key-1", ""), 4008),
    ];
    for (url, code) in cases {
        let mut client = Client::connect_raw(&url).await;
        client.expect_error(code).await;
        let (closed, _) = client.expect_close().await;
        assert_eq!(closed, code, "{url}");
    }
}

#[tokio::test]
async fn an_app_over_its_connection_quota_refuses_with_4100_and_frees_the_slot_on_close() {
    let server = Server::start();
    let url = server.ws_url("limited-key");
    let first = Client::connect(&url).await;
    let _second = Client::connect(&url).await;
    let mut third = Client::connect_raw(&url).await;
    third.expect_error(4100).await;
    assert_eq!(third.expect_close().await.0, 4100);
    first.close().await;
    // The slot frees once the server has seen the close, which its gauge of open connections shows.
    server.wait_for_metric("sockhost_connected", |n| n <= 1.0).await;
    let mut again = Client::connect_raw(&url).await;
    again.expect("pusher:connection_established").await;
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let server = Server::start();
    let mut client = Client::connect(&server.ws_url("key-1")).await;
    client.send(json!({ "event": "pusher:ping", "data": {} })).await;
    client.expect("pusher:pong").await;
}

#[tokio::test]
async fn silence_gets_a_server_ping_and_an_unanswered_ping_closes_with_4201() {
    let server = Server::builder().config("activity_timeout = 1\npong_timeout = 1").start();
    let mut client = Client::connect(&server.ws_url("key-1")).await;
    client.expect("pusher:ping").await;
    client.send(json!({ "event": "pusher:pong", "data": {} })).await;
    // Answered: the next ping comes after another silence, not a close.
    client.expect("pusher:ping").await;
    client.expect_error(4201).await;
    assert_eq!(client.expect_close().await.0, 4201);
}

#[tokio::test]
async fn messages_the_server_does_not_understand_get_4300_and_the_connection_stays() {
    let server = Server::start();
    let mut client = Client::connect(&server.ws_url("key-1")).await;
    client.send_text("this is not json").await;
    assert!(client.expect_error(4300).await.contains("not a JSON object"));
    client.send(json!({ "no": "event" })).await;
    client.expect_error(4300).await;
    client.send(json!({ "event": "pusher:dance", "data": {} })).await;
    assert!(client.expect_error(4300).await.contains("unknown event"));
    client.send(json!({ "event": "pusher:subscribe", "data": {} })).await;
    assert!(client.expect_error(4300).await.contains("data.channel"));
    client.send_frame(Message::binary(vec![1, 2, 3])).await;
    assert!(client.expect_error(4300).await.contains("Binary"));
    client.send(json!({ "event": "pusher:ping", "data": {} })).await;
    client.expect("pusher:pong").await;
}

#[tokio::test]
async fn an_oversized_message_gets_an_error_and_a_close_code() {
    let server = Server::builder().config("[websocket]\nmax_payload_kb = 1").start();
    let mut client = Client::connect(&server.ws_url("key-1")).await;
    client.send_text(&format!(r#"{{"event":"pusher:ping","data":"{}"}}"#, "x".repeat(4096))).await;
    assert!(client.expect_error(4300).await.contains("larger than the limit of 1024 bytes"));
    assert_eq!(client.expect_close().await.0, 1009);
}

#[tokio::test]
async fn a_client_that_cannot_keep_up_is_closed_with_4100() {
    a_slow_client_is_closed("direct_writes = false\n").await;
}

#[tokio::test]
async fn a_client_that_cannot_keep_up_is_closed_with_4100_when_broadcasts_write_directly() {
    a_slow_client_is_closed("direct_writes = true\n").await;
}

/// A subscriber that reads nothing is closed with 4100 once its queue is full. `websocket`:
/// more of the section.
async fn a_slow_client_is_closed(websocket: &str) {
    // The publisher is not pushed back (a watermark of 99 % counts the queue as behind only
    // when it is all but full): this is about the queue's bound, not the publisher's pace.
    let config =
        format!("[websocket]\nmax_messages = 8\n{websocket}[overload]\nwatermark_percent = 99");
    let server = Server::builder().config(&config).start();
    let app = TestApp::main();
    let mut slow = Client::connect(&server.ws_url("key-1")).await;
    slow.subscribe(&app, "firehose").await;
    // Fill the kernel buffers and the queue: the slow client reads nothing meanwhile.
    let api = sockhost_tests::pusher::Api::new(&server.http_url(), &app);
    let data = "x".repeat(90 * 1024);
    let mut closed = false;
    for _ in 0..40 {
        let batch: Vec<_> = (0..10)
            .map(|_| json!({ "name": "big", "channel": "firehose", "data": data }))
            .collect();
        let (status, body) = api.post("/batch_events", &json!({ "batch": batch })).await;
        assert_eq!(status, 200, "{body}");
        if server.metric("sockhost_slow_consumer_disconnections_total").await >= 1.0 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow client was never disconnected");
    assert_eq!(slow.expect_close().await.0, 4100);
}

/// With direct writes, a burst larger than the socket's buffers is written in part by the
/// broadcasts and in part by the connection's task: every frame arrives whole and in order,
/// on a protocol-7 and a protocol-2 socket alike, and they are counted as sent.
#[tokio::test]
async fn direct_writes_deliver_a_burst_whole_and_in_order() {
    let config =
        "[websocket]\ndirect_writes = true\nmax_bytes = 0\n[overload]\nwatermark_percent = 99";
    let server = Server::builder().config(config).start();
    let app = TestApp::main();
    let mut v7 = Client::connect(&server.ws_url("key-1")).await;
    v7.subscribe(&app, "burst").await;
    let mut v2 = Client::connect_v2(&url(&server, "key-1", "?protocol=2")).await;
    v2.subscribe_v2(&app, "burst").await;
    let api = sockhost_tests::pusher::Api::new(&server.http_url(), &app);
    let sent_before = server.metric("sockhost_ws_messages_sent_total").await;
    // Neither client reads until every publish has its answer: 7 MB each, more than the
    // kernel's socket buffers take on loopback (4 MiB at most to send), so a direct write is
    // taken in part and the frames behind it wait for the task.
    let events = 120;
    for n in 0..events {
        let data = format!("{n}:{}", "y".repeat(60 * 1024));
        let (status, body) = api.trigger(&["burst"], "seq", &data).await;
        assert_eq!(status, 200, "{body}");
    }
    for client in [&mut v7, &mut v2] {
        for n in 0..events {
            let event = client.expect("seq").await;
            let data = event["data"].as_str().unwrap();
            let (seq, rest) = data.split_once(':').unwrap();
            assert_eq!(seq, n.to_string(), "in order");
            assert_eq!(rest.len(), 60 * 1024, "whole");
        }
    }
    // Protocol frames sent directly are renamed for a protocol-2 socket too.
    v2.send(json!({ "event": "sockudo:ping", "data": {} })).await;
    v2.expect("sockudo:pong").await;
    let sent = server.metric("sockhost_ws_messages_sent_total").await - sent_before;
    assert!(sent >= f64::from(2 * events), "{sent} messages counted as sent");
}
