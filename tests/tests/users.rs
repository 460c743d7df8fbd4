//! Users: sign-in, required sign-in, server-to-user events, terminating a user's connections,
//! and watchlists.

use serde_json::{Value, json};
use sockhost_tests::{
    pusher::{Api, Client, TestApp},
    server::Server,
};

async fn sign_in(client: &mut Client, app: &TestApp, user_data: &Value) -> Value {
    let user_data = user_data.to_string();
    let auth = app.user_auth(&client.socket_id, &user_data);
    client
        .send(json!({ "event": "pusher:signin", "data": { "auth": auth, "user_data": user_data } }))
        .await;
    client.expect("pusher:signin_success").await
}

#[tokio::test]
async fn signin_succeeds_with_the_right_signature_and_a_bad_one_leaves_the_connection_usable() {
    let server = Server::start();
    let app = TestApp::main();
    let mut client = Client::connect(&server.ws_url(&app.key)).await;

    let forged =
        TestApp::new("app-1", "key-1", "wrong").user_auth(&client.socket_id, r#"{"id":"u1"}"#);
    client.send(json!({ "event": "pusher:signin", "data": { "auth": forged, "user_data": r#"{"id":"u1"}"# } })).await;
    client.expect_error(4009).await;
    let no_id = app.user_auth(&client.socket_id, r#"{"name":"x"}"#);
    client.send(json!({ "event": "pusher:signin", "data": { "auth": no_id, "user_data": r#"{"name":"x"}"# } })).await;
    client.expect_error(4009).await;

    let success =
        sign_in(&mut client, &app, &json!({ "id": "u1", "user_info": { "name": "U" } })).await;
    let data: Value = serde_json::from_str(success["data"].as_str().unwrap()).unwrap();
    let echoed: Value = serde_json::from_str(data["user_data"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["id"], "u1");
    client.send(json!({ "event": "pusher:ping" })).await;
    client.expect("pusher:pong").await;
}

#[tokio::test]
async fn an_app_that_requires_signin_closes_silent_connections_with_4009() {
    let server = Server::builder()
        .config(
            "user_authentication_timeout = 1\n[[app_manager.array.apps]]\nid = \"strict\"\nkey = \"strict-key\"\n\
             secret = \"strict-secret\"\nenable_user_authentication = true\n",
        )
        .start();
    let app = TestApp::new("strict", "strict-key", "strict-secret");
    let mut silent = Client::connect(&server.ws_url(&app.key)).await;
    let mut polite = Client::connect(&server.ws_url(&app.key)).await;
    sign_in(&mut polite, &app, &json!({ "id": "p" })).await;
    silent.expect_error(4009).await;
    assert_eq!(silent.expect_close().await.0, 4009);
    // The signed-in connection outlives the deadline: it still answers after the other closed.
    polite.send(json!({ "event": "pusher:ping" })).await;
    polite.expect("pusher:pong").await;
}

#[tokio::test]
async fn server_to_user_events_reach_every_connection_of_the_user_and_terminate_closes_them() {
    let server = Server::start();
    let app = TestApp::main();
    let api = Api::new(&server.http_url(), &app);
    let mut first = Client::connect(&server.ws_url(&app.key)).await;
    let mut second = Client::connect(&server.ws_url(&app.key)).await;
    let mut other = Client::connect(&server.ws_url(&app.key)).await;
    sign_in(&mut first, &app, &json!({ "id": "alice" })).await;
    sign_in(&mut second, &app, &json!({ "id": "alice" })).await;
    sign_in(&mut other, &app, &json!({ "id": "bob" })).await;

    let (status, _) = api.trigger(&["#server-to-user-alice"], "notice", "hello alice").await;
    assert_eq!(status, 200);
    for client in [&mut first, &mut second] {
        let event = client.expect("notice").await;
        assert_eq!(event["channel"], "#server-to-user-alice");
        assert_eq!(event["data"], "hello alice");
    }
    other.send(json!({ "event": "pusher:ping" })).await;
    other.expect("pusher:pong").await;

    let (status, body) = api.post("/users/alice/terminate_connections", &json!({})).await;
    assert_eq!((status, body), (200, json!({})));
    for client in [&mut first, &mut second] {
        client.expect_error(4009).await;
        assert_eq!(client.expect_close().await.0, 4009);
    }
    other.send(json!({ "event": "pusher:ping" })).await;
    other.expect("pusher:pong").await;
}

#[tokio::test]
async fn watchers_hear_when_their_users_come_online_and_go_offline() {
    let server = Server::start();
    let app = TestApp::main();
    let mut carol = Client::connect(&server.ws_url(&app.key)).await;
    sign_in(&mut carol, &app, &json!({ "id": "carol" })).await;

    let mut watcher = Client::connect(&server.ws_url(&app.key)).await;
    sign_in(&mut watcher, &app, &json!({ "id": "w", "watchlist": ["carol", "dave"] })).await;
    let online = watcher.expect("pusher_internal:watchlist_events").await;
    let data: Value = serde_json::from_str(online["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!({ "events": [{ "name": "online", "user_ids": ["carol"] }] }));

    let mut dave = Client::connect(&server.ws_url(&app.key)).await;
    sign_in(&mut dave, &app, &json!({ "id": "dave" })).await;
    let event = watcher.expect("pusher_internal:watchlist_events").await;
    assert!(
        event["data"].as_str().unwrap().contains(r#"{"name":"online","user_ids":["dave"]}"#),
        "{event}"
    );

    dave.close().await;
    let event = watcher.expect("pusher_internal:watchlist_events").await;
    assert!(
        event["data"].as_str().unwrap().contains(r#"{"name":"offline","user_ids":["dave"]}"#),
        "{event}"
    );

    let long: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let mut greedy = Client::connect(&server.ws_url(&app.key)).await;
    let user_data = json!({ "id": "g", "watchlist": long }).to_string();
    let auth = app.user_auth(&greedy.socket_id, &user_data);
    greedy
        .send(json!({ "event": "pusher:signin", "data": { "auth": auth, "user_data": user_data } }))
        .await;
    greedy.expect("pusher:signin_success").await;
    greedy.expect_error(4302).await;
}
