//! Tag filtering on one node: events published with `tags` reach each subscriber only where
//! its filter (`data.filter` of the subscribe) passes them; a bad filter is refused in-band
//! with 4000 and the connection stays; bad tags are a 422; with filtering off, filters are
//! checked but everyone gets everything. The same across nodes runs in `cluster_scenarios!`.
//!
//! Filters cost: a filter over its size bound, or past its connection's filter budget, is
//! refused and counted; the largest filter allowed on every subscriber of a channel keeps the
//! publish rate near the plain one (equal filters are evaluated once per event), and on every
//! channel of many sockets it stays small in memory (equal filters are held once).

use std::time::Instant;

use futures_util::future::join_all;
use serde_json::{Value, json};
use sockhost::protocol::filter::{MAX_CONNECTION_FILTER_BYTES, MAX_FILTER_BYTES, NODE_COST};
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

/// The largest filter in `ct` leaves of `len` bytes that the size bound lets through (with
/// room left for a `not` over it), its values made distinct by `seed`: `or` over as many
/// leaves as fit. An event whose tag `k` is [`passing`] passes it.
fn maximal(seed: usize, len: usize) -> Value {
    let per_leaf = NODE_COST + 1 + len;
    let leaves = (MAX_FILTER_BYTES - 2 * NODE_COST) / per_leaf;
    let nodes: Vec<Value> = (0..leaves)
        .map(|i| {
            let val = format!("{seed}-{i}-{}", "x".repeat(len));
            json!({ "key": "k", "cmp": "ct", "val": &val[..len] })
        })
        .collect();
    json!({ "op": "or", "nodes": nodes })
}

/// A tag value the [`maximal`] filter of `seed` and `len` passes (on one leaf).
fn passing(seed: usize, len: usize) -> String {
    let leaf = maximal(seed, len);
    let last = leaf["nodes"].as_array().unwrap().last().unwrap();
    format!("<{}>", last["val"].as_str().unwrap())
}

fn succeeded(answer: &Value) -> bool {
    answer["event"] == "pusher_internal:subscription_succeeded"
}

