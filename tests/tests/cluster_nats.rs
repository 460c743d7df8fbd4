//! The multi-node scenarios over a real `nats-server`, with real `sockhost` processes loading
//! the real `libsockhost_nats.so`; plus what is this transport's own: authentication, TLS,
//! the environment variables, and its refusals.

use sockhost_tests::{
    backends::NatsServer,
    cluster::{self, Bus, nodes, refused, scenarios},
    tls::Pki,
};

fn start() -> (NatsServer, Bus) {
    let nats = NatsServer::start();
    let bus = Bus::nats(&nats.url());
    (nats, bus)
}

sockhost_tests::cluster_scenarios!(start);

/// One event from node A to a subscriber on node B over `bus`, on a channel whose name holds
/// characters NATS gives meaning to.
async fn one_event_crosses(bus: &Bus) {
    cluster::one_event_crosses(&nodes(bus, 2, "").await, "private-room.1;a=b@c,d").await;
}

#[tokio::test]
async fn user_and_password_from_the_environment_and_a_wrong_one_refused() {
    let nats = NatsServer::start_with(&["--user", "sockudo", "--pass", "secret"]);
    let bus = Bus::nats(&nats.url()).env("NATS_USERNAME", "sockudo").env("NATS_PASSWORD", "secret");
    one_event_crosses(&bus).await;

    let wrong =
        Bus::nats(&nats.url()).env("NATS_USERNAME", "sockudo").env("NATS_PASSWORD", "guess");
    let (code, log) = refused(&wrong);
    assert_ne!(code, Some(0), "{log}");
    assert!(log.to_lowercase().contains("authorization"), "{log}");
}

#[tokio::test]
async fn a_token_from_the_config_and_servers_from_the_environment() {
    let nats = NatsServer::start_with(&["--auth", "my-auth-token"]);
    // The table names a server that does not exist; NATS_SERVERS overrides it.
    let bus = Bus::nats("nats://127.0.0.1:1")
        .with("token = \"my-auth-token\"")
        .env("NATS_SERVERS", &nats.url());
    one_event_crosses(&bus).await;

    let (code, log) = refused(&Bus::nats(&nats.url()).with("token = \"wrong\""));
    assert_ne!(code, Some(0), "{log}");
}

#[tokio::test]
async fn tls_urls_connect_to_a_trusted_server_and_refuse_an_untrusted_one() {
    let pki = Pki::generate();
    let nats = NatsServer::start_tls(&pki);
    assert!(nats.url().starts_with("tls://"));
    one_event_crosses(&Bus::nats(&nats.url()).env("SSL_CERT_FILE", pki.ca().to_str().unwrap()))
        .await;

    let stranger = Pki::generate();
    let (code, log) =
        refused(&Bus::nats(&nats.url()).env("SSL_CERT_FILE", stranger.ca().to_str().unwrap()));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("transport driver `nats`") && log.contains("certificate"), "{log}");
}

#[tokio::test]
async fn a_url_that_does_not_parse_is_a_clear_start_up_error() {
    let (code, log) = refused(&Bus::nats("nats://127.0.0.1:notaport"));
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("adapter.nats.servers: \"nats://127.0.0.1:notaport\""), "{log}");
}

/// Publish `payload` on a NATS subject as anyone with access to the server could (the client
/// protocol over TCP); returns once the server has processed it (PING answered).
async fn publish_raw(port: u16, subject: &str, payload: &[u8]) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let info = lines.next_line().await.unwrap().unwrap();
    assert!(info.starts_with("INFO"), "{info}");
    let mut command = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nPUB {subject} {}\r\n",
        payload.len()
    )
    .into_bytes();
    command.extend_from_slice(payload);
    command.extend_from_slice(b"\r\nPING\r\n");
    write.write_all(&command).await.unwrap();
    let pong = lines.next_line().await.unwrap().unwrap();
    assert_eq!(pong, "PONG");
}

/// Messages written to NATS by someone without the cluster secret are refused.
#[tokio::test]
async fn forged_bus_messages_are_refused() {
    let (nats, bus) = start();
    let port = nats.port;
    scenarios::forged_messages_are_refused(bus, move |topic: String, bytes: Vec<u8>| async move {
        publish_raw(port, &format!("test:{topic}"), &bytes).await;
    })
    .await;
}

/// A fake peer's presence sync of 60,000 members, through NATS, is applied whole, and a
/// broadcast after it is delivered.
#[tokio::test]
async fn a_big_presence_sync_is_applied() {
    let (server, bus) = start();
    let port = server.port;
    scenarios::a_big_presence_sync_is_applied(
        bus,
        move |topic: String, bytes: Vec<u8>| async move {
            publish_raw(port, &format!("test:{topic}"), &bytes).await;
        },
    )
    .await;
}
