//! TLS in process (`ssl.*`): WebSockets and the HTTP API over TLS with certificates from a
//! throwaway CA, a renewal picked up on SIGHUP and on a file change while a client stays
//! connected, a bad renewal that keeps the old certificate, the plain-HTTP redirect, and a bad
//! certificate refused at start.

use std::path::Path;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use sockhost_tests::{
    private_dir,
    pusher::TestApp,
    server::{Server, free_port, run_to_exit},
    tls::{Pki, connect, der, https_get},
};
use tokio_tungstenite::tungstenite::Message;

type Wss =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn wss(port: u16, ca: &Path, key: &str) -> Wss {
    let stream = connect(port, ca).await;
    let url = format!("wss://127.0.0.1:{port}/app/{key}?protocol=7");
    tokio_tungstenite::client_async(url, stream).await.unwrap().0
}

async fn next_event(ws: &mut Wss) -> Value {
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Replace `to` with `from` in one step, as a renewal tool does.
fn swap(from: &Path, to: &Path) {
    let temp = to.with_extension("new");
    std::fs::copy(from, &temp).unwrap();
    std::fs::rename(&temp, to).unwrap();
}

fn hangup(server: &Server) {
    let status =
        std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]).status();
    assert!(status.unwrap().success());
}

#[tokio::test]
async fn websockets_and_the_api_over_tls_with_certificates_renewed_in_place() {
    let pki = Pki::generate();
    let dir = private_dir();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(pki.cert(), &cert).unwrap();
    std::fs::copy(pki.key(), &key).unwrap();
    let server = Server::builder().tls(&cert, &key).start();
    let app = TestApp::main();

    let mut client = wss(server.port, &pki.ca(), &app.key).await;
    assert_eq!(next_event(&mut client).await["event"], "pusher:connection_established");
    let (answer, leaf) = https_get(server.port, &pki.ca(), "/up").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(leaf, der(&pki.cert()));

    // A renewal on SIGHUP: new handshakes get the new certificate, the open socket stays.
    let (renewed, renewed_key) = pki.renew("renewed");
    swap(&renewed, &cert);
    swap(&renewed_key, &key);
    hangup(&server);
    let ok = "sockhost_tls_certificate_reloads_total{outcome=\"ok\"}";
    server.wait_for_labelled_metric(ok, sockhost_tests::pusher::PATIENCE, |v| v >= 1.0).await;
    assert_eq!(https_get(server.port, &pki.ca(), "/up").await.1, der(&renewed));
    client
        .send(Message::text(json!({ "event": "pusher:ping", "data": {} }).to_string()))
        .await
        .unwrap();
    assert_eq!(next_event(&mut client).await["event"], "pusher:pong");

    // A broken renewal is refused and the good certificate stays in use.
    std::fs::write(&cert, "not a certificate").unwrap();
    hangup(&server);
    let failed = "sockhost_tls_certificate_reloads_total{outcome=\"failed\"}";
    server.wait_for_labelled_metric(failed, sockhost_tests::pusher::PATIENCE, |v| v >= 1.0).await;
    assert!(server.log().contains("keeping the old one"), "{}", server.log());
    assert_eq!(https_get(server.port, &pki.ca(), "/up").await.1, der(&renewed));

    // A renewal without a signal: the changed files are noticed.
    let (third, third_key) = pki.renew("third");
    swap(&third_key, &key);
    swap(&third, &cert);
    server.wait_for_labelled_metric(ok, sockhost_tests::pusher::PATIENCE, |v| v >= 2.0).await;
    assert_eq!(https_get(server.port, &pki.ca(), "/up").await.1, der(&third));
    client
        .send(Message::text(json!({ "event": "pusher:ping", "data": {} }).to_string()))
        .await
        .unwrap();
    assert_eq!(next_event(&mut client).await["event"], "pusher:pong");

    // A client that does not speak TLS gets nothing and is counted.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    plain.write_all(b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200"));
    server.wait_for_metric("sockhost_tls_handshake_failures_total", |v| v >= 1.0).await;
}

/// Plain HTTP on `ssl.http_port` is redirected to the same path over HTTPS.
#[tokio::test]
async fn plain_http_is_redirected_to_https() {
    let pki = Pki::generate();
    let http_port = free_port();
    let server = Server::builder()
        .tls(&pki.cert(), &pki.key())
        .env("SSL_REDIRECT_HTTP", "true")
        .env("SSL_HTTP_PORT", &http_port.to_string())
        .start();
    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = client
        .get(format!("http://127.0.0.1:{http_port}/apps/app-1/channels?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        format!("https://127.0.0.1:{}/apps/app-1/channels?x=1", server.port).as_str()
    );
}

/// A certificate that cannot be used is a one-line refusal at start naming the setting.
#[test]
fn a_bad_certificate_is_refused_at_start() {
    let pki = Pki::generate();
    let dir = private_dir();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "nothing here").unwrap();
    let env = |cert: &Path, key: &Path| {
        vec![
            ("SSL_ENABLED", "true".to_string()),
            ("SSL_CERT_PATH", cert.to_str().unwrap().to_string()),
            ("SSL_KEY_PATH", key.to_str().unwrap().to_string()),
            ("PORT", "0".to_string()),
            ("METRICS_ENABLED", "false".to_string()),
        ]
    };
    let run = |env: Vec<(&str, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let plugins = sockhost_tests::workspace_root().join("plugins.toml");
        run_to_exit(dir.path(), &["--plugins", plugins.to_str().unwrap()], &env)
    };
    let (code, out) = run(env(&garbage, &pki.key()));
    assert_ne!(code, Some(0));
    assert!(out.contains("ssl.cert_path") && out.contains("garbage.pem"), "{out}");
    let (other, other_key) = pki.renew("other");
    let _ = other;
    let (code, out) = run(env(&pki.cert(), &other_key));
    assert_ne!(code, Some(0));
    assert!(out.contains("does not belong to the certificate"), "{out}");
    let (code, out) = run(vec![("SSL_ENABLED", "true".into()), ("PORT", "0".into())]);
    assert_ne!(code, Some(0));
    assert!(out.contains("ssl.cert_path: must name a PEM file"), "{out}");
}

#[tokio::test]
async fn one_address_begins_a_bounded_number_of_handshakes_a_second() {
    let pki = Pki::generate();
    let server = Server::builder()
        .tls(&pki.cert(), &pki.key())
        .env("EDGE_MAX_TLS_HANDSHAKES_PER_IP_PER_SECOND", "3")
        .start();
    let connector = sockhost_tests::tls::connector(&pki.ca());
    // 20 handshakes begun at once: at most 3 of any one second's go through.
    let attempts = (0..20).map(|_| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            connector.connect(name, tcp).await.is_ok()
        }
    });
    let done = futures_util::future::join_all(attempts).await;
    let refused = done.iter().filter(|ok| !**ok).count();
    assert!(refused > 0, "every one of 20 handshakes went through: {done:?}");
    server
        .wait_for_labelled_metric(
            "sockhost_edge_refused_total{reason=\"tls_rate\"}",
            sockhost_tests::pusher::PATIENCE,
            |v| v >= 1.0,
        )
        .await;
    // A later second has room again.
    sockhost_tests::wait::eventually("a handshake goes through again", async || {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let ok = connector.connect(name, tcp).await.is_ok();
        sockhost_tests::wait::holds(ok, "refused")
    })
    .await;
}
