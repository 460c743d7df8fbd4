//! Hostile clients against the real binary: slow request heads, unauthenticated and oversized
//! bodies, floods of subscriptions and webhooks, readers that stop reading, bad frames, and
//! publishers faster than their readers. Each test sets its limits small so it is quick, and
//! asserts what the client receives and that the node keeps answering.

use serde_json::{Value, json};
use sockhost_tests::{
    pusher::{Api, Client, PATIENCE, Received, TestApp},
    server::{Server, closed_by_server},
    webhook,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

/// A raw WebSocket over TCP, for frames a well-behaved client library will not send.
mod raw {
    use super::*;

    /// Connect and upgrade; the stream is left right after the response head.
    pub async fn connect(port: u16, key: &str) -> TcpStream {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let request = format!(
            "GET /app/{key}?protocol=7 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        stream
    }

    /// Read an HTTP response head byte by byte (nothing after it is consumed).
    pub async fn read_head(stream: &mut TcpStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = tokio::time::timeout(PATIENCE, stream.read_u8()).await.unwrap().unwrap();
            head.push(byte);
        }
        String::from_utf8(head).unwrap()
    }

    /// A client frame: FIN, `opcode`, masked when `masked`.
    pub fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | u8::try_from(n).unwrap()),
            n if n < 65536 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [1u8, 2, 3, 4];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    /// The next server frame: (opcode, payload).
    pub async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
        let read = async {
            let first = stream.read_u8().await?;
            let len = match stream.read_u8().await? & 0x7f {
                126 => u64::from(stream.read_u16().await?),
                127 => stream.read_u64().await?,
                n => u64::from(n),
            };
            let mut payload = vec![0; usize::try_from(len).unwrap()];
            stream.read_exact(&mut payload).await?;
            Ok::<_, std::io::Error>((first & 0x0f, payload))
        };
        tokio::time::timeout(PATIENCE, read).await.unwrap().unwrap()
    }

    /// Read frames until a close frame; its code.
    pub async fn close_code(stream: &mut TcpStream) -> u16 {
        loop {
            let (opcode, payload) = read_frame(stream).await;
            if opcode == 8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

/// Wait until the labelled metric line `line` counts at least `n`.
async fn counted(server: &Server, line: &str, n: f64) {
    server.wait_for_labelled_metric(line, PATIENCE, |v| v >= n).await;
}

/// A WebSocket client on a socket with a tiny receive buffer, so that the server's writes to
/// it block as soon as it stops reading.
async fn tiny_window_client(server: &Server, key: &str) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(([127, 0, 0, 1], server.port).into()).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(server.ws_url(key), stream).await.unwrap();
    Client::from_stream(ws).await
}

#[tokio::test]
async fn slow_request_heads_are_cut_off_and_the_node_keeps_answering() {
    // 300 unfinished heads against a node allowed 256 descriptors.
    let server = Server::builder().open_files(256).env("EDGE_HEADER_TIMEOUT_MS", "1000").start();
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
        stream.write_all(b"GET /up HTTP/1.1\r\nHost: x\r\nX-slow: ").await.unwrap();
        slow.push(stream);
    }
    let answer = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap()
        .get(format!("{}/up", server.http_url()))
        .send()
        .await
        .expect("/up answers while the slow heads are open");
    assert_eq!(answer.status(), 200);
    for stream in &mut slow {
        assert!(closed_by_server(stream).await, "a slow head was never cut off");
    }
    counted(&server, "sockhost_edge_timeouts_total{kind=\"header\"}", 1.0).await;
}

#[tokio::test]
async fn the_node_and_address_limits_refuse_quickly_with_codes() {
    let server = Server::builder()
        .env("EDGE_MAX_CONNECTIONS", "4")
        .env("EDGE_MAX_CONNECTIONS_PER_IP", "3")
        .start();
    let app = TestApp::main();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Client::connect(&server.ws_url(&app.key)).await);
    }
    // The fourth from this address is over the address limit: 4100 on the socket.
    let mut refused = Client::connect_raw(&server.ws_url(&app.key)).await;
    assert!(refused.expect_error(4100).await.contains("address"));
    assert_eq!(refused.expect_close().await.0, 4100);
    // HTTP over the node's limit (three sockets, one idle connection, then this one): 503 with
    // Retry-After; health checks still answer. (The address's WebSocket cap does not count
    // its HTTP connections.)
    let _idle = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let mut held = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    held.write_all(b"GET /apps/app-1/channels HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let head = raw::read_head(&mut held).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    let up = reqwest::get(format!("{}/up", server.http_url())).await.unwrap();
    assert_eq!(up.status(), 200);
    // The socket was over its address's limit; the request over the node's.
    let ip = server.labelled_metric("sockhost_edge_refused_total{reason=\"ip_limit\"}").await;
    let node = server.labelled_metric("sockhost_edge_refused_total{reason=\"node_limit\"}").await;
    assert!(ip >= 1.0 && node >= 1.0, "ip_limit {ip}, node_limit {node}");
    drop(open);
}

