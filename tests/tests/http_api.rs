//! The HTTP API: triggers, batches, channel queries, authentication and every error status.

use serde_json::json;
use sockhost_tests::{
    pusher::{Api, Client, TestApp},
    server::Server,
};

#[tokio::test]
async fn trigger_delivers_to_every_named_channel_except_the_excluded_socket() {
    let server = Server::start();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let mut a = Client::connect(&server.ws_url(&app.key)).await;
    let mut b = Client::connect(&server.ws_url(&app.key)).await;
    a.subscribe(&app, "one").await;
    b.subscribe(&app, "one").await;
    b.subscribe(&app, "two").await;

    let (status, body) = api.trigger(&["one", "two"], "update", "payload").await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(a.expect("update").await["channel"], "one");
    let mut channels = vec![
        b.expect("update").await["channel"].clone(),
        b.expect("update").await["channel"].clone(),
    ];
    channels.sort_by_key(ToString::to_string);
    assert_eq!(channels, vec![json!("one"), json!("two")]);

    // socket_id excludes that connection.
    let body = json!({ "name": "echo", "data": "x", "channel": "one", "socket_id": a.socket_id });
    assert_eq!(api.post("/events", &body).await.0, 200);
    assert_eq!(b.expect("echo").await["channel"], "one");
    api.trigger(&["one"], "marker", "m").await;
    assert_eq!(a.expect("marker").await["event"], "marker", "the excluded socket got the event");

    // Non-string data is sent as its JSON text.
    api.post("/events", &json!({ "name": "obj", "data": { "k": [1, 2] }, "channel": "one" })).await;
    assert_eq!(a.expect("obj").await["data"], r#"{"k":[1,2]}"#);
}

#[tokio::test]
async fn trigger_with_info_reports_the_channels() {
    let server = Server::start();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let mut a = Client::connect(&server.ws_url(&app.key)).await;
    a.join(&app, "presence-x", "u1", json!({})).await;
    a.subscribe(&app, "plain").await;
    let body = json!({
        "name": "e", "data": "d", "channels": ["presence-x", "plain", "empty"],
        "info": "user_count,subscription_count"
    });
    let (status, body) = api.post("/events", &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({ "channels": {
            "presence-x": { "user_count": 1, "subscription_count": 1 },
            "plain": { "subscription_count": 1 },
            "empty": { "subscription_count": 0 },
        }})
    );
}

#[tokio::test]
async fn batch_events_are_delivered_in_order_and_limited() {
    let server = Server::start();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let mut a = Client::connect(&server.ws_url(&app.key)).await;
    a.subscribe(&app, "batch").await;
    let batch: Vec<_> = (0..10)
        .map(|i| json!({ "name": "n", "channel": "batch", "data": i.to_string() }))
        .collect();
    let (status, body) = api.post("/batch_events", &json!({ "batch": batch })).await;
    assert_eq!((status, body), (200, json!({})));
    for i in 0..10 {
        assert_eq!(a.expect("n").await["data"], i.to_string());
    }
    let batch: Vec<_> =
        (0..11).map(|_| json!({ "name": "n", "channel": "batch", "data": "x" })).collect();
    let (status, body) = api.post("/batch_events", &json!({ "batch": batch })).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("at most 10"));

    let with_info = json!({ "batch": [
        { "name": "n", "channel": "batch", "data": "x", "info": "subscription_count" },
        { "name": "n", "channel": "other", "data": "y" },
    ]});
    let (status, body) = api.post("/batch_events", &with_info).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "batch": [{ "subscription_count": 1 }, {}] }));
}

