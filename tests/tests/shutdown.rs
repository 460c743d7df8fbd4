//! Graceful shutdown: SIGTERM closes every socket with 4200 and the process exits 0.

use serde_json::json;
use sockhost_tests::{
    pusher::{Client, TestApp},
    server::Server,
};

#[tokio::test]
async fn sigterm_closes_every_socket_with_4200_and_exits_cleanly() {
    let mut server = Server::start();
    let app = TestApp::main();
    let mut subscribed = Client::connect(&server.ws_url(&app.key)).await;
    subscribed.join(&app, "presence-shutdown", "u", json!({})).await;
    let mut idle = Client::connect(&server.ws_url(&app.key)).await;

    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (status, server)
    });
    for client in [&mut subscribed, &mut idle] {
        client.expect_error(4200).await;
        assert_eq!(client.expect_close().await.0, 4200);
    }
    let (status, server) = status.await.unwrap();
    assert!(status.success(), "exit status {status}:\n{}", server.log());
    assert!(server.log().contains("Stopped."), "{}", server.log());
}
