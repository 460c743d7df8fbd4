//! Webhooks through the queue driver: each kind, the signature, retries, giving up, the
//! vacated delay, batching. A real receiver on a loopback port; the real binary and plugin.

use std::time::Duration;

use serde_json::json;
use sockhost::protocol::signature;
use sockhost_tests::{
    pusher::{Api, Client, TestApp},
    server::Server,
    webhook::Receiver,
};

const HOOKED: &str = "hooked";

fn app() -> TestApp {
    TestApp::new(HOOKED, "hooked-key", "hooked-secret")
}

/// A server whose `hooked` app sends every webhook kind to `receiver`; the queue retries
/// quickly and one job at a time, so deliveries keep their order.
fn server(receiver: &Receiver, app_extra: &str) -> Server {
    Server::builder()
        .config(&format!(
            r#"
[webhooks]
vacated_delay_ms = 300
max_attempts = 2

[queue.memory]
retry_base_delay_ms = 50
retry_max_delay_ms = 200
concurrency = 1

[[app_manager.array.apps]]
id = "{HOOKED}"
key = "hooked-key"
secret = "hooked-secret"
enable_client_messages = true
{app_extra}
[[app_manager.array.apps.webhooks]]
url = "{}"
headers = {{ "X-Custom" = "yes" }}
"#,
            receiver.url
        ))
        .start()
}