#[tokio::test]
async fn channel_queries_report_occupied_channels_and_counts() {
    let server = Server::start();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let mut a = Client::connect(&server.ws_url(&app.key)).await;
    let mut b = Client::connect(&server.ws_url(&app.key)).await;
    a.subscribe(&app, "room-1").await;
    b.subscribe(&app, "room-1").await;
    a.subscribe(&app, "hall").await;
    a.join(&app, "presence-lobby", "u1", json!({})).await;
    b.join(&app, "presence-lobby", "u1", json!({})).await;

    let (status, body) = api.get("/channels", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "channels": { "room-1": {}, "hall": {}, "presence-lobby": {} } }));
    let (_, body) = api.get("/channels", &[("filter_by_prefix", "room-")]).await;
    assert_eq!(body, json!({ "channels": { "room-1": {} } }));
    let (_, body) =
        api.get("/channels", &[("filter_by_prefix", "presence-"), ("info", "user_count")]).await;
    assert_eq!(body, json!({ "channels": { "presence-lobby": { "user_count": 1 } } }));
    let (status, body) = api.get("/channels", &[("info", "user_count")]).await;
    assert_eq!(status, 400, "{body}");

    let (_, body) = api.get("/channels/room-1", &[("info", "subscription_count")]).await;
    assert_eq!(body, json!({ "occupied": true, "subscription_count": 2 }));
    let (_, body) = api.get("/channels/nobody-here", &[]).await;
    assert_eq!(body, json!({ "occupied": false }));
    let (status, _) = api.get("/channels/room-1", &[("info", "user_count")]).await;
    assert_eq!(status, 400);
    let (status, _) = api.get("/channels/room-1/users", &[]).await;
    assert_eq!(status, 400);
    let (status, _) = api.get("/channels/bad%20name", &[]).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn requests_without_a_valid_signature_are_refused_with_401() {
    let server = Server::start();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let path = "/apps/app-1/events";
    let body = json!({ "name": "e", "data": "d", "channel": "c" }).to_string().into_bytes();

    let good = api.signed_query("POST", path, &[], &body, Api::now());
    assert_eq!(api.raw("POST", &format!("{path}?{good}"), body.clone()).await.0, 200);

    let stale = api.signed_query("POST", path, &[], &body, Api::now() - 601);
    let (status, answer) = api.raw("POST", &format!("{path}?{stale}"), body.clone()).await;
    assert_eq!(status, 401);
    assert!(answer["error"].as_str().unwrap().contains("auth_timestamp"), "{answer}");

    let (status, _) =
        api.raw("POST", &format!("{path}?{good}"), b"{\"name\":\"x\"}".to_vec()).await;
    assert_eq!(status, 401, "a body that does not match body_md5 was accepted");

    let wrong_secret = Api::new(&server.http_url(), &TestApp::new("app-1", "key-1", "nope"));
    let forged = wrong_secret.signed_query("POST", path, &[], &body, Api::now());
    assert_eq!(api.raw("POST", &format!("{path}?{forged}"), body.clone()).await.0, 401);

    let other_key =
        Api::new(&server.http_url(), &TestApp::new("app-1", "quiet-key", "quiet-secret"));
    let query = other_key.signed_query("POST", path, &[], &body, Api::now());
    assert_eq!(api.raw("POST", &format!("{path}?{query}"), body.clone()).await.0, 401);

    let (status, answer) = api.raw("POST", path, body.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(answer["code"], 401);
    assert!(answer["error"].is_string());

    // A signed query for another path does not open this one.
    let elsewhere = api.signed_query("POST", "/apps/app-1/batch_events", &[], &body, Api::now());
    assert_eq!(api.raw("POST", &format!("{path}?{elsewhere}"), body).await.0, 401);
}

#[tokio::test]
async fn client_mistakes_get_4xx_with_a_json_message() {
    let server = Server::start();
    let app = TestApp::limited();
    let api = Api::new(&server.http_url(), &app);
    let cases = [
        (json!({ "data": "d", "channel": "c" }), 400, "not a valid event"),
        (json!({ "name": "e", "data": "d" }), 400, "Missing channel"),
        (json!({ "name": "e", "data": "d", "channels": ["a", "b", "c"] }), 400, "limit is 2"),
        (json!({ "name": "e", "data": "d", "channel": "bad name" }), 400, "contains ' '"),
        (json!({ "name": "x".repeat(21), "data": "d", "channel": "c" }), 400, "longer than 20"),
        (json!({ "name": "e", "data": "x".repeat(1025), "channel": "c" }), 413, "limit is 1024"),
        (json!({ "name": "e", "data": "d", "channel": "c", "socket_id": "abc" }), 400, "socket_id"),
        (json!({ "name": "e", "data": "d", "channel": "c", "info": "colour" }), 400, "info"),
        (json!({ "name": "e", "data": "d", "channel": "c", "extra": 1 }), 400, "unknown field"),
    ];
    for (body, status, words) in cases {
        let (got, answer) = api.post("/events", &body).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert_eq!(answer["code"], status);
        assert!(answer["error"].as_str().unwrap().contains(words), "{body} -> {answer}");
    }
    let raw = b"{not json".to_vec();
    let path = "/apps/limited/events";
    let query = api.signed_query("POST", path, &[], &raw, Api::now());
    let (status, answer) = api.raw("POST", &format!("{path}?{query}"), raw).await;
    assert_eq!(status, 400, "{answer}");

    let unknown = Api::new(&server.http_url(), &TestApp::new("no-such-app", "k", "s"));
    let (status, answer) = unknown.trigger(&["c"], "e", "d").await;
    assert_eq!(status, 404, "{answer}");
    let disabled =
        Api::new(&server.http_url(), &TestApp::new("disabled", "disabled-key", "disabled-secret"));
    assert_eq!(disabled.trigger(&["c"], "e", "d").await.0, 403);
    let (status, answer) = api.raw("GET", "/nothing/here", Vec::new()).await;
    assert_eq!((status, answer["code"].clone()), (404, json!(404)));
}

#[tokio::test]
async fn a_body_over_the_request_limit_gets_413() {
    let server = Server::builder().config("[http_api]\nrequest_limit_in_mb = 1").start();
    let api = Api::new(&server.http_url(), &TestApp::main());
    let body = json!({ "name": "e", "channel": "c", "data": "x".repeat(2 * 1024 * 1024) });
    let (status, answer) = api.post("/events", &body).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["code"], 413);
}

#[tokio::test]
async fn health_and_metrics_answer() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), &TestApp::main());
    assert_eq!(api.raw("GET", "/up", Vec::new()).await, (200, json!({ "ok": true })));
    assert_eq!(api.raw("GET", "/up/app-1", Vec::new()).await.0, 200);
    assert_eq!(api.raw("GET", "/up/no-such-app", Vec::new()).await.0, 404);
    assert_eq!(api.raw("GET", "/up/disabled", Vec::new()).await.0, 503);

    let app = TestApp::main();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;
    client.subscribe(&app, "metered").await;
    api.trigger(&["metered"], "e", "d").await;
    client.expect("e").await;
    let metrics = server.metrics().await;
    for line in [
        "sockhost_connected 1",
        "sockhost_new_connections_total 1",
        "sockhost_subscriptions 1",
        "sockhost_events_published_total 1",
        "sockhost_http_calls_received_total{status=\"200\"}",
        "sockhost_ws_messages_received_total 1",
        "sockhost_socket_transmitted_bytes_total",
    ] {
        assert!(metrics.contains(line), "metrics lack {line:?}:\n{metrics}");
    }
}