#[tokio::test]
async fn unauthenticated_bodies_are_refused_before_they_are_read() {
    let server = Server::start();
    let before = server.rss_bytes();
    let now = Api::now();
    let head = format!(
        "POST /apps/app-1/events?auth_key=key-1&auth_timestamp={now}&auth_version=1.0&\
         body_md5=0123&auth_signature=bad HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 1945601\r\n\r\n"
    );
    let mut held = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&vec![b'x'; 64 * 1024]).await.unwrap();
        let answer = raw::read_head(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        held.push(stream);
    }
    let grown = server.rss_bytes().saturating_sub(before);
    assert!(grown < 40 << 20, "200 unauthenticated bodies grew the server by {grown} bytes");
}

#[tokio::test]
async fn oversized_bodies_get_413_that_the_client_reads() {
    let server = Server::builder().env("HTTP_API_REQUEST_LIMIT_IN_MB", "1").start();
    let api = Api::new(&server.http_url(), &TestApp::main());
    // Declared length over the limit: refused before the body is read, and the answer still
    // reaches a client that sends the whole body first.
    let big = json!({ "name": "e", "channel": "c", "data": "x".repeat(1_500_000) });
    let (status, body) = api.post("/events", &big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], 413);
    // A client that writes all of a 20 MiB body before it reads: the lingering close takes
    // (and discards) the body, so the 413 is still there to read. (An HTTP client library
    // that reads while it writes may see the server's FIN first and report a closed
    // connection instead, whatever the server does.)
    let huge = json!({ "name": "e", "channel": "c", "data": "x".repeat(20 << 20) }).to_string();
    let path = "/apps/app-1/events";
    let query = api.signed_query("POST", path, &[], huge.as_bytes(), Api::now());
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let head = format!(
        "POST {path}?{query} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        huge.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(huge.as_bytes()).await.unwrap();
    let answer = raw::read_head(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // No length given (chunked): the body is cut at the limit while it streams.
    let body = json!({ "name": "e", "channel": "c", "data": "x".repeat(1_500_000) }).to_string();
    let path = "/apps/app-1/events";
    let query = api.signed_query("POST", path, &[], body.as_bytes(), Api::now());
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let head = format!(
        "POST {path}?{query} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        for chunk in body.as_bytes().chunks(64 * 1024) {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
            if writer.write_all(&framed).await.is_err() {
                return;
            }
        }
        let _ = writer.write_all(b"0\r\n\r\n").await;
    });
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(PATIENCE, reader.read_exact(&mut answer)).await.unwrap().unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");
    sending.abort();
}

#[tokio::test]
async fn a_frame_over_the_limit_gets_its_close_code_not_a_reset() {
    let server = Server::builder().env("WEBSOCKET_MAX_PAYLOAD_KB", "64").start();
    let mut client = Client::connect(&server.ws_url(&TestApp::main().key)).await;
    client.send_text(&"x".repeat(10 << 20)).await;
    client.expect_error(4300).await;
    assert_eq!(client.expect_close().await.0, 1009);
    counted(&server, "sockhost_ws_protocol_errors_total{code=\"1009\"}", 1.0).await;
}

#[tokio::test]
async fn bad_frames_get_1007_and_1002() {
    let server = Server::start();
    let key = TestApp::main().key;
    let mut stream = raw::connect(server.port, &key).await;
    let (_, established) = raw::read_frame(&mut stream).await;
    assert!(String::from_utf8_lossy(&established).contains("connection_established"));
    stream.write_all(&raw::frame(1, &[0xff, 0xfe, 0xfd], true)).await.unwrap();
    assert_eq!(raw::close_code(&mut stream).await, 1007);

    // A client must mask its frames (RFC 6455 5.1).
    let mut stream = raw::connect(server.port, &key).await;
    raw::read_frame(&mut stream).await;
    stream.write_all(&raw::frame(1, b"{}", false)).await.unwrap();
    assert_eq!(raw::close_code(&mut stream).await, 1002);
}

