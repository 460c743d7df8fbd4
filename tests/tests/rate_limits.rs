//! Rate limits through the rate-limiter driver: HTTP API events and reads per app (429 with
//! the usual headers), client events per connection (4301), new connections per IP (4100);
//! each recovers after its window.

use serde_json::json;
use sockhost_tests::{
    pusher::{Api, Client, Received, TestApp},
    server::Server,
};

fn limited_server(extra: &str) -> Server {
    Server::builder()
        .config(&format!(
            "{extra}\n[[app_manager.array.apps]]\nid = \"rl\"\nkey = \"rl-key\"\nsecret = \"rl-secret\"\n\
             enable_client_messages = true\nmax_backend_events_per_second = 3\nmax_read_requests_per_second = 2\n\
             max_client_events_per_second = 2\nmax_connections_per_ip_per_minute = 3\n"
        ))
        .start()
}

fn app() -> TestApp {
    TestApp::new("rl", "rl-key", "rl-secret")
}

/// Retry `attempt` until it answers 200, for a limit whose window must pass.
async fn until_ok(mut attempt: impl AsyncFnMut() -> u16) {
    sockhost_tests::wait::eventually("the limit recovers", async || {
        let status = attempt().await;
        sockhost_tests::wait::holds(status == 200, status)
    })
    .await;
}

#[tokio::test]
async fn backend_events_over_the_limit_get_429_with_headers_and_recover() {
    let server = limited_server("");
    let api = Api::new(&server.http_url(), &app());
    // Each channel counts: two channels, then one, exhaust the three per second.
    assert_eq!(api.trigger(&["a", "b"], "e", "d").await.0, 200);
    assert_eq!(api.trigger(&["a"], "e", "d").await.0, 200);
    let path = "/apps/rl/events";
    let body = json!({ "name": "e", "data": "d", "channel": "a" }).to_string().into_bytes();
    let query = api.signed_query("POST", path, &[], &body, Api::now());
    let response = reqwest::Client::new()
        .post(format!("{}{path}?{query}", server.http_url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let headers = response.headers().clone();
    assert_eq!(headers["x-ratelimit-limit"], "3");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(headers["retry-after"], "1");
    assert!(headers.contains_key("x-ratelimit-reset"));
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["code"], 429);
    until_ok(async || api.trigger(&["a"], "e", "d").await.0).await;
}

#[tokio::test]
async fn read_requests_over_the_limit_get_429_and_recover() {
    let server = limited_server("");
    let api = Api::new(&server.http_url(), &app());
    assert_eq!(api.get("/channels", &[]).await.0, 200);
    assert_eq!(api.get("/channels", &[]).await.0, 200);
    assert_eq!(api.get("/channels", &[]).await.0, 429);
    until_ok(async || api.get("/channels", &[]).await.0).await;
}

#[tokio::test]
async fn client_events_over_the_limit_get_4301() {
    let server = limited_server("");
    let app = app();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client.subscribe(&app, "private-rl").await;
    for i in 0..3 {
        client.send(json!({ "event": "client-x", "channel": "private-rl", "data": i })).await;
    }
    assert!(client.expect_error(4301).await.contains("2 per second"));
}

#[tokio::test]
async fn new_connections_over_the_per_ip_limit_are_refused_with_4100() {
    let server = limited_server("");
    let app = app();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Client::connect(&server.ws_url(&app.key)).await);
    }
    let mut refused = Client::connect_raw(&server.ws_url(&app.key)).await;
    assert!(refused.expect_error(4100).await.contains("Too many new connections"));
    assert!(matches!(refused.next().await, Received::Closed(4100, _)));
}

#[tokio::test]
async fn with_the_none_limiter_nothing_is_limited() {
    let server = limited_server("[rate_limiter]\ndriver = \"none\"");
    let api = Api::new(&server.http_url(), &app());
    for _ in 0..6 {
        assert_eq!(api.trigger(&["a"], "e", "d").await.0, 200);
    }
}

/// A keyed publish over the app's limit is refused before its key is claimed: 429, nothing
/// kept under the key (no idempotency outcome counted), so a flood of keyed requests costs
/// what unkeyed ones do; the same request once the window allows is published, as a first.
#[tokio::test]
async fn a_keyed_publish_over_the_limit_leaves_nothing_under_its_key() {
    let server = limited_server("");
    let api = Api::new(&server.http_url(), &app());
    let keyed = json!({ "name": "e", "data": "d", "channel": "a", "idempotency_key": "k-1" });
    assert_eq!(api.trigger(&["a", "b", "c"], "e", "d").await.0, 200);
    assert_eq!(api.post("/events", &keyed).await.0, 429);
    let outcomes = server.metrics().await;
    assert!(
        !outcomes.contains("sockhost_idempotent_publishes_total{"),
        "a refused publish touched its key:\n{outcomes}"
    );
    until_ok(async || api.post("/events", &keyed).await.0).await;
    let first = r#"sockhost_idempotent_publishes_total{outcome="first"}"#;
    assert_eq!(server.labelled_metric(first).await, 1.0);
}