async fn refused_filter(client: &mut Client, channel: &str, filter: Value) -> String {
    let answer = client.subscribe_with(json!({ "channel": channel, "filter": filter })).await;
    assert_eq!(answer["event"], "pusher:error", "{answer}");
    assert_eq!(answer["data"]["code"], 4000, "{answer}");
    answer["data"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn oversized_filters_and_a_connections_filter_budget_are_refused_and_counted() {
    let server = Server::builder().env("TAG_FILTERING_ENABLED", "true").start();
    let app = TestApp::main();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    // The audit's filter in small: few nodes (well under the node bound), long values.
    let long: Vec<Value> =
        (0..20).map(|i| json!({ "key": "k", "cmp": "ct", "val": format!("{i:0470}") })).collect();
    let message = refused_filter(&mut client, "big", json!({ "op": "or", "nodes": long })).await;
    assert!(message.contains(&format!("{MAX_FILTER_BYTES} bytes")), "{message}");

    // Distinct maximal filters until the connection's budget is spent.
    let fit = MAX_CONNECTION_FILTER_BYTES / MAX_FILTER_BYTES;
    for seed in 0..fit {
        let filter = maximal(seed, 100);
        let answer =
            client.subscribe_with(json!({ "channel": format!("c{seed}"), "filter": filter })).await;
        assert!(succeeded(&answer), "filter {seed}: {answer}");
    }
    let message = refused_filter(&mut client, "over", maximal(fit, 100)).await;
    assert!(message.contains("tag filters would be"), "{message}");
    // A filter the connection holds already counts once: it goes on more channels.
    for channel in ["again-1", "again-2"] {
        let answer =
            client.subscribe_with(json!({ "channel": channel, "filter": maximal(0, 100) })).await;
        assert!(succeeded(&answer), "{answer}");
    }
    // A channel's new filter takes the place of its old one.
    let answer =
        client.subscribe_with(json!({ "channel": "c1", "filter": maximal(fit, 100) })).await;
    assert!(succeeded(&answer), "{answer}");
    // And the connection is still open and subscribed where it was.
    client.send(json!({ "event": "pusher:ping", "data": {} })).await;
    assert_eq!(client.expect_any().await["event"], "pusher:pong");
    let refused =
        server.labelled_metric("sockhost_subscriptions_refused_total{reason=\"filter\"}").await;
    assert_eq!(refused, 2.0);
}

/// Publish `events` tagged events on `channel`, alternately passing and failing
/// `maximal(0, 8)`; the publishes per second.
async fn publish(api: &Api, channel: &str, events: usize) -> f64 {
    let started = Instant::now();
    for i in 0..events {
        let k = if i % 2 == 0 { passing(0, 8) } else { "nothing".to_string() };
        let body = json!({ "name": format!("e{i}"), "channel": channel, "data": "{}",
            "tags": { "k": k } });
        let (status, answer) = api.post("/events", &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    events as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test]
async fn the_largest_filter_on_every_subscriber_is_evaluated_once_per_event() {
    const SUBSCRIBERS: usize = 100;
    const EVENTS: usize = 30;
    let server = Server::builder().env("TAG_FILTERING_ENABLED", "true").start();
    let app = TestApp::main();
    let url = server.ws_url(&app.key);
    let heavy = maximal(0, 8);
    let complement = json!({ "op": "not", "nodes": [heavy.clone()] });
    let mut plain = join_all((0..SUBSCRIBERS).map(|_| Client::connect(&url))).await;
    for client in &mut plain {
        client.subscribe(&app, "plain").await;
    }
    // Half the filtered subscribers with the heaviest filter allowed, half with its opposite:
    // two distinct filters on the channel, each evaluated once per event.
    let mut filtered = join_all((0..SUBSCRIBERS).map(|_| Client::connect(&url))).await;
    for (i, client) in filtered.iter_mut().enumerate() {
        let filter = if i % 2 == 0 { heavy.clone() } else { complement.clone() };
        let answer = client.subscribe_with(json!({ "channel": "ticker", "filter": filter })).await;
        assert!(succeeded(&answer), "{answer}");
    }
    let api = Api::new(&server.http_url(), &app);
    let plain_rate = publish(&api, "plain", EVENTS).await;
    let filtered_rate = publish(&api, "ticker", EVENTS).await;
    println!(
        "publishes/s with {SUBSCRIBERS} subscribers: plain {plain_rate:.0}, with maximal \
         filters {filtered_rate:.0} (ratio {:.2})",
        filtered_rate / plain_rate
    );
    let every: Vec<String> = (0..EVENTS).map(|i| format!("e{i}")).collect();
    let even: Vec<String> = every.iter().step_by(2).cloned().collect();
    let odd: Vec<String> = every.iter().skip(1).step_by(2).cloned().collect();
    for client in &mut plain {
        assert_eq!(names(client, EVENTS).await, every);
    }
    // Every subscriber gets exactly what its filter passes, in order.
    for (i, client) in filtered.iter_mut().enumerate() {
        let expected = if i % 2 == 0 { &even } else { &odd };
        assert_eq!(&names(client, EVENTS / 2).await, expected, "subscriber {i}");
    }
    // One more for each half (an untagged event is judged as one with no tags): the next
    // thing each subscriber gets, so nothing else came before it.
    let tags = json!({ "k": passing(0, 8) });
    let end = json!({ "name": "end-even", "channel": "ticker", "data": "{}", "tags": tags });
    assert_eq!(api.post("/events", &end).await.0, 200);
    let end = json!({ "name": "end-odd", "channel": "ticker", "data": "{}" });
    assert_eq!(api.post("/events", &end).await.0, 200);
    for (i, client) in filtered.iter_mut().enumerate() {
        let expected = if i % 2 == 0 { "end-even" } else { "end-odd" };
        assert_eq!(names(client, 1).await, [expected], "subscriber {i}");
    }
}

#[tokio::test]
async fn maximal_filters_on_every_channel_of_many_sockets_stay_small() {
    const SOCKETS: usize = 40;
    const CHANNELS: usize = 200;
    /// The target for 40 sockets on 200 channels each.
    const MAX_GROWTH: u64 = 20 * 1024 * 1024;
    let server = Server::builder().env("TAG_FILTERING_ENABLED", "true").start();
    let app = TestApp::main();
    let url = server.ws_url(&app.key);
    let mut clients = join_all((0..SOCKETS).map(|_| Client::connect(&url))).await;
    let before = server.rss_bytes();
    // Each socket its own maximal filter (distinct from every other socket's), on every
    // channel it may have.
    join_all(clients.iter_mut().enumerate().map(|(seed, client)| async move {
        let filter = maximal(seed, 100);
        for c in 0..CHANNELS {
            let data = json!({ "channel": format!("m-{c}"), "filter": filter });
            client.send(json!({ "event": "pusher:subscribe", "data": data })).await;
        }
        for _ in 0..CHANNELS {
            let answer = client.expect_any().await;
            assert!(succeeded(&answer), "{answer}");
        }
    }))
    .await;
    let after = server.rss_bytes();
    let growth = after.saturating_sub(before);
    println!(
        "RSS {} MB -> {} MB: {:.1} MB for {SOCKETS} sockets x {CHANNELS} channels with \
         maximal filters",
        before / 1_000_000,
        after / 1_000_000,
        growth as f64 / 1_048_576.0
    );
    assert!(growth < MAX_GROWTH, "RSS grew by {growth} bytes");
    // The filters work: an event passing socket 3's filter reaches only socket 3 (then one
    // for each socket, which is the next thing it gets, so nothing else came before it).
    let api = Api::new(&server.http_url(), &app);
    let post = async |name: String, seed: usize| {
        let body = json!({ "name": name, "channel": "m-7", "data": "{}",
            "tags": { "k": passing(seed, 100) } });
        assert_eq!(api.post("/events", &body).await.0, 200);
    };
    post("for-3".into(), 3).await;
    for seed in 0..SOCKETS {
        post(format!("mine-{seed}"), seed).await;
    }
    for (seed, client) in clients.iter_mut().enumerate() {
        let mine = format!("mine-{seed}");
        let expected = if seed == 3 { vec!["for-3".to_string(), mine] } else { vec![mine] };
        assert_eq!(names(client, expected.len()).await, expected, "socket {seed}");
    }
}