/// Several messages in one TCP segment: the socket is ready once, but each message is read and
/// answered (the connection looks at its socket again after every message it reads). The first
/// ones get no answer, so that no write of the server's stirs the socket in between.
#[tokio::test]
async fn messages_that_arrive_together_are_each_answered() {
    let server = Server::start();
    let mut stream = raw::connect(server.port, &TestApp::main().key).await;
    raw::read_frame(&mut stream).await;
    let mut segment = Vec::new();
    for _ in 0..10 {
        let pong = json!({"event": "pusher:pong", "data": {}});
        segment.extend(raw::frame(1, pong.to_string().as_bytes(), true));
    }
    for n in 0..3 {
        let subscribe =
            json!({"event": "pusher:subscribe", "data": {"channel": format!("together-{n}")}});
        segment.extend(raw::frame(1, subscribe.to_string().as_bytes(), true));
    }
    stream.write_all(&segment).await.unwrap();
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 3 {
        let (_, payload) = raw::read_frame(&mut stream).await;
        let frame: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(frame["event"], "pusher_internal:subscription_succeeded", "{frame}");
        acknowledged.push(frame["channel"].as_str().unwrap().to_string());
    }
    assert_eq!(acknowledged, ["together-0", "together-1", "together-2"]);
}

#[tokio::test]
async fn channels_per_connection_and_subscription_rate_are_bounded() {
    let server = Server::builder()
        .env("CHANNEL_LIMITS_MAX_PER_CONNECTION", "3")
        .env("CHANNEL_LIMITS_MAX_SUBSCRIPTIONS_PER_MINUTE", "6")
        .start();
    let app = TestApp::main();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    for name in ["a", "b", "c"] {
        client.subscribe(&app, name).await;
    }
    client.send(json!({ "event": "pusher:subscribe", "data": { "channel": "d" } })).await;
    let refused = client.expect("pusher:subscription_error").await;
    assert_eq!(refused["channel"], "d");
    assert_eq!(refused["data"]["type"], "LimitReached");
    assert_eq!(refused["data"]["status"], 403);
    // Unsubscribes always go through but count: 4 subscribes + 2 unsubscribes use the 6.
    for name in ["a", "b"] {
        client.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": name } })).await;
    }
    client.send(json!({ "event": "pusher:subscribe", "data": { "channel": "e" } })).await;
    let refused = client.expect("pusher:subscription_error").await;
    assert_eq!(refused["data"]["status"], 429);
    counted(&server, "sockhost_subscriptions_refused_total{reason=\"rate\"}", 1.0).await;
    counted(&server, "sockhost_subscriptions_refused_total{reason=\"channels\"}", 1.0).await;
}

#[tokio::test]
async fn one_apps_webhook_flood_is_bounded_and_counted() {
    let mut receiver = webhook::Receiver::start().await;
    let server = Server::builder()
        .config(&format!(
            "[webhooks]\nmax_events_per_second_per_app = 5\nvacated_delay_ms = 60000\n\
             [[app_manager.array.apps]]\nid = \"hooked\"\nkey = \"hooked-key\"\nsecret = \"hooked-secret\"\n\
             [[app_manager.array.apps.webhooks]]\nurl = \"{}\"\n",
            receiver.url
        ))
        .start();
    let app = TestApp::new("hooked", "hooked-key", "hooked-secret");
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    // 50 cache channels: an occupied and a cache_miss webhook each, 100 events raised at once.
    for i in 0..50 {
        let channel = format!("cache-{i}");
        client.send(json!({ "event": "pusher:subscribe", "data": { "channel": channel } })).await;
    }
    counted(&server, "sockhost_webhooks_dropped_total{reason=\"app_rate\"}", 50.0).await;
    // What was within the allowance is delivered.
    let first = receiver.next().await;
    assert!(!first.names().is_empty());
}

