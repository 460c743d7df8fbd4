//! Delta compression on one node, over real sockets: every event a delta subscriber gets is
//! rebuilt with the real decoders and compared with what was published, in both algorithms
//! and both protocols; streams start whole, go whole after every ten deltas and for a socket
//! that joins late or asks for a resync; encrypted channels, client events and subscribers
//! that did not ask get events whole; bad requests are refused in-band. The same across nodes
//! runs in `cluster_scenarios!`.

use serde_json::{Value, json};
use sockhost_tests::{
    deltas::{Decoder, Frame},
    pusher::{Api, Client, TestApp},
    server::Server,
};

/// A ticker quote: about 2 KB of JSON where only the price changes.
fn quote(sym: &str, n: u32) -> String {
    let book: Vec<Value> =
        (0..40).map(|i| json!({ "level": i, "size": 1000 + i, "venue": "XNAS" })).collect();
    json!({ "sym": sym, "price": 1000 + n, "book": book }).to_string()
}

fn server() -> Server {
    Server::builder().env("DELTA_COMPRESSION_CONFLATION_KEY_PATH", "sym").start()
}

fn v2_url(server: &Server, app: &TestApp) -> String {
    server.ws_url(&app.key).replace("protocol=7", "protocol=2")
}

/// Read one event frame per `sent` event, rebuilt; each must be the event sent, in order,
/// and each delta in `algorithm`. Answers the frames' kinds (`F` full, `d` delta).
async fn read_stream(
    client: &mut Client,
    decoder: &mut Decoder,
    sent: &[(String, String)],
    algorithm: &str,
) -> String {
    let mut kinds = String::new();
    for (event, data) in sent {
        let text = client.next_text().await;
        let (got, kind) = match decoder.receive(&text) {
            Frame::Full { event, .. } => (event, 'F'),
            Frame::Delta { event, sizes, algorithm: named, .. } => {
                assert_eq!(named, algorithm);
                assert!(sizes.0 < sizes.1 / 4, "a delta of {} bytes for {}", sizes.0, sizes.1);
                (event, 'd')
            }
            other => panic!("expected an event on a delta stream, got {other:?} ({text})"),
        };
        assert_eq!(got["event"], event.as_str(), "{text}");
        assert_eq!(got["data"], data.as_str());
        kinds.push(kind);
    }
    kinds
}