#[tokio::test]
async fn occupied_and_vacated_are_signed_with_the_app_secret() {
    let mut receiver = Receiver::start().await;
    let server = server(&receiver, "");
    let app = app();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client.subscribe(&app, "room").await;

    let hook = receiver.next().await;
    assert_eq!(hook.headers["x-pusher-key"], app.key);
    assert_eq!(hook.headers["x-pusher-signature"], signature::sign(&app.secret, &hook.body));
    assert_eq!(hook.headers["x-custom"], "yes");
    assert!(hook.json["time_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(hook.json["events"], json!([{ "name": "channel_occupied", "channel": "room" }]));

    client.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": "room" } })).await;
    assert_eq!(
        receiver.next_event().await,
        json!({ "name": "channel_vacated", "channel": "room" })
    );
}

#[tokio::test]
async fn members_and_client_events_are_reported() {
    let mut receiver = Receiver::start().await;
    let server = server(&receiver, "");
    let app = app();
    let mut ann = Client::connect(&server.ws_url(&app.key)).await;
    ann.join(&app, "presence-hooks", "ann", json!({})).await;
    assert_eq!(receiver.next_event().await["name"], "channel_occupied");
    assert_eq!(
        receiver.next_event().await,
        json!({ "name": "member_added", "channel": "presence-hooks", "user_id": "ann" })
    );
    // A second connection of the same user is not a new member.
    let mut ann_again = Client::connect(&server.ws_url(&app.key)).await;
    ann_again.join(&app, "presence-hooks", "ann", json!({})).await;

    ann.send(json!({ "event": "client-note", "channel": "presence-hooks", "data": { "x": 1 } }))
        .await;
    assert_eq!(
        receiver.next_event().await,
        json!({
            "name": "client_event", "channel": "presence-hooks", "event": "client-note",
            "data": "{\"x\":1}", "socket_id": ann.socket_id, "user_id": "ann"
        })
    );
    ann.close().await;
    ann_again
        .send(json!({ "event": "pusher:unsubscribe", "data": { "channel": "presence-hooks" } }))
        .await;
    assert_eq!(
        receiver.next_event().await,
        json!({ "name": "member_removed", "channel": "presence-hooks", "user_id": "ann" })
    );
    assert_eq!(receiver.next_event().await["name"], "channel_vacated");
}

#[tokio::test]
async fn cache_miss_and_subscription_count_are_reported() {
    let mut receiver = Receiver::start().await;
    let server = server(&receiver, "enable_subscription_count = true");
    let app = app();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client.subscribe(&app, "cache-quotes").await;
    client.expect("pusher:cache_miss").await;
    let mut names = Vec::new();
    for _ in 0..3 {
        let event = receiver.next_event().await;
        names.push(event["name"].as_str().unwrap().to_string());
        if event["name"] == "subscription_count" {
            assert_eq!(
                event,
                json!({ "name": "subscription_count", "channel": "cache-quotes", "subscription_count": 1 })
            );
        }
        if event["name"] == "cache_miss" {
            assert_eq!(event, json!({ "name": "cache_miss", "channel": "cache-quotes" }));
        }
    }
    names.sort();
    assert_eq!(names, ["cache_miss", "channel_occupied", "subscription_count"]);
}

#[tokio::test]
async fn a_failed_delivery_is_retried_and_a_hopeless_one_given_up() {
    let mut receiver = Receiver::start().await;
    let server = server(&receiver, "");
    let app = app();
    receiver.fail_next(1);
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client.subscribe(&app, "retry").await;
    let first = receiver.next().await;
    let second = receiver.next().await;
    assert_eq!(first.body, second.body, "the retry is the same webhook");
    assert_eq!(second.names(), ["channel_occupied"]);

    receiver.fail_always();
    client.subscribe(&app, "doomed").await;
    // max_attempts = 2: two attempts, then it is given up, logged and counted.
    assert_eq!(receiver.next().await.names(), ["channel_occupied"]);
    assert_eq!(receiver.next().await.names(), ["channel_occupied"]);
    server.wait_for_metric("sockhost_webhooks_failed_total", |n| n == 1.0).await;
    assert!(
        server.log().contains("A webhook failed its last attempt; giving up"),
        "{}",
        server.log()
    );
    receiver.expect_none_within(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_quick_reconnect_sends_neither_vacated_nor_occupied() {
    let mut receiver = Receiver::start().await;
    let server = server(&receiver, "");
    let app = app();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client.subscribe(&app, "flaky").await;
    assert_eq!(
        receiver.next_event().await,
        json!({ "name": "channel_occupied", "channel": "flaky" })
    );
    client.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": "flaky" } })).await;
    client.subscribe(&app, "flaky").await;

    // A second channel vacated after the first one's timer started: its webhook comes after
    // anything that timer could have sent (one job at a time, in order).
    client.subscribe(&app, "steady").await;
    assert_eq!(
        receiver.next_event().await,
        json!({ "name": "channel_occupied", "channel": "steady" })
    );
    client.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": "steady" } })).await;
    assert_eq!(
        receiver.next_event().await,
        json!({ "name": "channel_vacated", "channel": "steady" })
    );
}

#[tokio::test]
async fn a_batching_app_sends_its_events_together() {
    let mut receiver = Receiver::start().await;
    let server = server(&receiver, "webhook_batching = true");
    let app = app();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client.send(json!({ "event": "pusher:subscribe", "data": { "channel": "one" } })).await;
    client.send(json!({ "event": "pusher:subscribe", "data": { "channel": "two" } })).await;
    client.expect("pusher_internal:subscription_succeeded").await;
    client.expect("pusher_internal:subscription_succeeded").await;
    let hook = receiver.next().await;
    assert_eq!(hook.names(), ["channel_occupied", "channel_occupied"], "{}", hook.body);
    let api = Api::new(&server.http_url(), &app);
    assert_eq!(api.trigger(&["one"], "e", "d").await.0, 200);
}

#[tokio::test]
async fn event_types_filter_what_an_endpoint_gets() {
    let mut receiver = Receiver::start().await;
    let server = Server::builder()
        .config(&format!(
            r#"
[[app_manager.array.apps]]
id = "{HOOKED}"
key = "hooked-key"
secret = "hooked-secret"
[[app_manager.array.apps.webhooks]]
url = "{}"
event_types = ["channel_vacated"]
"#,
            receiver.url
        ))
        .config("[webhooks]\nvacated_delay_ms = 100")
        .start();
    let app = app();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client.subscribe(&app, "filtered").await;
    client.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": "filtered" } })).await;
    assert_eq!(
        receiver.next_event().await,
        json!({ "name": "channel_vacated", "channel": "filtered" })
    );
}
