//! Tag filtering on one node: events published with `tags` reach each subscriber only where
//! its filter (`data.filter` of the subscribe) passes them; a bad filter is refused in-band
//! with 4000 and the connection stays; bad tags are a 422; with filtering off, filters are
//! checked but everyone gets everything. The same across nodes runs in `cluster_scenarios!`.

use serde_json::{Value, json};
use sockhost_tests::{
    pusher::{Api, Client, TestApp},
    server::Server,
};

async fn post(api: &Api, name: &str, tags: Value) {
    let mut body = json!({ "name": name, "channel": "ticker", "data": "{}" });
    if !tags.is_null() {
        body["tags"] = tags;
    }
    let (status, answer) = api.post("/events", &body).await;
    assert_eq!(status, 200, "{answer}");
}

async fn names(client: &mut Client, count: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..count {
        let event = client.expect_any().await;
        assert!(event.get("tags").is_none(), "a delivered frame carries no tags: {event}");
        names.push(event["event"].as_str().unwrap().to_string());
    }
    names
}

async fn filtered(server: &Server, app: &TestApp, filter: Value) -> Client {
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    let answer = client.subscribe_with(json!({ "channel": "ticker", "filter": filter })).await;
    assert_eq!(answer["event"], "pusher_internal:subscription_succeeded", "{answer}");
    client
}

#[tokio::test]
async fn each_subscriber_gets_what_its_filter_passes() {
    let server = Server::builder().env("TAG_FILTERING_ENABLED", "true").start();
    let app = TestApp::main();
    let mut btc = filtered(&server, &app, json!({ "key": "sym", "cmp": "eq", "val": "BTC" })).await;
    let mut dear = filtered(
        &server,
        &app,
        json!({ "op": "or", "nodes": [
            { "key": "px", "cmp": "gt", "val": 100 },
            { "key": "sym", "cmp": "nex" }
        ] }),
    )
    .await;
    let mut not_eth = filtered(
        &server,
        &app,
        json!({ "op": "not", "nodes": [{ "key": "sym", "cmp": "in", "vals": ["ETH", "SOL"] }] }),
    )
    .await;
    let mut everything = Client::connect(&server.ws_url(&app.key)).await;
    everything.subscribe(&app, "ticker").await;

    let api = Api::new(&server.http_url(), &app);
    post(&api, "btc-cheap", json!({ "sym": "BTC", "px": "50" })).await;
    post(&api, "eth-dear", json!({ "sym": "ETH", "px": "150" })).await;
    post(&api, "untagged", Value::Null).await;
    post(&api, "end", json!({ "sym": "BTC", "px": "1000" })).await;

    assert_eq!(names(&mut btc, 2).await, ["btc-cheap", "end"]);
    assert_eq!(names(&mut dear, 3).await, ["eth-dear", "untagged", "end"]);
    assert_eq!(names(&mut not_eth, 3).await, ["btc-cheap", "untagged", "end"]);
    assert_eq!(names(&mut everything, 4).await, ["btc-cheap", "eth-dear", "untagged", "end"]);
}

#[tokio::test]
async fn a_bad_filter_is_refused_and_the_connection_stays() {
    let server = Server::builder().env("TAG_FILTERING_ENABLED", "true").start();
    let app = TestApp::main();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    let bad = json!({ "op": "not", "nodes": [] });
    let answer = client.subscribe_with(json!({ "channel": "ticker", "filter": bad })).await;
    assert_eq!(answer["event"], "pusher:error", "{answer}");
    assert_eq!(answer["data"]["code"], 4000, "{answer}");
    let message = answer["data"]["message"].as_str().unwrap();
    assert!(message.contains("exactly one child"), "{message}");
    // Still open, and not subscribed: an event on the channel does not come.
    client.send(json!({ "event": "pusher:ping", "data": {} })).await;
    assert_eq!(client.expect_any().await["event"], "pusher:pong");
    client.subscribe(&app, "other").await;
    let refused =
        server.labelled_metric("sockhost_subscriptions_refused_total{reason=\"filter\"}").await;
    assert_eq!(refused, 1.0);
}

#[tokio::test]
async fn tags_must_be_strings() {
    let server = Server::builder().env("TAG_FILTERING_ENABLED", "true").start();
    let api = Api::new(&server.http_url(), &TestApp::main());
    let body = json!({ "name": "e", "channel": "c", "data": "{}", "tags": { "px": 100 } });
    let (status, answer) = api.post("/events", &body).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"].as_str().unwrap_or_default().contains("tags.px"), "{answer}");
    let batch = json!({ "batch": [{ "name": "e", "channel": "c", "data": "{}", "tags": ["x"] }] });
    assert_eq!(api.post("/batch_events", &batch).await.0, 422);
}

#[tokio::test]
async fn with_filtering_off_filters_are_checked_but_not_applied() {
    let server = Server::start();
    let app = TestApp::main();
    let mut btc = filtered(&server, &app, json!({ "key": "sym", "cmp": "eq", "val": "BTC" })).await;
    let api = Api::new(&server.http_url(), &app);
    post(&api, "eth", json!({ "sym": "ETH" })).await;
    assert_eq!(names(&mut btc, 1).await, ["eth"]);
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    let answer = client
        .subscribe_with(
            json!({ "channel": "ticker", "filter": { "key": "a", "cmp": "like", "val": "x" } }),
        )
        .await;
    assert_eq!(answer["data"]["code"], 4000, "{answer}");
}