async fn publish(api: &Api, channel: &str, event: &str, data: &str) {
    let body = json!({ "name": event, "channel": channel, "data": data });
    let (status, answer) = api.post("/events", &body).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn every_event_is_rebuilt_in_both_algorithms_and_protocols() {
    let server = server();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    // Protocol 2, deltas for the whole connection.
    let mut v2 = Client::connect_raw(&v2_url(&server, &app)).await;
    v2.expect("sockudo:connection_established").await;
    v2.send(json!({ "event": "sockudo:enable_delta_compression", "data": {} })).await;
    let enabled = v2.expect("sockudo:delta_compression_enabled").await;
    assert_eq!(enabled["data"], json!({ "enabled": true, "algorithm": "fossil" }));
    let ack = v2.subscribe_with(json!({ "channel": "ticker" })).await;
    assert_eq!(ack["event"], "sockudo_internal:subscription_succeeded", "{ack}");
    // Protocol 7 (pusher-js's), VCDIFF for this subscription.
    let mut v7 = Client::connect(&server.ws_url(&app.key)).await;
    let ack = v7
        .subscribe_with(
            json!({ "channel": "ticker", "delta": { "enabled": true, "algorithm": "xdelta3" } }),
        )
        .await;
    assert_eq!(ack["event"], "pusher_internal:subscription_succeeded", "{ack}");
    // No deltas asked: events as they are.
    let mut plain = Client::connect(&server.ws_url(&app.key)).await;
    plain.subscribe(&app, "ticker").await;

    let mut sent = Vec::new();
    for n in 0..26 {
        let sym = if n % 2 == 0 { "BTC" } else { "ETH" };
        let data = quote(sym, n);
        publish(&api, "ticker", "price", &data).await;
        sent.push(("price".to_string(), data));
    }
    // Per conflation key: two whole, ten deltas, one whole, then deltas.
    let per_key = "FFddddddddddFd";
    let expected: String = (0..26).map(|i| per_key.as_bytes()[i / 2] as char).collect();
    let mut decoder = Decoder::default();
    assert_eq!(read_stream(&mut v2, &mut decoder, &sent, "fossil").await, expected);
    let mut decoder = Decoder::default();
    assert_eq!(read_stream(&mut v7, &mut decoder, &sent, "xdelta3").await, expected);
    for (event, data) in &sent {
        let got = plain.expect(event).await;
        assert_eq!(got["data"], data.as_str());
        assert!(got.get("__delta_seq").is_none(), "{got}");
    }
    let deltas = expected.matches('d').count();
    let metric = server.metric("sockhost_delta_messages_total").await;
    assert_eq!(metric, 2.0 * deltas as f64, "{}", server.metrics().await);
}

#[tokio::test]
async fn a_late_subscriber_and_a_resync_start_with_a_full_event() {
    let server = server();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let mut early = Client::connect(&server.ws_url(&app.key)).await;
    early.subscribe_with(json!({ "channel": "ticker", "delta": true })).await;
    let mut early_decoder = Decoder::default();
    let mut sent = Vec::new();
    for n in 0..4 {
        let data = quote("BTC", n);
        publish(&api, "ticker", "price", &data).await;
        sent.push(("price".to_string(), data));
    }
    assert_eq!(read_stream(&mut early, &mut early_decoder, &sent, "fossil").await, "FFdd");

    let mut late = Client::connect(&server.ws_url(&app.key)).await;
    late.subscribe_with(json!({ "channel": "ticker", "delta": "fossil" })).await;
    let mut late_decoder = Decoder::default();
    let next = vec![("price".to_string(), quote("BTC", 4)), ("price".to_string(), quote("BTC", 5))];
    for (event, data) in &next {
        publish(&api, "ticker", event, data).await;
    }
    assert_eq!(read_stream(&mut early, &mut early_decoder, &next, "fossil").await, "dd");
    assert_eq!(read_stream(&mut late, &mut late_decoder, &next, "fossil").await, "Fd");

    // The client lost its base: after a resync its next event is whole, and deltas follow.
    late.send(json!({ "event": "pusher:delta_sync_error", "data": { "channel": "ticker" } })).await;
    // A connection's messages are handled in order: the pong says the resync is done.
    late.send(json!({ "event": "pusher:ping", "data": {} })).await;
    late.expect("pusher:pong").await;
    let more = vec![("price".to_string(), quote("BTC", 6)), ("price".to_string(), quote("BTC", 7))];
    for (event, data) in &more {
        publish(&api, "ticker", event, data).await;
    }
    assert_eq!(read_stream(&mut late, &mut Decoder::default(), &more, "fossil").await, "Fd");
    assert_eq!(read_stream(&mut early, &mut early_decoder, &more, "fossil").await, "dd");
    assert_eq!(server.metric("sockhost_delta_resyncs_total").await, 1.0);
}

#[tokio::test]
async fn encrypted_channels_and_client_events_go_whole() {
    let server = Server::builder()
        .config(
            "[[app_manager.array.apps]]\nid = \"dc\"\nkey = \"dc-key\"\nsecret = \"dc-secret\"\n\
             enable_client_messages = true\n",
        )
        .start();
    let app = TestApp::new("dc", "dc-key", "dc-secret");
    let api = Api::new(&server.http_url(), &app);
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client.send(json!({ "event": "pusher:enable_delta_compression", "data": {} })).await;
    client.expect("pusher:delta_compression_enabled").await;
    for channel in ["private-encrypted-vault", "private-room"] {
        let auth = app.auth(&client.socket_id, channel, None);
        let answer =
            client.subscribe_with(json!({ "channel": channel, "auth": auth, "delta": true })).await;
        assert_eq!(answer["event"], "pusher_internal:subscription_succeeded", "{answer}");
    }
    let mut other = Client::connect(&server.ws_url(&app.key)).await;
    let auth = app.auth(&other.socket_id, "private-room", None);
    other.subscribe_with(json!({ "channel": "private-room", "auth": auth })).await;
    let mut decoder = Decoder::default();
    for n in 0..5 {
        let data = quote("BTC", n);
        publish(&api, "private-encrypted-vault", "secret", &data).await;
        let text = client.next_text().await;
        assert!(matches!(decoder.receive(&text), Frame::Plain(_)), "{text}");
        let data = json!({ "n": n, "pad": "x".repeat(500) });
        other
            .send(json!({ "event": "client-move", "channel": "private-room", "data": data }))
            .await;
        let text = client.next_text().await;
        assert!(matches!(decoder.receive(&text), Frame::Plain(_)), "{text}");
    }
}

#[tokio::test]
async fn bad_requests_are_refused_and_disabled_channels_go_whole() {
    let server = Server::builder()
        .config(
            "[[app_manager.array.apps]]\nid = \"dd\"\nkey = \"dd-key\"\nsecret = \"dd-secret\"\n\
             [app_manager.array.apps.channel_delta_compression]\n\"quiet-*\" = \"disabled\"\n\
             \"loud-*\" = { algorithm = \"Xdelta3\" }\n",
        )
        .start();
    let app = TestApp::new("dd", "dd-key", "dd-secret");
    let api = Api::new(&server.http_url(), &app);
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client
        .send(json!({ "event": "pusher:subscribe", "data": { "channel": "x", "delta": 7 } }))
        .await;
    let message = client.expect_error(4300).await;
    assert!(message.contains("delta"), "{message}");
    // Still open: a good request works.
    for channel in ["quiet-a", "loud-a"] {
        let answer = client.subscribe_with(json!({ "channel": channel, "delta": true })).await;
        assert_eq!(answer["event"], "pusher_internal:subscription_succeeded", "{answer}");
    }
    let mut decoder = Decoder::default();
    let mut loud = String::new();
    for n in 0..3 {
        publish(&api, "quiet-a", "price", &quote("BTC", n)).await;
        let text = client.next_text().await;
        assert!(matches!(decoder.receive(&text), Frame::Plain(_)), "{text}");
        publish(&api, "loud-a", "price", &quote("BTC", n)).await;
        match decoder.receive(&client.next_text().await) {
            Frame::Full { .. } => loud.push('F'),
            Frame::Delta { algorithm, .. } => {
                assert_eq!(algorithm, "xdelta3");
                loud.push('d');
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(loud, "FFd");

    // Enabled for the connection afterwards: a subscription that said `false` stays whole,
    // one that chose nothing gets deltas in its channel's algorithm (the client named none).
    let mut later = Client::connect(&server.ws_url(&app.key)).await;
    let answer = later.subscribe_with(json!({ "channel": "loud-b", "delta": false })).await;
    assert_eq!(answer["event"], "pusher_internal:subscription_succeeded", "{answer}");
    let answer = later.subscribe_with(json!({ "channel": "loud-c" })).await;
    assert_eq!(answer["event"], "pusher_internal:subscription_succeeded", "{answer}");
    later.send(json!({ "event": "pusher:enable_delta_compression", "data": {} })).await;
    later.expect("pusher:delta_compression_enabled").await;
    let mut decoder = Decoder::default();
    let mut loud = String::new();
    for n in 0..3 {
        publish(&api, "loud-b", "price", &quote("BTC", n)).await;
        let text = later.next_text().await;
        assert!(matches!(decoder.receive(&text), Frame::Plain(_)), "{text}");
        publish(&api, "loud-c", "price", &quote("BTC", n)).await;
        match decoder.receive(&later.next_text().await) {
            Frame::Full { .. } => loud.push('F'),
            Frame::Delta { algorithm, .. } => {
                assert_eq!(algorithm, "xdelta3");
                loud.push('d');
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(loud, "FFd");

    // Off for the server: the enable is answered `enabled: false` and nothing changes.
    let off = Server::builder().env("DELTA_COMPRESSION_ENABLED", "false").start();
    let app = TestApp::main();
    let mut client = Client::connect(&off.ws_url(&app.key)).await;
    client.send(json!({ "event": "pusher:enable_delta_compression", "data": {} })).await;
    let answer = client.expect("pusher:delta_compression_enabled").await;
    assert_eq!(answer["data"], json!({ "enabled": false }));
}
