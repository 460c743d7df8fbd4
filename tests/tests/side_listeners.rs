//! The listeners beside the main port (metrics, admin) are as hard as the main one: idle and
//! half-sent sockets are cut off at the head deadline, one address cannot hold many of them,
//! a flood of them never takes the descriptors the main port needs, and the admin listener
//! answers only to its own names.

use serde_json::Value;
use sockhost_tests::{
    pusher::PATIENCE,
    server::{Server, closed_by_server, free_port},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const TOKEN: &str = "a-test-admin-token-of-at-least-32-characters";

fn admin_config(port: u16) -> String {
    format!("[admin]\nenabled = true\nport = {port}\ntoken = \"{TOKEN}\"\n")
}

/// A raw request to 127.0.0.1:`port`: the status line and the body.
async fn request(port: u16, head: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_string(&mut answer)).await.unwrap().unwrap();
    let status = answer.lines().next().unwrap_or_default().to_string();
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn idle_and_half_sent_sockets_to_the_side_ports_are_cut_off_and_the_main_port_answers() {
    let admin_port = free_port();
    // A node allowed 512 descriptors, as in the attack that made its main port unreachable.
    let server = Server::builder()
        .open_files(512)
        .config(&admin_config(admin_port))
        .env("EDGE_HEADER_TIMEOUT_MS", "1000")
        .start();
    let mut held = Vec::new();
    for port in [server.metrics_port, admin_port] {
        for i in 0..300 {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            if i % 2 == 0 {
                stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-").await.unwrap();
            }
            held.push(stream);
        }
    }
    let up = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap()
        .get(format!("{}/up", server.http_url()))
        .send()
        .await
        .expect("the main port answers while the side ports are flooded");
    assert_eq!(up.status(), 200);
    for stream in &mut held {
        assert!(closed_by_server(stream).await, "a side socket was never closed");
    }
    // Both listeners serve again once the flood is gone.
    assert!(server.metrics().await.contains("sockhost_edge_refused_total"));
    let (status, _) = request(
        admin_port,
        &format!(
            "GET /apps HTTP/1.1\r\nHost: 127.0.0.1:{admin_port}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

#[tokio::test]
async fn the_side_ports_speak_http1_only() {
    let server = Server::start();
    // The HTTP/2 prior-knowledge preface (h2c) is not a request here.
    let (status, _) = request(server.metrics_port, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(!status.contains("HTTP/2"), "{status}");
}

#[tokio::test]
async fn the_admin_listener_answers_only_to_its_own_names() {
    let admin_port = free_port();
    let server = Server::builder().config(&admin_config(admin_port)).start();
    let asking = |host: &str| {
        format!(
            "GET /apps HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        )
    };
    for host in [format!("127.0.0.1:{admin_port}"), format!("localhost:{admin_port}")] {
        let (status, body) = request(admin_port, &asking(&host)).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{host}: {status} {body}");
    }
    for host in ["evil.example", "evil.example:6005", "127.0.0.1.evil.example"] {
        let (status, body) = request(admin_port, &asking(host)).await;
        assert!(status.starts_with("HTTP/1.1 421"), "{host}: {status}");
        let body: Value = serde_json::from_str(&body).expect("a JSON refusal");
        assert!(body["error"].as_str().unwrap().contains("allowed_hosts"), "{body}");
    }
    drop(server);

    // The operator names the host it is reached by.
    let admin_port = free_port();
    let server = Server::builder()
        .config(&admin_config(admin_port))
        .env("ADMIN_ALLOWED_HOSTS", "admin.internal, other.internal")
        .start();
    let (status, _) = request(admin_port, &asking("admin.internal:443")).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let (status, _) = request(admin_port, &asking(&format!("127.0.0.1:{admin_port}"))).await;
    assert!(status.starts_with("HTTP/1.1 421"), "{status}");
    drop(server);
}
