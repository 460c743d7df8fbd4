//! Channel history on one node, in Sockudo 5.2.0's shapes: the HTTP API
//! (`GET .../channels/{channel}/history` with directions, limits, serial bounds and cursor
//! paging; `.../history/state`; signed like every read; 422 without history) and `rewind` in
//! a subscription.

use serde_json::{Value, json};
use sockhost_tests::{
    pusher::{Api, Client, TestApp},
    server::Server,
};

fn with_history() -> Server {
    Server::builder()
        .env("CONNECTION_RECOVERY_ENABLED", "true")
        .env("HISTORY_ENABLED", "true")
        .env("HISTORY_BACKEND", "memory")
        .start()
}

fn serials(page: &Value) -> Vec<u64> {
    page["items"].as_array().unwrap().iter().map(|i| i["serial"].as_u64().unwrap()).collect()
}

async fn history(api: &Api, params: &[(&str, &str)]) -> Value {
    let (status, page) = api.get("/channels/news/history", params).await;
    assert_eq!(status, 200, "{page}");
    page
}

#[tokio::test]
async fn pages_of_a_channels_history_in_both_directions() {
    let server = with_history();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    for n in 1..=5 {
        assert_eq!(api.trigger(&["news"], "tick", &format!("e{n}")).await.0, 200);
    }
    let newest = history(&api, &[]).await;
    assert_eq!(serials(&newest), [5, 4, 3, 2, 1]);
    let first = &newest["items"][4];
    assert_eq!(first["event_name"], "tick");
    assert_eq!(first["operation_kind"], "append");
    assert_eq!(first["message"]["data"], "e1");
    assert_eq!(first["message"]["serial"], 1);
    assert_eq!(first["message"]["message_id"], first["message_id"]);
    assert!(first["published_at_ms"].as_u64().unwrap() > 0);
    assert_eq!((newest["has_more"].as_bool(), &newest["next_cursor"]), (Some(false), &Value::Null));
    assert_eq!(newest["direction"], "newest_first");
    assert_eq!(newest["continuity"]["complete"], true);
    assert_eq!(newest["continuity"]["oldest_available_serial"], 1);
    assert_eq!(newest["stream_state"]["durable_state"], "healthy");

    // Oldest first, two at a time, following the cursor.
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut params = vec![("direction", "oldest_first"), ("limit", "2")];
        if let Some(c) = &cursor {
            params.push(("cursor", c.as_str()));
        }
        let page = history(&api, &params).await;
        got.extend(serials(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(got, [1, 2, 3, 4, 5]);

    // Newest first within serial bounds.
    let bounded =
        history(&api, &[("start_serial", "2"), ("end_serial", "4"), ("limit", "2")]).await;
    assert_eq!(serials(&bounded), [4, 3]);
    let cursor = bounded["next_cursor"].as_str().unwrap().to_string();
    let rest = history(
        &api,
        &[("start_serial", "2"), ("end_serial", "4"), ("limit", "2"), ("cursor", &cursor)],
    )
    .await;
    assert_eq!(serials(&rest), [2]);

    // Refusals: each a JSON 400.
    for params in [
        vec![("direction", "sideways")],
        vec![("limit", "0")],
        vec![("cursor", "not a cursor")],
        vec![("direction", "oldest_first"), ("cursor", cursor.as_str())],
        vec![("start_serial", "4"), ("end_serial", "2")],
    ] {
        let (status, body) = api.get("/channels/news/history", &params).await;
        assert_eq!(status, 400, "{params:?}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }

    let (status, state) = api.get("/channels/news/history/state", &[]).await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["stream"]["next_serial"], 6);
    assert_eq!(state["stream"]["stream_id"], newest["items"][0]["stream_id"]);
    assert_eq!(state["stream"]["retained"]["retained_messages"], 5);
}

#[tokio::test]
async fn without_history_the_api_says_so() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), &TestApp::main());
    let (status, body) = api.get("/channels/news/history", &[]).await;
    assert_eq!(status, 422, "{body}");
    // Signed like every read.
    let unsigned = reqwest::get(format!("{}/apps/app-1/channels/news/history", server.http_url()))
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
}

/// A client of `server` (protocol `protocol`) that sent a subscribe to `news` with `rewind`.
async fn rewinding(server: &Server, protocol: u8, rewind: Value) -> Client {
    let app = TestApp::main();
    let url = format!("ws://127.0.0.1:{}/app/{}?protocol={protocol}", server.port, app.key);
    let mut client = Client::connect_raw(&url).await;
    client.expect_any().await;
    let subscribe =
        json!({ "event": "pusher:subscribe", "data": { "channel": "news", "rewind": rewind } });
    client.send(subscribe).await;
    client
}

#[tokio::test]
async fn a_subscription_rewinds_the_last_events_then_goes_live() {
    let server = with_history();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    for n in 1..=5 {
        assert_eq!(api.trigger(&["news"], "tick", &format!("e{n}")).await.0, 200);
    }
    for (rewind, expected) in [
        (json!(3), vec![3, 4, 5]),
        (json!({ "count": 10 }), vec![1, 2, 3, 4, 5]),
        (json!({ "seconds": 600 }), vec![1, 2, 3, 4, 5]),
    ] {
        let mut client = rewinding(&server, 2, rewind.clone()).await;
        let ack = client.expect_any().await;
        assert_eq!(ack["event"], "sockudo_internal:subscription_succeeded", "{ack}");
        assert_eq!(ack["serial"], 5);
        let mut got = Vec::new();
        let complete = loop {
            let frame = client.expect_any().await;
            if frame["event"] == "sockudo:rewind_complete" {
                break frame;
            }
            assert_eq!(frame["data"], format!("e{}", frame["serial"]), "{frame}");
            got.push(frame["serial"].as_u64().unwrap());
        };
        assert_eq!(got, expected, "rewind {rewind}");
        assert_eq!(complete["channel"], "news");
        assert_eq!(complete["data"]["historical_count"], expected.len(), "{complete}");
        assert_eq!(complete["data"]["complete"], true, "{complete}");
    }
    // Then live.
    let mut client = rewinding(&server, 2, json!(1)).await;
    client.expect("sockudo_internal:subscription_succeeded").await;
    assert_eq!(client.expect("tick").await["serial"], 5);
    client.expect("sockudo:rewind_complete").await;
    assert_eq!(api.trigger(&["news"], "tick", "e6").await.0, 200);
    assert_eq!(client.expect("tick").await["serial"], 6);
}

#[tokio::test]
async fn a_rewind_that_cannot_be_served_is_refused_as_sockudo_refuses_it() {
    let server = with_history();
    let mut bad = rewinding(&server, 2, json!("30s")).await;
    let error = bad.expect("sockudo:error").await;
    assert_eq!(error["data"]["code"], 4000, "{error}");
    let mut v7 = rewinding(&server, 7, json!(3)).await;
    let error = v7.expect("pusher:error").await;
    assert_eq!(error["data"]["code"], 4300, "{error}");
    assert!(error["data"]["message"].as_str().unwrap().contains("protocol V2"), "{error}");
    // Without history (recovery from memory only).
    let memory_only = Server::builder().env("CONNECTION_RECOVERY_ENABLED", "true").start();
    let mut refused = rewinding(&memory_only, 2, json!(3)).await;
    let error = refused.expect("sockudo:error").await;
    assert_eq!(error["data"]["code"], 4300, "{error}");
    // The connection goes on: a subscribe without rewind is made.
    refused.send(json!({ "event": "sockudo:subscribe", "data": { "channel": "news" } })).await;
    refused.expect("sockudo_internal:subscription_succeeded").await;
}
