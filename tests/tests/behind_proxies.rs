//! Client addresses behind proxies, against the real binary: the per-address WebSocket cap
//! applies to the client a trusted proxy names (`X-Forwarded-For`, `Forwarded`, the PROXY
//! protocol v1 and v2), the same headers from anyone else are ignored, and an address at its
//! WebSocket cap can still use the HTTP API.

use serde_json::json;
use sockhost_tests::{
    pusher::{Api, Client, PATIENCE, TestApp},
    server::Server,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::{MaybeTlsStream, tungstenite::client::IntoClientRequest as _};

/// A WebSocket opened with `headers` added to its upgrade request, not read yet.
async fn connect_with(server: &Server, key: &str, headers: &[(&'static str, String)]) -> Client {
    let mut request = server.ws_url(key).into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(*name, value.parse().unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(request).await.expect("the WebSocket connects");
    Client::from_stream_raw(ws)
}

/// A WebSocket over a connection that starts with `proxy_header`, not read yet.
async fn connect_proxied(server: &Server, key: &str, proxy_header: &[u8]) -> Client {
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    tcp.write_all(proxy_header).await.unwrap();
    let stream = MaybeTlsStream::Plain(tcp);
    let (ws, _) = tokio_tungstenite::client_async(server.ws_url(key), stream)
        .await
        .expect("the WebSocket connects after its PROXY header");
    Client::from_stream_raw(ws)
}

/// Whether `client` is admitted (`connection_established`) or refused with 4100.
async fn admitted(client: &mut Client) -> bool {
    let first = client.expect_any().await;
    match first["event"].as_str() {
        Some("pusher:connection_established") => true,
        Some("pusher:error") => {
            let data = &first["data"];
            assert_eq!(data["code"], 4100, "{first}");
            assert!(data["message"].as_str().unwrap().contains("address"), "{first}");
            false
        }
        _ => panic!("unexpected first message {first}"),
    }
}

fn v1_header(client: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 40000 {port}\r\n").into_bytes()
}

fn v2_header(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&client);
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&40000u16.to_be_bytes());
    header.extend_from_slice(&port.to_be_bytes());
    header
}

#[tokio::test]
async fn an_address_at_its_websocket_cap_still_publishes_and_queries() {
    let server = Server::builder().env("EDGE_MAX_CONNECTIONS_PER_IP", "20").start();
    let app = TestApp::main();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(Client::connect(&server.ws_url(&app.key)).await);
    }
    let mut refused = Client::connect_raw(&server.ws_url(&app.key)).await;
    assert!(!admitted(&mut refused).await, "the 21st socket from one address is over its cap");
    held[0].subscribe(&app, "news").await;
    let api = Api::new(&server.http_url(), &app);
    let (status, body) = api.trigger(&["news"], "update", "{}").await;
    assert_eq!(status, 200, "{body}");
    held[0].expect("update").await;
    let (status, body) = api.get("/channels", &[]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_cap() {
    let server = Server::builder()
        .env("EDGE_MAX_CONNECTIONS_PER_IP", "10")
        .env("EDGE_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8")
        .start();
    let app = TestApp::main();
    // 110 sockets through the proxy (this test, on 127.0.0.1): 11 clients of 10 each, all in.
    let mut held = Vec::new();
    for client in 1..=11 {
        for _ in 0..10 {
            // A client's own claim on the left, a second trusted proxy on the right.
            let chain = format!("6.6.6.6, 192.0.2.{client}, 10.1.1.1");
            let mut socket = connect_with(&server, &app.key, &[("x-forwarded-for", chain)]).await;
            assert!(admitted(&mut socket).await, "client 192.0.2.{client} is within its cap");
            held.push(socket);
        }
    }
    // The 11th socket of one forwarded client is refused; `Forwarded` names clients too.
    let over = [("x-forwarded-for", "192.0.2.3".to_string())];
    assert!(!admitted(&mut connect_with(&server, &app.key, &over).await).await);
    let forwarded = [("forwarded", r#"for="192.0.2.4:5555";proto=http"#.to_string())];
    assert!(!admitted(&mut connect_with(&server, &app.key, &forwarded).await).await);
    let fresh = [("forwarded", "for=192.0.2.200".to_string())];
    assert!(admitted(&mut connect_with(&server, &app.key, &fresh).await).await);
    // The refusal names the client, not the proxy.
    assert!(server.log().contains("192.0.2.3"), "{}", server.log());
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let server = Server::builder()
        .env("EDGE_MAX_CONNECTIONS_PER_IP", "10")
        .env("EDGE_TRUSTED_PROXIES", "10.0.0.0/8")
        .start();
    let app = TestApp::main();
    let mut held = Vec::new();
    for i in 1..=10 {
        let spoofed = [("x-forwarded-for", format!("192.0.2.{i}"))];
        let mut socket = connect_with(&server, &app.key, &spoofed).await;
        assert!(admitted(&mut socket).await);
        held.push(socket);
    }
    let spoofed = [("x-forwarded-for", "192.0.2.99".to_string())];
    let mut socket = connect_with(&server, &app.key, &spoofed).await;
    assert!(!admitted(&mut socket).await, "127.0.0.1 is not trusted: it is the client");
}

#[tokio::test]
async fn the_proxy_protocol_names_the_client_in_v1_and_v2() {
    let server = Server::builder()
        .proxy_protocol()
        .env("EDGE_MAX_CONNECTIONS_PER_IP", "10")
        .env("EDGE_TRUSTED_PROXIES", "127.0.0.1")
        .start();
    let app = TestApp::main();
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut socket = connect_proxied(&server, &app.key, &v1_header("198.51.100.7", 6001)).await;
        assert!(admitted(&mut socket).await);
        held.push(socket);
    }
    let mut over = connect_proxied(&server, &app.key, &v1_header("198.51.100.7", 6001)).await;
    assert!(!admitted(&mut over).await, "the 11th socket of one client is refused");
    // v2 names the same client: over too; another client, in.
    let mut over = connect_proxied(&server, &app.key, &v2_header([198, 51, 100, 7], 6001)).await;
    assert!(!admitted(&mut over).await);
    let mut other = connect_proxied(&server, &app.key, &v2_header([198, 51, 100, 8], 6001)).await;
    assert!(admitted(&mut other).await);
    assert!(server.log().contains("198.51.100.7"), "the log names the client");

    // The HTTP API through the balancer (a request right behind its header).
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let mut request = v1_header("198.51.100.9", 6001);
    request.extend_from_slice(b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tcp.write_all(&request).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // No header, a broken one, or one never finished: closed, and counted.
    for bad in [&b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"PROXY TCP4 banana\r\n"] {
        let mut tcp = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
        tcp.write_all(bad).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed without an answer: {answer:?}");
    }
    server
        .wait_for_labelled_metric(
            "sockhost_edge_refused_total{reason=\"proxy_protocol\"}",
            PATIENCE,
            |v| v >= 2.0,
        )
        .await;
}

#[tokio::test]
async fn a_proxy_protocol_header_from_an_untrusted_peer_is_read_but_not_believed() {
    let server = Server::builder()
        .proxy_protocol()
        .env("EDGE_MAX_CONNECTIONS_PER_IP", "10")
        .env("EDGE_TRUSTED_PROXIES", "10.0.0.0/8")
        .start();
    let app = TestApp::main();
    let mut held = Vec::new();
    for i in 1..=10 {
        let header = v1_header(&format!("198.51.100.{i}"), 6001);
        let mut socket = connect_proxied(&server, &app.key, &header).await;
        assert!(admitted(&mut socket).await);
        held.push(socket);
    }
    let mut over = connect_proxied(&server, &app.key, &v1_header("198.51.100.99", 6001)).await;
    assert!(!admitted(&mut over).await, "all of them are 127.0.0.1's");
    // A plain client sends no PROXY header: refused by closing.
    let answer = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap()
        .post(format!("{}/apps/{}/events", server.http_url(), app.id))
        .json(&json!({}))
        .send()
        .await;
    assert!(answer.is_err(), "a request without a PROXY header is not served");
}