/// Subscribe a client that never reads (a tiny receive window) to `flood`, then publish events
/// of `size` bytes to it (at most `max`) until the metric line starting with `line` satisfies
/// `done`, and wait for that; the stalled client.
async fn flood_a_stalled_reader(
    server: &Server,
    size: usize,
    max: usize,
    line: &str,
    done: impl Fn(f64) -> bool,
) -> Client {
    let app = TestApp::main();
    let mut stalled = tiny_window_client(server, &app.key).await;
    stalled.subscribe(&app, "flood").await;
    let api = Api::new(&server.http_url(), &app);
    let data = "x".repeat(size);
    for _ in 0..max {
        assert_eq!(api.trigger(&["flood"], "e", &data).await.0, 200);
        if done(server.labelled_metric(line).await) {
            break;
        }
    }
    server.wait_for_labelled_metric(line, PATIENCE, done).await;
    stalled
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_closed_by_the_write_deadline() {
    let server = Server::builder()
        .env("WEBSOCKET_WRITE_TIMEOUT_MS", "1000")
        .env("WEBSOCKET_MAX_BYTES", "0")
        .start();
    // Bounded by the queue (1000 frames): the write deadline must come first.
    let line = "sockhost_edge_timeouts_total{kind=\"write\"}";
    let _stalled = flood_a_stalled_reader(&server, 90_000, 400, line, |v| v >= 1.0).await;
    server.wait_for_metric("sockhost_connected", |v| v == 0.0).await;
}

#[tokio::test]
async fn the_keepalive_still_runs_while_a_write_is_blocked() {
    let server = Server::builder()
        .env("ACTIVITY_TIMEOUT", "1")
        .env("PONG_TIMEOUT", "1")
        .env("WEBSOCKET_WRITE_TIMEOUT_MS", "600000")
        .env("WEBSOCKET_MAX_BYTES", "0")
        .start();
    // Unanswered pings close it (4201), though its write never finished.
    let _stalled =
        flood_a_stalled_reader(&server, 90_000, 100, "sockhost_connected ", |v| v == 0.0).await;
    assert_eq!(server.labelled_metric("sockhost_edge_timeouts_total{kind=\"write\"}").await, 0.0);
}

#[tokio::test]
async fn a_queue_over_its_byte_bound_is_closed_with_4100() {
    let server = Server::builder().env("WEBSOCKET_MAX_BYTES", "200000").start();
    // A reader that keeps up, so the stalled one is slower than the channel (alone, it would
    // hold the publisher back instead: see the overload test).
    let app = TestApp::main();
    let mut reader = Client::connect(&server.ws_url(&app.key)).await;
    reader.subscribe(&app, "flood").await;
    let reading =
        tokio::spawn(async move { while reader.next_within(PATIENCE).await.is_some() {} });
    let line = "sockhost_slow_consumer_disconnections_total ";
    let mut stalled = flood_a_stalled_reader(&server, 50_000, 200, line, |v| v >= 1.0).await;
    // The client gets the events that fit, then 4100.
    loop {
        match stalled.next().await {
            Received::Event(_) => {}
            Received::Closed(code, _) => {
                assert_eq!(code, 4100);
                break;
            }
        }
    }
    reading.abort();
}

/// The overload policy: a publisher faster than every reader is pushed back (delayed, then
/// 429) instead of emptying the channel; once the fast readers keep up, only the reader slower
/// than the others is closed, and the fast ones get every accepted event.
#[tokio::test]
async fn a_burst_pushes_back_the_publisher_and_closes_only_the_slowest_reader() {
    let server = Server::builder()
        .env("WEBSOCKET_MAX_MESSAGES", "100")
        .env("WEBSOCKET_MAX_BYTES", "0")
        .env("OVERLOAD_MAX_PUBLISH_DELAY_MS", "300")
        .start();
    let app = TestApp::main();
    let (go, _) = tokio::sync::watch::channel(false);
    let mut fast = Vec::new();
    for _ in 0..4 {
        let mut client = tiny_window_client(&server, &app.key).await;
        client.subscribe(&app, "ticker").await;
        let mut go = go.subscribe();
        fast.push(tokio::spawn(async move {
            // Not reading at first: every reader is behind, as under a burst.
            let _ = go.wait_for(|g| *g).await;
            let mut seen = Vec::new();
            loop {
                match client.next().await {
                    Received::Event(e) if e["event"] == "tick" => {
                        let data = e["data"].as_str().unwrap();
                        seen.push(data.split(' ').next().unwrap().parse::<u64>().unwrap());
                    }
                    Received::Event(e) if e["event"] == "done" => return seen,
                    Received::Event(_) => {}
                    Received::Closed(code, why) => panic!("a fast reader was closed: {code} {why}"),
                }
            }
        }));
    }
    let mut slow = tiny_window_client(&server, &app.key).await;
    slow.subscribe(&app, "ticker").await;

    let api = Api::new(&server.http_url(), &app);
    let mut accepted = Vec::new();
    let mut pushed_back = false;
    let mut n = 0u64;
    // Phase 1: nobody reads; the publisher meets push-back before any queue is full.
    while !pushed_back {
        n += 1;
        assert!(n < 2000, "the publisher was never pushed back");
        let data = format!("{n} {}", "x".repeat(10_000));
        let body = json!({ "name": "tick", "channel": "ticker", "data": data });
        let (status, answer) = api.post("/events", &body).await;
        match status {
            200 => accepted.push(n),
            429 => pushed_back = true,
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    assert_eq!(server.metric("sockhost_slow_consumer_disconnections_total").await, 0.0);
    // Phase 2: the fast readers read; the slow one still does not, and is the only one closed.
    go.send_replace(true);
    loop {
        n += 1;
        assert!(n < 20_000, "the slow reader was never closed");
        let data = format!("{n} {}", "x".repeat(10_000));
        let body = json!({ "name": "tick", "channel": "ticker", "data": data });
        if api.post("/events", &body).await.0 == 200 {
            accepted.push(n);
        }
        if server.metric("sockhost_slow_consumer_disconnections_total").await >= 1.0 {
            break;
        }
    }
    assert_eq!(api.trigger(&["ticker"], "done", "").await.0, 200);
    for reader in fast {
        assert_eq!(reader.await.unwrap(), accepted, "a fast reader missed accepted events");
    }
    counted(&server, "sockhost_publish_pushback_total{outcome=\"refused\"}", 1.0).await;
    drop(slow);
}

#[tokio::test]
async fn user_ids_keep_their_text_and_are_bounded() {
    let server = Server::start();
    let app = TestApp::main();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    for id in ["-0", "1e308", "12345678901234567890123"] {
        let channel = format!("presence-{id}");
        let data = format!(r#"{{"user_id":{id}}}"#);
        let auth = app.auth(&client.socket_id, &channel, Some(&data));
        let joined = client.subscribe_raw(&channel, Some(auth), Some(data)).await;
        let presence: Value =
            serde_json::from_str(joined["data"].as_str().unwrap()).expect("presence data");
        assert_eq!(presence["presence"]["ids"], json!([id]), "{joined}");
    }
    let api = Api::new(&server.http_url(), &app);
    let long = format!("#server-to-user-{}", "u".repeat(129));
    let (status, body) = api.trigger(&[&long], "e", "d").await;
    assert_eq!(status, 400, "{body}");
    // A path that does not decode gets the API's JSON error.
    let (status, body) = api.raw("GET", "/apps/%ff/channels", Vec::new()).await;
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(body["code"], status, "{body}");
}

#[tokio::test]
async fn a_slow_body_is_cut_off() {
    let server = Server::builder().env("EDGE_BODY_TIMEOUT_MS", "500").start();
    let api = Api::new(&server.http_url(), &TestApp::main());
    let body = json!({ "name": "e", "channel": "c", "data": "d" }).to_string();
    let path = "/apps/app-1/events";
    let query = api.signed_query("POST", path, &[], body.as_bytes(), Api::now());
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let head = format!(
        "POST {path}?{query} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..body.len() - 1]
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = raw::read_head(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// A reader that stops for a while and then reads again gets every event, once and in order:
/// its frames wait in its queue (and the socket's buffers) while it does not read, and its task
/// writes them, under its deadline, once it reads again.
#[tokio::test]
async fn a_reader_that_pauses_gets_every_event_in_order() {
    const EVENTS: usize = 4_000;
    let app = TestApp::main();
    let server = Server::builder()
        .env("WEBSOCKET_MAX_MESSAGES", "100000")
        .env("WEBSOCKET_MAX_BYTES", "0")
        .env("WEBSOCKET_WRITE_TIMEOUT_MS", "60000")
        .start();
    let mut reader = tiny_window_client(&server, &app.key).await;
    reader.subscribe(&app, "paused").await;
    let api = Api::new(&server.http_url(), &app);
    let padding = "p".repeat(2_000);
    // Published one batch after the other, so their order is defined; nothing is read meanwhile.
    for batch in 0..EVENTS / 10 {
        let events: Vec<Value> = (0..10)
            .map(|i| {
                let data = format!("{} {padding}", batch * 10 + i);
                json!({ "channel": "paused", "name": "seq", "data": data })
            })
            .collect();
        assert_eq!(api.post("/batch_events", &json!({ "batch": events })).await.0, 200);
    }
    assert!(
        server.metric("sockhost_slow_consumer_disconnections_total").await == 0.0,
        "the reader was not cut off"
    );
    for expected in 0..EVENTS {
        let event = reader.expect("seq").await;
        let data = event["data"].as_str().unwrap();
        let seq: usize = data.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(seq, expected, "out of order or missing");
    }
    // Caught up, it gets the next one at once.
    api.trigger(&["paused"], "seq", "after").await;
    assert_eq!(reader.expect("seq").await["data"], "after");
}
